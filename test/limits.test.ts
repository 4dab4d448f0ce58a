// The limit maps themselves: what they count, and that no flood of keys grows them without bound
// or lets one claimer reset its own one-time key budget.
import { describe, expect, it } from 'vitest';
import { BoundedMap, OneTimeKeyBudget, WindowCounters } from '../src/server/limits.js';

describe('per-user and per-device limit maps', () => {
  it('a window counts until it ends, then starts again', () => {
    const c = new WindowCounters(1000);
    expect(c.add('a', 3, 0)).toBe(3);
    expect(c.add('a', 1, 999)).toBe(4);
    expect(c.add('a', 1, 1000)).toBe(1);
  });

  it('the counter map never holds more than its bound, forgetting the oldest windows first', () => {
    const c = new WindowCounters(10_000, 100);
    for (let i = 0; i < 1000; i++) c.add(`user${i}`, 1, i);
    expect(c.size).toBe(100);
    expect(c.add('user999', 1, 1000)).toBe(2); // the newest are still counted
    expect(c.add('user0', 1, 1000)).toBe(1); // the oldest were forgotten
  });

  it('expired windows are dropped as new ones start, so idle users cost nothing', () => {
    const c = new WindowCounters(1000, 100);
    for (let i = 0; i < 50; i++) c.add(`user${i}`, 1, 0);
    c.add('late', 1, 5000);
    expect(c.size).toBe(1);
  });

  it('a claimer takes at most perPair one-time keys of one device per window', () => {
    const b = new OneTimeKeyBudget(2, 1000);
    expect([1, 2, 3].map(() => b.take('mallory', 'bob/phone', 0))).toEqual([true, true, false]);
    expect(b.take('carol', 'bob/phone', 0)).toBe(true);
    expect(b.take('mallory', 'bob/phone', 1000)).toBe(true);
  });

  it('one claimer cannot grow the budget map past its per-claimer bound, nor push out its own records', () => {
    const b = new OneTimeKeyBudget(1, 1000, 10, 1000);
    expect(b.take('mallory', 'victim', 0)).toBe(true);
    for (let i = 0; i < 5000; i++) b.take('mallory', `device${i}`, 1);
    expect(b.size).toBe(10);
    expect(b.take('mallory', 'victim', 2)).toBe(false);
  });

  it('the budget map never holds more than its bound across claimers', () => {
    const b = new OneTimeKeyBudget(1, 1000, 10, 100);
    for (let u = 0; u < 100; u++) for (let d = 0; d < 10; d++) b.take(`user${u}`, `device${d}`, u);
    expect(b.size).toBeLessThanOrEqual(100);
  });

  it('a bounded cache (group members for typing, last wake-ups) forgets the key set longest ago', () => {
    const m = new BoundedMap<string, number>(3);
    for (const k of ['a', 'b', 'c']) m.set(k, 1);
    m.set('a', 2); // set again: now the newest
    m.set('d', 1);
    expect([...m.keys()]).toEqual(['c', 'a', 'd']);
    for (let i = 0; i < 1000; i++) m.set(`g${i}`, i);
    expect(m.size).toBe(3);
  });
});
