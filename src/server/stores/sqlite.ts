/**
 * The SQLite {@link ServerStore} (`postbox/server/sqlite`): the embedded default for a
 * single-process server, on `better-sqlite3` (an optional peer dependency: install it to use
 * this subpath).
 *
 * **Ack means durable.** The connection runs with `journal_mode=WAL`, and `append` resolves only
 * after its transaction has committed and the WAL has been flushed to disk: a message the server
 * acked survives `kill -9` and power loss. By default (`walFlush: 'commit'`) the connection runs
 * `synchronous=FULL` and each `COMMIT` fsyncs on the calling thread. With
 * `walFlush: 'background'` (what `postbox serve` uses) a file the store opened runs
 * `synchronous=NORMAL` and the store flushes its WAL with `fdatasync` on libuv's thread pool
 * (sqlite-sync.ts), so the event loop keeps serving while the disk works; every write method
 * resolves only after such a flush. Each `append(batch)` is exactly one `BEGIN IMMEDIATE … COMMIT`
 * transaction, which also carries the device acks waiting for theirs: the server engine batches
 * concurrent sends into one call, and in the background mode the commits made while a flush runs
 * share the next one (group commit). With `sliceRows` (the engine passes it while other senders
 * are active) a group message to more devices than that is written in slices, one transaction
 * each, with the event loop free between them (sqlite-fanout.ts, capability `slicedAppend`).
 *
 * **Schema** (version {@link SQLITE_SERVER_SCHEMA_VERSION}, kept in `PRAGMA user_version` and
 * reached by migration steps applied in one transaction each; step 2 added groups, per-user
 * delivery tracking, contacts and last-seen times; step 3 the key directory and per-device bodies
 * of end-to-end encrypted messages; step 4 push tokens; step 5 directed consents, membership
 * versions and where each message went, see below; step 6 gap notices; step 7 storage quotas:
 * `devices.entries` and `devices.bytes` count each inbox, `inbox.size` is the
 * body bytes an entry counts for, and `group_invites (group_id, user)` holds the pending group
 * invites, indexed by user; step 10 made the writer, not a per-entry trigger, grow the counters;
 * step 11 added `fanouts` and `fanout_done`, the group messages whose slices are not all written, see sqlite-fanout.ts;
 * step 12 keyed `dedupe` by message id first, see below; step 13 made the writer shrink the
 * counters too, once per device and transaction; step 14 stores a 1:1 message with one entry in
 * that entry alone, see `inbox` below; step 15 dropped the release triggers, see below; step 16
 * the index on `inbox.ts`, see `expireStep`):
 *
 * | table | columns | purpose |
 * | --- | --- | --- |
 * | `devices` | `id` (rowid), `user`, `device`, `registered_at`, `last_offset` | registration order; the per-device offset counter; unique `(user, device)`; `device = '#pending'` is a registered user's pending inbox (see `ServerStore` "User directory") |
 * | `messages` | `id` (rowid), `from_user`, `from_device`, `msg_id`, `to_user`, `to_group`, `seq`, `ts`, `body`, `refs` | each body stored once; `to_user` is the group id when `to_group` is 1; `refs` counts inbox entries pointing at it |
 * | `delivered` | `message`, `user` | recipient users already accounted for: a device of `user` acked `message` (sender told `delivered`) or the sender was told `expired`; primary key `(message, user)`; rows go with their message; `WITHOUT ROWID` |
 * | `group_events` | `id` (rowid), `data`, `refs` | each form of a group event (delta, snapshot) stored once, msgpack-encoded; `refs` counts inbox entries pointing at it |
 * | `inbox` | `dev`, `pos`, `ts`, `message` (with `body` for an end-to-end encrypted message) or `event` or (`status`, `ids`, `by_user`) or, step 14, a message of its own (`from_user`, `from_device`, `msg_id`, `to_user`, `seq`, `body`) | one row per entry; primary key `(dev, pos)` = (device, offset); `body` is this device's own envelope, and such a message's `messages.body` is empty; a 1:1 message with one entry is the entry alone (no `messages` row: nothing to share or count, and its ack deletes one row, see `storeMessage`), its `message` 0 since stop 43 (NULL before) so that a store from before step 14 on the same file skips it rather than reading a status (`IN_ENTRY`, relational.ts); `WITHOUT ROWID` |
 * | `groups` | `id`, `name`, `ver` | one row per group; `WITHOUT ROWID` |
 * | `group_members` | `joined` (rowid), `group_id`, `user`, `role`, `since_ver`, `acted_ver` | `joined` orders members by join (the longest-standing first); `since_ver` is the group version the membership began at, `acted_ver` the latest at which the member took part (-1: never); unique `(group_id, user)`; index by `user` |
 * | `consents` | `viewer`, `target` | `target` wrote to `viewer` 1:1 (see `related`); `WITHOUT ROWID` |
 * | `last_seen` | `user`, `ts` | when each user was last online; `WITHOUT ROWID` |
 * | `dedupe` | `msg_id`, `from_user`, `from_device`, `ts`, `to_user`, `gver` | one record per committed item; for a message also where it went (`to_user`, and the group version `gver` of a group message), which receipts are checked against; primary key `(msg_id, from_user, from_device)`, so a receipt finds a sender's message by id, and records of ids that sort by time (ULIDs, the client's default) go onto the table's last pages: keyed by sender first, each commit rewrote about one page per message, anywhere in a table that holds every message of the retention period; `WITHOUT ROWID` |
 * | `device_keys` | `dev`, `identity_key`, `registration_id`, `signed_id`, `signed_key`, `signed_sig`, `kyber_id`, `kyber_key`, `kyber_sig` | a device's directory entry (the `kyber_*` columns are the last-resort Kyber key); `dev` (the `devices` row) is the rowid |
 * | `prekeys` | `id` (rowid), `dev`, `key_id`, `key` | unclaimed one-time EC prekeys; `id` is upload order (oldest first); unique `(dev, key_id)`; index by `dev` |
 * | `kyber_prekeys` | `id` (rowid), `dev`, `key_id`, `key`, `signature` | unclaimed one-time Kyber prekeys, as `prekeys` |
 * | `action_counts` | `kind`, `user`, `win`, `n` | step 9: per-user action counts in fixed windows (the engine's group caps, see `countActions`), one row per (kind, user); `WITHOUT ROWID` |
 * | `fanouts`, `fanout_done` | `message` (rowid), `from_user`, `from_device`, `msg_id`, `ts`, `size`, `devs`; `message`, `done` | a group message written in slices: the devices still to write when its first transaction committed (`devs`, JSON) and how many of them are written (`done`, a row of its own that each slice rewrites); gone with its last slice |
 *
 * Indexes: `inbox` by `(dev, pos)` (reads and acks; `dev` is the `devices` row of `(user, device)`),
 * `dedupe_ts` (expiry; the inbox's walks devices by `entries` and each inbox by offset),
 * `dedupe` by its key (dedupe), `devices` by `(user, device)`,
 * `group_members` by `(group_id, user)` and by `user` (membership, fan-out, `groupsOf`), `prekeys`
 * and `kyber_prekeys` by `(dev, key_id)` (re-uploads) and by `dev` (claims, oldest first).
 * Every path that removes inbox entries releases what they reference through `releaseMessage` and
 * `releaseEvent`, which decrement `messages.refs` and `group_events.refs` and delete the body or
 * event with its last reference (triggers on inbox deletes did until step 15); a trigger on
 * message deletes drops its `delivered` rows, and one on device deletes drops the device's keys.
 * No foreign keys are declared (the store keeps the tables consistent, and a foreign key from
 * `inbox.message` would cost an extra index for every body delete), so the connection's
 * `foreign_keys` setting does not matter.
 *
 * Longer than 500 lines: the writer (offsets, usage), acks, expiry, group changes, the key
 * directory and push tokens as SQL (the migration steps are in sqlite-schema.ts). The append
 * rules (refusals, targets, placement, consent, statuses) come from the shared planner
 * (planner.ts, public as the store kit); acks' releases, expiry's steps and offsets are still
 * written here.
 * @packageDocumentation
 */
import Database from 'better-sqlite3';
import type { PushToken } from '../push/types.js';
import type {
  AppendInput,
  AppendOptions,
  BeforeWrite,
  AppendOutcome,
  ClaimOptions,
  DeviceAddress,
  EntryStatus,
  GapReason,
  GapStream,
  GroupEvent,
  GroupInput,
  GroupMember,
  GroupRole,
  GroupState,
  InboxEntry,
  KeyBundle,
  KeyUpload,
  MessageInput,
  NotifyResult,
  ReceiptInput,
  ServerStore,
  WrittenEntry,
} from '../store.js';
import { claimedUsers, notRegistered, uploadKind } from './directory.js';
import {
  addressOf,
  changeTargets,
  placeMessage,
  planMessage,
  planReceipt,
  tellSender,
  type AppendReads,
  type Placement,
} from './planner.js';
import {
  decodeGapStreams,
  encodeGapStreams,
  extendFullNotices,
  GAP_ROW_STATUS,
  GapCollector,
} from './gap-notices.js';
import { sqlitePing } from './sqlite-ping.js';
import { planInvites, type PendingInvites } from './invites.js';
import { walCheckpointer, type WalCheckpointer } from './sqlite-checkpoint.js';
import { walSync } from './sqlite-sync.js';
import { deviceDirectory, type DeviceRef, type InboxHeadRow } from './sqlite-devices.js';
import { type FanoutJob, fanoutSlicer, type SlicedOutcome } from './sqlite-fanout.js';
import { MIGRATIONS } from './sqlite-schema.js';
import {
  bundleFrom,
  decodeEvent,
  encodeEvent,
  IN_ENTRY,
  inEntry,
  joinSnapshot,
  keptKeys,
  NotifySet,
  membershipMarks,
  ownOrShared,
  planChange,
  receiptIds,
  sharedMessage,
  snapshotOf,
  type ChangePlan,
  type ExpiryWalk,
  type Groups,
  type GroupView,
  type KeysRow,
  type SentRecord,
} from './relational.js';
import { assertNotPending, isPendingDevice, PENDING_DEVICE, realDevices } from '../users.js';
import {
  actionWindow,
  overGroupQuota,
  preKeyQuotaError,
  resolveQuotas,
  type InboxUsage,
  type StoreQuotas,
} from '../quotas.js';
import {
  arrayRows,
  hookWrites,
  openStoreDatabase,
  prepareNumeric,
  transactor,
  type SqliteConnectionOptions,
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
  /**
   * Where a file the store opened is flushed to disk before the store answers: `'commit'` runs
   * `synchronous=FULL` (each `COMMIT` fsyncs on the event loop, stalling the server for the
   * flush), `'background'` runs `synchronous=NORMAL` and flushes the WAL with `fdatasync` on
   * libuv's thread pool, grouped (see sqlite-sync.ts): as durable, and at light load a message is
   * delivered in a few ms instead of hundreds (docs/benchmarks.md, issue 23). `postbox serve`
   * uses `'background'`. A connection passed as `database` always runs `'commit'`.
   * @default 'commit' (the engine tests on a virtual clock expect a commit within one macrotask)
   */
  walFlush?: 'commit' | 'background';
  /** Storage quotas (see {@link StoreQuotas}). @default DEFAULT_QUOTAS */
  quotas?: Partial<StoreQuotas>;
  /**
   * Fault hook for tests (see {@link BeforeWrite}), called before each run of a writing statement
   * (`INSERT`, `UPDATE`, `DELETE`); its throw rolls the call's transaction back.
   * @default none
   */
  beforeWrite?: BeforeWrite;
}

/**
 * Options of {@link sqliteServerStore}: either `path` (the store opens the file and closes it on
 * `close()`) or `database` (an open `better-sqlite3` database the caller keeps owning), plus the
 * {@link SqliteServerStoreTuning} knobs.
 */
export type SqliteServerStoreOptions = SqliteSource & SqliteServerStoreTuning;

const LABEL = 'sqlite server store';

interface DeviceRow {
  id: number;
  device: string;
  last_offset: number;
}

/** A device of a group member, as the fan-out query returns it. */
interface MemberDeviceRow extends DeviceRow {
  user: string;
}

/** A member device with its inbox usage, as a group message's fan-out reads it. */
interface FanoutDeviceRow extends MemberDeviceRow, InboxUsage {}

/** A device with keys, as the device-list check sees it. */
interface KeyedDeviceRow extends MemberDeviceRow {
  rid: number;
}

/**
 * A device as the append planner hands it back (planner.ts): its row id and address, and, for a
 * group member's row, its inbox usage as read in the transaction.
 */
interface Target extends DeviceAddress {
  id: number;
  entries?: number;
  bytes?: number;
}

/** A keyed device of a user and its `device_keys` row, as a claim reads it. */
interface BundleRow extends KeysRow {
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
  event: number | null;
  from_user: string | null;
  from_device: string | null;
  msg_id: string | null;
  to_user: string | null;
  to_group: number | null;
  seq: number | null;
  mts: number | null;
  body: Uint8Array | null;
  /** The device's own envelope of an end-to-end encrypted message. */
  own_body: Uint8Array | null;
  event_data: Uint8Array | null;
}

/** An entry as removing it needs it: where it is, its bytes, what it references. */
interface StoredEntry {
  pos: number;
  /** Body bytes the entry counts for (see `inbox.size`). */
  size: number;
  /** The shared body it references, if any. */
  message: number | null;
  /** The stored group event it references, if any. */
  event: number | null;
}

/** An entry an ack takes out (see `entriesAcked`). */
interface TakenRow extends StoredEntry {
  /** The sender and id of a message stored in the entry alone (step 14). */
  from_user: string | null;
  msg_id: string | null;
}

/** A shared message as an ack reads it (see `ackedMessage`). */
interface AckedMessage {
  from_user: string;
  msg_id: string;
  /** Inbox entries still referencing it (the acked one included). */
  refs: number;
  /** 1 when the acking user was already accounted for (a `delivered` row), else 0. */
  told: number;
}

/** An entry as expiry reads it: also its commit time and, for a message, its stream. */
interface ExpiredRow extends StoredEntry {
  ts: number;
  from_user: string | null;
  msg_id: string | null;
  from_device: string | null;
  to_user: string | null;
  to_group: number | null;
  seq: number | null;
  status: string | null;
  ids: string | null;
}

/** A device whose inbox expiry walks. */
interface ExpiryDevice {
  id: number;
  user: string;
  device: string;
}

/** What one append transaction slices (see `slicing` in the store). */
interface Slicing {
  /** Most entries a group message writes in this transaction (Infinity: no slicing). */
  rows: number;
  /** The item whose later entries this transaction deferred: the transaction's last item. */
  deferred?: FanoutJob;
  /** Sliced items still pending that this transaction found duplicates of. */
  pending: FanoutJob[];
}

/** An ack waiting for the next group commit. */
interface PendingAck {
  device: DeviceAddress;
  offsets: number[];
  now: number;
  resolve(result: NotifyResult): void;
  reject(error: unknown): void;
}

const EMPTY = new Uint8Array(0);

/** A view of the caller's bytes for binding; SQLite copies them. */
const bindBytes = (b: Uint8Array): Buffer => Buffer.from(b.buffer, b.byteOffset, b.byteLength);

/**
 * Acked offsets as runs of consecutive integers, in the order given: `[5, 6, 7, 3, 4]` is `[5, 7]`
 * then `[3, 4]`. A repeated or non-integer offset starts a run of its own (which finds its entry
 * gone already, or none), so acking the runs in order is acking the offsets one by one.
 */
function offsetRuns(offsets: readonly number[]): Array<[number, number]> {
  const runs: Array<[number, number]> = [];
  let run: [number, number] | undefined;
  for (const o of offsets) {
    if (run !== undefined && Number.isSafeInteger(o) && o === run[1] + 1) run[1] = o;
    else runs.push((run = [o, o]));
  }
  return runs;
}

/** Most 1:1 consents a store remembers as written (see `knownConsents`). */
const MAX_KNOWN_CONSENTS = 100_000;

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
): ServerStore & Required<Pick<ServerStore, 'setPushToken' | 'pushToken'>> & { readonly name: 'sqlite' } {
  const expiryBatchSize = options.expiryBatchSize ?? 1000;
  const quotas = resolveQuotas(options.quotas, LABEL);
  if (!Number.isInteger(expiryBatchSize) || expiryBatchSize < 1) {
    throw new RangeError(`${LABEL}: expiryBatchSize must be a positive integer, got ${expiryBatchSize}`);
  }
  const busyTimeoutMs = options.busyTimeoutMs ?? 5000;
  const { db, owned } = openStoreDatabase(
    options,
    (path) => new Database(path),
    MIGRATIONS,
    LABEL,
    busyTimeoutMs,
  );
  const runTx = transactor(db);
  const dataVersion = prepareNumeric(db, 'PRAGMA data_version');
  /** Brings the device directory up to date with other connections' commits (sqlite-devices.ts). */
  const syncDirectory = (): void =>
    directory.sync((dataVersion.get() as { data_version: number }).data_version);
  /**
   * A write transaction. It first syncs the device directory (the write lock is held, so nothing
   * commits meanwhile); a failed one empties it.
   */
  const tx = <T>(fn: () => T): T => {
    try {
      return runTx(() => {
        syncDirectory();
        return fn();
      });
    } catch (e) {
      directory.clear();
      throw e;
    }
  };
  // A file the store opened flushes its WAL off the event loop (sqlite-sync.ts), with the acks
  // waiting for a commit committed just before each flush starts, and checkpoints on a worker
  // thread (sqlite-checkpoint.ts). A connection the caller hands over keeps synchronous=FULL and
  // SQLite's own checkpoints: the caller's own writes on it stay as durable as it set them up.
  let checkpoints: WalCheckpointer | undefined;
  const wal =
    owned && options.walFlush === 'background'
      ? walSync(db, { beforeFlush: acksBeforeFlush, afterFlush: () => checkpoints?.flushed() })
      : undefined;
  if (wal && options.path !== undefined) checkpoints = walCheckpointer(db, options.path, busyTimeoutMs);
  const synced = (): Promise<void> => (wal ? wal.synced() : Promise.resolve());
  /** A write transaction that resolves once it is durable. */
  const durably = async <T>(fn: () => T): Promise<T> => {
    const result = tx(fn);
    await synced();
    return result;
  };
  const q = (sql: string) => hookWrites(prepareNumeric(db, sql), sql, options.beforeWrite);
  const sql = {
    insertDevice: q(
      'INSERT INTO devices (user, device, registered_at) VALUES (?, ?, ?) ON CONFLICT (user, device) DO NOTHING',
    ),
    /** A user's devices, in no order (sqlite-devices.ts sorts): `ORDER BY id` cost a sorter per call. */
    devicesOf: q('SELECT id, device FROM devices WHERE user = ?'),
    deviceId: q('SELECT id FROM devices WHERE user = ? AND device = ?'),
    deviceDelete: q('DELETE FROM devices WHERE id = ?'),
    /** The first device takes over its user's pending inbox: the row (so the inbox) becomes its. */
    takeOver: q('UPDATE devices SET device = ?, registered_at = ? WHERE user = ? AND device = ?'),
    inboxAny: q('SELECT 1 AS x FROM inbox WHERE dev = ? LIMIT 1'),
    setLastOffset: q(
      'UPDATE devices SET last_offset = ?, entries = entries + ?, bytes = bytes + ? WHERE id = ?',
    ),
    /** An inbox only removed from in this transaction: its usage, its counter unchanged. */
    addUsage: q('UPDATE devices SET entries = entries + ?, bytes = bytes + ? WHERE id = ?'),
    dedupeGet: q('SELECT ts FROM dedupe WHERE from_user = ? AND from_device = ? AND msg_id = ?'),
    /** Claims an item's dedupe key: `changes` is 0 when it was known (a duplicate). */
    dedupeClaim: q(
      `INSERT INTO dedupe (from_user, from_device, msg_id, ts, to_user, gver) VALUES (?, ?, ?, ?, ?, NULL)
       ON CONFLICT DO NOTHING`,
    ),
    /** Gives back the claim of a refused item (a refusal writes nothing). */
    dedupeUnclaim: q('DELETE FROM dedupe WHERE from_user = ? AND from_device = ? AND msg_id = ?'),
    /** A group message's record keeps the group version it committed at. */
    dedupeGroupVer: q('UPDATE dedupe SET gver = ? WHERE from_user = ? AND from_device = ? AND msg_id = ?'),
    /** A sender's messages with one id, and where each went. */
    sentGet: q(
      'SELECT msg_id AS id, to_user AS "to", gver AS ver FROM dedupe WHERE from_user = ? AND msg_id = ? AND to_user IS NOT NULL',
    ),
    messageInsert: q(
      `INSERT INTO messages (from_user, from_device, msg_id, to_user, to_group, seq, ts, body, refs)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ),
    eventInsert: q('INSERT INTO group_events (data, refs) VALUES (?, ?)'),
    entryMessageInsert: q('INSERT INTO inbox (dev, pos, ts, message, body, size) VALUES (?, ?, ?, ?, ?, ?)'),
    /** A 1:1 message whose one entry is its only copy (see `storeMessage`). */
    entryOwnMessageInsert: q(
      `INSERT INTO inbox (dev, pos, ts, message, from_user, from_device, msg_id, to_user, seq, body, size)
       VALUES (?, ?, ?, ${IN_ENTRY}, ?, ?, ?, ?, ?, ?, ?)`,
    ),
    /** A device's inbox head: its usage and its offset counter (see `deviceDirectory`). */
    usageOf: q('SELECT entries, bytes, last_offset FROM devices WHERE id = ?'),
    groupCount: q('SELECT count(*) AS n FROM group_members WHERE user = ?'),
    inviteHas: q('SELECT 1 AS x FROM group_invites WHERE group_id = ? AND user = ?'),
    inviteCount: q('SELECT count(*) AS n FROM group_invites WHERE user = ?'),
    inviteInsert: q('INSERT OR IGNORE INTO group_invites (group_id, user) VALUES (?, ?)'),
    inviteDelete: q('DELETE FROM group_invites WHERE group_id = ? AND user = ?'),
    preKeyCount: q('SELECT count(*) AS n FROM prekeys WHERE dev = ?'),
    kyberPreKeyCount: q('SELECT count(*) AS n FROM kyber_prekeys WHERE dev = ?'),
    entryEventInsert: q('INSERT INTO inbox (dev, pos, ts, event) VALUES (?, ?, ?, ?)'),
    entryStatusInsert: q('INSERT INTO inbox (dev, pos, ts, status, ids, by_user) VALUES (?, ?, ?, ?, ?, ?)'),
    readInbox: q(
      `SELECT i.pos, i.ts, i.message, i.status, i.ids, i.by_user, i.event,
              ${ownOrShared('i', 'm')}, m.to_group, coalesce(m.ts, i.ts) AS mts, m.body,
              i.body AS own_body, e.data AS event_data
       FROM inbox i
       LEFT JOIN messages m ON m.id = i.message
       LEFT JOIN group_events e ON e.id = i.event
       WHERE i.dev = (SELECT id FROM devices WHERE user = ? AND device = ?) AND i.pos > ?
       ORDER BY i.pos LIMIT ?`,
    ),
    /** The entries of one run of acked offsets (see `offsetRuns`), then their delete. */
    entriesAcked: q(
      `SELECT pos, size, message, event, from_user, msg_id FROM inbox
       WHERE dev = ? AND pos BETWEEN ? AND ? ORDER BY pos`,
    ),
    entriesDelete: q('DELETE FROM inbox WHERE dev = ? AND pos BETWEEN ? AND ?'),
    /** What an ack needs of a shared message: its sender, id, references, and whether the user was told. */
    ackedMessage: q(
      `SELECT from_user, msg_id, refs,
              EXISTS (SELECT 1 FROM delivered WHERE message = m.id AND user = ?) AS told
       FROM messages m WHERE id = ?`,
    ),
    entryDelete: q('DELETE FROM inbox WHERE dev = ? AND pos = ?'),
    messageDelete: q('DELETE FROM messages WHERE id = ?'),
    messageUnref: q('UPDATE messages SET refs = refs - ? WHERE id = ?'),
    messageDrop: q('DELETE FROM messages WHERE id = ? AND refs <= 0'),
    eventUnref: q('UPDATE group_events SET refs = refs - ? WHERE id = ?'),
    eventDrop: q('DELETE FROM group_events WHERE id = ? AND refs <= 0'),
    /** A device's `inbox_full` gap notices (see migration 8). */
    fullNotices: q(
      `SELECT pos, size, message, event, ids FROM inbox WHERE dev = ? AND status = '${GAP_ROW_STATUS}' AND by_user = 'inbox_full' ORDER BY pos`,
    ),
    inboxTake: q('DELETE FROM inbox WHERE dev = ? RETURNING message, event'),
    /** Marks (message, user) as told; `changes` is 0 when it already was (delivered once). */
    markDelivered: q('INSERT OR IGNORE INTO delivered (message, user) VALUES (?, ?)'),
    /** Devices whose inboxes hold entries, in row order after a cursor (expiry's walk). */
    devicesWithEntries: q(
      'SELECT id, user, device FROM devices WHERE id > ? AND entries > 0 ORDER BY id LIMIT ?',
    ),
    /** A device's oldest entries by offset (expiry takes those committed before its cutoff). */
    oldestEntries: q(
      `SELECT i.pos, i.ts, i.size, i.message, i.event, i.status, i.ids, ${ownOrShared('i', 'm')}, m.to_group
       FROM inbox i LEFT JOIN messages m ON m.id = i.message
       WHERE i.dev = ? ORDER BY i.pos LIMIT ?`,
    ),
    expireDedupe: q(
      `DELETE FROM dedupe WHERE (msg_id, from_user, from_device) IN
         (SELECT msg_id, from_user, from_device FROM dedupe WHERE ts < ? LIMIT ?)`,
    ),
    groupGet: q('SELECT name, ver FROM groups WHERE id = ?'),
    groupInsert: q('INSERT INTO groups (id, name, ver) VALUES (?, ?, ?)'),
    groupUpdate: q('UPDATE groups SET name = ?, ver = ? WHERE id = ?'),
    groupMembers: q('SELECT user, role FROM group_members WHERE group_id = ? ORDER BY joined'),
    memberInsert: q(
      'INSERT INTO group_members (group_id, user, role, since_ver, acted_ver) VALUES (?, ?, ?, ?, ?)',
    ),
    memberActed: q(
      'UPDATE group_members SET acted_ver = ? WHERE group_id = ? AND user = ? AND acted_ver < ?',
    ),
    memberSince: q('SELECT since_ver FROM group_members WHERE group_id = ? AND user = ?'),
    memberDelete: q('DELETE FROM group_members WHERE group_id = ? AND user = ?'),
    memberRole: q('UPDATE group_members SET role = ? WHERE group_id = ? AND user = ?'),
    /** The group's version, when the user is a member. */
    memberOf: q(
      'SELECT g.ver FROM groups g JOIN group_members m ON m.group_id = g.id WHERE g.id = ? AND m.user = ?',
    ),
    /** Every member device, its counter and its inbox usage: a group message's fan-out in one read. */
    memberDevices: q(
      `SELECT d.id, d.user, d.device, d.last_offset, d.entries, d.bytes
       FROM group_members gm JOIN devices d ON d.user = gm.user
       WHERE gm.group_id = ? ORDER BY gm.joined, d.id`,
    ),
    groupsOf: q('SELECT group_id FROM group_members WHERE user = ? ORDER BY joined'),
    consentInsert: q('INSERT OR IGNORE INTO consents (viewer, target) VALUES (?, ?)'),
    consentGet: q('SELECT 1 AS x FROM consents WHERE viewer = ? AND target = ?'),
    /** A group the viewer is in where the target took part since the viewer joined. */
    groupConsent: q(
      `SELECT 1 AS x FROM group_members v JOIN group_members t ON t.group_id = v.group_id
       WHERE v.user = ? AND t.user = ? AND t.acted_ver >= v.since_ver LIMIT 1`,
    ),
    lastSeenSet: q(
      `INSERT INTO last_seen (user, ts) VALUES (?, ?)
       ON CONFLICT (user) DO UPDATE SET ts = excluded.ts WHERE excluded.ts > last_seen.ts`,
    ),
    lastSeenGet: q('SELECT ts FROM last_seen WHERE user = ?'),
    pushSet: q(
      `INSERT INTO push_tokens (dev, kind, token) SELECT id, ?, ? FROM devices WHERE user = ? AND device = ?
       ON CONFLICT (dev) DO UPDATE SET kind = excluded.kind, token = excluded.token`,
    ),
    pushDelete: q(
      'DELETE FROM push_tokens WHERE dev = (SELECT id FROM devices WHERE user = ? AND device = ?)',
    ),
    inboxSize: q('SELECT count(*) AS n FROM inbox'),
    pushGet: q(
      'SELECT p.kind, p.token FROM push_tokens p JOIN devices d ON d.id = p.dev WHERE d.user = ? AND d.device = ?',
    ),
    keyedDevices: q(
      `SELECT d.id, d.user, d.device, d.last_offset, k.registration_id AS rid
       FROM devices d JOIN device_keys k ON k.dev = d.id WHERE d.user = ? ORDER BY d.id`,
    ),
    keysGet: q('SELECT * FROM device_keys WHERE dev = ?'),
    keysPut: q(
      `INSERT INTO device_keys (dev, identity_key, registration_id, signed_id, signed_key, signed_sig,
                                kyber_id, kyber_key, kyber_sig)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (dev) DO UPDATE SET identity_key = excluded.identity_key,
         registration_id = excluded.registration_id, signed_id = excluded.signed_id,
         signed_key = excluded.signed_key, signed_sig = excluded.signed_sig, kyber_id = excluded.kyber_id,
         kyber_key = excluded.kyber_key, kyber_sig = excluded.kyber_sig`,
    ),
    // A re-uploaded id replaces the key in place (its rowid, so its place in line, stays).
    preKeyPut: q(
      `INSERT INTO prekeys (dev, key_id, key) VALUES (?, ?, ?)
       ON CONFLICT (dev, key_id) DO UPDATE SET key = excluded.key`,
    ),
    kyberPreKeyPut: q(
      `INSERT INTO kyber_prekeys (dev, key_id, key, signature) VALUES (?, ?, ?, ?)
       ON CONFLICT (dev, key_id) DO UPDATE SET key = excluded.key, signature = excluded.signature`,
    ),
    preKeysDrop: q('DELETE FROM prekeys WHERE dev = ?'),
    kyberPreKeysDrop: q('DELETE FROM kyber_prekeys WHERE dev = ?'),
    bundlesOf: q(
      `SELECT d.id, d.device, k.* FROM devices d JOIN device_keys k ON k.dev = d.id
       WHERE d.user = ? ORDER BY d.id`,
    ),
    bundleOf: q(
      `SELECT d.id, d.device, k.* FROM devices d JOIN device_keys k ON k.dev = d.id
       WHERE d.user = ? AND d.device = ?`,
    ),
    // Takes the device's oldest one-time key and deletes it in one statement.
    preKeyClaim: q(
      `DELETE FROM prekeys WHERE id = (SELECT id FROM prekeys WHERE dev = ? ORDER BY id LIMIT 1)
       RETURNING key_id, key`,
    ),
    kyberPreKeyClaim: q(
      `DELETE FROM kyber_prekeys WHERE id = (SELECT id FROM kyber_prekeys WHERE dev = ? ORDER BY id LIMIT 1)
       RETURNING key_id, key, signature`,
    ),
    /** One more action in the window `win`: the count starts over when the window changed. */
    countAction: q(
      `INSERT INTO action_counts (kind, user, win, n) VALUES (?, ?, ?, 1)
       ON CONFLICT (kind, user) DO UPDATE SET n = CASE WHEN win = excluded.win THEN n + 1 ELSE 1 END,
         win = excluded.win
       RETURNING n`,
    ),
    keyCount: q(
      `SELECT (SELECT count(*) FROM prekeys WHERE dev = d.id) AS pre,
              (SELECT count(*) FROM kyber_prekeys WHERE dev = d.id) AS kyber
       FROM devices d JOIN device_keys k ON k.dev = d.id WHERE d.user = ? AND d.device = ?`,
    ),
  };
  const directory = deviceDirectory(
    (user) => sql.devicesOf.all(user) as DeviceRef[],
    (dev) => sql.usageOf.get(dev) as InboxHeadRow,
  );

  let closed = false;
  const memberRows = arrayRows(sql.memberDevices);
  /**
   * Every device of a group's members with its counter and inbox usage, in join order, built
   * from the rows' values (`arrayRows`): for a full group's 1,023 rows 1.8 ms instead of 2.7 with
   * the driver's row objects, inside a group message's first transaction.
   */
  function memberDevicesOf(group: string): FanoutDeviceRow[] {
    const rows = memberRows(group) as Array<[number, string, string, number, number, number]>;
    const out = new Array<FanoutDeviceRow>(rows.length);
    for (let i = 0; i < rows.length; i++) {
      const [id, user, device, last_offset, entries, bytes] = rows[i]!;
      out[i] = { id, user, device, last_offset, entries, bytes };
    }
    return out;
  }

  function check(): void {
    if (closed) throw new Error(`${LABEL}: the store is closed`);
  }

  /**
   * A user's devices (and pending inbox) in registration order, the order of their row ids, from
   * the device directory (sqlite-devices.ts; the list is shared: not to be changed).
   */
  function devicesOf(user: string): readonly DeviceRef[] {
    return directory.of(user);
  }

  /**
   * 1:1 consents (`viewer`, NUL, `target`) known to be in the database, so `relate` skips their
   * insert: a consent is never removed, and one is added here only once the transaction that wrote
   * or found it is on disk. Bounded: past {@link MAX_KNOWN_CONSENTS} it starts over.
   */
  const knownConsents = new Set<string>();
  /** Consents the running append wrote or found, known once it is durable. */
  let consentsInTx: string[] = [];

  /**
   * The running transaction's slicing: entries a group message writes in it at most (`rows`), the
   * item it deferred the rest of, and the pending items it found duplicates of (sqlite-fanout.ts).
   */
  let slicing: Slicing | undefined;
  /** Between slices: the event loop runs, and a store closed meanwhile writes no more. */
  const pause = async (): Promise<void> => {
    await yieldToEventLoop();
    check();
  };
  /**
   * Between two slices of one fan-out: `pause`, then, while a WAL flush runs, until it has ended.
   * A slice written during a flush goes into the next one, which every commit made meanwhile (a
   * 1:1 send) waits for too. Written back to back, two or three slices (each entry a page of its
   * own device's inbox) piled into each flush, and each longer flush let more pile into the next;
   * paced, a flush carries at most one slice. Measured with the abuse bench's group-spam (legit
   * p99 during ÷ before ×1.9–3.1 → ×0.9–1.4, docs/security.md "Sliced fan-out").
   */
  const paceSlice = async (): Promise<void> => {
    await pause();
    if (wal?.busy()) {
      await wal.ended();
      check();
    }
  };
  const slicer = fanoutSlicer({ q, tx, writer, insertEntry: sql.entryMessageInsert, releaseMessage });

  /**
   * The per-transaction view of device lists and offset counters. Offsets come from the device's
   * `last_offset` row, read once (with the device list when possible) and written back once per
   * transaction. No skip: every write transaction holds SQLite's single write lock from
   * `BEGIN IMMEDIATE` to `COMMIT`, and readers see only committed snapshots, so a transaction
   * that takes offsets commits before any later one can take larger offsets: no reader can pass
   * an offset whose entry is not yet committed.
   */
  function writer() {
    const last = new Map<number, number>();
    /**
     * Entries and body bytes this transaction added to each inbox (negative: removed), written
     * back by `flush`: the one place an inbox's usage changes.
     */
    const added = new Map<number, InboxUsage>();
    let written = 0;
    /** Seeds a device's counter from a row read in this transaction, unless already in use. */
    const prime = (r: Pick<DeviceRow, 'id' | 'last_offset'>): void => {
      if (!last.has(r.id)) last.set(r.id, r.last_offset);
    };
    return {
      /** A user's devices (their counters are read when first used: `next`). */
      devicesOf,
      prime,
      /** The next offset of a device's inbox, for an entry of `size` body bytes. */
      next(dev: number, size = 0): number {
        let v = last.get(dev);
        if (v === undefined) v = directory.head(dev).last_offset;
        last.set(dev, ++v);
        written++;
        const a = added.get(dev);
        if (a) {
          a.entries += 1;
          a.bytes += size;
        } else added.set(dev, { entries: 1, bytes: size });
        return v;
      },
      /**
       * A device's inbox usage with this transaction's entries and removals: `row` as read in this
       * transaction before its `flush`, or the device's head.
       */
      usage(dev: number, row?: InboxUsage): InboxUsage {
        let base = row;
        if (!base) {
          const head = directory.head(dev);
          prime({ id: dev, last_offset: head.last_offset }); // `next` needs no read of its own
          base = head;
        }
        const a = added.get(dev);
        const r = slicer.reserved(dev); // entries of sliced messages still to write
        return {
          entries: base.entries + (a?.entries ?? 0) + (r?.entries ?? 0),
          bytes: base.bytes + (a?.bytes ?? 0) + (r?.bytes ?? 0),
        };
      },
      /** An entry of `size` body bytes was removed from a device's inbox (see `removeEntry`). */
      removed(dev: number, size: number): void {
        const a = added.get(dev);
        if (a) {
          a.entries -= 1;
          a.bytes -= size;
        } else added.set(dev, { entries: -1, bytes: -size });
      },
      /** Inbox entries this transaction has written so far. */
      written: () => written,
      /**
       * Writes the counter and inbox usage of each device this transaction wrote entries to back,
       * once per device. Devices only read are not written: a group message that writes its first
       * slice now reads (primes) every member's row but writes a slice of them, and rewriting the
       * others' unchanged rows dirtied their pages for the WAL too.
       */
      flush(): void {
        for (const [dev, a] of added) {
          const l = last.get(dev);
          if (l === undefined) sql.addUsage.run(a.entries, a.bytes, dev);
          else sql.setLastOffset.run(l, a.entries, a.bytes, dev);
          directory.moved(dev, l, a.entries, a.bytes);
        }
        added.clear();
      },
    };
  }
  type Writer = ReturnType<typeof writer>;

  /**
   * A shared message body loses `n` of its inbox references and goes with its last (with its
   * `delivered` rows, by trigger). `refs`, when the caller read it in this transaction, decides
   * which of the two it is with no second statement. Every path that removes entries releases through here or
   * `releaseEvent` (acks, expiry, a full inbox's notices, a removed device, a device gone between
   * a group message's slices).
   */
  function releaseMessage(id: number, n = 1, refs?: number): void {
    if (refs === n) sql.messageDelete.run(id);
    else if (refs !== undefined) sql.messageUnref.run(n, id);
    else {
      sql.messageUnref.run(n, id);
      sql.messageDrop.run(id);
    }
  }

  /** A stored group event loses `n` references and goes with its last. */
  function releaseEvent(id: number, n = 1): void {
    sql.eventUnref.run(n, id);
    sql.eventDrop.run(id);
  }

  /** Removes one entry: its usage through the writer, what it referenced released. */
  function removeEntry(w: Writer, dev: number, e: StoredEntry): void {
    sql.entryDelete.run(dev, e.pos);
    w.removed(dev, e.size);
    const message = sharedMessage(e.message);
    if (message !== undefined) releaseMessage(message);
    if (e.event !== null) releaseEvent(e.event);
  }

  /** Appends a status entry to a device's inbox; returns its offset. */
  function pushStatus(
    w: Writer,
    dev: number,
    now: number,
    status: EntryStatus,
    ids: readonly string[],
    by: string,
  ): number {
    const offset = w.next(dev);
    sql.entryStatusInsert.run(dev, offset, now, status, JSON.stringify(ids), by);
    return offset;
  }

  /** Appends a gap notice to a device's inbox (see gap-notices.ts for its stored form). */
  function pushGap(w: Writer, dev: number, now: number, reason: GapReason, streams: GapStream[]): void {
    sql.entryStatusInsert.run(dev, w.next(dev), now, GAP_ROW_STATUS, encodeGapStreams(streams), reason);
  }

  /** Stores one form of an event once, referenced by `refs` entries (none: nothing stored). */
  function storeEvent(event: GroupEvent, refs: number): number | undefined {
    if (refs === 0) return undefined;
    return Number(sql.eventInsert.run(encodeEvent(event), refs).lastInsertRowid);
  }

  function loadGroup(id: string): GroupView | undefined {
    const row = sql.groupGet.get(id) as { name: string; ver: number } | undefined;
    if (!row) return undefined;
    const members = new Map<string, GroupRole>();
    for (const m of sql.groupMembers.all(id) as GroupMember[]) members.set(m.user, m.role);
    return { name: row.name, ver: row.ver, members };
  }

  function commitGroup(w: Writer, item: GroupInput, now: number): AppendOutcome {
    const current = loadGroup(item.group);
    const hasDevice = (u: string): boolean => w.devicesOf(u).length > 0;
    const pending: PendingInvites = {
      has: (u) => sql.inviteHas.get(item.group, u) !== undefined,
      count: (u) => (sql.inviteCount.get(u) as { n: number }).n,
    };
    const plan = planChange(item, current, hasDevice, pending.has);
    if (typeof plan === 'string') return { ok: false, code: plan };
    const groupCount = (u: string): number => (sql.groupCount.get(u) as { n: number }).n;
    if (plan && overGroupQuota(plan.joined, groupCount, quotas.groupsPerUser) !== undefined) {
      return { ok: false, code: 'quota_exceeded' };
    }
    const invites = planInvites(item, current, plan, hasDevice, pending, quotas.invitesPerUser);
    if (typeof invites === 'string') return { ok: false, code: invites };
    const notify = new NotifySet();
    if (plan !== null) applyPlan(w, item, plan, now, notify);
    for (const u of invites.drop) sql.inviteDelete.run(item.group, u);
    const tell = (user: string, event: GroupEvent) => {
      const devices = w.devicesOf(user);
      const id = storeEvent(event, devices.length);
      for (const r of devices) {
        sql.entryEventInsert.run(r.id, w.next(r.id), now, id);
        notify.add({ user, device: r.device });
      }
    };
    for (const { user, event } of invites.add) {
      sql.inviteInsert.run(item.group, user);
      tell(user, event);
    }
    if (invites.own) tell(item.from.user, invites.own);
    return { ok: true, ts: now, duplicate: false, notify: notify.list };
  }

  /** Writes a planned membership change and its events (see `planChange`). */
  function applyPlan(w: Writer, item: GroupInput, plan: ChangePlan, now: number, notify: NotifySet): void {
    const { event, after, joined, removed } = plan;
    const marks = membershipMarks(item, plan);
    if (plan.created) {
      sql.groupInsert.run(item.group, after.name, after.ver);
    } else {
      sql.groupUpdate.run(after.name, after.ver, item.group);
    }
    for (const u of removed) sql.memberDelete.run(item.group, u);
    for (const [u, role] of plan.roles) sql.memberRole.run(role, item.group, u);
    for (const u of joined) {
      const acted = u === marks.acted ? marks.ver : -1;
      sql.memberInsert.run(item.group, u, after.members.get(u)!, marks.ver, acted);
    }
    if (marks.acted !== undefined) sql.memberActed.run(marks.ver, item.group, marks.acted, marks.ver);
    const reads = readsOf(w);
    const { targets, full } = changeTargets(plan, reads.memberDevices(item.group), reads.devices);
    const fullId = storeEvent({ ...event, name: after.name, snapshot: snapshotOf(after) }, full);
    const deltaId = storeEvent(event, targets.length - full);
    for (const t of targets) {
      sql.entryEventInsert.run(t.device.id, w.next(t.device.id), now, t.full ? fullId : deltaId);
      notify.add(t.device);
    }
  }

  /**
   * Inserts the body once and one entry per target device referencing it; returns their offsets.
   * With `bodies` (an end-to-end encrypted message) each entry holds its own, in target order.
   * A group message to more devices than the running transaction's slice writes only that many
   * now and defers the rest (sqlite-fanout.ts); `refs` counts them all.
   */
  function storeMessage(
    w: Writer,
    item: MessageInput,
    targets: readonly Target[],
    now: number,
    bodies?: Uint8Array[],
  ): number[] {
    if (targets.length === 0) return [];
    if (inEntry(item, targets)) {
      // Its one entry is its only copy: no `messages` row to write, count down and delete.
      const t = targets[0]!;
      const body = bodies?.[0] ?? item.body;
      const offset = w.next(t.id, body.byteLength);
      const { from } = item;
      sql.entryOwnMessageInsert.run(
        t.id,
        offset,
        now,
        from.user,
        from.device,
        item.id,
        item.to,
        item.seq,
        bindBytes(body),
        body.byteLength,
      );
      return [offset];
    }
    const { lastInsertRowid } = sql.messageInsert.run(
      item.from.user,
      item.from.device,
      item.id,
      item.to,
      item.group ? 1 : 0,
      item.seq,
      now,
      bindBytes(bodies ? EMPTY : item.body),
      targets.length,
    );
    let first = targets;
    if (slicing && !bodies && item.group && targets.length > slicing.rows) {
      first = targets.slice(0, slicing.rows);
      const rest = targets.slice(slicing.rows);
      const id = Number(lastInsertRowid);
      slicing.deferred = slicer.defer(id, item.from, item.id, now, item.body.byteLength, rest);
    }
    return first.map((t, i) => {
      const size = (bodies?.[i] ?? item.body).byteLength;
      const offset = w.next(t.id, size);
      const own = bodies ? bindBytes(bodies[i]!) : null;
      sql.entryMessageInsert.run(t.id, offset, now, lastInsertRowid, own, size);
      return offset;
    });
  }

  /**
   * What the append planner reads of this store inside a transaction (planner.ts): device lists
   * from the directory, keyed devices and member devices as rows read now (their counters primed,
   * member rows with their inbox usage, so that the quota check reads nothing more).
   */
  function readsOf(w: Writer): AppendReads<Target> {
    return {
      devices: (user) => w.devicesOf(user).map((r) => ({ id: r.id, user, device: r.device })),
      keyed(user) {
        const rows = sql.keyedDevices.all(user) as KeyedDeviceRow[];
        for (const r of rows) w.prime(r);
        return rows;
      },
      memberVer: (group, user) => (sql.memberOf.get(group, user) as { ver: number } | undefined)?.ver,
      memberDevices(group) {
        const rows = memberDevicesOf(group);
        for (const r of rows) w.prime(r);
        return rows;
      },
    };
  }

  /** A target's inbox usage in this transaction: from its row when the row carries it. */
  const usageIn =
    (w: Writer) =>
    (t: Target): InboxUsage =>
      w.usage(t.id, t.entries === undefined ? undefined : (t as Target & InboxUsage));

  /**
   * Stores a placed message for its targets; the full devices it skips get their one `inbox_full`
   * notice extended instead (see `ServerStore` "Quotas"). Its outcome.
   */
  function deliver(w: Writer, item: MessageInput, placed: Placement<Target>, now: number): AppendOutcome {
    const { targets, skipped } = placed;
    const offsets = storeMessage(w, item, targets, now, placed.bodies);
    // A sliced message's later entries add their devices (and offsets) as they are written.
    const notify = (offsets.length < targets.length ? targets.slice(0, offsets.length) : targets).map(
      addressOf,
    );
    if (skipped.length === 0) return { ok: true, ts: now, duplicate: false, notify, offsets };
    const m = { from: item.from, to: item.to, group: item.group === true, seq: item.seq };
    for (const t of skipped) {
      const held = sql.fullNotices.all(t.id) as Array<StoredEntry & { ids: string | null }>;
      for (const r of held) removeEntry(w, t.id, r);
      const notices = extendFullNotices(
        held.map((r) => decodeGapStreams(r.ids ?? '[]')),
        [m],
      );
      for (const streams of notices) pushGap(w, t.id, now, 'inbox_full', streams);
      notify.push(addressOf(t));
    }
    return { ok: true, ts: now, duplicate: false, notify };
  }

  /**
   * A message (1:1, group or end-to-end encrypted) as the planner decides it: a group message also
   * marks its sender as taking part and keeps the group's version in its dedupe record.
   */
  function commitMessage(w: Writer, item: MessageInput, now: number): AppendOutcome {
    const plan = planMessage(item, readsOf(w));
    if (!plan.ok) return plan;
    const placed = placeMessage(quotas, item, plan, usageIn(w));
    if (!placed.ok) return placed;
    if (plan.consent) relate(item.from.user, item.to);
    if (plan.ver !== null) {
      // Written only when the version moved on.
      sql.memberActed.run(plan.ver, item.to, item.from.user, plan.ver);
      sql.dedupeGroupVer.run(plan.ver, item.from.user, item.from.device, item.id);
    }
    return deliver(w, item, placed, now);
  }

  /** A read receipt: a status with the ids that count (see `receiptIds`) or, with none, nothing. */
  function commitReceipt(w: Writer, item: ReceiptInput, now: number): AppendOutcome {
    const plan = planReceipt(item, readsOf(w), () => {
      const records = item.ids.flatMap((id) => sql.sentGet.all(item.to, id) as SentRecord[]);
      return receiptIds(item, records, (g) => {
        const row = sql.memberSince.get(g, item.from.user) as { since_ver: number } | undefined;
        return row?.since_ver;
      });
    });
    if (!plan.ok) return plan;
    const placed = placeMessage(quotas, item, plan, usageIn(w));
    if (!placed.ok) return placed;
    if (plan.ids.length === 0) return { ok: true, ts: now, duplicate: false, notify: [] };
    for (const t of plan.targets) pushStatus(w, t.id, now, 'read', plan.ids, item.from.user);
    return { ok: true, ts: now, duplicate: false, notify: plan.targets.map(addressOf) };
  }

  /** Records that the sender of a 1:1 message consented to its recipient (for `related`). */
  function relate(from: string, to: string): void {
    if (from === to) return;
    const key = `${to}\0${from}`;
    if (knownConsents.has(key)) return;
    sql.consentInsert.run(to, from);
    consentsInTx.push(key);
  }

  function commit(w: Writer, item: AppendInput, now: number): AppendOutcome {
    // The dedupe key first, claimed in one write (a known one is a duplicate); a refused item
    // gives its claim back below, so a refusal writes nothing.
    const { from, id } = item;
    const to = item.kind === 'msg' ? item.to : null;
    if (sql.dedupeClaim.run(from.user, from.device, id, now, to).changes === 0) {
      const original = sql.dedupeGet.get(from.user, from.device, id) as { ts: number };
      // A duplicate of a sliced message still pending: answered once its last slice is durable.
      const pending = slicing && slicer.pendingOf(item.from, item.id);
      if (pending) slicing!.pending.push(pending);
      return { ok: true, ts: original.ts, duplicate: true, notify: [] };
    }
    let out: AppendOutcome;
    if (item.kind === 'group') out = commitGroup(w, item, now);
    else if (item.kind === 'msg') out = commitMessage(w, item, now);
    else out = commitReceipt(w, item, now);
    if (!out.ok) sql.dedupeUnclaim.run(from.user, from.device, id);
    return out;
  }

  /** Appends one status per group to every device of the group's user. */
  function fanOut(
    w: Writer,
    groups: Groups,
    status: EntryStatus,
    now: number,
    notify: NotifySet,
    written?: WrittenEntry[],
  ): void {
    for (const g of groups.values()) {
      for (const r of w.devicesOf(g.user)) {
        const offset = pushStatus(w, r.id, now, status, g.ids, g.by);
        const device = { user: g.user, device: r.device };
        notify.add(device);
        written?.push({
          device,
          entry: { offset, kind: 'status', status, ids: [...g.ids], by: g.by, ts: now },
        });
      }
    }
  }

  function toEntry(r: InboxRow): InboxEntry | undefined {
    if (r.message !== null || r.msg_id !== null) {
      if (r.from_user === null) return undefined; // unreachable: releases keep refs right
      const out: InboxEntry = {
        offset: r.pos,
        kind: 'msg',
        id: r.msg_id!,
        from: { user: r.from_user, device: r.from_device! },
        to: r.to_user!,
        seq: r.seq!,
        ts: r.mts!,
        body: new Uint8Array(r.own_body ?? r.body ?? EMPTY),
      };
      if (r.to_group === 1) out.group = true;
      return out;
    }
    if (r.event !== null) {
      if (r.event_data === null) return undefined; // unreachable: releases keep refs right
      return { offset: r.pos, kind: 'group', event: decodeEvent(r.event_data), ts: r.ts };
    }
    if (r.status === GAP_ROW_STATUS) {
      const reason = r.by_user as GapReason;
      return { offset: r.pos, kind: 'gap', reason, streams: decodeGapStreams(r.ids ?? '[]'), ts: r.ts };
    }
    return {
      offset: r.pos,
      kind: 'status',
      status: r.status as EntryStatus,
      ids: JSON.parse(r.ids ?? '[]') as string[],
      by: r.by_user ?? '',
      ts: r.ts,
    };
  }

  /**
   * One bounded expiry step, in one transaction: walks on from `walk` over up to `expiryBatchSize`
   * devices with entries (their `entries` counters say which), removes up to `expiryBatchSize`
   * entries committed before `cutoff` from their inboxes, oldest first, and tells the senders
   * `expired` for each (message, recipient user) among them not yet accounted for. The
   * `delivered` rows (not a per-call set) make "once per user" hold across steps; a message's
   * rows go with its last entry. Every step removes an entry or moves the walk on.
   */
  function expireStep(cutoff: number, now: number, notify: NotifySet, walk: ExpiryWalk): number {
    return tx(() => {
      const w = writer();
      const expired: Groups = new Map();
      const gaps = new GapCollector<number>();
      let removed = 0;
      const devices = sql.devicesWithEntries.all(walk.after, expiryBatchSize) as ExpiryDevice[];
      walk.done = devices.length < expiryBatchSize;
      for (const d of devices) {
        const room = expiryBatchSize - removed;
        const rows = sql.oldestEntries.all(d.id, room) as ExpiredRow[];
        // Up to the first entry not yet expired: offsets follow commit order, so one a clock
        // stepped back stamped older than the entry before it waits for that one.
        let n = rows.findIndex((r) => r.ts >= cutoff);
        if (n < 0) n = rows.length;
        const owner = { user: d.user, device: d.device };
        for (let i = 0; i < n; i++) expireEntry(w, d.id, owner, rows[i]!, expired, gaps);
        removed += n;
        if (n === room && rows.length === room) {
          walk.done = false; // the step is full: the next one starts at this device again
          break;
        }
        walk.after = d.id;
      }
      fanOut(w, expired, 'expired', now, notify);
      for (const d of gaps.notices()) {
        for (const streams of d.notices) pushGap(w, d.key, now, 'expired', streams);
        notify.add(d.addr);
      }
      w.flush();
      return removed;
    });
  }

  /** Removes one expired entry of `owner`'s inbox, telling its sender and collecting its gap. */
  function expireEntry(
    w: Writer,
    dev: number,
    owner: DeviceAddress,
    r: ExpiredRow,
    expired: Groups,
    gaps: GapCollector<number>,
  ): void {
    if (r.status === GAP_ROW_STATUS) gaps.carry(dev, owner, decodeGapStreams(r.ids ?? '[]'));
    if (r.from_user !== null) {
      const from = { user: r.from_user, device: r.from_device! };
      gaps.add(dev, owner, { from, to: r.to_user!, group: r.to_group === 1, seq: r.seq! });
      // Marked before the delete: the delete may take the message (and its marks) with it. A
      // message of its own (no `messages` row) is this entry alone: told once by its expiry.
      const message = sharedMessage(r.message);
      tellSender(expired, { from: r.from_user, id: r.msg_id! }, owner.user, () => {
        return message === undefined || sql.markDelivered.run(message, owner.user).changes === 1;
      });
    }
    removeEntry(w, dev, r);
  }

  /**
   * A device new to the store (or a new pending inbox) learns its user's groups from snapshots,
   * as a newly added member would; inside the caller's transaction. Returns how many.
   */
  function joinSnapshots(user: string, dev: number, now: number): number {
    const w = writer();
    const groups = sql.groupsOf.all(user) as Array<{ group_id: string }>;
    for (const { group_id: id } of groups) {
      const event = joinSnapshot(id, loadGroup(id)!, user);
      sql.entryEventInsert.run(dev, w.next(dev), now, storeEvent(event, 1));
    }
    w.flush();
    return groups.length;
  }

  /** Removes a device (or a pending inbox) inside the caller's transaction. */
  function dropDevice(dev: number): void {
    const messages = new Map<number, number>();
    const events = new Map<number, number>();
    for (const r of sql.inboxTake.all(dev) as Array<Pick<StoredEntry, 'message' | 'event'>>) {
      const message = sharedMessage(r.message);
      if (message !== undefined) messages.set(message, (messages.get(message) ?? 0) + 1);
      if (r.event !== null) events.set(r.event, (events.get(r.event) ?? 0) + 1);
    }
    for (const [id, n] of messages) releaseMessage(id, n);
    for (const [id, n] of events) releaseEvent(id, n);
    sql.deviceDelete.run(dev); // its triggers drop the device's keys and push token
  }

  /** Acks waiting for the next group commit. */
  let pendingAcks: PendingAck[] = [];

  /** One device's ack inside a running transaction: deletes the entries, queues `delivered`. */
  function ackIn(w: Writer, a: PendingAck, notify: NotifySet, written: WrittenEntry[]): number {
    const dev = directory.id(a.device.user, a.device.device);
    if (dev === undefined) return 0;
    const user = a.device.user;
    let count = 0;
    // sender user → ids newly delivered to this (recipient) user
    const delivered: Groups = new Map();
    // A client acks what it read, in order: per run of consecutive offsets, one read and one
    // delete (a `DELETE … RETURNING` cost more than the two: it buffers what it returns).
    for (const [lo, hi] of offsetRuns(a.offsets)) {
      const taken = sql.entriesAcked.all(dev, lo, hi) as TakenRow[];
      if (taken.length > 0) sql.entriesDelete.run(dev, lo, hi);
      for (const e of taken) {
        w.removed(dev, e.size);
        const message = sharedMessage(e.message);
        if (message !== undefined) {
          // A shared body: the user is told once, by whichever of its devices acks first. The last
          // reference only looks (its mark would go with the message in this transaction).
          // (No row is unreachable: releases keep refs right.)
          const m = sql.ackedMessage.get(user, message) as AckedMessage | undefined;
          if (m !== undefined) {
            tellSender(delivered, { from: m.from_user, id: m.msg_id }, user, () =>
              m.refs === 1 ? m.told === 0 : sql.markDelivered.run(message, user).changes === 1,
            );
            releaseMessage(message, 1, m.refs);
          }
        } else if (e.from_user !== null) {
          tellSender(delivered, { from: e.from_user, id: e.msg_id! }, user, () => true); // its only entry
        }
        if (e.event !== null) releaseEvent(e.event);
        count++;
      }
    }
    fanOut(w, delivered, 'delivered', a.now, notify, written);
    return count;
  }

  /** Takes the acks waiting for a commit, to run them in the caller's transaction. */
  function takeAcks(): PendingAck[] {
    const batch = pendingAcks;
    pendingAcks = [];
    return batch;
  }

  /** Runs taken acks inside a running transaction: one result per ack. */
  function acksIn(w: Writer, batch: PendingAck[]): NotifyResult[] {
    return batch.map((a) => {
      const notify = new NotifySet();
      const entries: WrittenEntry[] = [];
      const count = ackIn(w, a, notify, entries);
      return entries.length > 0 ? { count, notify: notify.list, entries } : { count, notify: notify.list };
    });
  }

  /** Answers committed acks once their commit is on disk. */
  function settleAcks(batch: PendingAck[], results: NotifyResult[], flushed: Promise<void>): void {
    if (batch.length === 0) return;
    flushed.then(
      () => batch.forEach((a, i) => a.resolve(results[i]!)),
      (e: unknown) => batch.forEach((a) => a.reject(e)),
    );
  }

  /**
   * Commits the pending acks, unless a WAL flush is running: a commit made now would wait for the
   * next flush anyway, so the acks wait for the running one to end and do not ask for a flush of
   * their own. The end of a flush releases the engine's next commit batch (one event-loop turn
   * later), whose append takes them into its transaction and shares its flush; only when no append
   * came by the turn after that do they commit on their own (and any flush that starts first
   * commits them just before it, `acksBeforeFlush`). Asking for the next flush at once instead
   * made it start before that append, which then waited for one more: at saturation every other
   * flush and transaction carried acks alone.
   */
  function flushAcks(): void {
    if (closed || pendingAcks.length === 0) return; // close() or an append took them
    if (wal?.busy()) {
      void wal.ended().then(() => setImmediate(() => setImmediate(flushAcks)));
      return;
    }
    const taken = runAcks();
    if (taken) settleAcks(taken.batch, taken.results, synced());
  }

  /** Just before a WAL flush starts: the pending acks commit, and that flush answers them. */
  function acksBeforeFlush(): ((flush: Promise<void>) => void) | undefined {
    if (closed) return undefined;
    const taken = runAcks();
    return taken && ((flush) => settleAcks(taken.batch, taken.results, flush));
  }

  /**
   * Commits every pending ack in one transaction; all of them fail together if it fails (they are
   * rejected here). Acks an append took into its own transaction first are gone by then.
   */
  function runAcks(): { batch: PendingAck[]; results: NotifyResult[] } | undefined {
    const batch = takeAcks();
    if (batch.length === 0) return undefined;
    try {
      const results = tx(() => {
        const w = writer();
        const out = acksIn(w, batch);
        w.flush();
        return out;
      });
      return { batch, results };
    } catch (e) {
      for (const a of batch) a.reject(e);
      return undefined;
    }
  }

  // Group messages a crash (or a failed slice) left half-sliced are written to the end first.
  try {
    slicer.resumeAll();
  } catch (e) {
    if (owned) db.close();
    throw e;
  }

  return {
    name: 'sqlite',
    capabilities: {
      pushTokens: true,
      inboxSize: true,
      ping: true,
      atomicBatch: true,
      actionCounts: true,
      slicedAppend: true,
    },

    async registerDevice(device: DeviceAddress, now: number): Promise<NotifyResult> {
      check();
      assertNotPending(LABEL, device);
      return durably(() => {
        // A pending inbox exists only while its user has no device, so the device is new then.
        const took = sql.takeOver.run(device.device, now, device.user, PENDING_DEVICE).changes === 1;
        if (!took && sql.insertDevice.run(device.user, device.device, now).changes === 0) {
          return { count: 0, notify: [] };
        }
        directory.forget(device.user);
        const { id } = sql.deviceId.get(device.user, device.device) as { id: number };
        const count = joinSnapshots(device.user, id, now);
        const waiting = count > 0 || (took && sql.inboxAny.get(id) !== undefined);
        return { count, notify: waiting ? [{ user: device.user, device: device.device }] : [] };
      });
    },

    async registerUser(user: string, now: number): Promise<boolean> {
      check();
      return durably(() => {
        if (devicesOf(user).length > 0) return false; // a device, or a pending inbox already
        sql.insertDevice.run(user, PENDING_DEVICE, now);
        directory.forget(user);
        const { id } = sql.deviceId.get(user, PENDING_DEVICE) as { id: number };
        joinSnapshots(user, id, now);
        return true;
      });
    },

    async unregisterUser(user: string): Promise<string[] | undefined> {
      check();
      return durably(() => {
        const rows = devicesOf(user);
        if (rows.length === 0) return undefined;
        for (const r of rows) dropDevice(r.id);
        directory.forget(user);
        return realDevices(rows.map((r) => r.device));
      });
    },

    async unregisterDevice(device: DeviceAddress): Promise<boolean> {
      check();
      return durably(() => {
        const row = sql.deviceId.get(device.user, device.device) as { id: number } | undefined;
        if (!row) return false;
        dropDevice(row.id);
        directory.forget(device.user);
        return true;
      });
    },

    async devices(user: string): Promise<string[]> {
      check();
      syncDirectory();
      return realDevices(devicesOf(user).map((r) => r.device));
    },

    async append(batch: AppendInput[], now: number, options?: AppendOptions): Promise<AppendOutcome[]> {
      check();
      if (batch.length === 0) return [];
      const rows = options?.sliceRows ?? Infinity;
      if (!(rows >= 1)) throw new RangeError(`${LABEL}: sliceRows must be at least 1, got ${rows}`);
      // One transaction for the whole batch and the acks waiting for theirs (they come from
      // earlier frames, so they go first), and one WAL flush shared with whatever else committed
      // meanwhile (group commit): fewer transactions, fewer WAL pages, fewer checkpoints. With
      // `sliceRows`, a transaction ends after an item it sliced (or past that many entries), and
      // the item's other slices commit before the batch goes on (sqlite-fanout.ts).
      const outcomes: AppendOutcome[] = [];
      const consents: string[] = [];
      while (outcomes.length < batch.length) {
        if (outcomes.length > 0) await pause();
        const from = outcomes.length;
        const acks = takeAcks();
        let ackResults: NotifyResult[] = [];
        const part: Slicing = { rows, pending: [] };
        consentsInTx = [];
        slicing = part;
        let out: AppendOutcome[];
        try {
          out = tx(() => {
            const w = writer();
            ackResults = acksIn(w, acks);
            const done: AppendOutcome[] = [];
            for (let i = from; i < batch.length; i++) {
              done.push(commit(w, batch[i]!, now));
              if (part.deferred || part.pending.length > 0 || w.written() >= rows) break;
            }
            w.flush();
            return done;
          });
        } catch (e) {
          for (const a of acks) a.reject(e);
          throw e;
        } finally {
          slicing = undefined;
        }
        consents.push(...consentsInTx);
        consentsInTx = [];
        outcomes.push(...out);
        const jobs = part.pending;
        if (part.deferred) {
          slicer.adopt(part.deferred, out[out.length - 1] as SlicedOutcome);
          jobs.push(part.deferred);
        }
        if (jobs.length === 0 && outcomes.length === batch.length) {
          // The common case: one transaction, its acks answered by the flush the batch waits for.
          const flushed = synced();
          settleAcks(acks, ackResults, flushed);
          await flushed;
          break;
        }
        settleAcks(acks, ackResults, synced());
        for (const job of jobs) await slicer.finish(job, rows, paceSlice);
        if (outcomes.length === batch.length) await synced();
      }
      if (knownConsents.size + consents.length > MAX_KNOWN_CONSENTS) knownConsents.clear();
      for (const k of consents) knownConsents.add(k);
      return outcomes;
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
      const walk: ExpiryWalk = { after: 0, done: false };
      for (;;) {
        count += expireStep(cutoff, now, notify, walk);
        if (walk.done) break;
        await yieldToEventLoop();
        if (closed) return { count, notify: notify.list };
      }
      for (;;) {
        const { changes } = sql.expireDedupe.run(cutoff, expiryBatchSize);
        if (changes < expiryBatchSize) break;
        await yieldToEventLoop();
        if (closed) break;
      }
      // The senders are told `expired` only once the entries' removal is durable.
      await synced();
      return { count, notify: notify.list };
    },

    async group(id: string): Promise<GroupState | undefined> {
      check();
      const g = loadGroup(id);
      return g && { id, name: g.name, ver: g.ver, members: snapshotOf(g) };
    },

    async groupsOf(user: string): Promise<string[]> {
      check();
      return (sql.groupsOf.all(user) as Array<{ group_id: string }>).map((r) => r.group_id);
    },

    async related(viewer: string, target: string): Promise<boolean> {
      check();
      if (viewer === target) return true;
      return (
        sql.consentGet.get(viewer, target) !== undefined || sql.groupConsent.get(viewer, target) !== undefined
      );
    },

    async setLastSeen(user: string, ts: number): Promise<void> {
      check();
      if (Number.isNaN(ts)) return; // never newer than anything
      sql.lastSeenSet.run(user, ts);
      await synced();
    },

    async lastSeen(user: string): Promise<number | undefined> {
      check();
      return (sql.lastSeenGet.get(user) as { ts: number } | undefined)?.ts;
    },

    async setPushToken(device: DeviceAddress, token: PushToken | undefined): Promise<void> {
      check();
      if (token) sql.pushSet.run(token.kind, token.token, device.user, device.device);
      else sql.pushDelete.run(device.user, device.device);
      await synced();
    },

    async pushToken(device: DeviceAddress): Promise<PushToken | undefined> {
      check();
      const r = sql.pushGet.get(device.user, device.device) as PushToken | undefined;
      return r && { kind: r.kind, token: r.token };
    },

    async inboxSize(): Promise<number> {
      check();
      return (sql.inboxSize.get() as { n: number }).n;
    },

    async ping(): Promise<void> {
      check();
      sqlitePing(db, LABEL);
    },

    async putKeys(device: DeviceAddress, keys: KeyUpload): Promise<void> {
      check();
      await durably(() => {
        const row = sql.deviceId.get(device.user, device.device) as { id: number } | undefined;
        // A pending inbox never has keys: nobody holds their private halves.
        if (!row || isPendingDevice(device.device)) throw notRegistered(LABEL, device);
        const old = sql.keysGet.get(row.id) as KeysRow | undefined;
        const kind = uploadKind(old?.identity_key, keys, LABEL); // throws: the transaction rolls back
        if (kind === 'reinstall') {
          sql.preKeysDrop.run(row.id);
          sql.kyberPreKeysDrop.run(row.id);
        }
        const { signed, kyber } = keptKeys(keys, old);
        sql.keysPut.run(
          row.id,
          bindBytes(keys.identityKey),
          keys.registrationId,
          signed.id,
          bindBytes(signed.key),
          bindBytes(signed.signature),
          kyber.id,
          bindBytes(kyber.key),
          bindBytes(kyber.signature),
        );
        for (const k of keys.preKeys ?? []) sql.preKeyPut.run(row.id, k.id, bindBytes(k.key));
        for (const k of keys.kyberPreKeys ?? []) {
          sql.kyberPreKeyPut.run(row.id, k.id, bindBytes(k.key), bindBytes(k.signature));
        }
        // Counted after the writes (a re-uploaded id replaced its key): over the quota, throwing
        // rolls the whole upload back.
        const count = (stmt: typeof sql.preKeyCount): number => (stmt.get(row.id) as { n: number }).n;
        if (count(sql.preKeyCount) > quotas.preKeys || count(sql.kyberPreKeyCount) > quotas.preKeys) {
          throw preKeyQuotaError(LABEL, quotas.preKeys);
        }
      });
    },

    async claimKeys(
      users: string | readonly string[],
      device?: string,
      options?: ClaimOptions,
    ): Promise<KeyBundle[]> {
      check();
      // One write transaction for every user and device of the claim (one flush however many are
      // named): no other connection, or process, can take the same one-time key in between. A
      // claim that took no one-time key wrote nothing, so it has nothing to wait for: claims of
      // last-resort bundles (a drained device, a claimer past its one-time budget) cost no flush.
      let took = false;
      const bundles = tx(() =>
        claimedUsers(users).flatMap((user) => {
          const rows = (
            device === undefined ? sql.bundlesOf.all(user) : sql.bundleOf.all(user, device)
          ) as BundleRow[];
          return rows.map((r) => {
            if (!(options?.oneTime?.(r.device, user) ?? true))
              return bundleFrom(user, r.device, r, undefined, undefined);
            const pre = sql.preKeyClaim.get(r.id) as { key_id: number; key: Uint8Array } | undefined;
            const kyber = sql.kyberPreKeyClaim.get(r.id) as
              { key_id: number; key: Uint8Array; signature: Uint8Array } | undefined;
            if (pre || kyber) took = true;
            return bundleFrom(user, r.device, r, pre, kyber);
          });
        }),
      );
      if (took) await synced();
      return bundles;
    },

    async countActions(
      kind: string,
      users: readonly string[],
      windowMs: number,
      now: number,
    ): Promise<number[]> {
      check();
      const win = actionWindow(now, windowMs);
      // One write transaction (SQLite's write lock orders it against every other process), not
      // waited on for a flush: a count a crash forgets only lets a user one action more.
      return tx(() => users.map((user) => (sql.countAction.get(kind, user, win) as { n: number }).n));
    },

    async keyCount(device: DeviceAddress): Promise<{ preKeys: number; kyberPreKeys: number } | undefined> {
      check();
      const r = sql.keyCount.get(device.user, device.device) as { pre: number; kyber: number } | undefined;
      return r && { preKeys: r.pre, kyberPreKeys: r.kyber };
    },

    async close(): Promise<void> {
      if (closed) return;
      // Acks already accepted are committed before the file closes.
      const taken = runAcks();
      if (taken) settleAcks(taken.batch, taken.results, synced());
      closed = true;
      await wal?.close();
      await checkpoints?.close();
      if (owned) db.close();
    },
  };
}

export { SQLITE_SERVER_SCHEMA_VERSION } from './sqlite-schema.js';
export { sqliteTraceStore } from './sqlite-trace.js';
export type { SqliteTraceOptions } from './sqlite-trace.js';
