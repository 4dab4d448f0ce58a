/**
 * The SQLite client store's schema: its migrations, its rows and their mapping to the contract's
 * types. Internal to `postbox/client/sqlite` (see that module's header for the table overview).
 * @internal
 * @packageDocumentation
 */
import type { ErrorCode } from '../../protocol/errors.js';
import type { InboundMessage, MessageStatus, OutboxEntry } from '../store.js';
import type { SqliteDatabase, SqliteMigration } from '../../util/sqlite.js';

/** The schema steps; step `i` takes `user_version` from `i` to `i + 1`. */
export const MIGRATIONS: readonly SqliteMigration[] = [
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
  // 3: history positions, the conversation list, and the indexes that page and count them.
  (db) => {
    db.exec(`
      ALTER TABLE inbound ADD COLUMN pos INTEGER;
      ALTER TABLE outbox ADD COLUMN pos INTEGER;
      CREATE TABLE convs (
        conv TEXT PRIMARY KEY,
        last INTEGER NOT NULL
      ) WITHOUT ROWID;
    `);
    backfillPositions(db);
    db.exec(`
      INSERT INTO convs (conv, last)
        SELECT conv, max(pos) FROM (
          SELECT conv, pos FROM inbound WHERE pos IS NOT NULL
          UNION ALL SELECT conv, pos FROM outbox WHERE pos IS NOT NULL
        ) GROUP BY conv;
      CREATE INDEX convs_last ON convs (last);
      CREATE INDEX inbound_pos ON inbound (conv, pos) WHERE pos IS NOT NULL;
      CREATE INDEX outbox_pos ON outbox (conv, pos) WHERE pos IS NOT NULL;
      CREATE INDEX inbound_unread ON inbound (conv) WHERE read = 0 AND pos IS NOT NULL;
    `);
  },
  // 4: why an entry failed or expired. Adding nullable columns rewrites no row; entries that
  // failed before have no reason (none was kept then).
  (db) =>
    db.exec(`
      ALTER TABLE outbox ADD COLUMN reason TEXT;
      ALTER TABLE outbox ADD COLUMN detail TEXT;
    `),
];

/**
 * Positions for the messages a version-2 database already shows: each table keeps its own order
 * (arrival, enqueue), and the two are interleaved by time (server time of received messages,
 * local time of sent ones), the best a database that never recorded the order it showed can do.
 */
function backfillPositions(db: SqliteDatabase): void {
  type Row = { n: number; t: number };
  const inbound = db.prepare('SELECT n, ts AS t FROM inbound WHERE held = 0 ORDER BY n').all() as Row[];
  const outbox = db
    .prepare(`SELECT n, created_at AS t FROM outbox WHERE kind = 'msg' ORDER BY n`)
    .all() as Row[];
  const setIn = db.prepare('UPDATE inbound SET pos = ? WHERE n = ?');
  const setOut = db.prepare('UPDATE outbox SET pos = ? WHERE n = ?');
  let i = 0;
  let o = 0;
  let pos = 0;
  while (i < inbound.length || o < outbox.length) {
    if (o >= outbox.length || (i < inbound.length && inbound[i]!.t <= outbox[o]!.t)) {
      setIn.run(++pos, inbound[i++]!.n);
    } else setOut.run(++pos, outbox[o++]!.n);
  }
}

/** An `outbox` row as the store reads it. */
export interface OutboxRow {
  id: string;
  kind: 'msg' | 'read' | 'group' | 'ctl';
  to_user: string;
  conv: string;
  body: Uint8Array | null;
  ids: string | null;
  created_at: number;
  seq: number | null;
  status: MessageStatus;
  reason: ErrorCode | null;
  detail: string | null;
}

/** An `inbound` row as the store reads it. */
export interface InboundRow {
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

/** The columns of an {@link OutboxRow}. */
export const OUTBOX_COLUMNS = 'id, kind, to_user, conv, body, ids, created_at, seq, status, reason, detail';
/** The columns of an {@link InboundRow}. */
export const INBOUND_COLUMNS = 'id, conv, from_user, from_device, to_user, seq, ts, body, held, read';

/** An outbox row as the contract's entry. */
export function toOutbox(r: OutboxRow): OutboxEntry {
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
  if (r.reason !== null) e.reason = r.reason;
  if (r.detail !== null) e.detail = r.detail;
  return e;
}

/** An inbound row as the contract's message. */
export function toInbound(r: InboundRow): InboundMessage {
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
