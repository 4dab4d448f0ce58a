// The SQLite server store's WAL flushes off the event loop (src/server/stores/sqlite-sync.ts):
// a commit is reported only after a flush that started after it, and flushes are shared.
import Database from 'better-sqlite3';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { groupFlushes } from '../src/server/stores/sqlite-sync.js';
import { sqliteServerStore } from '../src/server/stores/sqlite.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'postbox-sqlite-sync-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A flush the test finishes by hand; `started` counts the flushes begun. */
function manualFlush() {
  const pending: Array<() => void> = [];
  const f = {
    started: 0,
    flush: () =>
      new Promise<void>((resolve) => {
        f.started++;
        pending.push(resolve);
      }),
    finishOne: async () => {
      pending.shift()?.();
      for (let i = 0; i < 5; i++) await Promise.resolve();
    },
  };
  return f;
}

describe('WAL flushes', () => {
  it('a caller is released only by a flush that started after its call', async () => {
    const f = manualFlush();
    const g = groupFlushes(f.flush);
    let first = false;
    let second = false;
    void g.synced().then(() => (first = true));
    void g.synced().then(() => (second = true)); // came while the first flush ran
    await f.finishOne();
    expect(first).toBe(true);
    expect(second).toBe(false);
    expect(f.started).toBe(2); // the next flush began as soon as the first ended
    await f.finishOne();
    expect(second).toBe(true);
  });

  it('every caller that comes while a flush runs shares the one next flush', async () => {
    const f = manualFlush();
    const g = groupFlushes(f.flush);
    void g.synced();
    const waiting = [g.synced(), g.synced(), g.synced()];
    await f.finishOne();
    await f.finishOne();
    await Promise.all(waiting);
    expect(f.started).toBe(2);
  });

  it('a failed flush fails its callers, and the next callers get a fresh flush', async () => {
    let fail = true;
    const g = groupFlushes(() => (fail ? Promise.reject(new Error('EIO')) : Promise.resolve()));
    await expect(g.synced()).rejects.toThrow('EIO');
    fail = false;
    await expect(g.synced()).resolves.toBeUndefined();
  });

  it('a store that opened its file flushes the WAL itself, and what it acked is there after reopening', async () => {
    const file = path.join(dir, 'flush.db');
    const store = sqliteServerStore({ path: file, walFlush: 'background' });
    const peek = new Database(file, { readonly: true });
    expect(peek.pragma('journal_mode', { simple: true })).toBe('wal');
    peek.close();
    const a = { user: 'a', device: 'a1' };
    const b = { user: 'b', device: 'b1' };
    await store.registerDevice(a, 1);
    await store.registerDevice(b, 1);
    const [out] = await store.append(
      [{ kind: 'msg', id: 'm1', from: a, to: 'b', seq: 1, body: new Uint8Array([1]) }],
      2,
    );
    expect(out?.ok).toBe(true);
    await store.close();
    const again = sqliteServerStore({ path: file, walFlush: 'background' });
    expect((await again.readInbox(b, 0, 10)).map((e) => e.kind === 'msg' && e.id)).toEqual(['m1']);
    await again.close();
  });
});
