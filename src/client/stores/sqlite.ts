/**
 * The SQLite {@link ClientStore} (`postbox/client/sqlite`) for Node clients: bots, Electron
 * main processes, CLIs. Built on `better-sqlite3` (an optional peer dependency: install it to use
 * this subpath). Not for browsers; use the IndexedDB store there.
 *
 * The connection runs with `journal_mode=WAL` and `synchronous=FULL`: an entry is on disk when
 * `enqueue` resolves, so a message the app saw as queued survives a crash or power loss. The
 * sequence number is taken in the same transaction as the outbox insert, and every
 * `applyInbound` is one transaction.
 *
 * **Schema** (version {@link SQLITE_CLIENT_SCHEMA_VERSION}, in `PRAGMA user_version`):
 *
 * | table | columns | purpose |
 * | --- | --- | --- |
 * | `seqs` | `conv`, `last` | last sequence number handed out per conversation |
 * | `outbox` | `n` (rowid: enqueue order), `id` (unique), `kind`, `to_user`, `conv`, `body`, `ids`, `created_at`, `seq`, `status` | outgoing items; indexes by `(conv, n)` and a partial index of the pending ones |
 * | `inbound` | `n` (rowid: arrival order), `from_user`, `from_device`, `id`, `conv`, `to_user`, `seq`, `ts`, `body`, `held`, `read` | received messages; unique `(from_user, from_device, id)`; indexes by `(conv, n)`, by `id`, and a partial index of the held ones |
 * | `streams` | `key`, `next` | next expected sequence per stream |
 * | `state` | `ns`, `key`, `value` | state namespaces (group views, member receipts, adapters); primary key `(ns, key)`; `WITHOUT ROWID` |
 *
 * @packageDocumentation
 */
import Database from 'better-sqlite3';
import type {
  ClientStore,
  InboundChange,
  InboundMessage,
  MessageStatus,
  OutboxDraft,
  OutboxEntry,
  StateWrite,
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

/**
 * Options of {@link sqliteClientStore}: either `path` (the store opens the file and closes it on
 * `close()`) or `database` (an open `better-sqlite3` database the caller keeps owning), plus the
 * connection knobs.
 */
export type SqliteClientStoreOptions = SqliteSource & SqliteConnectionOptions;

const LABEL = 'sqlite client store';

const MIGRATIONS: readonly SqliteMigration[] = [
  // 1: the initial schema.
  (db) =>
    db.exec(`
      CREATE TABLE seqs (
        conv TEXT PRIMARY KEY,
        last INTEGER NOT NULL
      ) WITHOUT ROWID;
      CREATE TABLE outbox (
        n INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        to_user TEXT NOT NULL,
        conv TEXT NOT NULL,
        body BLOB,
        ids TEXT,
        created_at INTEGER NOT NULL,
        seq INTEGER,
        status TEXT NOT NULL
      );
      CREATE INDEX outbox_conv ON outbox (conv, n);
      CREATE INDEX outbox_pending ON outbox (n) WHERE status = 'pending';
      CREATE TABLE inbound (
        n INTEGER PRIMARY KEY,
        from_user TEXT NOT NULL,
        from_device TEXT NOT NULL,
        id TEXT NOT NULL,
        conv TEXT NOT NULL,
        to_user TEXT NOT NULL,
        seq INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        body BLOB NOT NULL,
        held INTEGER NOT NULL,
        read INTEGER NOT NULL,
        UNIQUE (from_user, from_device, id)
      );
      CREATE INDEX inbound_conv ON inbound (conv, n);
      CREATE INDEX inbound_id ON inbound (id);
      CREATE INDEX inbound_held ON inbound (n) WHERE held = 1;
      CREATE TABLE streams (
        key TEXT PRIMARY KEY,
        next INTEGER NOT NULL
      ) WITHOUT ROWID;
    `),
  // 2: state namespaces (group views, per-member receipts, adapters' state).
  (db) =>
    db.exec(`
      CREATE TABLE state (
        ns TEXT NOT NULL,
        key TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (ns, key)
      ) WITHOUT ROWID;
    `),
];

/** The `PRAGMA user_version` of a database the SQLite client store has fully migrated. */
export const SQLITE_CLIENT_SCHEMA_VERSION: number = MIGRATIONS.length;

interface OutboxRow {
  id: string;
  kind: 'msg' | 'read' | 'group' | 'ctl';
  to_user: string;
  conv: string;
  body: Uint8Array | null;
  ids: string | null;
  created_at: number;
  seq: number | null;
  status: MessageStatus;
}

interface InboundRow {
  id: string;
  conv: string;
  from_user: string;
  from_device: string;
  to_user: string;
  seq: number;
  ts: number;
  body: Uint8Array;
  held: number;
  read: number;
}

const OUTBOX_COLUMNS = 'id, kind, to_user, conv, body, ids, created_at, seq, status';
const INBOUND_COLUMNS = 'id, conv, from_user, from_device, to_user, seq, ts, body, held, read';

/** A view of the caller's bytes for binding; SQLite copies them. */
const bindBytes = (b: Uint8Array): Buffer => Buffer.from(b.buffer, b.byteOffset, b.byteLength);

function toOutbox(r: OutboxRow): OutboxEntry {
  const e: OutboxEntry = {
    id: r.id,
    kind: r.kind,
    to: r.to_user,
    conv: r.conv,
    createdAt: r.created_at,
    status: r.status,
  };
  if (r.body !== null) e.body = new Uint8Array(r.body);
  if (r.ids !== null) e.ids = JSON.parse(r.ids) as string[];
  if (r.seq !== null) e.seq = r.seq;
  return e;
}

function toInbound(r: InboundRow): InboundMessage {
  return {
    id: r.id,
    conv: r.conv,
    from: r.from_user,
    fromDevice: r.from_device,
    to: r.to_user,
    seq: r.seq,
    ts: r.ts,
    body: new Uint8Array(r.body),
    held: r.held !== 0,
    read: r.read !== 0,
  };
}

/**
 * A {@link ClientStore} in a SQLite database (see the module header for the schema). Pass `path`
 * to let the store open (and later close) the file, or `database` to hand it a `better-sqlite3`
 * connection you keep owning.
 *
 * Choices where the contract is silent, as in the memory store: enqueueing an id that is already
 * in the outbox rejects and changes nothing; `setStatus` of an unknown id is ignored.
 *
 * @example
 * ```ts
 * import { sqliteClientStore } from 'postbox/client/sqlite';
 *
 * const store = sqliteClientStore({ path: './bot-state.db' });
 * ```
 */
export function sqliteClientStore(
  options: SqliteClientStoreOptions,
): ClientStore & { readonly name: 'sqlite' } {
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
    nextSeq: q(
      'INSERT INTO seqs (conv, last) VALUES (?, 1) ON CONFLICT (conv) DO UPDATE SET last = last + 1 RETURNING last',
    ),
    outboxHas: q('SELECT 1 FROM outbox WHERE id = ?'),
    outboxInsert: q(
      `INSERT INTO outbox (id, kind, to_user, conv, body, ids, created_at, seq, status)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending')`,
    ),
    pending: q(`SELECT ${OUTBOX_COLUMNS} FROM outbox WHERE status = 'pending' ORDER BY n`),
    setStatus: q('UPDATE outbox SET status = ? WHERE id = ?'),
    outgoing: q(`SELECT ${OUTBOX_COLUMNS} FROM outbox WHERE id = ?`),
    outgoingIn: q(`SELECT ${OUTBOX_COLUMNS} FROM outbox WHERE conv = ? ORDER BY n`),
    inboundHas: q('SELECT 1 FROM inbound WHERE from_user = ? AND from_device = ? AND id = ?'),
    inboundInsert: q(
      `INSERT INTO inbound (from_user, from_device, id, conv, to_user, seq, ts, body, held, read)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ),
    release: q('UPDATE inbound SET held = 0 WHERE id = ? AND held = 1'),
    setStream: q(
      'INSERT INTO streams (key, next) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET next = excluded.next',
    ),
    streamNext: q('SELECT next FROM streams WHERE key = ?'),
    held: q(`SELECT ${INBOUND_COLUMNS} FROM inbound WHERE held = 1 ORDER BY n`),
    inbound: q(`SELECT ${INBOUND_COLUMNS} FROM inbound WHERE conv = ? ORDER BY n`),
    markRead: q('UPDATE inbound SET read = 1 WHERE id = ?'),
    getState: q('SELECT value FROM state WHERE ns = ? AND key = ?'),
    putState: q(
      'INSERT INTO state (ns, key, value) VALUES (?, ?, ?) ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value',
    ),
    deleteState: q('DELETE FROM state WHERE ns = ? AND key = ?'),
    // Keys in [prefix, prefix + U+FFFF): the prefix's range in the primary key, no LIKE escaping.
    listState: q('SELECT key, value FROM state WHERE ns = ? AND key >= ? AND key < ? ORDER BY key'),
  };

  let closed = false;
  function check(): void {
    if (closed) throw new Error(`${LABEL}: the store is closed`);
  }

  return {
    name: 'sqlite',

    async enqueue(draft: OutboxDraft, sequenced: boolean): Promise<OutboxEntry> {
      check();
      return tx(() => {
        if (sql.outboxHas.get(draft.id)) {
          throw new Error(`${LABEL}: outbox id ${draft.id} is already enqueued`);
        }
        // The number is taken in the transaction that stores the entry: a crash keeps both or neither.
        const seq = sequenced ? (sql.nextSeq.get(draft.conv) as { last: number }).last : undefined;
        sql.outboxInsert.run(
          draft.id,
          draft.kind,
          draft.to,
          draft.conv,
          draft.body === undefined ? null : bindBytes(draft.body),
          draft.ids === undefined ? null : JSON.stringify(draft.ids),
          draft.createdAt,
          seq ?? null,
        );
        const entry: OutboxEntry = {
          id: draft.id,
          kind: draft.kind,
          to: draft.to,
          conv: draft.conv,
          createdAt: draft.createdAt,
          status: 'pending',
        };
        if (draft.body !== undefined) entry.body = new Uint8Array(draft.body);
        if (draft.ids !== undefined) entry.ids = [...draft.ids];
        if (seq !== undefined) entry.seq = seq;
        return entry;
      });
    },

    async pending(): Promise<OutboxEntry[]> {
      check();
      return (sql.pending.all() as OutboxRow[]).map(toOutbox);
    },

    async setStatus(id: string, status: MessageStatus): Promise<void> {
      check();
      sql.setStatus.run(status, id);
    },

    async outgoing(id: string): Promise<OutboxEntry | undefined> {
      check();
      const r = sql.outgoing.get(id) as OutboxRow | undefined;
      return r && toOutbox(r);
    },

    async applyInbound(change: InboundChange): Promise<{ inserted: boolean }> {
      check();
      return tx(() => {
        let inserted = false;
        const m = change.insert;
        if (m) {
          // A duplicate applies nothing of the change; the empty transaction commits nothing.
          if (sql.inboundHas.get(m.from, m.fromDevice, m.id)) return { inserted: false };
          sql.inboundInsert.run(
            m.from,
            m.fromDevice,
            m.id,
            m.conv,
            m.to,
            m.seq,
            m.ts,
            bindBytes(m.body),
            m.held ? 1 : 0,
            m.read ? 1 : 0,
          );
          inserted = true;
        }
        for (const id of change.release ?? []) sql.release.run(id);
        for (const s of change.streams ?? []) sql.setStream.run(s.key, s.next);
        return { inserted };
      });
    },

    async streamNext(key: string): Promise<number | undefined> {
      check();
      return (sql.streamNext.get(key) as { next: number } | undefined)?.next;
    },

    async held(): Promise<InboundMessage[]> {
      check();
      return (sql.held.all() as InboundRow[]).map(toInbound);
    },

    async inbound(conv: string): Promise<InboundMessage[]> {
      check();
      return (sql.inbound.all(conv) as InboundRow[]).map(toInbound);
    },

    async outgoingIn(conv: string): Promise<OutboxEntry[]> {
      check();
      return (sql.outgoingIn.all(conv) as OutboxRow[]).map(toOutbox);
    },

    async markRead(ids: string[]): Promise<void> {
      check();
      if (ids.length === 0) return;
      tx(() => {
        for (const id of ids) sql.markRead.run(id);
      });
    },

    async getState(ns: string, key: string): Promise<Uint8Array | undefined> {
      check();
      const row = sql.getState.get(ns, key) as { value: Uint8Array } | undefined;
      return row && new Uint8Array(row.value);
    },

    async putState(writes: StateWrite[]): Promise<void> {
      check();
      if (writes.length === 0) return;
      tx(() => {
        for (const w of writes) {
          if (w.value === undefined) sql.deleteState.run(w.ns, w.key);
          else sql.putState.run(w.ns, w.key, bindBytes(w.value));
        }
      });
    },

    async listState(ns: string, prefix = ''): Promise<Array<{ key: string; value: Uint8Array }>> {
      check();
      const rows = sql.listState.all(ns, prefix, `${prefix}\uffff`) as Array<{
        key: string;
        value: Uint8Array;
      }>;
      return rows.map((r) => ({ key: r.key, value: new Uint8Array(r.value) }));
    },

    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      if (owned) db.close();
    },
  };
}
