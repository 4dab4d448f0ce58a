// With a store that commits large fan-outs in slices (`slicedAppend`: the SQLite store), the
// engine commits small batches beside a large one that is still committing, instead of after it
// (issue 22, group-spam): a 1:1 send is acked while a 1,024-member group message is in flight.
// Per-sender order holds: a sender's next item waits for its item in the large batch.
import { afterEach, describe, expect, it } from 'vitest';
import type { AppendInput, AppendOptions, ServerStore } from '../src/server/store.js';
import { sqliteServerStore } from '../src/server/stores/sqlite.js';
import {
  groupSpam,
  makeWorld,
  settled,
  storeGate,
  text,
  UNLIMITED_BUDGETS,
  until,
  type World,
} from './helpers.js';

let world: World | undefined;
afterEach(async () => {
  await world?.close();
  world = undefined;
});

/** A store that logs each append's start and end, and can hold the answer of large ones. */
function lanes(inner: ServerStore) {
  const log: Array<{ at: 'start' | 'end'; ids: string[]; sliceRows?: number }> = [];
  const gate = storeGate();
  const store: ServerStore = Object.create(inner) as ServerStore;
  store.append = async (batch: AppendInput[], now: number, options?: AppendOptions) => {
    const ids = batch.map((i) => i.id);
    log.push({ at: 'start', ids, sliceRows: options?.sliceRows });
    const out = await inner.append(batch, now, options);
    // A large batch whose last slice is slow to come: its answer waits.
    if (batch.some((i) => i.kind === 'msg' && i.group)) await gate.passed();
    log.push({ at: 'end', ids });
    return out;
  };
  return { store, log, hold: gate.hold, release: gate.release };
}

describe('commit lanes with a slicing store', () => {
  it('a 1:1 send is acked while a 1,024-member group message is still committing, and the spammer’s next message waits for its first', async () => {
    const rec = lanes(sqliteServerStore({ path: ':memory:' }));
    expect(rec.store.capabilities?.slicedAppend).toBe(true);
    world = await makeWorld({
      openStore: () => rec.store,
      server: { costBudgets: UNLIMITED_BUDGETS },
    });
    const w = world;
    const { spammer, group, alice } = await groupSpam(w);
    await settled(w, spammer.client.sendToGroup(group, text('first'))); // the engine learns its size
    const first = await settled(w, alice.client.send('bob', text('warm up'))); // others are sending
    expect(first).toBeTruthy();

    rec.log.length = 0;
    rec.hold();
    const spam = [spammer.client.sendToGroup(group, text('a')), spammer.client.sendToGroup(group, text('b'))];
    await until(w, () => rec.log.some((e) => e.at === 'start' && e.sliceRows !== undefined));
    const mine = await settled(w, alice.client.send('bob', text('hi')));
    await until(w, () => rec.log.some((e) => e.at === 'end' && e.ids.includes(mine)));
    const bigStart = rec.log.findIndex((e) => e.at === 'start' && e.sliceRows !== undefined);
    const big = rec.log[bigStart]!;
    // Alice's batch started and ended while the group message was still in flight…
    expect(big.sliceRows).toBe(128);
    expect(rec.log.some((e) => e.at === 'end' && e.ids.includes(big.ids[0]!))).toBe(false);
    // …and the spammer's second message did not start beside its first.
    expect(rec.log.filter((e) => e.at === 'start' && e.sliceRows !== undefined)).toHaveLength(1);
    rec.release();
    const ids = await settled(w, Promise.all(spam));
    const [a, b] = ids as [string, string];
    await until(w, () => rec.log.some((e) => e.at === 'end' && e.ids.includes(b)));
    const starts = rec.log.filter((e) => e.at === 'start').map((e) => e.ids);
    const ends = rec.log.filter((e) => e.at === 'end').map((e) => e.ids);
    // The second group message started only after the first ended.
    const secondStart = rec.log.findIndex((e) => e.at === 'start' && e.ids.includes(b));
    const firstEnd = rec.log.findIndex((e) => e.at === 'end' && e.ids.includes(a));
    expect(firstEnd).toBeGreaterThan(-1);
    expect(secondStart).toBeGreaterThan(firstEnd);
    expect(starts.flat()).toContain(mine);
    expect(ends.flat()).toEqual(expect.arrayContaining([mine, ...ids]));
  });
});
