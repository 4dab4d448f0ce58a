// Issue 22, item 6: sessions that stop reading while asking for large answers. Each of 80 users
// (from two addresses) uploads a key bundle with a Kyber last-resort key (1.6 KB), then stops
// reading its socket and claims the bundles of 40 of them ten times a second: every answer is
// some 70 KB that the server must queue for a reader that never reads. They reconnect when closed.
import { openPeer } from '../lib/wire-peer.mjs';

const SESSIONS = 80;
const CLAIM_USERS = 40;
const CLAIMS_PER_S = 10;

export const about = `${SESSIONS} logged-in sessions stop reading and claim ${CLAIM_USERS} key bundles (≈70 KB an answer) ${CLAIMS_PER_S}×/s each, reconnecting when closed`;
// Queued bytes may reach the global bound (128 MiB by default), plus the heap around them.
export const bounds = { memoryMb: 192 };

const bytes = (n, v) => new Uint8Array(n).fill(v);

export async function run(ctx) {
  const users = Array.from({ length: SESSIONS }, (_, i) => `sr${i}`);
  const keys = (r) => ({
    t: 'keys',
    r,
    rid: 7,
    ik: bytes(33, 5),
    spk: [1, bytes(33, 6), bytes(64, 7)],
    lrk: [2, bytes(1569, 8), bytes(64, 9)],
  });
  const session = async (i) => {
    let r = 0;
    let uploaded = false;
    while (!ctx.signal.aborted) {
      let peer;
      try {
        peer = await openPeer(ctx.url, ctx.token(users[i], 'd1'), {
          localAddress: ctx.addresses[i % 2],
        });
      } catch {
        ctx.count('refused');
        await ctx.sleep(500);
        continue;
      }
      ctx.count('sessions');
      if (!uploaded) {
        peer.send(keys(++r));
        for (let k = 0; k < 100 && !peer.frames.some((f) => f.t === 'ok' || f.t === 'err'); k++)
          await ctx.sleep(20);
        uploaded = true;
      }
      await ready; // every user has keys before the claims start
      peer.pause();
      const claim = { t: 'kget', r: 0, u: users.slice(0, CLAIM_USERS) };
      while (!ctx.signal.aborted && peer.open) {
        claim.r = ++r;
        peer.send(claim);
        ctx.count('claims');
        await ctx.sleep(1000 / CLAIMS_PER_S);
      }
      if (!ctx.signal.aborted) ctx.count('closed_by_server');
      peer.close();
    }
  };
  let markUploaded;
  let left = SESSIONS;
  const ready = new Promise((r) => (markUploaded = r));
  const all = users.map((_, i) =>
    session(i).finally(() => {
      if (--left === 0) markUploaded();
    }),
  );
  // Uploads done (or given up on) once every session reached its first claim loop.
  const poll = setInterval(() => {
    if ((ctx.stats.sessions ?? 0) >= SESSIONS) {
      clearInterval(poll);
      setTimeout(() => {
        markUploaded();
        ctx.ready();
      }, 500);
    }
  }, 50);
  await Promise.all(all);
  clearInterval(poll);
}
