// The SQLite server store's WAL flushes off the event loop (src/server/stores/sqlite-sync.ts):
// a commit is reported only after a flush that started after it, and flushes are shared.
import Database from 'better-sqlite3';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { walCheckpointer } from '../src/server/stores/sqlite-checkpoint.js';
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

  it('waiting for the running flush to end asks for no flush of its own', async () => {
    const f = manualFlush();
    const g = groupFlushes(f.flush);
    await g.ended(); // none runs: at once
    void g.synced();
    let ended = false;
    void g.ended().then(() => (ended = true));
    expect(ended).toBe(false);
    await f.finishOne();
    expect(ended).toBe(true);
    expect(f.started).toBe(1);
    expect(g.busy()).toBe(false);
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

  it('a commit made just before a flush starts is answered by that flush', async () => {
    const f = manualFlush();
    const answered: string[] = [];
    let pending = 0;
    const g = groupFlushes(f.flush, () => {
      if (pending === 0) return undefined;
      pending = 0; // "committed" here, so the flush about to start covers it
      return (flush) => void flush.then(() => answered.push(`ack@${f.started}`));
    });
    void g.synced(); // flush 1 runs
    pending = 1; // an ack comes while it runs: it waits for the next flush
    void g.synced();
    await f.finishOne(); // flush 1 ends, flush 2 starts with the ack committed just before it
    expect(answered).toEqual([]);
    await f.finishOne();
    expect(answered).toEqual(['ack@2']);
  });

  it('an ack that comes while a flush runs is answered with its delivered status once the next one ends', async () => {
    const store = sqliteServerStore({ path: path.join(dir, 'acks.db'), walFlush: 'background' });
    const a = { user: 'a', device: 'a1' };
    const b = { user: 'b', device: 'b1' };
    await store.registerDevice(a, 1);
    await store.registerDevice(b, 1);
    const send = (id: string) => ({
      kind: 'msg' as const,
      id,
      from: a,
      to: 'b',
      seq: 1,
      body: new Uint8Array([1]),
    });
    const [first] = await store.append([send('m1')], 2);
    const offset = first!.ok ? first!.offsets![0]! : 0;
    // A flush runs (m2's), then the ack comes: no append follows to carry it.
    const second = store.append([send('m2')], 3);
    const acked = await store.ack(b, [offset], 4);
    await second;
    expect(acked.count).toBe(1);
    expect(acked.entries?.map((w) => w.entry.kind === 'status' && w.entry.ids)).toEqual([['m1']]);
    await store.close();
  });
});

describe('WAL checkpoints on a worker thread', () => {
  const pages = (file: string) => fs.statSync(file).size / 4096;

  it('the database file takes the WAL’s pages without the writing connection checkpointing', async () => {
    const file = path.join(dir, 'ckpt.db');
    const db = new Database(file);
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    const ckpt = walCheckpointer(db, file, 5000, { intervalMs: 0 });
    db.exec('CREATE TABLE t (x BLOB)');
    const insert = db.prepare('INSERT INTO t VALUES (?)');
    for (let i = 0; i < 50; i++) insert.run(Buffer.alloc(4000));
    const before = pages(file);
    ckpt.flushed();
    for (let i = 0; i < 200 && pages(file) <= before + 40; i++) await new Promise((r) => setTimeout(r, 10));
    expect(pages(file)).toBeGreaterThan(before + 40);
    expect(db.pragma('wal_autocheckpoint', { simple: true })).toBe(0);
    await ckpt.close();
    db.close();
  });

  it('once a checkpoint copied everything, the next commit starts the WAL over: it stops growing', async () => {
    const file = path.join(dir, 'cap.db');
    const db = new Database(file);
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = NORMAL');
    let done: (() => void) | undefined;
    const ckpt = walCheckpointer(db, file, 5000, {
      intervalMs: 0,
      capFrames: 10,
      onCheckpoint: () => done?.(),
    });
    const checkpoint = () =>
      new Promise<void>((resolve) => {
        done = resolve;
        ckpt.flushed();
      });
    db.exec('CREATE TABLE t (x BLOB)');
    const insert = db.prepare('INSERT INTO t VALUES (?)');
    for (let i = 0; i < 50; i++) insert.run(Buffer.alloc(4000));
    const walBytes = fs.statSync(`${file}-wal`).size;
    await checkpoint();
    // Once everything is checkpointed, the next commit writes from the WAL's start: the file
    // stops growing however many more small commits come.
    for (let round = 0; round < 5; round++) {
      insert.run(Buffer.alloc(10));
      await checkpoint();
    }
    expect(fs.statSync(`${file}-wal`).size).toBe(walBytes);
    expect(db.prepare('SELECT count(*) AS n FROM t').get()).toEqual({ n: 55 });
    await ckpt.close();
    db.close();
  });

  it('a store with a background flush closes its worker and reopens with everything', async () => {
    const file = path.join(dir, 'reopen.db');
    const store = sqliteServerStore({ path: file, walFlush: 'background' });
    const a = { user: 'a', device: 'a1' };
    const b = { user: 'b', device: 'b1' };
    await store.registerDevice(a, 1);
    await store.registerDevice(b, 1);
    for (let i = 0; i < 20; i++) {
      await store.append(
        [{ kind: 'msg', id: `m${i}`, from: a, to: 'b', seq: i + 1, body: new Uint8Array(3000) }],
        2,
      );
    }
    await store.close();
    const again = sqliteServerStore({ path: file, walFlush: 'background' });
    expect(await again.readInbox(b, 0, 100)).toHaveLength(20);
    await again.close();
  });
});
