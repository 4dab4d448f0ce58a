// Issue 22, item 2: one user creates 1,024-member groups naming a victim (bob, the legit user),
// then sends to them as fast as the server takes it. The attacker brings the worst case it can
// make: 1,022 sock puppets that consented to it (each wrote to it 1:1, which is what the default
// `related` consent rule asks), so every group really fans out to 1,023 other devices. The victim
// did not consent: it should get invites, never membership. Creations are capped per hour, and
// the sends by the cost budgets (a send to a full group costs ~1,024 units of 10,000/s).
import { answerCounter, countClose, openPeer } from '../lib/wire-peer.mjs';

const PUPPETS = 1022; // + the victim + the creator = 1,024 members
const GROUPS = 60; // tries; `maxGroupCreatesPerHour` (30) refuses the rest
const MAX_IN_FLIGHT = 64; // sends awaiting their answer (under the 256 pending sends that close 4003)
const VICTIM = 'bob';

export const about = `one user with ${PUPPETS} consenting sock puppets creates up to ${GROUPS} groups of 1,024 naming the victim (bob, the legit user), then sends 100-byte messages to them as fast as its cost budget lets it (up to ${MAX_IN_FLIGHT} in flight), reconnecting when closed`;
// Setup writes ≈ 17 MB (1,022 puppets registered, 30 creations each an event in 1,023 inboxes);
// then the cost budget lets at most 10,000 inbox rows/s through (≈ 10 group messages a second).
// What the disk shows of that: the database's own growth (about 8–10 MB once checkpointed) plus
// the WAL file, which grows to the store's checkpoint cap (`capFrames`, 8,192 pages: 32 MiB)
// before the store catches up and restarts it, and keeps that size from then on (SQLite reuses
// it, however long the attack goes on). A round that ends just before a catch-up reads both:
// +34.8 and +40.3 MB in 2 of 8 rounds on 7 Dec, +20–31 MB in the others. So the bound is the
// WAL's cap plus 16 MB; growth past it would be data the quotas and budgets did not stop.
export const bounds = { diskMb: 48 };

/** Opens a session per puppet (registering it) and has it write to `attacker` (consent). */
async function recruit(ctx, attacker) {
  let next = 0;
  const one = async (i) => {
    for (let tries = 0; tries < 5 && !ctx.signal.aborted; tries++) {
      try {
        const peer = await openPeer(ctx.url, ctx.token(`puppet${i}`, 'd1'), {
          localAddress: ctx.addresses[1 + (i % 4)],
        });
        peer.send({ t: 'send', r: 1, id: `c${i}`, to: attacker, seq: 1, b: new Uint8Array(1) });
        for (let k = 0; k < 250 && !peer.frames.some((f) => f.t === 'ok' || f.t === 'err'); k++)
          await ctx.sleep(20);
        const answer = peer.frames.find((f) => f.t === 'ok' || f.t === 'err');
        peer.close();
        if (answer?.t === 'ok') return ctx.count('puppets_consented');
      } catch {
        await ctx.sleep(100);
      }
    }
    ctx.count('puppets_failed');
  };
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      while (next < PUPPETS && !ctx.signal.aborted) await one(next++);
    }),
  );
}

export async function run(ctx) {
  const me = 'spammer';
  const puppets = Array.from({ length: PUPPETS }, (_, i) => `puppet${i}`);
  const groups = [];
  const waiting = new Map(); // request id → resolve(answer)
  let r = 0;
  let peer;
  // Sends in flight, adapted like TCP's window: +1 per window of answers taken, halved (and a
  // pause) on a refusal. A refused send's cost is debt, so a sender that ignores refusals gets
  // nothing through; this one keeps as close to its budget as it can, the worst case for fan-out.
  let window = 4;
  let pausedUntil = 0;
  const onFrame = answerCounter(ctx, (f) => {
    if ((f.t === 'ok' || f.t === 'err') && waiting.has(f.r)) {
      waiting.get(f.r)(f);
      waiting.delete(f.r);
    }
    // Over budget: back off a little, so that as many rows get through as the budget allows.
    if (f.t === 'err' && f.c === 'rate_limited' && performance.now() >= pausedUntil) {
      window = Math.max(1, window / 2);
      pausedUntil = performance.now() + 1000;
    } else if (f.t === 'ok') window = Math.min(MAX_IN_FLIGHT, window + 1 / window);
    if (f.t === 'gev' && f.op === 'create' && f.by === me) {
      ctx.count(f.m.includes(VICTIM) ? 'victim_joined' : 'victim_not_member');
      ctx.stats.members_per_group = f.m.length + 1;
    }
    if (f.o !== undefined) peer?.send({ t: 'ack', o: [f.o] });
  });
  const connect = async () => {
    while (!ctx.signal.aborted) {
      try {
        peer = await openPeer(ctx.url, ctx.token(me, 'd1'), { localAddress: ctx.addresses[0], onFrame });
        countClose(ctx, peer);
        // A closed socket answers nothing more: its requests end unanswered.
        peer.ws.once('close', () => {
          for (const resolve of waiting.values()) resolve(undefined);
          waiting.clear();
        });
        ctx.count('sessions');
        return;
      } catch {
        ctx.count('refused');
        await ctx.sleep(200);
      }
    }
  };
  /** Sends `frame` with a fresh request id; resolves with its answer (undefined if the socket closed). */
  const request = (frame) =>
    new Promise((resolve) => {
      frame.r = ++r;
      if (!peer.open) return resolve(undefined);
      waiting.set(frame.r, resolve);
      peer.send(frame);
    });
  await connect(); // registers the attacker, so the puppets can write to it
  await recruit(ctx, me);
  // Creations, retried while only the cost budget refuses them, until the hourly cap does.
  const until = performance.now() + 30_000;
  for (let g = 0; g < GROUPS && !ctx.signal.aborted && performance.now() < until;) {
    if (!peer.open) await connect();
    const id = `#spam${g}`;
    const a = await request({
      t: 'grp',
      id: `create${g}`,
      g: id,
      op: 'create',
      m: [VICTIM, ...puppets],
      n: 'hi',
    });
    ctx.count(a?.t === 'ok' ? 'groups_created' : `create_refused_${a?.c ?? 'closed'}`);
    if (a?.t === 'ok') groups.push(id);
    if (a?.c === 'quota_exceeded') break;
    if (a?.t === 'ok') g++;
    else await ctx.sleep(500);
  }
  ctx.ready();
  const seq = new Map();
  const body = new Uint8Array(100);
  let k = 0;
  let inFlight = 0;
  while (!ctx.signal.aborted && groups.length > 0) {
    if (!peer.open) {
      await connect();
      continue;
    }
    if (inFlight >= window || performance.now() < pausedUntil) {
      await ctx.sleep(5);
      continue;
    }
    const to = groups[k++ % groups.length];
    seq.set(to, (seq.get(to) ?? 0) + 1);
    inFlight++;
    ctx.count('sends');
    void request({ t: 'send', id: `m${k}`, to, g: true, seq: seq.get(to), b: body }).then(() => inFlight--);
  }
  peer?.close();
}
