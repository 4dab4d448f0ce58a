// The client's acks of received entries: at once on a quiet connection (the sender's ✓✓ is not
// held back at light load), batched `ackDelayMs` apart under load (src/client/ack-pacing.ts).
import { afterEach, describe, expect, it } from 'vitest';
import { ackWait } from '../src/client/ack-pacing.js';
import { decodeClientFrame } from '../src/protocol/index.js';
import { makeWorld, text, type World } from './helpers.js';

let world: World | undefined;
afterEach(async () => {
  await world?.close();
  world = undefined;
});

const DELAY = 1000;

/** Alice and Bob (Bob acks with `ackDelayMs` = DELAY), and the times Bob's ack frames left. */
async function pair() {
  world = await makeWorld();
  const w = world;
  const alice = await w.device('alice');
  const bob = await w.device('bob', 'phone', { client: { ackDelayMs: DELAY } });
  const acks: number[] = [];
  w.net.intercept((frame, dir, link) => {
    if (dir === 'toServer' && link.name === 'bob/phone' && decodeClientFrame(frame, 1 << 20).t === 'ack') {
      acks.push(w.clock.now());
    }
    return 'pass';
  });
  return { w, alice, bob, acks };
}

describe('ack pacing', () => {
  it('a quiet connection acks a received message at once: the sender sees ✓✓ long before the ack delay', async () => {
    const { w, alice, bob, acks } = await pair();
    const start = w.clock.now();
    const id = await alice.client.send('bob', text('hi'));
    await w.advance(DELAY / 4);
    expect(bob.messages.map((m) => m.id)).toEqual([id]);
    expect(acks).toHaveLength(1);
    expect(acks[0]! - start).toBeLessThan(DELAY / 4);
    expect(alice.statusOf(id)).toBe('delivered');
  });

  it('under load, the next ack frame leaves ackDelayMs after the previous one, carrying all that came', async () => {
    const { w, alice, bob, acks } = await pair();
    const first = await alice.client.send('bob', text('1'));
    await w.advance(DELAY / 4);
    expect(acks).toHaveLength(1);
    const more = [await alice.client.send('bob', text('2')), await alice.client.send('bob', text('3'))];
    await w.advance(DELAY / 4);
    expect(bob.messages.map((m) => m.id)).toEqual([first, ...more]);
    expect(acks).toHaveLength(1); // held: an ack left less than ackDelayMs ago
    expect(more.map((id) => alice.statusOf(id))).toEqual(['sent', 'sent']);
    await w.advance(DELAY);
    expect(acks).toHaveLength(2);
    expect(acks[1]! - acks[0]!).toBe(DELAY);
    expect(more.map((id) => alice.statusOf(id))).toEqual(['delivered', 'delivered']);
  });

  it('the wait is what remains of the delay since the last ack frame, and none without one', () => {
    expect(ackWait(100, undefined, 25)).toBe(0);
    expect(ackWait(100, 90, 25)).toBe(15);
    expect(ackWait(100, 70, 25)).toBe(0);
    expect(ackWait(100, 99, 0)).toBe(0);
  });
});
