// The client's acks of received entries: at once on a quiet connection (the sender's ✓✓ is not
// held back at light load), batched `ackDelayMs` apart under load, and the acks nobody waits for
// (statuses, group events) held for a frame to ride with (src/client/ack-pacing.ts).
import { afterEach, describe, expect, it } from 'vitest';
import { QUIET_ACK_FACTOR, ackWait } from '../src/client/ack-pacing.js';
import { decodeClientFrame } from '../src/protocol/index.js';
import { makeWorld, text, type World } from './helpers.js';

let world: World | undefined;
afterEach(async () => {
  await world?.close();
  world = undefined;
});

const DELAY = 1000;

/**
 * Alice and Bob (both ack with `ackDelayMs` = DELAY), the times Bob's ack frames left, and the
 * kinds of the frames Alice wrote, in order, with their times.
 */
async function pair(delay = DELAY) {
  world = await makeWorld();
  const w = world;
  const alice = await w.device('alice', 'phone', { client: { ackDelayMs: delay } });
  const bob = await w.device('bob', 'phone', { client: { ackDelayMs: delay } });
  const acks: number[] = [];
  const fromAlice: Array<{ t: string; at: number }> = [];
  w.net.intercept((frame, dir, link) => {
    if (dir !== 'toServer') return 'pass';
    const t = decodeClientFrame(frame, 1 << 20).t;
    if (link.name === 'bob/phone' && t === 'ack') acks.push(w.clock.now());
    if (link.name === 'alice/phone') fromAlice.push({ t, at: w.clock.now() });
    return 'pass';
  });
  return { w, alice, bob, acks, fromAlice };
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

  it('the ack of a status waits for the next frame the device writes and leaves with it: one write, not two', async () => {
    const { w, alice, fromAlice } = await pair();
    const first = await alice.client.send('bob', text('1'));
    await w.advance(DELAY / 4);
    expect(alice.statusOf(first)).toBe('delivered'); // Bob acked at once: his connection was quiet
    // Alice holds the ack of her ✓✓ entry: nobody waits for it.
    expect(fromAlice.map((f) => f.t)).toEqual(['send']);
    const sentAt = w.clock.now();
    const second = await alice.client.send('bob', text('2'));
    await w.advance(DELAY / 4);
    // It left in the same run as the next send (the transport writes one run's frames at once);
    // the second ✓✓'s ack waits in turn.
    expect(fromAlice.map((f) => f.t)).toEqual(['send', 'ack', 'send']);
    expect(fromAlice[1]!.at).toBe(sentAt);
    expect(fromAlice[2]!.at).toBe(sentAt);
    await w.advance(DELAY); // Bob's ack of it is paced: he acked less than DELAY ago
    expect(alice.statusOf(second)).toBe('delivered');
  });

  it('a status ack with no frame to ride with leaves on its own after QUIET_ACK_FACTOR × ackDelayMs', async () => {
    // A delay short enough that the quiet wait ends before the first heartbeat ping (which it
    // would otherwise ride with).
    const delay = 20;
    const { w, alice, fromAlice } = await pair(delay);
    const id = await alice.client.send('bob', text('1'));
    await w.advance(delay);
    expect(alice.statusOf(id)).toBe('delivered');
    const statusAt = w.clock.now();
    await w.advance(QUIET_ACK_FACTOR * delay - 2 * delay);
    expect(fromAlice.map((f) => f.t)).toEqual(['send']);
    await w.advance(2 * delay);
    expect(fromAlice.map((f) => f.t)).toEqual(['send', 'ack']);
    expect(fromAlice[1]!.at - statusAt).toBeLessThanOrEqual(QUIET_ACK_FACTOR * delay);
    // Acked: the server has nothing left to deliver to Alice.
    expect(await w.server.store.readInbox({ user: 'alice', device: 'phone' }, 0, 10)).toEqual([]);
  });

  it('the wait is what remains of the delay since the last ack frame, and none without one; quiet acks wait longer', () => {
    expect(ackWait(100, undefined, 25)).toBe(0);
    expect(ackWait(100, 90, 25)).toBe(15);
    expect(ackWait(100, 70, 25)).toBe(0);
    expect(ackWait(100, 99, 0)).toBe(0);
    expect(ackWait(100, undefined, 25, true)).toBe(25 * QUIET_ACK_FACTOR);
    expect(ackWait(100, 99, 0, true)).toBe(0); // ackDelayMs 0: nothing waits
  });
});
