/**
 * The SQLite {@link ServerStore} (`postbox/server/sqlite`): the embedded default for a
 * single-process server, on `better-sqlite3` (an optional peer dependency: install it to use
 * this subpath).
 *
 * **Ack means durable.** The connection runs with `journal_mode=WAL` and `synchronous=FULL`, so
 * `append` resolves only after its transaction has committed and the WAL has been fsynced: a
 * message the server acked survives `kill -9` and power loss. Each `append(batch)` is exactly one
 * `BEGIN IMMEDIATE … COMMIT` transaction: the server engine batches concurrent sends into one
 * call, so a batch costs one fsync, not one per message (group commit).
 *
 * **Schema** (version {@link SQLITE_SERVER_SCHEMA_VERSION}, kept in `PRAGMA user_version` and
 * reached by migration steps applied in one transaction each):
 *
 * | table | columns | purpose |
 * | --- | --- | --- |
 * | `devices` | `id` (rowid), `user`, `device`, `registered_at`, `last_offset` | registration order; the per-device offset counter; unique `(user, device)` |
 * | `messages` | `id` (rowid), `from_user`, `from_device`, `msg_id`, `to_user`, `seq`, `ts`, `body`, `refs`, `state` | each body stored once; `refs` counts inbox entries pointing at it; `state` 0 undelivered, 1 delivered (a recipient device acked), 2 sender told expired |
 * | `inbox` | `dev`, `pos`, `ts`, `message` or (`status`, `ids`, `by_user`) | one row per entry; primary key `(dev, pos)` = (device, offset); `WITHOUT ROWID` |
 * | `dedupe` | `from_user`, `from_device`, `msg_id`, `ts` | one record per committed item; primary key `(from_user, from_device, msg_id)`; `WITHOUT ROWID` |
 *
 * Indexes: `inbox` by `(dev, pos)` (reads and acks; `dev` is the `devices` row of `(user, device)`),
 * `inbox_ts` and `dedupe_ts` (expiry), `dedupe` by its key (dedupe), `devices` by `(user, device)`.
 * A trigger on inbox deletes decrements `messages.refs` and deletes the body with its last
 * reference, so no delete path can leak or drop a body. No foreign keys are declared (the trigger
 * keeps `inbox` and `messages` consistent, and a foreign key from `inbox.message` would cost an
 * extra index for every body delete), so the connection's `foreign_keys` setting does not matter.
 *
 * @packageDocumentation
 */
import Database from 'better-sqlite3';
import type {
  AppendInput,
  AppendOutcome,
  DeviceAddress,
  EntryStatus,
  InboxEntry,
  NotifyResult,
  ServerStore,
} from '../store.js';
import {
  openStoreDatabase,
  prepareNumeric,
  transactor,
  type SqliteConnectionOptions,
  type SqliteMigration,
  type SqliteSource,
} from '../../util/sqlite.js';

export type {
  SqliteConnectionOptions,
  SqliteDatabase,
  SqliteRunResult,
  SqliteSource,
  SqliteStatement,
} from '../../util/sqlite.js';

/** Options of {@link sqliteServerStore} besides where the data lives. */
export interface SqliteServerStoreTuning extends SqliteConnectionOptions {
  /**
   * Most inbox entries one expiry transaction removes (and, separately, most dedupe records).
   * Expiry loops over such batches, committing each and yielding to the event loop in between,
   * so a large backlog never holds the write lock (or the event loop) for long.
   * @default 1000
   */
  expiryBatchSize?: number;
}

/**
 * Options of {@link sqliteServerStore}: either `path` (the store opens the file and closes it on
 * `close()`) or `database` (an open `better-sqlite3` database the caller keeps owning), plus the
 * {@link SqliteServerStoreTuning} knobs.
 */
export type SqliteServerStoreOptions = SqliteSource & SqliteServerStoreTuning;

const LABEL = 'sqlite server store';

const MIGRATIONS: readonly SqliteMigration[] = [
  // 1: the initial schema.
  (db) =>
    db.exec(`
      CREATE TABLE devices (
        id INTEGER PRIMARY KEY,
        user TEXT NOT NULL,
        device TEXT NOT NULL,
        registered_at INTEGER NOT NULL,
        last_offset INTEGER NOT NULL DEFAULT 0,
        UNIQUE (user, device)
      );
      CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        from_user TEXT NOT NULL,
        from_device TEXT NOT NULL,
        msg_id TEXT NOT NULL,
        to_user TEXT NOT NULL,
        seq INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        body BLOB NOT NULL,
        refs INTEGER NOT NULL,
        state INTEGER NOT NULL DEFAULT 0
      );
      CREATE TABLE inbox (
        dev INTEGER NOT NULL,
        pos INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        message INTEGER,
        status TEXT,
        ids TEXT,
        by_user TEXT,
        PRIMARY KEY (dev, pos)
      ) WITHOUT ROWID;
      CREATE INDEX inbox_ts ON inbox (ts);
      CREATE TABLE dedupe (
        from_user TEXT NOT NULL,
        from_device TEXT NOT NULL,
        msg_id TEXT NOT NULL,
        ts INTEGER NOT NULL,
        PRIMARY KEY (from_user, from_device, msg_id)
      ) WITHOUT ROWID;
      CREATE INDEX dedupe_ts ON dedupe (ts);
      CREATE TRIGGER inbox_unref AFTER DELETE ON inbox WHEN old.message IS NOT NULL BEGIN
        UPDATE messages SET refs = refs - 1 WHERE id = old.message;
        DELETE FROM messages WHERE id = old.message AND refs <= 0;
      END;
    `),
];

/** The `PRAGMA user_version` of a database the SQLite server store has fully migrated. */
export const SQLITE_SERVER_SCHEMA_VERSION: number = MIGRATIONS.length;

/** `messages.state` values. */
const UNDELIVERED = 0;
const DELIVERED = 1;
const TOLD_EXPIRED = 2;

interface DeviceRow {
  id: number;
  device: string;
}

interface InboxRow {
  pos: number;
  ts: number;
  message: number | null;
  status: string | null;
  ids: string | null;
  by_user: string | null;
  from_user: string | null;
  from_device: string | null;
  msg_id: string | null;
  to_user: string | null;
  seq: number | null;
  mts: number | null;
  body: Uint8Array | null;
}

/** An inbox entry with what ack and expiry need to know about its message. */
interface EntryRow {
  dev: number;
  pos: number;
  message: number | null;
  from_user: string | null;
  msg_id: string | null;
  to_user: string | null;
  state: number | null;
}

/** An ack waiting for the next group commit. */
interface PendingAck {
  device: DeviceAddress;
  offsets: number[];
  now: number;
  resolve(result: NotifyResult): void;
  reject(error: unknown): void;
}

/** Status groups: one status entry per group goes to every device of `user`. */
type Groups = Map<string, { user: string; by: string; ids: string[] }>;

// Length-prefixed so that no two different tuples share a key.
const deviceKey = (d: DeviceAddress): string => `${d.user.length}:${d.user}${d.device}`;

/** Collects devices that got new entries, each once, in first-seen order. */
class NotifySet {
  private readonly seen = new Set<string>();
  readonly list: DeviceAddress[] = [];
  add(d: DeviceAddress): void {
    const k = deviceKey(d);
    if (this.seen.has(k)) return;
    this.seen.add(k);
    this.list.push({ user: d.user, device: d.device });
  }
}

/** A view of the caller's bytes for binding; SQLite copies them. */
const bindBytes = (b: Uint8Array): Buffer => Buffer.from(b.buffer, b.byteOffset, b.byteLength);

const yieldToEventLoop = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/**
 * A {@link ServerStore} in a SQLite database (see the module header for the schema and the
 * durability settings). Pass `path` to let the store open (and later close) the file, or
 * `database` to hand it a `better-sqlite3` connection you keep owning.
 *
 * The store is meant to be the only writer of its tables; several stores (or processes) on one
 * file stay correct, because every write is a `BEGIN IMMEDIATE` transaction, but serialise on
 * SQLite's single write lock.
 *
 * @example
 * ```ts
 * import { createServer } from 'postbox/server';
 * import { sqliteServerStore } from 'postbox/server/sqlite';
 *
 * const store = sqliteServerStore({ path: '/var/lib/myapp/postbox.db' });
 * const server = createServer({ store, authenticate });
 * ```
 */
export function sqliteServerStore(
  options: SqliteServerStoreOptions,
): ServerStore & { readonly name: 'sqlite' } {
  const expiryBatchSize = options.expiryBatchSize ?? 1000;
  if (!Number.isInteger(expiryBatchSize) || expiryBatchSize < 1) {
    throw new RangeError(`${LABEL}: expiryBatchSize must be a positive integer, got ${expiryBatchSize}`);
  }
  const { db, owned } = openStoreDatabase(
    options,
    (path) => new Database(path),
    MIGRATIONS,
    LABEL,
    options.busyTimeoutMs ?? 5000,
  );
  const tx = transactor(db);
  const q = (sql: string) => prepareNumeric(db, sql);
  const sql = {
    insertDevice: q(
      'INSERT INTO devices (user, device, registered_at) VALUES (?, ?, ?) ON CONFLICT (user, device) DO NOTHING',
    ),
    devicesOf: q('SELECT id, device FROM devices WHERE user = ? ORDER BY id'),
    deviceId: q('SELECT id FROM devices WHERE user = ? AND device = ?'),
    lastOffset: q('SELECT last_offset FROM devices WHERE id = ?'),
    setLastOffset: q('UPDATE devices SET last_offset = ? WHERE id = ?'),
    dedupeGet: q('SELECT ts FROM dedupe WHERE from_user = ? AND from_device = ? AND msg_id = ?'),
    dedupeInsert: q('INSERT INTO dedupe (from_user, from_device, msg_id, ts) VALUES (?, ?, ?, ?)'),
    messageInsert: q(
      `INSERT INTO messages (from_user, from_device, msg_id, to_user, seq, ts, body, refs)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
    ),
    entryMessageInsert: q('INSERT INTO inbox (dev, pos, ts, message) VALUES (?, ?, ?, ?)'),
    entryStatusInsert: q('INSERT INTO inbox (dev, pos, ts, status, ids, by_user) VALUES (?, ?, ?, ?, ?, ?)'),
    readInbox: q(
      `SELECT i.pos, i.ts, i.message, i.status, i.ids, i.by_user,
              m.from_user, m.from_device, m.msg_id, m.to_user, m.seq, m.ts AS mts, m.body
       FROM inbox i LEFT JOIN messages m ON m.id = i.message
       WHERE i.dev = (SELECT id FROM devices WHERE user = ? AND device = ?) AND i.pos > ?
       ORDER BY i.pos LIMIT ?`,
    ),
    entryGet: q(
      `SELECT i.dev, i.pos, i.message, m.from_user, m.msg_id, m.to_user, m.state
       FROM inbox i LEFT JOIN messages m ON m.id = i.message WHERE i.dev = ? AND i.pos = ?`,
    ),
    entryDelete: q('DELETE FROM inbox WHERE dev = ? AND pos = ?'),
    setState: q('UPDATE messages SET state = ? WHERE id = ?'),
    expiredEntries: q(
      `SELECT i.dev, i.pos, i.message, m.from_user, m.msg_id, m.to_user, m.state
       FROM inbox i LEFT JOIN messages m ON m.id = i.message
       WHERE i.ts < ? ORDER BY i.ts LIMIT ?`,
    ),
    expireDedupe: q(
      `DELETE FROM dedupe WHERE (from_user, from_device, msg_id) IN
         (SELECT from_user, from_device, msg_id FROM dedupe WHERE ts < ? LIMIT ?)`,
    ),
  };

  let closed = false;
  function check(): void {
    if (closed) throw new Error(`${LABEL}: the store is closed`);
  }

  /**
   * The per-transaction view of device lists and offset counters. Offsets come from the device's
   * `last_offset` row, read once and written back once per transaction. No skip: every write
   * transaction holds SQLite's single write lock from `BEGIN IMMEDIATE` to `COMMIT`, and readers
   * see only committed snapshots, so a transaction that takes offsets commits before any later
   * one can take larger offsets: no reader can pass an offset whose entry is not yet committed.
   */
  function writer() {
    const devices = new Map<string, DeviceRow[]>();
    const last = new Map<number, number>();
    return {
      devicesOf(user: string): DeviceRow[] {
        let list = devices.get(user);
        if (!list) devices.set(user, (list = sql.devicesOf.all(user) as DeviceRow[]));
        return list;
      },
      next(dev: number): number {
        let v = last.get(dev);
        if (v === undefined) v = (sql.lastOffset.get(dev) as { last_offset: number }).last_offset;
        last.set(dev, ++v);
        return v;
      },
      flush(): void {
        for (const [dev, v] of last) sql.setLastOffset.run(v, dev);
      },
    };
  }
  type Writer = ReturnType<typeof writer>;

  function pushStatus(
    w: Writer,
    dev: number,
    now: number,
    status: EntryStatus,
    ids: readonly string[],
    by: string,
  ): void {
    sql.entryStatusInsert.run(dev, w.next(dev), now, status, JSON.stringify(ids), by);
  }

  function commit(w: Writer, item: AppendInput, now: number): AppendOutcome {
    const original = sql.dedupeGet.get(item.from.user, item.from.device, item.id) as
      { ts: number } | undefined;
    if (original) return { ok: true, ts: original.ts, duplicate: true, notify: [] };
    const toDevices = w.devicesOf(item.to);
    if (toDevices.length === 0) return { ok: false, code: 'unknown_recipient' };
    // Every device of `to`, then the sender user's devices, each once, never the sending device.
    const seen = new Set<number>();
    const targets: Array<{ dev: number; addr: DeviceAddress }> = [];
    const add = (user: string, rows: DeviceRow[]) => {
      for (const r of rows) {
        if (seen.has(r.id)) continue;
        seen.add(r.id);
        if (user === item.from.user && r.device === item.from.device) continue;
        targets.push({ dev: r.id, addr: { user, device: r.device } });
      }
    };
    add(item.to, toDevices);
    add(item.from.user, w.devicesOf(item.from.user));
    sql.dedupeInsert.run(item.from.user, item.from.device, item.id, now);
    if (item.kind === 'msg') {
      if (targets.length > 0) {
        const { lastInsertRowid } = sql.messageInsert.run(
          item.from.user,
          item.from.device,
          item.id,
          item.to,
          item.seq,
          now,
          bindBytes(item.body),
          targets.length,
        );
        for (const t of targets) sql.entryMessageInsert.run(t.dev, w.next(t.dev), now, lastInsertRowid);
      }
    } else {
      for (const t of targets) pushStatus(w, t.dev, now, 'read', item.ids, item.from.user);
    }
    return { ok: true, ts: now, duplicate: false, notify: targets.map((t) => t.addr) };
  }

  /** Appends one status per group to every device of the group's user. */
  function fanOut(w: Writer, groups: Groups, status: EntryStatus, now: number, notify: NotifySet): void {
    for (const g of groups.values()) {
      for (const r of w.devicesOf(g.user)) {
        pushStatus(w, r.id, now, status, g.ids, g.by);
        notify.add({ user: g.user, device: r.device });
      }
    }
  }

  function toEntry(r: InboxRow): InboxEntry | undefined {
    if (r.message === null) {
      return {
        offset: r.pos,
        kind: 'status',
        status: r.status as EntryStatus,
        ids: JSON.parse(r.ids ?? '[]') as string[],
        by: r.by_user ?? '',
        ts: r.ts,
      };
    }
    if (r.from_user === null) return undefined; // unreachable: the trigger keeps refs right
    return {
      offset: r.pos,
      kind: 'msg',
      id: r.msg_id!,
      from: { user: r.from_user, device: r.from_device! },
      to: r.to_user!,
      seq: r.seq!,
      ts: r.mts!,
      body: r.body ? new Uint8Array(r.body) : new Uint8Array(0),
    };
  }

  /**
   * One bounded expiry step, in one transaction: removes up to `expiryBatchSize` entries committed
   * before `cutoff`, and tells the senders of the undelivered messages among them `expired`. The
   * `state` flag (not a per-call set) makes "once per message" hold across steps.
   */
  function expireStep(cutoff: number, now: number, notify: NotifySet): number {
    return tx(() => {
      const w = writer();
      const rows = sql.expiredEntries.all(cutoff, expiryBatchSize) as EntryRow[];
      const expired: Groups = new Map();
      const told = new Set<number>();
      for (const r of rows) {
        sql.entryDelete.run(r.dev, r.pos);
        if (r.message === null || r.from_user === null || r.state !== UNDELIVERED) continue;
        if (r.to_user === r.from_user || told.has(r.message)) continue;
        told.add(r.message);
        sql.setState.run(TOLD_EXPIRED, r.message); // no-op when that was its last reference
        const gk = `${r.from_user.length}:${r.from_user}${r.to_user}`;
        let g = expired.get(gk);
        if (!g) expired.set(gk, (g = { user: r.from_user, by: r.to_user!, ids: [] }));
        g.ids.push(r.msg_id!);
      }
      fanOut(w, expired, 'expired', now, notify);
      w.flush();
      return rows.length;
    });
  }

  /** Acks waiting for the next group commit. */
  let pendingAcks: PendingAck[] = [];

  /** One device's ack inside a running transaction: deletes the entries, queues `delivered`. */
  function ackIn(w: Writer, a: PendingAck, notify: NotifySet): number {
    const row = sql.deviceId.get(a.device.user, a.device.device) as { id: number } | undefined;
    if (!row) return 0;
    let count = 0;
    // sender user → ids newly delivered to this (recipient) user
    const delivered: Groups = new Map();
    for (const offset of a.offsets) {
      const e = sql.entryGet.get(row.id, offset) as EntryRow | undefined;
      if (!e) continue;
      sql.entryDelete.run(row.id, offset);
      count++;
      if (e.message === null || e.from_user === null || e.state !== UNDELIVERED) continue;
      if (e.to_user !== a.device.user || e.from_user === a.device.user) continue;
      sql.setState.run(DELIVERED, e.message); // no-op when that was its last reference
      let g = delivered.get(e.from_user);
      if (!g) delivered.set(e.from_user, (g = { user: e.from_user, by: a.device.user, ids: [] }));
      g.ids.push(e.msg_id!);
    }
    fanOut(w, delivered, 'delivered', a.now, notify);
    return count;
  }

  /** Commits every pending ack in one transaction; all of them fail together if it fails. */
  function flushAcks(): void {
    const batch = pendingAcks;
    pendingAcks = [];
    if (batch.length === 0) return; // close() flushed them already
    let results: NotifyResult[];
    try {
      results = tx(() => {
        const w = writer();
        const out = batch.map((a) => {
          const notify = new NotifySet();
          const count = ackIn(w, a, notify);
          return { count, notify: notify.list };
        });
        w.flush();
        return out;
      });
    } catch (e) {
      for (const a of batch) a.reject(e);
      return;
    }
    batch.forEach((a, i) => a.resolve(results[i]!));
  }

  return {
    name: 'sqlite',

    async registerDevice(device: DeviceAddress, now: number): Promise<void> {
      check();
      sql.insertDevice.run(device.user, device.device, now);
    },

    async devices(user: string): Promise<string[]> {
      check();
      return (sql.devicesOf.all(user) as DeviceRow[]).map((r) => r.device);
    },

    async append(batch: AppendInput[], now: number): Promise<AppendOutcome[]> {
      check();
      if (batch.length === 0) return [];
      // One transaction for the whole batch: one WAL fsync at COMMIT (group commit).
      return tx(() => {
        const w = writer();
        const outcomes = batch.map((item) => commit(w, item, now));
        w.flush();
        return outcomes;
      });
    },

    async readInbox(device: DeviceAddress, after: number, limit: number): Promise<InboxEntry[]> {
      check();
      if (limit <= 0) return [];
      // SQLite wants an integer LIMIT; -1 means none (the memory store reads on for NaN too).
      const max = Number.isNaN(limit) ? -1 : Math.min(Math.ceil(limit), Number.MAX_SAFE_INTEGER);
      const rows = sql.readInbox.all(device.user, device.device, after, max) as InboxRow[];
      const out: InboxEntry[] = [];
      for (const r of rows) {
        const e = toEntry(r);
        if (e) out.push(e);
      }
      return out;
    },

    async ack(device: DeviceAddress, offsets: number[], now: number): Promise<NotifyResult> {
      check();
      if (offsets.length === 0) return { count: 0, notify: [] };
      // Group commit for acks: every ack called in this turn of the event loop joins one
      // transaction (one fsync), committed on the next turn; each caller gets its own result.
      return new Promise<NotifyResult>((resolve, reject) => {
        pendingAcks.push({ device, offsets, now, resolve, reject });
        if (pendingAcks.length === 1) setImmediate(flushAcks);
      });
    },

    async expire(cutoff: number, now: number): Promise<NotifyResult> {
      check();
      const notify = new NotifySet();
      let count = 0;
      // Bounded steps, each its own transaction, with the event loop free in between. A store
      // closed mid-way stops early; the rest expires on the next call.
      for (;;) {
        const removed = expireStep(cutoff, now, notify);
        count += removed;
        if (removed < expiryBatchSize) break;
        await yieldToEventLoop();
        if (closed) return { count, notify: notify.list };
      }
      for (;;) {
        const { changes } = sql.expireDedupe.run(cutoff, expiryBatchSize);
        if (changes < expiryBatchSize) break;
        await yieldToEventLoop();
        if (closed) break;
      }
      return { count, notify: notify.list };
    },

    async close(): Promise<void> {
      if (closed) return;
      // Acks already accepted are committed before the file closes.
      flushAcks();
      closed = true;
      if (owned) db.close();
    },
  };
}
