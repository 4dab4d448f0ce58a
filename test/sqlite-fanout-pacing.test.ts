// The slices of a sliced group message wait for a running WAL flush to end before they write
// (issue 22, group-spam). A commit made while a flush runs (a 1:1 send) is durable only after the
// next flush; a slice written during the running one lands in that next flush too and makes it
// longer. Unpaced, slices written back to back piled into every flush and each longer flush let
// more pile into the next: the legit user's p99 beside a group spammer was ×1.9–3.1 its baseline,
// paced ×0.9–1.4 (docs/security.md). Here each WAL flush is held a little longer than the disk
// takes (the `fdatasync` the store calls is wrapped), 1:1 sends keep flushes coming, and no two
// slices may be written during the same flush (both would land in the next one).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import type { AppendInput } from '../src/server/store.js';
import { MEMBERS, from, fullGroup } from './fixtures/full-group.js';

const flushes = vi.hoisted(() => ({ running: 0, started: 0 }));

vi.mock('node:fs', async (importOriginal) => {
  const real = await importOriginal<typeof import('node:fs')>();
  const fdatasync = (fd: number, done: (e: NodeJS.ErrnoException | null) => void): void => {
    flushes.running++;
    flushes.started++;
    real.fdatasync(fd, (e) =>
      // Held a little: long enough that an unpaced slice would surely start meanwhile.
      setTimeout(() => {
        flushes.running--;
        done(e);
      }, 2),
    );
  };
  return { ...real, default: { ...real, fdatasync }, fdatasync };
});

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'postbox-fanout-pacing-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const SLICE = 64;
const body = new Uint8Array([1, 2, 3]);

describe('SQLite store: sliced fan-out is paced by the WAL flushes', () => {
  it('no two slices of a group message are written during the same WAL flush, so the next flush, which a 1:1 send committed meanwhile waits for, carries at most one', async () => {
    /** Per slice: the flush running while it was written (by its start count), if one ran. */
    const slices: Array<number | undefined> = [];
    // A slice's last write moves its cursor (or, for the last one, deletes it).
    const store = await fullGroup(path.join(dir, 'db.sqlite'), (w) => {
      if (w === 'UPDATE fanout_done SET' || w === 'DELETE FROM fanout_done') {
        slices.push(flushes.running > 0 ? flushes.started : undefined);
      }
    });

    const startedBefore = flushes.started;
    let done = false;
    const group = store
      .append([{ kind: 'msg', from, id: 'big', to: '#g', group: true, seq: 1, body }], 10, {
        sliceRows: SLICE,
      })
      .finally(() => (done = true));
    // 1:1 sends while the fan-out runs, each its own commit asking for a flush.
    let seq = 0;
    const sends: Promise<unknown>[] = [];
    while (!done) {
      const item: AppendInput = {
        kind: 'msg',
        from: { user: 'alice', device: 'a1' },
        id: `d${++seq}`,
        to: 'bob',
        seq,
        body,
      };
      sends.push(store.append([item], 11 + seq));
      await new Promise((r) => setImmediate(r));
    }
    const [out] = await group;
    expect(out?.ok).toBe(true);
    await Promise.all(sends);

    // Every slice after the first transaction's: (1,023 − 64) / 64 rounded up.
    expect(slices).toHaveLength(Math.ceil((MEMBERS - 1 - SLICE) / SLICE));
    // The 1:1 sends kept flushes coming the whole time (not a vacuous pass)...
    expect(flushes.started - startedBefore).toBeGreaterThanOrEqual(2);
    // ...and no two consecutive slices were written while the same flush ran.
    const piled = slices.filter((f, i) => f !== undefined && f === slices[i - 1]);
    expect(slices.filter((f) => f !== undefined).length).toBeGreaterThan(0);
    expect(piled).toEqual([]);
    // Every 1:1 send is in bob's inbox (read page by page: there may be more than one page).
    let inBob = 0;
    for (let after = 0; ;) {
      const page = await store.readInbox({ user: 'bob', device: 'b1' }, after, 1000);
      if (page.length === 0) break;
      inBob += page.length;
      after = page.at(-1)!.offset;
    }
    expect(inBob).toBe(seq);
    await store.close();
  });
});
