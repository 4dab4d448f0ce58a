import { EVERY_CAPABILITY } from './helpers.js';
import Database from 'better-sqlite3';
import { Packr } from 'msgpackr';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { ClientStore } from '../src/client/store.js';
import { SQLITE_CLIENT_SCHEMA_VERSION, sqliteClientStore } from '../src/client/stores/sqlite.js';
import type {
  DeviceAddress,
  GroupChange,
  GroupInput,
  KeyUpload,
  MessageInput,
  ServerStore,
} from '../src/server/store.js';
import { memoryServerStore } from '../src/server/stores/memory.js';
import { SQLITE_SERVER_SCHEMA_VERSION, sqliteServerStore } from '../src/server/stores/sqlite.js';
import { clientStoreConformance, registerCases, serverStoreConformance } from '../src/testing/index.js';
import { checkAfterUpgrade, writeBeforeUpgrade } from './fixtures/consent-upgrade.js';
import { inboxUsage, usageDrift } from './fixtures/sqlite-usage.js';
import { migrate, type SqliteDatabase, type SqliteStatement } from '../src/util/sqlite.js';

/**
 * Takes a database back to schema version 13: the index on `inbox.ts` (step 16) and the release
 * triggers (step 15) come back, every
 * message its entry held alone (step 14) gets its `messages` row again, and the entry's own
 * columns go.
 */
function toVersion13(db: Database.Database): void {
  db.exec(`
    CREATE INDEX inbox_ts ON inbox (ts);
    CREATE TRIGGER inbox_unref AFTER DELETE ON inbox WHEN old.message IS NOT NULL BEGIN
      UPDATE messages SET refs = refs - 1 WHERE id = old.message;
      DELETE FROM messages WHERE id = old.message AND refs <= 0;
    END;
    CREATE TRIGGER inbox_unref_event AFTER DELETE ON inbox WHEN old.event IS NOT NULL BEGIN
      UPDATE group_events SET refs = refs - 1 WHERE id = old.event;
      DELETE FROM group_events WHERE id = old.event AND refs <= 0;
    END;
    INSERT INTO messages (from_user, from_device, msg_id, to_user, to_group, seq, ts, body, refs)
      SELECT from_user, from_device, msg_id, to_user, 0, seq, ts, body, 1 FROM inbox WHERE msg_id IS NOT NULL;
    UPDATE inbox SET body = NULL, message = (
      SELECT m.id FROM messages m
      WHERE (m.msg_id, m.from_user, m.from_device) = (inbox.msg_id, inbox.from_user, inbox.from_device)
    ) WHERE msg_id IS NOT NULL;
    ALTER TABLE inbox DROP COLUMN from_user;
    ALTER TABLE inbox DROP COLUMN from_device;
    ALTER TABLE inbox DROP COLUMN msg_id;
    ALTER TABLE inbox DROP COLUMN to_user;
    ALTER TABLE inbox DROP COLUMN seq;
  `);
}

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'postbox-sqlite-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));
let fileCount = 0;
/** A fresh database file name in the test's temp dir. */
const freshFile = (): string => path.join(root, `db-${++fileCount}.sqlite`);

// A store's file is its "disk": a new store over the same file is a restart.
const files = new WeakMap<object, string>();

/**
 * Opens a store on `file`, either by path or handed a connection; a handed connection is closed
 * after the store, as its owner would, so `reopen` really reopens the file.
 */
function opener<S extends ServerStore | ClientStore>(
  make: (source: { path: string } | { database: Database.Database }) => S,
  mode: 'path' | 'database',
) {
  return (file: string): S => {
    let store: S;
    if (mode === 'path') {
      store = make({ path: file });
    } else {
      const db = new Database(file);
      const inner = make({ database: db });
      store = {
        ...inner,
        async close() {
          await inner.close();
          db.close();
        },
      };
    }
    files.set(store, file);
    return store;
  };
}

for (const mode of ['path', 'database'] as const) {
  const openServer = opener((source) => sqliteServerStore(source), mode);
  const openClient = opener((source) => sqliteClientStore(source), mode);

  describe(`sqlite server store conformance (file, ${mode})`, () => {
    registerCases(
      serverStoreConformance({
        name: `sqlite (${mode})`,
        open: async () => openServer(freshFile()),
        async reopen(old) {
          await old.close();
          return openServer(files.get(old)!);
        },
        share: async (store) => openServer(files.get(store)!),
        capabilities: { ...EVERY_CAPABILITY, slicedAppend: true },
        openWithFaults: async (faults) =>
          opener((source) => sqliteServerStore({ ...source, beforeWrite: faults.hook }), mode)(freshFile()),
      }),
      it,
    );
  });

  describe(`sqlite client store conformance (file, ${mode})`, () => {
    registerCases(
      clientStoreConformance({
        name: `sqlite (${mode})`,
        open: async () => openClient(freshFile()),
        async reopen(old) {
          await old.close();
          return openClient(files.get(old)!);
        },
      }),
      it,
    );
  });
}

describe('sqlite stores on a :memory: database', () => {
  it('work without a file (for tests), though they keep nothing after close', async () => {
    const server = sqliteServerStore({ path: ':memory:' });
    await server.registerDevice(alice1, 1);
    await server.registerDevice(bob1, 1);
    expect(await server.append([msg('m1')], 1000)).toEqual([
      { ok: true, ts: 1000, duplicate: false, notify: [bob1], offsets: [1] },
    ]);
    await server.close();
    const client = sqliteClientStore({ path: ':memory:' });
    expect((await client.enqueue(draft('o1'), true)).seq).toBe(1);
    await client.close();
  });
});

const alice1: DeviceAddress = { user: 'alice', device: 'a1' };
const bob1: DeviceAddress = { user: 'bob', device: 'b1' };
const bob2: DeviceAddress = { user: 'bob', device: 'b2' };
const msg = (id: string, seq = 1, body: Uint8Array = new TextEncoder().encode(id)): MessageInput => ({
  kind: 'msg',
  from: alice1,
  id,
  to: 'bob',
  seq,
  body,
});
const groupItem = (id: string, change: GroupChange, maxMembers = 256): GroupInput => ({
  kind: 'group',
  from: alice1,
  id,
  group: 'g',
  change,
  maxMembers,
});

/** Schema version 1 as released: a database written by postbox before groups. */
const SCHEMA_V1 = `
  CREATE TABLE devices (
    id INTEGER PRIMARY KEY, user TEXT NOT NULL, device TEXT NOT NULL,
    registered_at INTEGER NOT NULL, last_offset INTEGER NOT NULL DEFAULT 0, UNIQUE (user, device)
  );
  CREATE TABLE messages (
    id INTEGER PRIMARY KEY, from_user TEXT NOT NULL, from_device TEXT NOT NULL, msg_id TEXT NOT NULL,
    to_user TEXT NOT NULL, seq INTEGER NOT NULL, ts INTEGER NOT NULL, body BLOB NOT NULL,
    refs INTEGER NOT NULL, state INTEGER NOT NULL DEFAULT 0
  );
  CREATE TABLE inbox (
    dev INTEGER NOT NULL, pos INTEGER NOT NULL, ts INTEGER NOT NULL, message INTEGER,
    status TEXT, ids TEXT, by_user TEXT, PRIMARY KEY (dev, pos)
  ) WITHOUT ROWID;
  CREATE INDEX inbox_ts ON inbox (ts);
  CREATE TABLE dedupe (
    from_user TEXT NOT NULL, from_device TEXT NOT NULL, msg_id TEXT NOT NULL, ts INTEGER NOT NULL,
    PRIMARY KEY (from_user, from_device, msg_id)
  ) WITHOUT ROWID;
  CREATE INDEX dedupe_ts ON dedupe (ts);
  CREATE TRIGGER inbox_unref AFTER DELETE ON inbox WHEN old.message IS NOT NULL BEGIN
    UPDATE messages SET refs = refs - 1 WHERE id = old.message;
    DELETE FROM messages WHERE id = old.message AND refs <= 0;
  END;
`;

/** Schema version 2 as released: groups, delivered rows, contacts, last seen; no key directory. */
const SCHEMA_V2 = `${SCHEMA_V1}
  ALTER TABLE messages ADD COLUMN to_group INTEGER NOT NULL DEFAULT 0;
  CREATE TABLE delivered (message INTEGER NOT NULL, user TEXT NOT NULL, PRIMARY KEY (message, user)) WITHOUT ROWID;
  ALTER TABLE messages DROP COLUMN state;
  CREATE TRIGGER messages_gone AFTER DELETE ON messages BEGIN
    DELETE FROM delivered WHERE message = old.id;
  END;
  CREATE TABLE group_events (id INTEGER PRIMARY KEY, data BLOB NOT NULL, refs INTEGER NOT NULL);
  ALTER TABLE inbox ADD COLUMN event INTEGER;
  CREATE TRIGGER inbox_unref_event AFTER DELETE ON inbox WHEN old.event IS NOT NULL BEGIN
    UPDATE group_events SET refs = refs - 1 WHERE id = old.event;
    DELETE FROM group_events WHERE id = old.event AND refs <= 0;
  END;
  CREATE TABLE groups (id TEXT PRIMARY KEY, name TEXT NOT NULL, ver INTEGER NOT NULL) WITHOUT ROWID;
  CREATE TABLE group_members (
    joined INTEGER PRIMARY KEY, group_id TEXT NOT NULL, user TEXT NOT NULL, role TEXT NOT NULL,
    UNIQUE (group_id, user)
  );
  CREATE INDEX group_members_user ON group_members (user);
  CREATE TABLE contacts (a TEXT NOT NULL, b TEXT NOT NULL, PRIMARY KEY (a, b)) WITHOUT ROWID;
  CREATE TABLE last_seen (user TEXT PRIMARY KEY, ts INTEGER NOT NULL) WITHOUT ROWID;
`;

const key = (id: number) => ({ id, key: new Uint8Array([id]), signature: new Uint8Array([id, 0]) });
/** A first key upload with one-time EC keys `pre` (ids) and one Kyber key (id 100). */
const keys = (rid: number, pre: number[] = [1, 2]): KeyUpload => ({
  registrationId: rid,
  identityKey: new Uint8Array([rid, 1]),
  signedPreKey: key(90),
  lastResortKyber: key(99),
  preKeys: pre.map(key),
  kyberPreKeys: [key(100)],
});
/** An end-to-end encrypted message from alice1 to bob; each envelope's body names its device. */
const sealed = (id: string, devices: Array<DeviceAddress & { rid: number }>, seq = 1): MessageInput => ({
  ...msg(id, seq),
  body: new Uint8Array(0),
  envelopes: devices.map((d) => ({ ...d, body: new TextEncoder().encode(`${id} for ${d.device}`) })),
});
const text = (b: Uint8Array): string => new TextDecoder().decode(b);

const draft = (id: string) => ({
  id,
  kind: 'msg' as const,
  to: 'bob',
  conv: 'bob',
  body: new Uint8Array([1]),
  createdAt: 1,
});

/** A second connection on the same file, for white-box looks. */
function peek(file: string) {
  const db = new Database(file, { readonly: true });
  const count = (table: string): number =>
    (db.prepare(`SELECT count(*) AS n FROM ${table}`).get() as { n: number }).n;
  return { db, count, close: () => db.close() };
}

/**
 * Wraps a database to record what runs on it: `BEGIN`s and `COMMIT`s, and every write statement
 * run outside a transaction (autocommit), which a store must never do for a batch.
 */
function recording(db: Database.Database) {
  const log = { begins: 0, commits: 0, autocommitWrites: [] as string[] };
  const wrapStatement = (sql: string, stmt: Database.Statement): SqliteStatement => {
    const head = sql.trim().split(/\s+/)[0]!.toUpperCase();
    const before = (): void => {
      if (head === 'BEGIN') log.begins++;
      else if (head === 'COMMIT') log.commits++;
      else if (!stmt.reader && head !== 'ROLLBACK' && head !== 'PRAGMA' && !db.inTransaction) {
        log.autocommitWrites.push(sql);
      }
    };
    return {
      run: (...p: unknown[]) => (before(), stmt.run(...p)),
      get: (...p: unknown[]) => (before(), stmt.get(...p)),
      all: (...p: unknown[]) => (before(), stmt.all(...p)),
      safeIntegers: (t?: boolean) => stmt.safeIntegers(t),
    };
  };
  const wrapped: SqliteDatabase = {
    prepare: (sql) => wrapStatement(sql, db.prepare(sql)),
    exec: (sql) => db.exec(sql),
    close: () => db.close(),
    get inTransaction() {
      return db.inTransaction;
    },
  };
  return { wrapped, log };
}

describe('sqlite server store', () => {
  it('runs in WAL mode with synchronous=FULL and a busy timeout', async () => {
    const file = freshFile();
    const store = sqliteServerStore({ path: file, busyTimeoutMs: 1234 });
    const other = peek(file);
    expect(other.db.pragma('journal_mode', { simple: true })).toBe('wal'); // persistent, per file
    other.close();
    await store.close();
    // synchronous and busy_timeout are per connection: look at one the store was handed.
    const db = new Database(file);
    const handedStore = sqliteServerStore({ database: db, busyTimeoutMs: 4321 });
    expect(db.pragma('synchronous', { simple: true })).toBe(2); // FULL
    expect(db.pragma('busy_timeout', { simple: true })).toBe(4321);
    expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    await handedStore.close();
    db.close();
  });

  it('migrations are idempotent: re-opening applies nothing, user_version is the step count', async () => {
    const file = freshFile();
    const first = sqliteServerStore({ path: file });
    await first.registerDevice(bob1, 1);
    await first.close();
    const second = sqliteServerStore({ path: file });
    expect(await second.devices('bob')).toEqual(['b1']);
    await second.close();
    const db = new Database(file);
    expect(db.pragma('user_version', { simple: true })).toBe(SQLITE_SERVER_SCHEMA_VERSION);
    expect(SQLITE_SERVER_SCHEMA_VERSION).toBeGreaterThanOrEqual(1);
    db.close();
  });

  it('refuses a database written by a newer schema', () => {
    const file = freshFile();
    const db = new Database(file);
    db.pragma(`user_version = ${SQLITE_SERVER_SCHEMA_VERSION + 1}`);
    db.close();
    expect(() => sqliteServerStore({ path: file })).toThrow(/newer/);
  });

  it('a batch of 512 appends is exactly one transaction', async () => {
    const db = new Database(freshFile());
    const { wrapped, log } = recording(db);
    const store = sqliteServerStore({ database: wrapped });
    for (const d of [alice1, bob1, bob2]) await store.registerDevice(d, 1);
    const batch = Array.from({ length: 512 }, (_, i) => msg(`m${i}`, i + 1));
    log.begins = log.commits = 0;
    log.autocommitWrites.length = 0;
    const outcomes = await store.append(batch, 1000);
    expect(outcomes.every((o) => o.ok && !o.duplicate)).toBe(true);
    expect(log).toEqual({ begins: 1, commits: 1, autocommitWrites: [] });
    expect((await store.readInbox(bob2, 0, 1000)).length).toBe(512);
    await store.close();
    db.close();
  });

  it('a group fans out the same over a database wrapper without raw() as over the driver, which reads the member devices as arrays', async () => {
    const run = async (database: SqliteDatabase) => {
      const store = sqliteServerStore({ database });
      const carol1 = { user: 'carol', device: 'c1' };
      for (const d of [alice1, bob1, bob2, carol1]) await store.registerDevice(d, 1);
      const change = { op: 'create' as const, name: 'g', members: ['bob', 'carol'] };
      const created = await store.append(
        [{ kind: 'group', from: alice1, id: 'c', group: '#g', change, maxMembers: 16 }],
        10,
      );
      const sent = await store.append(
        [{ kind: 'msg', from: alice1, id: 'hi', to: '#g', group: true, seq: 1, body: new Uint8Array([7]) }],
        11,
      );
      const inboxes = [];
      for (const d of [bob1, bob2, carol1])
        inboxes.push((await store.readInbox(d, 0, 10)).map((e) => e.offset));
      await store.close();
      return { created, sent, inboxes };
    };
    const direct = new Database(freshFile());
    const viaDriver = await run(direct);
    direct.close();
    const wrappedDb = new Database(freshFile());
    const { wrapped } = recording(wrappedDb);
    expect('raw' in (wrapped.prepare('SELECT 1') as object)).toBe(false);
    const viaWrapper = await run(wrapped);
    wrappedDb.close();
    expect(viaDriver.sent[0]).toMatchObject({
      ok: true,
      notify: [bob1, bob2, { user: 'carol', device: 'c1' }],
    });
    expect(viaWrapper).toEqual(viaDriver);
  });

  it('an ack counts each entry once and reports it delivered in the order given, however its offsets are ordered or repeated', async () => {
    const offsets = [5, 6, 2, 3, 3, 4, 99, 1.5, Number.NaN, 6];
    const run = async (store: ServerStore) => {
      for (const d of [alice1, bob1]) await store.registerDevice(d, 1);
      await store.append(
        Array.from({ length: 6 }, (_, i) => msg(`m${i + 1}`, i + 1)),
        1000,
      );
      const res = await store.ack(bob1, offsets, 2000);
      const left = (await store.readInbox(bob1, 0, 100)).map((e) => e.offset);
      await store.close();
      return {
        count: res.count,
        ids: res.entries?.map((w) => w.entry.kind === 'status' && w.entry.ids),
        left,
      };
    };
    const sqlite = await run(sqliteServerStore({ path: freshFile() }));
    expect(sqlite).toEqual({ count: 5, ids: [['m5', 'm6', 'm2', 'm3', 'm4']], left: [1] });
    expect(sqlite).toEqual(await run(memoryServerStore()));
  });

  it('a consent written by an append that failed is written again by the next message to the same user', async () => {
    let failMessages = 1;
    const store = sqliteServerStore({
      path: freshFile(),
      walFlush: 'background',
      beforeWrite: (write) => {
        // After the consent insert, before the entry: the transaction rolls both back.
        if (write === 'INSERT INTO inbox' && failMessages-- > 0) throw new Error('EIO');
      },
    });
    for (const d of [alice1, bob1]) await store.registerDevice(d, 1);
    await expect(store.append([msg('m1')], 1000)).rejects.toThrow('EIO');
    expect(await store.related('bob', 'alice')).toBe(false);
    expect((await store.append([msg('m1')], 1001))[0]?.ok).toBe(true);
    expect(await store.related('bob', 'alice')).toBe(true);
    await store.append([msg('m2', 2)], 1002); // known now: no second insert, still related
    expect(await store.related('bob', 'alice')).toBe(true);
    await store.close();
  });

  it('a store handed a database does not close it', async () => {
    const db = new Database(freshFile());
    const store = sqliteServerStore({ database: db });
    await store.registerDevice(bob1, 1);
    await store.close();
    expect(db.open).toBe(true);
    expect(db.prepare('SELECT count(*) AS n FROM devices').get()).toEqual({ n: 1 });
    await expect(store.devices('bob')).rejects.toThrow(/closed/);
    db.close();
  });

  it('a store that opened its file closes it', async () => {
    const file = freshFile();
    const store = sqliteServerStore({ path: file });
    await store.close();
    await store.close(); // idempotent
    await expect(store.devices('bob')).rejects.toThrow(/closed/);
  });

  it('a body is stored once and deleted with its last inbox reference', async () => {
    const file = freshFile();
    const store = sqliteServerStore({ path: file });
    const alice2 = { user: 'alice', device: 'a2' };
    for (const d of [alice1, alice2, bob1, bob2]) await store.registerDevice(d, 1);
    await store.append([msg('m1')], 1000);
    const look = peek(file);
    expect(look.count('messages')).toBe(1); // three entries, one body
    expect(look.count('inbox')).toBe(3);
    await store.ack(bob1, [1], 2000);
    await store.ack(bob2, [1], 2000);
    expect(look.count('messages')).toBe(1); // alice2 still references it
    await store.ack(alice2, [1], 2000);
    expect(look.count('messages')).toBe(0);
    await store.append([msg('m2', 2)], 3000);
    expect(await store.expire(4000, 5000)).toMatchObject({ count: 5 }); // 3 msg entries + 2 delivered
    expect(look.count('messages')).toBe(0);
    look.close();
    await store.close();
  });

  it('inbox usage counters count every entry a transaction writes, several to one device included, and every delete', async () => {
    const file = freshFile();
    const store = sqliteServerStore({ path: file });
    const alice2 = { user: 'alice', device: 'a2' };
    for (const d of [alice1, alice2, bob1, bob2]) await store.registerDevice(d, 1);
    const usage = () => inboxUsage(file);
    const sizes = [3, 50, 700];
    // One batch: three messages of different sizes to each of bob's devices and to alice2.
    await store.append(
      sizes.map((n, i) => msg(`m${i}`, i + 1, new Uint8Array(n))),
      1000,
    );
    const total = sizes.reduce((a, b) => a + b, 0);
    const want = (device: string, entries: number, bytes: number) =>
      expect.objectContaining({ device, entries, bytes, held: entries, held_bytes: bytes });
    expect(usage()).toEqual([
      want('a1', 0, 0),
      want('a2', 3, total),
      want('b1', 3, total),
      want('b2', 3, total),
    ]);
    // bob1 takes two (alice's devices get a ✓✓ status each: an entry of no body bytes).
    await store.ack(bob1, [1, 2], 2000);
    const rows = usage() as Array<{
      device: string;
      entries: number;
      bytes: number;
      held: number;
      held_bytes: number;
    }>;
    for (const r of rows) expect([r.entries, r.bytes]).toEqual([r.held, r.held_bytes]);
    expect(rows.find((r) => r.device === 'b1')).toMatchObject({ entries: 1, bytes: 700 });
    await store.close();
  });

  it('a big expiry backlog is removed in bounded transactions, telling each message once', async () => {
    const file = freshFile();
    const db = new Database(file);
    const { wrapped, log } = recording(db);
    const store = sqliteServerStore({ database: wrapped, expiryBatchSize: 1000 });
    for (const d of [alice1, bob1, bob2]) await store.registerDevice(d, 1);
    const messages = 10_000; // × 2 recipient devices = 20k entries
    for (let i = 0; i < messages; i += 500) {
      await store.append(
        Array.from({ length: 500 }, (_, j) => msg(`m${i + j}`, i + j + 1)),
        1000,
      );
    }
    await store.append([msg('young', messages + 1)], 5000);
    log.begins = 0;
    let ticks = 0;
    const ticker = setInterval(() => ticks++, 0);
    const res = await store.expire(2000, 9000);
    clearInterval(ticker);
    expect(res.count).toBe(2 * messages);
    expect(res.notify).toEqual(expect.arrayContaining([alice1, bob1, bob2])); // bob's devices: gap notices
    expect(res.notify).toHaveLength(3);
    expect(log.begins).toBeGreaterThanOrEqual((2 * messages) / 1000); // each step its own transaction
    expect(ticks).toBeGreaterThan(0); // the event loop ran between steps
    const told = (await store.readInbox(alice1, 0, 1_000_000)).flatMap((e) =>
      e.kind === 'status' && e.status === 'expired' ? e.ids : [],
    );
    expect(told.length).toBe(messages);
    expect(new Set(told).size).toBe(messages);
    for (const d of [bob1, bob2]) {
      const left = await store.readInbox(d, 0, 1_000_000);
      expect(left.flatMap((e) => (e.kind === 'msg' ? [e.id] : []))).toEqual(['young']);
      // Each step tells the device what it removed there: every number once over all notices.
      const named = left.flatMap((e) =>
        e.kind === 'gap'
          ? e.streams.flatMap((s) =>
              s.ranges.flatMap(([a, b]) => Array.from({ length: b - a + 1 }, (_, k) => a + k)),
            )
          : [],
      );
      expect(named.sort((a, b) => a - b)).toEqual(Array.from({ length: messages }, (_, k) => k + 1));
    }
    const look = peek(file);
    expect(look.count('messages')).toBe(1);
    expect(look.count('dedupe')).toBe(1);
    look.close();
    await store.close();
    db.close();
  });

  it('a group message to 1,024 members × 2 devices is one transaction: one body, 2,048 entries', async () => {
    const file = freshFile();
    const db = new Database(file);
    const { wrapped, log } = recording(db);
    const store = sqliteServerStore({ database: wrapped });
    const users = Array.from({ length: 1024 }, (_, i) => `u${i}`);
    await store.registerDevice(alice1, 1);
    for (const user of users) {
      await store.registerDevice({ user, device: 'd1' }, 1);
      await store.registerDevice({ user, device: 'd2' }, 1);
    }
    const create = groupItem('r1', { op: 'create', name: 'Big', members: users }, 1025);
    log.begins = log.commits = 0;
    log.autocommitWrites.length = 0;
    expect((await store.append([create], 1000))[0]).toMatchObject({ ok: true });
    const [out] = await store.append([{ ...msg('m1'), to: 'g', group: true }], 2000);
    expect(out).toMatchObject({ ok: true, duplicate: false });
    expect(out!.ok && out!.notify.length).toBe(2048);
    expect(log).toEqual({ begins: 2, commits: 2, autocommitWrites: [] });
    const look = peek(file);
    expect(look.count('messages')).toBe(1);
    expect(look.count('group_events')).toBe(1); // the create event, snapshot form, stored once
    expect(look.count('inbox')).toBe(2 * 2049 - 1); // the event everywhere, the message but to a1
    look.close();
    await store.close();
    db.close();
  });

  it('group events are stored once per form and released with their last entry', async () => {
    const file = freshFile();
    const store = sqliteServerStore({ path: file });
    const alice2 = { user: 'alice', device: 'a2' };
    const carol1 = { user: 'carol', device: 'c1' };
    for (const d of [alice1, alice2, bob1, bob2, carol1]) await store.registerDevice(d, 1);
    await store.append([groupItem('r1', { op: 'create', name: 'G', members: ['bob'] })], 1000);
    const look = peek(file);
    const refs = () =>
      look.db
        .prepare('SELECT refs FROM group_events ORDER BY id')
        .all()
        .map((r) => (r as { refs: number }).refs);
    expect(refs()).toEqual([4]); // one snapshot form for alice1, alice2, bob1, bob2
    await store.append([groupItem('r2', { op: 'add', members: ['carol'] })], 2000);
    expect(refs()).toEqual([4, 1, 4]); // + the snapshot form for carol1, the delta for the rest
    for (const d of [alice1, alice2, bob1, bob2, carol1]) {
      await store.ack(
        d,
        (await store.readInbox(d, 0, 100)).map((e) => e.offset),
        3000,
      );
    }
    expect(look.count('group_events')).toBe(0);
    // Unlinking a device releases what its inbox referenced, like acks do.
    await store.append([{ ...msg('m1'), to: 'g', group: true }], 4000);
    expect(await store.unregisterDevice(bob1)).toBe(true);
    expect(look.count('messages')).toBe(1);
    for (const d of [alice2, bob2, carol1]) expect(await store.unregisterDevice(d)).toBe(true);
    expect(look.count('messages')).toBe(0);
    expect(look.count('inbox')).toBe(0);
    expect(await store.registerDevice(carol1, 5000)).toEqual({ count: 1, notify: [carol1] });
    expect(refs()).toEqual([1]); // a new device's snapshot
    look.close();
    await store.close();
  });

  it('expiry walks each inbox by offset: an entry a stepped-back clock stamped older expires with the one before it, never skipped', async () => {
    const store = sqliteServerStore({ path: freshFile(), expiryBatchSize: 1 });
    for (const d of [alice1, bob1]) await store.registerDevice(d, 1);
    await store.append([msg('m1')], 2000);
    await store.append([msg('m2', 2)], 1000); // the clock went back
    await store.append([msg('m3', 3)], 3000);
    expect((await store.expire(1500, 4000)).count).toBe(0); // m2 waits behind m1
    expect((await store.expire(2500, 4000)).count).toBe(2);
    const left = await store.readInbox(bob1, 0, 10);
    expect(left.filter((e) => e.kind === 'msg').map((e) => (e as { id: string }).id)).toEqual(['m3']);
    await store.close();
  });

  it('expiry in steps smaller than the devices and their backlogs removes every expired entry and no other', async () => {
    const file = freshFile();
    const store = sqliteServerStore({ path: file, expiryBatchSize: 2 });
    const readers = Array.from({ length: 5 }, (_, i) => ({ user: `r${i}`, device: 'd' }));
    for (const d of [alice1, ...readers]) await store.registerDevice(d, 1);
    let seq = 0;
    for (const ts of [1000, 1100, 1200, 5000]) {
      for (const r of readers) await store.append([{ ...msg(`${r.user}-${ts}`, ++seq), to: r.user }], ts);
    }
    expect((await store.expire(2000, 6000)).count).toBe(15);
    for (const r of readers) {
      const ids = (await store.readInbox(r, 0, 10)).flatMap((e) => (e.kind === 'msg' ? [e.id] : []));
      expect(ids).toEqual([`${r.user}-5000`]);
    }
    expect(usageDrift(file)).toEqual([]);
    expect((await store.expire(2000, 6000)).count).toBe(0);
    await store.close();
  });

  it('a removed device and expiry release the group events and bodies their entries referenced', async () => {
    const file = freshFile();
    const store = sqliteServerStore({ path: file });
    for (const d of [alice1, bob1, bob2]) await store.registerDevice(d, 1);
    await store.append([groupItem('r1', { op: 'create', name: 'G', members: ['bob'] })], 1000);
    await store.append([{ ...msg('m1'), to: 'g', group: true }], 1500);
    const look = peek(file);
    const refs = (table: string) => look.db.prepare(`SELECT refs FROM ${table}`).all();
    expect([refs('group_events'), refs('messages')]).toEqual([[{ refs: 3 }], [{ refs: 2 }]]);
    expect(await store.unregisterDevice(bob2)).toBe(true);
    expect([refs('group_events'), refs('messages')]).toEqual([[{ refs: 2 }], [{ refs: 1 }]]);
    expect((await store.expire(2000, 9000)).count).toBe(3); // the event twice, the message once
    // What is left is what expiry wrote: the sender's `expired`, bob's gap notice.
    for (const table of ['group_events', 'messages', 'delivered']) expect(look.count(table)).toBe(0);
    expect(usageDrift(file)).toEqual([]);
    look.close();
    await store.close();
  });

  it('expired is told once per (message, user) across bounded expiry steps, and marks go with the message', async () => {
    const file = freshFile();
    const store = sqliteServerStore({ path: file, expiryBatchSize: 1 });
    const alice2 = { user: 'alice', device: 'a2' };
    const carol1 = { user: 'carol', device: 'c1' };
    for (const d of [alice1, alice2, bob1, bob2, carol1]) await store.registerDevice(d, 1);
    await store.append([groupItem('r1', { op: 'create', name: 'G', members: ['bob', 'carol'] })], 500);
    await store.append([{ ...msg('m1'), to: 'g', group: true }], 1000);
    const res = await store.expire(2000, 9000); // 5 events + 4 copies, one per step
    expect(res.count).toBe(9);
    const told = (await store.readInbox(alice1, 0, 100)).flatMap((e) =>
      e.kind === 'status' ? [`${e.status} ${e.ids.join(',')} by ${e.by}`] : [],
    );
    expect(told.sort()).toEqual(['expired m1 by bob', 'expired m1 by carol']);
    const look = peek(file);
    expect(look.count('messages')).toBe(0);
    expect(look.count('delivered')).toBe(0);
    look.close();
    await store.close();
  });

  it('migrating a version 1 database keeps its data and its delivered state', async () => {
    const file = freshFile();
    const v1 = new Database(file);
    v1.exec(SCHEMA_V1);
    v1.exec(`
      INSERT INTO devices (id, user, device, registered_at, last_offset) VALUES
        (1, 'alice', 'a1', 1, 0), (2, 'bob', 'b1', 1, 2), (3, 'bob', 'b2', 1, 2);
      INSERT INTO messages (id, from_user, from_device, msg_id, to_user, seq, ts, body, refs, state) VALUES
        (1, 'alice', 'a1', 'told', 'bob', 1, 1000, x'01', 1, 1),
        (2, 'alice', 'a1', 'fresh', 'bob', 2, 1001, x'02', 2, 0);
      INSERT INTO inbox (dev, pos, ts, message) VALUES (3, 1, 1000, 1), (2, 2, 1001, 2), (3, 2, 1001, 2);
      INSERT INTO dedupe VALUES ('alice', 'a1', 'told', 1000), ('alice', 'a1', 'fresh', 1001);
      PRAGMA user_version = 1;
    `);
    v1.close();
    const store = sqliteServerStore({ path: file });
    const look = peek(file);
    expect(look.db.pragma('user_version', { simple: true })).toBe(SQLITE_SERVER_SCHEMA_VERSION);
    expect(look.db.prepare('SELECT message, user FROM delivered').all()).toEqual([
      { message: 1, user: 'bob' },
    ]);
    look.close();
    expect(
      (await store.readInbox(bob2, 0, 10)).map((e) => e.kind === 'msg' && [e.id, e.ts, e.group]),
    ).toEqual([
      ['told', 1000, undefined],
      ['fresh', 1001, undefined],
    ]);
    // 'told' was delivered before the upgrade: acking it tells nobody again; 'fresh' was not.
    expect(await store.ack(bob2, [1, 2], 2000)).toMatchObject({ count: 2, notify: [alice1] });
    const statuses = (await store.readInbox(alice1, 0, 10)).flatMap((e) =>
      e.kind === 'status' ? e.ids : [],
    );
    expect(statuses).toEqual(['fresh']);
    // Offsets continue from the stored counter.
    await store.append([msg('next', 3)], 3000);
    expect((await store.readInbox(bob1, 0, 10)).map((e) => e.offset)).toEqual([2, 3]);
    expect(await store.append([msg('fresh', 2)], 4000)).toEqual([
      { ok: true, ts: 1001, duplicate: true, notify: [] },
    ]);
    await store.close();
  });

  it('migrating a version 2 database keeps its data and gives its devices a key directory', async () => {
    const file = freshFile();
    const v2 = new Database(file);
    v2.exec(SCHEMA_V2);
    v2.exec(`
      INSERT INTO devices (id, user, device, registered_at, last_offset) VALUES
        (1, 'alice', 'a1', 1, 1), (2, 'bob', 'b1', 1, 3), (3, 'bob', 'b2', 1, 3);
      INSERT INTO messages (id, from_user, from_device, msg_id, to_user, to_group, seq, ts, body, refs) VALUES
        (1, 'alice', 'a1', 'told', 'bob', 0, 1, 1000, x'01', 1),
        (2, 'alice', 'a1', 'fresh', 'bob', 0, 2, 1001, x'0203', 2),
        (3, 'alice', 'a1', 'gm', 'g', 1, 1, 1002, x'04', 1);
      INSERT INTO delivered (message, user) VALUES (1, 'bob');
      INSERT INTO inbox (dev, pos, ts, message, event) VALUES
        (1, 1, 900, NULL, 1), (2, 1, 900, NULL, 1), (3, 1, 900, NULL, 1),
        (3, 2, 1000, 1, NULL), (2, 2, 1001, 2, NULL), (3, 3, 1001, 2, NULL),
        (2, 3, 1002, 3, NULL);
      INSERT INTO dedupe VALUES ('alice', 'a1', 'told', 1000), ('alice', 'a1', 'fresh', 1001), ('alice', 'a1', 'gm', 1002);
      INSERT INTO groups (id, name, ver) VALUES ('g', 'G', 1);
      INSERT INTO group_members (joined, group_id, user, role) VALUES (1, 'g', 'alice', 'admin'), (2, 'g', 'bob', 'member');
      INSERT INTO contacts (a, b) VALUES ('alice', 'bob');
      INSERT INTO last_seen (user, ts) VALUES ('bob', 1500);
      PRAGMA user_version = 2;
    `);
    // A create event as version 2 stored it: [group, ver, op, by, members, name, snapshot].
    const event = new Packr({ useRecords: false, moreTypes: false }).pack([
      'g',
      1,
      'create',
      'alice',
      ['bob'],
      'G',
      ['alice', 1, 'bob', 0],
    ]);
    v2.prepare('INSERT INTO group_events (id, data, refs) VALUES (1, ?, 3)').run(event);
    v2.close();
    const store = sqliteServerStore({ path: file });
    const look = peek(file);
    expect(look.db.pragma('user_version', { simple: true })).toBe(SQLITE_SERVER_SCHEMA_VERSION);
    look.close();
    // Everything written before the upgrade reads as before.
    const summary = async (d: DeviceAddress) =>
      (await store.readInbox(d, 0, 10)).map((e) =>
        e.kind === 'msg' ? `${e.offset} ${e.id} ${[...e.body].join(',')}` : `${e.offset} ${e.kind}`,
      );
    expect(await summary(bob1)).toEqual(['1 group', '2 fresh 2,3', '3 gm 4']);
    const [created] = await store.readInbox(alice1, 0, 10);
    expect(created?.kind === 'group' && created.event).toEqual({
      group: 'g',
      ver: 1,
      op: 'create',
      by: 'alice',
      members: ['bob'],
      name: 'G',
      snapshot: [
        { user: 'alice', role: 'admin' },
        { user: 'bob', role: 'member' },
      ],
    });
    expect(await summary(bob2)).toEqual(['1 group', '2 told 1', '3 fresh 2,3']);
    expect(await store.group('g')).toMatchObject({ ver: 1, members: [{ user: 'alice' }, { user: 'bob' }] });
    expect(await store.related('alice', 'bob')).toBe(true);
    expect(await store.lastSeen('bob')).toBe(1500);
    expect(await store.append([msg('fresh', 2)], 4000)).toEqual([
      { ok: true, ts: 1001, duplicate: true, notify: [] },
    ]);
    // 'told' was delivered before the upgrade: acking it tells nobody again; 'fresh' was not.
    expect(await store.ack(bob2, [2, 3], 2000)).toMatchObject({ count: 2, notify: [alice1] });
    // Devices registered before the upgrade publish keys and receive end-to-end encrypted messages.
    expect(await store.claimKeys('bob')).toEqual([]);
    await store.putKeys(alice1, keys(1));
    await store.putKeys(bob1, keys(2));
    await store.putKeys(bob2, keys(3));
    expect((await store.claimKeys('bob')).map((b) => [b.device, b.preKey?.id])).toEqual([
      ['b1', 1],
      ['b2', 1],
    ]);
    const [out] = await store.append(
      [
        sealed(
          'e1',
          [
            { ...bob1, rid: 2 },
            { ...bob2, rid: 3 },
          ],
          3,
        ),
      ],
      3000,
    );
    expect(out).toMatchObject({ ok: true, notify: [bob1, bob2], offsets: [4, 4] });
    for (const d of [bob1, bob2]) {
      const [e] = await store.readInbox(d, 3, 10);
      expect(e?.kind === 'msg' && text(e.body)).toBe(`e1 for ${d.device}`);
    }
    await store.close();
  });

  it('migrating a version 4 database keeps its data and who may see whom, and receipts about what is still in inboxes', async () => {
    const file = freshFile();
    const old = sqliteServerStore({ path: file });
    await writeBeforeUpgrade(old);
    await old.close();
    // Back to version 4 as released: symmetric contacts, members without versions, dedupe
    // records that do not say where a message went, keyed by device before message id.
    const v4 = new Database(file);
    toVersion13(v4);
    v4.exec(`
      DROP TABLE group_invites;
      DROP INDEX inbox_gaps;
      ALTER TABLE devices DROP COLUMN entries;
      ALTER TABLE devices DROP COLUMN bytes;
      ALTER TABLE inbox DROP COLUMN size;
      CREATE TABLE contacts (a TEXT NOT NULL, b TEXT NOT NULL, PRIMARY KEY (a, b)) WITHOUT ROWID;
      INSERT INTO contacts SELECT DISTINCT min(viewer, target), max(viewer, target) FROM consents;
      DROP TABLE consents;
      ALTER TABLE group_members DROP COLUMN since_ver;
      ALTER TABLE group_members DROP COLUMN acted_ver;
      CREATE TABLE dedupe_v4 (
        from_user TEXT NOT NULL, from_device TEXT NOT NULL, msg_id TEXT NOT NULL, ts INTEGER NOT NULL,
        PRIMARY KEY (from_user, from_device, msg_id)
      ) WITHOUT ROWID;
      INSERT INTO dedupe_v4 SELECT from_user, from_device, msg_id, ts FROM dedupe;
      DROP TABLE dedupe;
      ALTER TABLE dedupe_v4 RENAME TO dedupe;
      CREATE INDEX dedupe_ts ON dedupe (ts);
      DROP TABLE action_counts;
      DROP TABLE fanouts;
      DROP TABLE fanout_done;
      PRAGMA user_version = 4;
    `);
    v4.close();
    const store = sqliteServerStore({ path: file });
    await checkAfterUpgrade(store);
    await store.close();
    // Step 7 counted the inboxes it found: the usage columns match the entries.
    expect(usageDrift(file)).toEqual([]);
    expect(inboxUsage(file).reduce((n, r) => n + r.entries, 0)).toBeGreaterThan(0);
  });

  it('migrating a version 11 database keys its dedupe records by message id first and keeps every one: resends are still duplicates, receipts still count', async () => {
    const file = freshFile();
    const old = sqliteServerStore({ path: file });
    await writeBeforeUpgrade(old);
    await old.close();
    // Back to version 11: the records keyed by sender first, deletes counted by a trigger.
    const v11 = new Database(file);
    toVersion13(v11);
    const records = (db: Database.Database) =>
      db.prepare('SELECT * FROM dedupe ORDER BY from_user, msg_id, from_device').all();
    const before = records(v11);
    v11.exec(`
      CREATE TABLE dedupe_v11 (
        from_user TEXT NOT NULL, msg_id TEXT NOT NULL, from_device TEXT NOT NULL, ts INTEGER NOT NULL,
        to_user TEXT, gver INTEGER, PRIMARY KEY (from_user, msg_id, from_device)
      ) WITHOUT ROWID;
      INSERT INTO dedupe_v11 SELECT from_user, msg_id, from_device, ts, to_user, gver FROM dedupe;
      DROP TABLE dedupe;
      ALTER TABLE dedupe_v11 RENAME TO dedupe;
      CREATE INDEX dedupe_ts ON dedupe (ts);
      CREATE TRIGGER inbox_usage_out AFTER DELETE ON inbox BEGIN
        UPDATE devices SET entries = entries - 1, bytes = bytes - old.size WHERE id = old.dev;
      END;
      PRAGMA user_version = 11;
    `);
    v11.close();
    const store = sqliteServerStore({ path: file });
    const look = peek(file);
    expect(look.db.pragma('user_version', { simple: true })).toBe(SQLITE_SERVER_SCHEMA_VERSION);
    const key = look.db
      .prepare("SELECT name FROM pragma_table_info('dedupe') WHERE pk > 0 ORDER BY pk")
      .all()
      .map((r) => (r as { name: string }).name);
    expect(key).toEqual(['msg_id', 'from_user', 'from_device']);
    expect(records(look.db)).toEqual(before);
    expect(before.length).toBe(4); // m1, m2, the group's create and gm
    look.close();
    const alice1 = { user: 'alice', device: 'a1' };
    const bob1 = { user: 'bob', device: 'b1' };
    const carol1 = { user: 'carol', device: 'c1' };
    expect(
      await store.append(
        [{ kind: 'msg', from: alice1, id: 'm1', to: 'bob', seq: 1, body: new Uint8Array(1) }],
        3000,
      ),
    ).toEqual([{ ok: true, ts: 1000, duplicate: true, notify: [] }]);
    // A receipt finds a sender's message by id, and a group message's version came along.
    await store.append(
      [
        { kind: 'receipt', from: bob1, id: 'r1', to: 'alice', status: 'read', ids: ['m1'] },
        { kind: 'receipt', from: carol1, id: 'r2', to: 'alice', status: 'read', ids: ['gm'] },
      ],
      3001,
    );
    const reads = (await store.readInbox(alice1, 0, 100)).flatMap((e) =>
      e.kind === 'status' && e.status === 'read' ? [`${e.by}: ${e.ids.join()}`] : [],
    );
    expect(reads).toEqual(['bob: m1', 'carol: gm']);
    await store.close();
  });

  it('claimKeys (for one user or for every user of a kget frame) and putKeys are one transaction each, and a refused upload writes nothing', async () => {
    const db = new Database(freshFile());
    const { wrapped, log } = recording(db);
    const store = sqliteServerStore({ database: wrapped });
    for (const d of [alice1, bob1, bob2]) await store.registerDevice(d, 1);
    log.begins = log.commits = 0;
    log.autocommitWrites.length = 0;
    await store.putKeys(bob1, keys(2, [1, 2, 3, 4]));
    await store.putKeys(bob2, keys(3));
    expect(log).toEqual({ begins: 2, commits: 2, autocommitWrites: [] });
    log.begins = log.commits = 0;
    expect((await store.claimKeys('bob')).map((b) => b.device)).toEqual(['b1', 'b2']);
    expect(log).toEqual({ begins: 1, commits: 1, autocommitWrites: [] });
    log.begins = log.commits = 0;
    const many = await store.claimKeys(['carol', 'bob', 'alice', 'dave']);
    expect(many.map((b) => `${b.user}/${b.device}`)).toEqual(['bob/b1', 'bob/b2']);
    expect(log).toEqual({ begins: 1, commits: 1, autocommitWrites: [] });
    const count = (table: string) =>
      (db.prepare(`SELECT count(*) AS n FROM ${table}`).get() as { n: number }).n;
    const before = [count('device_keys'), count('prekeys'), count('kyber_prekeys')];
    // A re-install without a signed prekey, and keys of an unregistered device, are refused whole.
    const { signedPreKey: _s, ...partial } = keys(9, [7]);
    await expect(store.putKeys(bob1, partial)).rejects.toThrow(/signed prekey/);
    await expect(store.putKeys({ user: 'bob', device: 'b9' }, keys(9))).rejects.toThrow(/register/);
    expect([count('device_keys'), count('prekeys'), count('kyber_prekeys')]).toEqual(before);
    expect(await store.keyCount(bob1)).toEqual({ preKeys: 2, kyberPreKeys: 0 }); // two claims took two
    await store.close();
    db.close();
  });

  it('two connections on one file never hand out the same one-time key', async () => {
    const file = freshFile();
    const one = sqliteServerStore({ path: file });
    const two = sqliteServerStore({ path: file });
    await one.registerDevice(bob1, 1);
    await one.putKeys(
      bob1,
      keys(
        2,
        Array.from({ length: 30 }, (_, i) => i + 1),
      ),
    );
    const claims = await Promise.all(
      Array.from({ length: 40 }, (_, i) => (i % 2 === 0 ? one : two).claimKeys('bob', 'b1')),
    );
    const handed = claims.flat().flatMap((b) => (b.preKey ? [b.preKey.id] : []));
    expect(handed.length).toBe(30);
    expect(new Set(handed).size).toBe(30);
    expect(await two.keyCount(bob1)).toEqual({ preKeys: 0, kyberPreKeys: 0 });
    await one.close();
    await two.close();
  });

  it('a 1:1 message with one entry is that entry alone, one with two entries shares one body, and acks leave no row behind', async () => {
    const file = freshFile();
    const store = sqliteServerStore({ path: file });
    for (const d of [alice1, bob1]) await store.registerDevice(d, 1);
    const look = peek(file);
    await store.append([msg('m1')], 1000);
    expect(look.count('messages')).toBe(0); // bob has one device: the entry holds it all
    // What a store from before step 14 on the same file reads of it: a reference to no body, which
    // its read skips (the entry waits for a newer store), never a status entry.
    expect(
      look.db
        .prepare('SELECT i.message, m.from_user FROM inbox i LEFT JOIN messages m ON m.id = i.message')
        .all(),
    ).toEqual([{ message: 0, from_user: null }]);
    const [one] = await store.readInbox(bob1, 0, 10);
    expect(one).toMatchObject({ kind: 'msg', id: 'm1', from: alice1, to: 'bob', seq: 1, ts: 1000 });
    expect(new TextDecoder().decode((one as { body: Uint8Array }).body)).toBe('m1');
    await store.registerDevice(bob2, 1001);
    await store.append([msg('m2', 2)], 1002);
    expect(look.db.prepare('SELECT refs FROM messages').all()).toEqual([{ refs: 2 }]);
    // The sender hears `delivered` once per user, whichever form the message was stored in.
    const told = [await store.ack(bob1, [one!.offset, 2], 1003), await store.ack(bob2, [1], 1004)].flatMap(
      (r) => r.entries ?? [],
    );
    expect(told.map((e) => e.entry)).toMatchObject([
      { kind: 'status', status: 'delivered', ids: ['m1', 'm2'] },
    ]);
    expect(look.count('messages') + look.count('delivered')).toBe(0);
    expect(usageDrift(file)).toEqual([]);
    look.close();
    await store.close();
  });

  it('a message stored in its entry as stop 42 wrote it (message NULL) is read, acked and told like one written today', async () => {
    const file = freshFile();
    const store = sqliteServerStore({ path: file });
    for (const d of [alice1, bob1]) await store.registerDevice(d, 1);
    await store.append([msg('m1')], 1000);
    await store.close();
    const db = new Database(file);
    db.exec('UPDATE inbox SET message = NULL WHERE msg_id IS NOT NULL');
    db.close();
    const again = sqliteServerStore({ path: file });
    const [one] = await again.readInbox(bob1, 0, 10);
    expect(one).toMatchObject({ kind: 'msg', id: 'm1', from: alice1, to: 'bob', seq: 1 });
    const told = (await again.ack(bob1, [one!.offset], 1001)).entries ?? [];
    expect(told.map((e) => e.entry)).toMatchObject([{ kind: 'status', status: 'delivered', ids: ['m1'] }]);
    expect(await again.readInbox(bob1, 0, 10)).toEqual([]);
    expect(usageDrift(file)).toEqual([]);
    await again.close();
  });

  it('an end-to-end encrypted message stores no shared body, and each envelope goes with its entry', async () => {
    const file = freshFile();
    const store = sqliteServerStore({ path: file });
    for (const [i, d] of [alice1, bob1, bob2].entries()) {
      await store.registerDevice(d, 1);
      await store.putKeys(d, keys(i + 1)); // registration ids 1, 2, 3
    }
    await store.append(
      [
        sealed('m1', [
          { ...bob1, rid: 2 },
          { ...bob2, rid: 3 },
        ]),
      ],
      1000,
    );
    const look = peek(file);
    const bodies = () =>
      look.db
        .prepare('SELECT body FROM inbox WHERE body IS NOT NULL ORDER BY dev')
        .all()
        .map((r) => text((r as { body: Uint8Array }).body));
    expect(look.db.prepare('SELECT length(body) AS n, refs FROM messages').all()).toEqual([
      { n: 0, refs: 2 },
    ]);
    expect(bodies()).toEqual(['m1 for b1', 'm1 for b2']);
    expect(await store.unregisterDevice(bob1)).toBe(true);
    expect(bodies()).toEqual(['m1 for b2']);
    expect(look.count('device_keys')).toBe(2); // the unlinked device's keys went with it
    expect(look.db.prepare('SELECT DISTINCT dev FROM prekeys').all()).toEqual([{ dev: 1 }, { dev: 3 }]);
    await store.ack(bob2, [1], 2000);
    expect(bodies()).toEqual([]);
    expect(look.count('messages')).toBe(0);
    look.close();
    await store.close();
  });

  it('bigint-defaulting connections still give numbers', async () => {
    const db = new Database(freshFile());
    db.defaultSafeIntegers(true);
    const store = sqliteServerStore({ database: db });
    for (const d of [alice1, bob1]) await store.registerDevice(d, 1);
    await store.append([msg('m1')], 1000);
    const [e] = await store.readInbox(bob1, 0, 10);
    expect(e).toMatchObject({ offset: 1, ts: 1000, seq: 1 });
    expect(typeof e!.offset).toBe('number');
    await store.close();
    db.close();
  });
});

describe('sqlite client store', () => {
  it('runs in WAL mode with synchronous=FULL; migrations are idempotent', async () => {
    const file = freshFile();
    const first = sqliteClientStore({ path: file });
    await first.enqueue(draft('o1'), true);
    await first.close();
    const db = new Database(file);
    const second = sqliteClientStore({ database: db });
    expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
    expect(db.pragma('synchronous', { simple: true })).toBe(2);
    expect(db.pragma('user_version', { simple: true })).toBe(SQLITE_CLIENT_SCHEMA_VERSION);
    expect((await second.enqueue(draft('o2'), true)).seq).toBe(2);
    await second.close();
    expect(db.open).toBe(true);
    db.close();
  });

  it('an enqueue that fails does not burn a sequence number', async () => {
    const store = sqliteClientStore({ path: freshFile() });
    await store.enqueue(draft('m1'), true);
    await expect(store.enqueue(draft('m1'), true)).rejects.toThrow(/already/);
    expect((await store.enqueue(draft('m2'), true)).seq).toBe(2);
    await store.close();
  });

  it('enqueue and applyInbound are one transaction each', async () => {
    const db = new Database(freshFile());
    const { wrapped, log } = recording(db);
    const store = sqliteClientStore({ database: wrapped });
    log.begins = log.commits = 0;
    await store.enqueue(draft('o1'), true);
    await store.applyInbound({
      insert: {
        id: 'm1',
        conv: 'alice',
        from: 'alice',
        fromDevice: 'a1',
        to: 'me',
        seq: 2,
        ts: 1,
        body: new Uint8Array([1]),
        held: true,
        read: false,
      },
      streams: [{ key: 'alice/a1', next: 1 }],
    });
    await store.applyInbound({ release: ['m1'], streams: [{ key: 'alice/a1', next: 3 }] });
    expect(log).toEqual({ begins: 3, commits: 3, autocommitWrites: [] });
    await store.close();
    db.close();
  });
});

describe('the migration runner', () => {
  it('applies only the missing steps, each once', () => {
    const db = new Database(freshFile());
    const applied: string[] = [];
    const step = (name: string) => (d: SqliteDatabase) => {
      applied.push(name);
      d.exec(`CREATE TABLE ${name} (x)`);
    };
    expect(migrate(db, [step('a')], 'test')).toBe(1);
    expect(migrate(db, [step('a'), step('b')], 'test')).toBe(2);
    expect(migrate(db, [step('a'), step('b')], 'test')).toBe(2);
    expect(applied).toEqual(['a', 'b']);
    expect(db.pragma('user_version', { simple: true })).toBe(2);
    db.close();
  });

  it('a failing step leaves the database at the previous version', () => {
    const db = new Database(freshFile());
    const bad = (d: SqliteDatabase) => {
      d.exec('CREATE TABLE half (x)');
      throw new Error('boom');
    };
    expect(() => migrate(db, [(d) => d.exec('CREATE TABLE ok (x)'), bad], 'test')).toThrow('boom');
    expect(db.pragma('user_version', { simple: true })).toBe(1);
    expect(db.prepare("SELECT name FROM sqlite_master WHERE name = 'half'").get()).toBeUndefined();
    db.close();
  });
});
