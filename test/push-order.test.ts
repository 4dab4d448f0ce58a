// A store's calls settle in whatever order their promises run: an ack that wrote a status at a
// device's offset 7 and an append that wrote a message at offset 8 can reach the engine 8 first
// (on SQLite they share one WAL flush; on PostgreSQL they run on different connections). The
// session holds the overtaking entry until the earlier one comes, and sends both in order
// without reading its inbox back; an earlier entry that never comes is read from the store.
import { afterEach, describe, expect, it } from 'vitest';
import type { Clock } from '../src/util/clock.js';
import type { DeviceAddress, ServerStore } from '../src/server/index.js';
import { createMemoryServerState, memoryServerStore } from '../src/server/stores/memory.js';
import { makeWorld, text, type TestDevice, type World } from './helpers.js';

let world: World | undefined;
afterEach(async () => {
  await world?.close();
  world = undefined;
});

/**
 * The memory store, counting inbox reads and the pushes that came out of offset order. With a
 * `clock`, each ack's result is held back until just after the next append has been pushed (or
 * 50 ms), so an append made after an ack settles first. `lost` drops what an ack wrote from its
 * result (no entries, no doorbell), as if its push had been lost on the way.
 */
function reorderingStore(opts: { lost?: boolean } = {}) {
  const inner = memoryServerStore({ state: createMemoryServerState() });
  const reads = new Map<string, number>();
  const highest = new Map<string, number>();
  let inversions = 0;
  let clock: Clock | undefined;
  let waiting: Array<() => void> = [];
  const releaseAcks = (): void => {
    const release = waiting;
    waiting = [];
    for (const r of release) r();
  };
  const seen = (d: DeviceAddress, offset: number): void => {
    const k = `${d.user}/${d.device}`;
    if (offset < (highest.get(k) ?? 0)) inversions++;
    else highest.set(k, offset);
  };
  const store: ServerStore = {
    ...inner,
    readInbox(d, after, limit) {
      reads.set(`${d.user}/${d.device}`, (reads.get(`${d.user}/${d.device}`) ?? 0) + 1);
      return inner.readInbox(d, after, limit);
    },
    async append(batch, now) {
      const out = await inner.append(batch, now);
      for (const o of out) if (o.ok && o.offsets) o.notify.forEach((d, i) => seen(d, o.offsets![i]!));
      // A timer made now fires before any the engine makes while pushing this append.
      if (waiting.length > 0) clock!.setTimeout(releaseAcks, 0);
      return out;
    },
    async ack(d, offsets, now) {
      const res = await inner.ack(d, offsets, now);
      if (clock) {
        await new Promise<void>((resolve) => waiting.push(resolve));
        clock.setTimeout(releaseAcks, 50);
      }
      if (opts.lost) return { count: res.count, notify: [] };
      for (const e of res.entries ?? []) seen(e.device, e.entry.offset);
      return res;
    },
  };
  return {
    store,
    /** Holds acks back from now on (see above), timed by `c`. */
    holdAcks: (c: Clock) => void (clock = c),
    readsOf: (d: string) => reads.get(d) ?? 0,
    inversions: () => inversions,
  };
}

/** Alice and Bob write to each other at once, `n` each, so acks and appends interleave. */
async function crossTalk(alice: TestDevice, bob: TestDevice, n: number): Promise<string[]> {
  const ids: string[] = [];
  for (let i = 0; i < n; i++) {
    ids.push(await alice.client.send('bob', text(`a${i}`)));
    ids.push(await bob.client.send('alice', text(`b${i}`)));
    await world!.advance(3);
  }
  await world!.advance(500);
  return ids;
}

describe('pushes that settle out of offset order', () => {
  it('go out in offset order without a read of the inbox', async () => {
    const late = reorderingStore();
    world = await makeWorld({ openStore: () => late.store });
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    await world.advance(100);
    late.holdAcks(world.clock);
    const before = late.readsOf('alice/phone') + late.readsOf('bob/phone');
    const ids = await crossTalk(alice, bob, 30);
    expect(late.inversions()).toBeGreaterThan(0); // the scenario made what it is about
    expect(late.readsOf('alice/phone') + late.readsOf('bob/phone') - before).toBe(0);
    expect(bob.messages.map((m) => m.body)).toEqual(
      ids.filter((_, i) => i % 2 === 0).map((_, i) => text(`a${i}`)),
    );
    expect(alice.messages.map((m) => m.body)).toEqual(
      ids.filter((_, i) => i % 2 === 1).map((_, i) => text(`b${i}`)),
    );
    expect(ids.map((id) => (bob.messages.some((m) => m.id === id) ? alice : bob).statusOf(id))).toEqual(
      ids.map(() => 'delivered'),
    );
  });

  it('an overtaken entry that is never pushed is read from the store', async () => {
    const lost = reorderingStore({ lost: true });
    world = await makeWorld({ openStore: () => lost.store });
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    await world.advance(100);
    const a0 = await alice.client.send('bob', text('a0'));
    await world.advance(200);
    // Bob acked; the delivered status went into Alice's inbox, and its push was lost.
    expect(bob.messages).toHaveLength(1);
    expect(alice.statusOf(a0)).toBe('sent');
    const reads = lost.readsOf('alice/phone');
    await bob.client.send('alice', text('b0'));
    await world.advance(200);
    // The push of b0 overtook the lost status: Alice's session read both, in order.
    expect(alice.messages.map((m) => m.body)).toEqual([text('b0')]);
    expect(alice.statusOf(a0)).toBe('delivered');
    expect(lost.readsOf('alice/phone')).toBeGreaterThan(reads);
  });
});
