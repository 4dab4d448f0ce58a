/**
 * The IndexedDB client store's schema: its versions (one upgrade step each), its records and
 * their mapping to the contract's types. Internal to `postbox/client/indexeddb` (see that
 * module's header for the overview).
 * @packageDocumentation
 */
import type { IDBPDatabase, IDBPTransaction } from 'idb';
import type { InboundMessage, OutboxEntry } from '../store.js';

/** Object store names. */
export const OUTBOX = 'outbox';
export const INBOUND = 'inbound';
export const SEQS = 'seqs';
export const STREAMS = 'streams';
export const CONVS = 'convs';
export const STATE = 'state';
export const META = 'meta';

/** The key in {@link META} of the store-wide history position counter. */
export const POS_KEY = 'pos';

/**
 * An `outbox` record. `n` (the auto-increment primary key) is the enqueue order; `pend` is there
 * (always 1) only while the entry is pending, so the sparse `pending` index lists exactly the
 * pending ones, tied keys in primary-key order: enqueue order.
 */
export interface OutboxRecord extends OutboxEntry {
  n?: number;
  /** History position (messages only). */
  pos?: number;
  pend?: 1;
}

/**
 * An `inbound` record. `n` is the arrival order; `hold` (1) is there only while the message is
 * held, `pos` once shown, and `unread` (its conversation) while it is shown and not read, so the
 * sparse indexes over them hold just those messages.
 */
export interface InboundRecord extends InboundMessage {
  n?: number;
  pos?: number;
  hold?: 1;
  unread?: string;
}

/** A `convs` record: a conversation's latest history position. */
export interface ConvRecord {
  conv: string;
  last: number;
}

/** A `state` record; primary key `[ns, key]`. */
export interface StateRecord {
  ns: string;
  key: string;
  value: Uint8Array;
}

/** An open database of the store, untyped at the idb level (records are typed here instead). */
export type Db = IDBPDatabase<unknown>;
/** A transaction of the store (typed as read-write; read-only ones never call a write). */
export type Tx = IDBPTransaction<unknown, string[], 'readwrite'>;

/** One schema step: takes the database from version `i` to `i + 1` inside the upgrade transaction. */
export type IndexedDbMigration = (db: Db, tx: IDBPTransaction<unknown, string[], 'versionchange'>) => void;

/** The schema steps; step `i` takes the database version from `i` to `i + 1`. */
export const MIGRATIONS: readonly IndexedDbMigration[] = [
  // 1: the whole schema of the first release.
  (db) => {
    const outbox = db.createObjectStore(OUTBOX, { keyPath: 'n', autoIncrement: true });
    outbox.createIndex('id', 'id', { unique: true });
    outbox.createIndex('conv', 'conv');
    outbox.createIndex('pending', 'pend');
    outbox.createIndex('hist', ['conv', 'pos']);
    const inbound = db.createObjectStore(INBOUND, { keyPath: 'n', autoIncrement: true });
    inbound.createIndex('dedupe', ['from', 'fromDevice', 'id'], { unique: true });
    inbound.createIndex('conv', 'conv');
    inbound.createIndex('id', 'id');
    inbound.createIndex('held', 'hold');
    inbound.createIndex('hist', ['conv', 'pos']);
    inbound.createIndex('unread', 'unread');
    db.createObjectStore(SEQS);
    db.createObjectStore(STREAMS);
    db.createObjectStore(CONVS, { keyPath: 'conv' }).createIndex('last', 'last');
    db.createObjectStore(STATE, { keyPath: ['ns', 'key'] });
    db.createObjectStore(META);
  },
];

/** The database version a fully upgraded store has. */
export const INDEXEDDB_SCHEMA_VERSION: number = MIGRATIONS.length;

/** A stored outbox record as the contract's entry (a fresh object; bodies are already clones). */
export function toOutbox(r: OutboxRecord): OutboxEntry {
  const e: OutboxEntry = {
    id: r.id,
    kind: r.kind,
    to: r.to,
    conv: r.conv,
    createdAt: r.createdAt,
    status: r.status,
  };
  if (r.body !== undefined) e.body = r.body;
  if (r.ids !== undefined) e.ids = r.ids;
  if (r.seq !== undefined) e.seq = r.seq;
  if (r.reason !== undefined) e.reason = r.reason;
  if (r.detail !== undefined) e.detail = r.detail;
  return e;
}

/** A stored inbound record as the contract's message. */
export function toInbound(r: InboundRecord): InboundMessage {
  return {
    id: r.id,
    conv: r.conv,
    from: r.from,
    fromDevice: r.fromDevice,
    to: r.to,
    seq: r.seq,
    ts: r.ts,
    body: r.body,
    held: r.held,
    read: r.read,
  };
}

/** Sets the sparse markers of an inbound record from its state (held, shown, read). */
export function markInbound(r: InboundRecord): InboundRecord {
  if (r.held) r.hold = 1;
  else delete r.hold;
  if (r.pos !== undefined && !r.read) r.unread = r.conv;
  else delete r.unread;
  return r;
}
