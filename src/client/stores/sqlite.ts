/**
 * The SQLite {@link ClientStore} (`postbox/client/sqlite`) for Node clients: bots, Electron
 * main processes, CLIs. Built on `better-sqlite3` (an optional peer dependency: install it to use
 * this subpath). Not for browsers; use the IndexedDB store (`postbox/client/indexeddb`) there.
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
 * | `outbox` | `n` (rowid: enqueue order), `id` (unique), `kind`, `to_user`, `conv`, `body`, `ids`, `created_at`, `seq`, `status`, `pos` (history position, messages only), `reason`, `detail` (why it failed or expired) | outgoing items; indexes by `(conv, n)`, by `(conv, pos)`, and a partial index of the pending ones |
 * | `inbound` | `n` (rowid: arrival order), `from_user`, `from_device`, `id`, `conv`, `to_user`, `seq`, `ts`, `body`, `held`, `read`, `pos` (history position, null while held) | received messages; unique `(from_user, from_device, id)`; indexes by `(conv, n)`, by `id`, by `(conv, pos)`, and partial indexes of the held and of the unread shown ones |
 * | `convs` | `conv`, `last` | each conversation's latest history position (indexed: the conversation list, and the store-wide position counter as its maximum) |
 * | `streams` | `key`, `next` | next expected sequence per stream |
 * | `state` | `ns`, `key`, `value` | state namespaces (group views, member receipts, adapters); primary key `(ns, key)`; `WITHOUT ROWID` |
 *
 * @packageDocumentation
 */
import Database from 'better-sqlite3';
import type {
  ClientStore,
  ConversationRecord,
  HistoryRecord,
  InboundChange,
  InboundMessage,
  MessageStatus,
  OutboxDraft,
  OutboxEntry,
  SendFailure,
  StateWrite,
} from '../store.js';
import {
  openStoreDatabase,
  prepareNumeric,
  transactor,
  type SqliteConnectionOptions,
  type SqliteSource,
} from '../../util/sqlite.js';
import {
  INBOUND_COLUMNS,
  MIGRATIONS,
  OUTBOX_COLUMNS,
  toInbound,
  toOutbox,
  type InboundRow,
  type OutboxRow,
} from './sqlite-schema.js';
import { mergePages } from './merge-pages.js';

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

/** The `PRAGMA user_version` of a database the SQLite client store has fully migrated. */
export const SQLITE_CLIENT_SCHEMA_VERSION: number = MIGRATIONS.length;

/** A view of the caller's bytes for binding; SQLite copies them. */
const bindBytes = (b: Uint8Array): Buffer => Buffer.from(b.buffer, b.byteOffset, b.byteLength);

/**
 * A {@link ClientStore} in a SQLite database (see the module header for the schema). Pass `path`
 * to let the store open (and later close) the file, or `database` to hand it a `better-sqlite3`
 * connection you keep owning.
 *
 * Choice where the contract is silent, as in the memory store: `setStatus` of an unknown id is
 * ignored.
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
      `INSERT INTO outbox (id, kind, to_user, conv, body, ids, created_at, seq, status, pos)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', ?)`,
    ),
    pending: q(`SELECT ${OUTBOX_COLUMNS} FROM outbox WHERE status = 'pending' ORDER BY n`),
    setStatus: q('UPDATE outbox SET status = ?, reason = ?, detail = ? WHERE id = ?'),
    outgoing: q(`SELECT ${OUTBOX_COLUMNS} FROM outbox WHERE id = ?`),
    outgoingIn: q(`SELECT ${OUTBOX_COLUMNS} FROM outbox WHERE conv = ? ORDER BY n`),
    inboundHas: q('SELECT 1 FROM inbound WHERE from_user = ? AND from_device = ? AND id = ?'),
    inboundInsert: q(
      `INSERT INTO inbound (from_user, from_device, id, conv, to_user, seq, ts, body, held, read, pos)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ),
    heldById: q('SELECT n, conv FROM inbound WHERE id = ? AND held = 1 ORDER BY n'),
    release: q('UPDATE inbound SET held = 0, pos = ? WHERE n = ?'),
    // The counter is the largest position of any conversation (an index lookup on convs_last).
    nextPos: q('SELECT coalesce(max(last), 0) + 1 AS pos FROM convs'),
    touchConv: q(
      'INSERT INTO convs (conv, last) VALUES (?, ?) ON CONFLICT (conv) DO UPDATE SET last = excluded.last',
    ),
    convs: q('SELECT conv, last FROM convs ORDER BY last DESC'),
    inboundPage: q(
      `SELECT pos, ${INBOUND_COLUMNS} FROM inbound
       WHERE conv = ? AND pos IS NOT NULL AND pos < ? ORDER BY pos DESC LIMIT ?`,
    ),
    outboxPage: q(
      `SELECT pos, ${OUTBOX_COLUMNS} FROM outbox
       WHERE conv = ? AND pos IS NOT NULL AND pos < ? ORDER BY pos DESC LIMIT ?`,
    ),
    // Named: the planner may prefer inbound_pos, which would count every shown message.
    unread: q(
      'SELECT count(*) AS n FROM inbound INDEXED BY inbound_unread WHERE conv = ? AND read = 0 AND pos IS NOT NULL',
    ),
    setStream: q(
      'INSERT INTO streams (key, next) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET next = excluded.next',
    ),
    streamNext: q('SELECT next FROM streams WHERE key = ?'),
    held: q(`SELECT ${INBOUND_COLUMNS} FROM inbound WHERE held = 1 ORDER BY n`),
    inbound: q(`SELECT ${INBOUND_COLUMNS} FROM inbound WHERE conv = ? ORDER BY n`),
    unreadInbound: q(
      `SELECT ${INBOUND_COLUMNS} FROM inbound INDEXED BY inbound_unread WHERE conv = ? AND read = 0 AND pos IS NOT NULL ORDER BY n`,
    ),
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

  /** The next history position, recorded as its conversation's latest (inside a transaction). */
  function show(conv: string): number {
    const pos = (sql.nextPos.get() as { pos: number }).pos;
    sql.touchConv.run(conv, pos);
    return pos;
  }

  function writeState(writes: StateWrite[]): void {
    for (const w of writes) {
      if (w.value === undefined) sql.deleteState.run(w.ns, w.key);
      else sql.putState.run(w.ns, w.key, bindBytes(w.value));
    }
  }

  /** Newest first: the two tables' pages, each already in position order, merged. */
  function page(conv: string, before: number | undefined, limit: number): HistoryRecord[] {
    const below = before ?? Number.MAX_SAFE_INTEGER;
    const ins = sql.inboundPage.all(conv, below, limit) as Array<InboundRow & { pos: number }>;
    const outs = sql.outboxPage.all(conv, below, limit) as Array<OutboxRow & { pos: number }>;
    return mergePages(ins, outs, limit, toInbound, toOutbox);
  }

  return {
    name: 'sqlite',

    async enqueue(draft: OutboxDraft, sequenced: boolean, state?: StateWrite[]): Promise<OutboxEntry> {
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
          draft.kind === 'msg' ? show(draft.conv) : null,
        );
        if (state) writeState(state);
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

    async setStatus(id: string, status: MessageStatus, failure?: SendFailure): Promise<void> {
      check();
      sql.setStatus.run(status, failure?.reason ?? null, failure?.detail ?? null, id);
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
            m.held ? null : show(m.conv),
          );
          inserted = true;
        }
        for (const id of change.release ?? []) {
          for (const r of sql.heldById.all(id) as Array<{ n: number; conv: string }>) {
            sql.release.run(show(r.conv), r.n);
          }
        }
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

    async unreadInbound(conv: string): Promise<InboundMessage[]> {
      check();
      return (sql.unreadInbound.all(conv) as InboundRow[]).map(toInbound);
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
      tx(() => writeState(writes));
    },

    async listState(ns: string, prefix = ''): Promise<Array<{ key: string; value: Uint8Array }>> {
      check();
      const rows = sql.listState.all(ns, prefix, `${prefix}\uffff`) as Array<{
        key: string;
        value: Uint8Array;
      }>;
      return rows.map((r) => ({ key: r.key, value: new Uint8Array(r.value) }));
    },

    async history(conv: string, before: number | undefined, limit: number): Promise<HistoryRecord[]> {
      check();
      return page(conv, before, limit);
    },

    async conversations(): Promise<ConversationRecord[]> {
      check();
      const out: ConversationRecord[] = [];
      for (const c of sql.convs.all() as Array<{ conv: string; last: number }>) {
        const last = page(c.conv, c.last + 1, 1)[0];
        if (!last) continue;
        out.push({ conv: c.conv, last, unread: (sql.unread.get(c.conv) as { n: number }).n });
      }
      return out;
    },

    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      if (owned) db.close();
    },
  };
}
