// Issue 22, item 5: frames that are cheap to send and dear to serve, under the 2,000 frames/s
// limit. One user's device registers push tokens (`ptok`, a durable write each) at 1,500/s;
// another user's device acks 1,024 offsets a frame (1,024 lookups) at 1,500/s. (Two users: a
// second device of one user would wait for link approval.) Unguarded, the
// legit p99 went 13.6 → 764 ms (ptok) and 21 → 573 ms (acks). The cost budgets (ptok 64, ack
// 1 + 1 per 8 offsets; 10,000/s per device) refuse what is over, and a device that keeps going
// into debt is closed with 4003.
import { answerCounter, countClose, openPeer } from '../lib/wire-peer.mjs';

const RATE = 1500;

export const about = `ptok at ${RATE}/s from one device, acks naming 1,024 offsets at ${RATE}/s from another user's, reconnecting when closed`;

/** Sends `frame(r)` at RATE per second from `user` until the attack ends. */
async function flood(ctx, user, address, name, frame) {
  let peer;
  let r = 0;
  while (!ctx.signal.aborted) {
    if (!peer?.open) {
      try {
        peer = await openPeer(ctx.url, ctx.token(user, 'd1'), {
          localAddress: address,
          onFrame: answerCounter(ctx),
        });
        countClose(ctx, peer);
        ctx.count(`${name}_sessions`);
      } catch {
        ctx.count(`${name}_refused`);
        await ctx.sleep(200);
        continue;
      }
      ctx.ready();
    }
    // 10 ms ticks of RATE/100 frames.
    const t0 = performance.now();
    for (let i = 0; i < RATE / 100 && peer.open; i++) peer.send(frame(++r));
    ctx.count(name, RATE / 100);
    await ctx.sleep(Math.max(0, 10 - (performance.now() - t0)));
  }
  peer?.close();
}

export async function run(ctx) {
  const token = 'x'.repeat(160);
  // Offsets the device does not have, like a client that acks at random: each still a lookup.
  const offsets = Array.from({ length: 1024 }, (_, i) => 1_000_000 + i * 7);
  await Promise.all([
    flood(ctx, 'pusher', ctx.addresses[0], 'ptok', (r) => ({ t: 'ptok', r, k: 'fcm', tok: `${token}${r}` })),
    flood(ctx, 'acker', ctx.addresses[1], 'ack', () => ({ t: 'ack', o: offsets })),
  ]);
}
