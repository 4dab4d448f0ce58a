/**
 * The PostgreSQL {@link ServerStore} (`postbox/server/postgres`): the durable store for many
 * gateway nodes, on `pg` (an optional peer dependency: install it to use this subpath).
 *
 * **Ack means durable.** Every write is one transaction that runs with `synchronous_commit = on`
 * (set per transaction, whatever the role or server default), so `append` resolves only after
 * PostgreSQL has flushed its commit record. Each `append(batch)` is exactly one transaction: the
 * server engine batches concurrent sends into one call, so a batch costs one WAL flush (group
 * commit); the dedupe keys and bodies of its plain 1:1 messages go in with one multi-row statement
 * (see postgres-claim.ts) and the inbox entries of the whole batch with one more.
 *
 * **No skip across nodes.** Offsets come from a per-device head row (`inbox_heads.last_offset`),
 * locked (`SELECT … ORDER BY dev FOR UPDATE`) at the end of the writing transaction and held until
 * its `COMMIT`. Two transactions that write to one inbox therefore take its offsets one after the
 * other and commit in that order, so a reader never sees offset 6 committed while 5 is still to
 * come — which a sequence (or `serial`) could not promise. Locking every head in device order, as
 * the last step, keeps writers of overlapping device sets from deadlocking; the rarer deadlocks
 * elsewhere (two batches with the same two dedupe keys in opposite orders) are retried.
 *
 * The schema, its indexes and how to partition it are in `docs/postgres.md`; the tables are
 * those of the SQLite store (see `postbox/server/sqlite`) with `inbox_heads` split out of
 * `devices`, and migrations are versioned in `postbox_schema`, each step in its own transaction
 * under an advisory lock, so nodes starting together apply each step once (postgres-schema.ts).
 *
 * Longer than 500 lines: the batch writer and its lock order, the batch's reads and claims,
 * acks, expiry and the key directory (the schema and its migrations are in postgres-schema.ts).
 * The append rules (refusals, targets, consent, statuses) come from the shared planner
 * (planner.ts, public as the store kit), asked over what the batch loaded; acks' releases,
 * expiry's steps and offsets are still written here.
 * @packageDocumentation
 */
import type { PushToken } from '../push/types.js';
import type {
  AppendInput,
  BeforeWrite,
  AppendOutcome,
  AppendRefusal,
  ClaimOptions,
  DeviceAddress,
  DeviceEnvelope,
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
  WrittenEntry,
  ReceiptInput,
  ServerStore,
} from '../store.js';
import { notRegistered, uploadKind, type Refusal } from './directory.js';
import {
  addressOf,
  changeTargets,
  planMessage,
  planReceipt,
  tellSender,
  tellsSender,
  type AppendReads,
} from './planner.js';
import { deleteAcked } from './postgres-acks.js';
import { claimBundles } from './postgres-keys.js';
import {
  claimDirect,
  claimKey,
  keyedDevices,
  lockGroups,
  markActed,
  originals,
  receiptRecords,
  type DirectClaim,
  type GroupTargets,
  type KeyedRow,
  type ReceiptRecord,
} from './postgres-claim.js';
import {
  ENTRY_VALUE_COLUMNS,
  type EntryValues,
  entryValueArrays,
  entryValueParams,
  lockAndPlace,
} from './postgres-heads.js';
import { planInvites, type PendingInvites } from './invites.js';
import {
  decodeGapStreams,
  encodeGapStreams,
  extendFullNotices,
  GAP_ROW_STATUS,
  GapCollector,
  type DroppedMessage,
} from './gap-notices.js';
import { isStalePlan, preparedPool, StatementNames } from './postgres-prepared.js';
import { migratePostgresServerStore } from './postgres-schema.js';
import {
  brokenConnection,
  guardConnection,
  makePool,
  pingPostgres,
  quoteSchemaName,
} from './postgres-pool.js';
import {
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
} from './relational.js';
import { assertNotPending, isPendingDevice, PENDING_DEVICE, realDevices } from '../users.js';
import {
  OverQuota,
  planInboxes,
  actionWindow,
  overGroupQuota,
  preKeyQuotaError,
  resolveQuotas,
  type InboxUsage,
  type StoreQuotas,
} from '../quotas.js';

/** The result of a query, as far as the store reads it (a structural subset of `pg`'s). */
export interface PgQueryResult {
  rows: unknown[];
  rowCount: number | null;
}

/** Something that runs a parameterised query: a `pg` `Client`, `PoolClient` or `Pool`. */
export interface PgQueryable {
  query(text: string, values?: unknown[]): Promise<PgQueryResult>;
}

/**
 * A named statement, as `pg` takes it (`query({ name, text, values })`): prepared on a connection
 * the first time it runs there, then only bound and run (see `preparedStatements`).
 */
export interface PgNamedQuery {
  name: string;
  text: string;
  values: unknown[];
}

/** A connection checked out of a pool (a structural subset of `pg`'s `PoolClient`). */
export interface PgPoolClient extends PgQueryable {
  /** Runs a statement; a {@link PgNamedQuery} unless the store's `preparedStatements` is off. */
  query(text: string | PgNamedQuery, values?: unknown[]): Promise<PgQueryResult>;
  /** Returns the connection; with an error, the pool destroys it instead. */
  release(error?: Error | boolean): void;
  /**
   * `pg` emits `error` here when the connection's socket fails (a reset mid-transaction); the store
   * listens, so such a reset fails the call instead of the process.
   */
  on?(event: 'error', listener: (error: Error) => void): unknown;
}

/** The members of a `pg` `Pool` the store uses, so no `pg` type leaks into postbox's API. */
export interface PgPool extends PgQueryable {
  /** Runs a statement; a {@link PgNamedQuery} unless the store's `preparedStatements` is off. */
  query(text: string | PgNamedQuery, values?: unknown[]): Promise<PgQueryResult>;
  connect(): Promise<PgPoolClient>;
  end(): Promise<void>;
}

/** Options of {@link openPostgresServerStore} besides where the database is. */
export interface PostgresServerStoreTuning {
  /**
   * The schema the store's tables live in (created when missing). Every statement names it, so
   * the store works on a pool whose `search_path` points elsewhere, and several stores (tenants,
   * test runs) can share one database.
   * @default 'public'
   */
  schema?: string;
  /**
   * Most inbox entries one expiry transaction removes (and, separately, most dedupe records one
   * statement deletes). Expiry loops over such batches, committing each, so a large backlog never
   * holds locks, or bloats one transaction, for long.
   * @default 1000
   */
  expiryBatchSize?: number;
  /**
   * How many times a transaction that PostgreSQL aborted as a deadlock victim or a serialization
   * failure is run again (after a short random wait) before the call rejects.
   * @default 5
   */
  maxRetries?: number;
  /**
   * Idle connections of the store's own pool that fail: reset by a database restart, failover,
   * pgbouncer or firewall (the pool drops such a connection and opens a new one on the next
   * call). A reset while a call uses a connection is not reported here: that call rejects.
   * `postbox serve` logs them as warnings.
   * @default ignored
   */
  onError?: (error: unknown) => void;
  /** Storage quotas (see {@link StoreQuotas}). @default DEFAULT_QUOTAS */
  quotas?: Partial<StoreQuotas>;
  /**
   * Fault hook for tests (see {@link BeforeWrite}), called before each writing statement
   * (`INSERT`, `UPDATE … SET`, `DELETE`, also inside a `WITH`) of a transaction; its throw rolls
   * the transaction back, and is not retried.
   * @default none
   */
  beforeWrite?: BeforeWrite;
  /**
   * Sends the store's statements as named (prepared) statements: each connection parses and plans
   * a statement once instead of on every call, which took PostgreSQL's CPU per one-message append
   * from 2.24 to 0.58 ms (docs/postgres.md). Turn it off behind a connection pooler in transaction
   * mode that does not track prepared statements (PgBouncer before 1.21, or without
   * `max_prepared_statements`), where a named statement may land on a server connection that
   * never prepared it.
   * @default true
   */
  preparedStatements?: boolean;
}

/**
 * Options of {@link openPostgresServerStore}: either `connectionString` (the store makes a pool of
 * `poolSize` connections and ends it on `close()`) or `pool` (a `pg` `Pool` the caller keeps
 * owning), plus the {@link PostgresServerStoreTuning} knobs.
 */
export type PostgresServerStoreOptions = (
  | {
      /** A libpq connection string or URI, e.g. `postgres://app@db.internal/postbox`. */
      connectionString: string;
      /**
       * Connections in the store's own pool.
       * @default 10
       */
      poolSize?: number;
      /**
       * How long opening a connection, or waiting for a free one of the pool, may take before the
       * call fails (so an unreachable database fails sends in bounded time). A libpq
       * `connect_timeout` (seconds) in a URL `connectionString` is read when this is not given.
       * @default 5000
       */
      connectTimeoutMs?: number;
      /**
       * How long one statement may go unanswered before its call fails and its connection is
       * dropped: what bounds a call when the database vanishes without a reset (a partition, a
       * dead host). A `query_timeout` (ms) in a URL `connectionString` overrides it. Schema
       * migrations at open run without it.
       * @default 10000
       */
      queryTimeoutMs?: number;
      pool?: never;
    }
  | {
      /**
       * An open `pg` `Pool`; the store never ends it. Its owner handles the pool's `error` events
       * and sets its timeouts (`connectionTimeoutMillis`, `query_timeout`): without them an idle
       * connection's reset kills the process, and a vanished database hangs calls.
       */
      pool: PgPool;
      connectionString?: never;
    }
) &
  PostgresServerStoreTuning;

/**
 * The PostgreSQL server store: a {@link ServerStore} named `'postgres'` that keeps push tokens too
 * (so any node can wake any device).
 */
export type PostgresServerStore = ServerStore &
  Required<Pick<ServerStore, 'setPushToken' | 'pushToken'>> & { readonly name: 'postgres' };

const LABEL = 'postgres server store';

/** The outcome of an item whose dedupe key was committed at `ts`. */
const duplicateOf = (ts: number): AppendOutcome => ({ ok: true, ts, duplicate: true, notify: [] });

/** Deadlock victim, serialization failure: the transaction may simply run again. */
const RETRYABLE = new Set(['40P01', '40001']);

/** A statement that changes rows: `INSERT INTO`, `DELETE FROM`, `UPDATE t SET` (also in a `WITH`). */
const WRITING = /\b(INSERT\s+INTO|DELETE\s+FROM)\b|\bUPDATE\s+[\w."$]+(\s+(AS\s+)?\w+)?\s+SET\b/i;

/** `c`, asking `beforeWrite` (a test's fault hook) before each statement that changes rows. */
function hookWrites(c: PgQueryable, beforeWrite: BeforeWrite): PgQueryable {
  return {
    query(text, values) {
      const write = WRITING.exec(text);
      try {
        if (write) beforeWrite(write[0].split(/\s+/)[0]!.toUpperCase());
      } catch (e) {
        return Promise.reject(e);
      }
      return c.query(text, values);
    },
  };
}

/** A deadlock victim, a serialization failure, or a named statement gone stale (postgres-prepared.ts). */
const isRetryable = (e: unknown): boolean =>
  typeof e === 'object' &&
  e !== null &&
  (RETRYABLE.has((e as { code?: unknown }).code as string) || isStalePlan(e));

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** `BEGIN` for a write: the commit waits for the WAL flush even where the default says otherwise. */
const BEGIN_DURABLE = 'BEGIN; SET LOCAL synchronous_commit = on';

interface DeviceRow {
  id: number;
  user: string;
  device: string;
}

/** What `claimBatch` did for one 1:1 item of a batch. */
interface Claimed {
  /** The body id (0: claimed without a body: a receipt, a message to no device), or null: its key was known. */
  id: number | null;
  /**
   * A message claimed here: its target devices, for an end-to-end encrypted one each target's body
   * (checked against the directory) in target order, and whether writing it consents its sender to
   * its recipient (the planner's `consent`).
   */
  targets?: {
    devices: Array<{ id: number; user: string; device: string }>;
    bodies?: Uint8Array[];
    consent: boolean;
  };
  /** A message refused here (the planner's refusal): its key was not claimed. */
  refusal?: Refusal;
  /** A receipt's ids that count, when read with the batch's (see `claimBatch`). */
  ids?: string[];
}

/** `claimBatch`'s result: each claimed item by batch index, and each message's by its dedupe key. */
interface BatchClaims {
  items: Map<number, Claimed>;
  at: Map<string, number>;
  /**
   * The commit times of the items `claimBatch` found known or refused (a duplicate answers with
   * its original's), by dedupe key (see `claimKey`).
   */
  known: Map<string, number>;
}

interface InboxRow {
  pos: string;
  ts: string;
  message: string | null;
  status: string | null;
  ids: string | null;
  by_user: string | null;
  event: string | null;
  from_user: string | null;
  from_device: string | null;
  msg_id: string | null;
  to_user: string | null;
  to_group: boolean | null;
  seq: string | null;
  mts: string | null;
  body: Uint8Array | null;
  own_body: Uint8Array | null;
  event_data: Uint8Array | null;
}

/** A removed inbox entry with what ack and expiry need to know about its message. */
interface RemovedRow {
  dev: string;
  pos: string;
  message: string | null;
  event: string | null;
  owner?: string;
  from_user: string | null;
  msg_id: string | null;
  /** Body bytes the entry counted for in its inbox's quota. */
  size: number;
  /** Expiry only: the device's id and, for a message, the rest of its stream. */
  owner_device?: string;
  from_device?: string | null;
  to_user?: string | null;
  to_group?: boolean | null;
  seq?: string | null;
  status?: string | null;
  ids?: string | null;
}

/** An ack waiting for the next group commit. */
interface PendingAck {
  device: DeviceAddress;
  offsets: number[];
  now: number;
  resolve(result: NotifyResult): void;
  reject(error: unknown): void;
}

/** An inbox entry to insert when the transaction takes its offsets. */
/** Status entries one ack wrote, and the offsets the writer's flush gives them (same order). */
interface WrittenStatuses {
  offsets: number[];
  list: WrittenEntry[];
}

interface NewEntry extends EntryValues {
  /** An {@link EntryStatus}, or `'gap'` for a gap notice. */
  status: EntryStatus | typeof GAP_ROW_STATUS | null;
  /** The batch index of the client item it belongs to (checked against the quotas). */
  item?: number | undefined;
  /** The item's message, when it may skip a full device (see `placeItem`): what its notice names. */
  stream?: DroppedMessage | undefined;
  /** The item may skip full devices (see `placeItem`). */
  partial?: boolean;
  /** Its device is one of the sender's user's. */
  own?: boolean;
  /** Where to report the offset: `sink[slot]`. */
  sink?: number[];
  slot?: number;
}

const EMPTY = new Uint8Array(0);

/** Bound of the per-store cache of consents known to be stored. */
const MAX_KNOWN_CONSENTS = 100_000;

/**
 * Opens a {@link ServerStore} on PostgreSQL: connects (or takes `pool`), migrates the schema (see
 * {@link migratePostgresServerStore}) and resolves with the store. Async because migrations are;
 * every node of a deployment may call it at start-up.
 *
 * Several stores (nodes) on one schema are the intended deployment: every rule of the contract,
 * the no-skip rule and one-time key claims included, holds across them.
 *
 * @example
 * ```ts
 * import { createServer } from 'postbox/server';
 * import { openPostgresServerStore } from 'postbox/server/postgres';
 *
 * const store = await openPostgresServerStore({ connectionString: process.env.DATABASE_URL! });
 * const server = createServer({ store, authenticate });
 * ```
 */
export async function openPostgresServerStore(
  options: PostgresServerStoreOptions,
): Promise<PostgresServerStore> {
  const expiryBatchSize = options.expiryBatchSize ?? 1000;
  if (!Number.isInteger(expiryBatchSize) || expiryBatchSize < 1) {
    throw new RangeError(`${LABEL}: expiryBatchSize must be a positive integer, got ${expiryBatchSize}`);
  }
  const maxRetries = options.maxRetries ?? 5;
  const quotas = resolveQuotas(options.quotas, LABEL);
  const schema = options.schema ?? 'public';
  const s = quoteSchemaName(schema, LABEL);
  const named = (pool: PgPool): PgPool =>
    options.preparedStatements === false ? pool : preparedPool(pool, new StatementNames());
  if (options.pool) {
    await migratePostgresServerStore(options.pool, schema);
    return postgresStore(
      named(options.pool),
      false,
      s,
      expiryBatchSize,
      maxRetries,
      quotas,
      options.beforeWrite,
    );
  }
  const settings = {
    connectionString: options.connectionString,
    max: options.poolSize ?? 10,
    connectTimeoutMs: options.connectTimeoutMs,
    queryTimeoutMs: options.queryTimeoutMs,
    onError: options.onError ?? (() => {}),
  };
  const migrations = makePool(settings, true) as unknown as PgPool;
  try {
    await migratePostgresServerStore(migrations, schema);
  } finally {
    await migrations.end();
  }
  return postgresStore(
    named(makePool(settings) as unknown as PgPool),
    true,
    s,
    expiryBatchSize,
    maxRetries,
    quotas,
    options.beforeWrite,
  );
}

function postgresStore(
  pool: PgPool,
  owned: boolean,
  s: string,
  expiryBatchSize: number,
  maxRetries: number,
  quotas: StoreQuotas,
  beforeWrite: BeforeWrite | undefined,
): PostgresServerStore {
  let closed = false;
  function check(): void {
    if (closed) throw new Error(`${LABEL}: the store is closed`);
  }

  /**
   * Consents known to be stored (`consents` rows are never deleted), so that a conversation's
   * next messages skip the insert. A cache: cleared when it grows past its bound.
   */
  const knownConsents = new Set<string>();

  /** Writes still running, so that `close()` waits for them before ending the pool. */
  const running = new Set<Promise<unknown>>();
  function track<T>(p: Promise<T>): Promise<T> {
    running.add(p);
    const done = () => running.delete(p);
    p.then(done, done);
    return p;
  }

  /**
   * Runs `fn` in one durable transaction on one connection, again (with a fresh `fn` state) when
   * PostgreSQL picked it as a deadlock victim or a serialization failure.
   */
  function tx<T>(fn: (c: PgQueryable) => Promise<T>): Promise<T> {
    return track(
      (async () => {
        for (let attempt = 0; ; attempt++) {
          const c = await pool.connect();
          guardConnection(c);
          try {
            await c.query(BEGIN_DURABLE);
            const out = await fn(beforeWrite ? hookWrites(c, beforeWrite) : c);
            await c.query('COMMIT');
            c.release();
            return out;
          } catch (e) {
            // A COMMIT lost with its connection may have committed or not: the caller does not
            // ack, the client resends, and dedupe answers a resend of what did commit.
            let broken = brokenConnection(e);
            if (!broken) await c.query('ROLLBACK').catch(() => (broken = true));
            c.release(broken);
            if (attempt >= maxRetries || !isRetryable(e)) throw e;
            await sleep(Math.random() * 10 * (attempt + 1));
          }
        }
      })(),
    );
  }

  const rowsOf = async <R>(c: PgQueryable, text: string, values?: unknown[]): Promise<R[]> =>
    (await c.query(text, values)).rows as R[];

  const deviceRow = (r: { id: string; user: string; device: string }): DeviceRow => ({
    id: Number(r.id),
    user: r.user,
    device: r.device,
  });

  /**
   * The per-transaction view of device lists, and the entries the transaction adds. Offsets are
   * taken only in {@link Writer.flush}, the last step before `COMMIT`: it locks the head rows of
   * every device written to, in device order, so the locks are held for as short a time as
   * possible and two transactions never wait for each other's heads in a cycle.
   */
  class Writer {
    private readonly devices = new Map<string, DeviceRow[]>();
    private readonly entries: NewEntry[] = [];
    /** Consents this transaction wrote (known to the store once it commits). */
    readonly consents = new Set<string>();
    /** (viewer, target) pairs to insert at {@link Writer.flush}. */
    private newConsents: Array<[string, string]> = [];
    /** Offset sinks with an entry dropped because its device was unregistered meanwhile. */
    readonly broken = new Set<number[]>();
    /** Entries and bytes this transaction deleted, per device (taken off its head's counts). */
    private readonly freed = new Map<number, InboxUsage>();
    /** The batch index of the client item being committed (its entries are quota-checked). */
    item: number | undefined;
    /** The message being committed, when it may skip full devices (see `placeItem`). */
    stream: DroppedMessage | undefined;
    constructor(private readonly c: PgQueryable) {}

    /** Takes deleted entries off their inboxes' counts at {@link Writer.flush}. */
    released(rows: RemovedRow[]): void {
      for (const r of rows) {
        const dev = Number(r.dev);
        const f = this.freed.get(dev) ?? { entries: 0, bytes: 0 };
        f.entries++;
        f.bytes += Number(r.size);
        this.freed.set(dev, f);
      }
    }

    /** The user's devices in registration order (read once per transaction). */
    async devicesOf(user: string): Promise<DeviceRow[]> {
      let list = this.devices.get(user);
      if (!list) {
        const rows = await rowsOf<{ id: string; user: string; device: string }>(
          this.c,
          `SELECT id, user_id AS user, device FROM ${s}.devices WHERE user_id = $1 ORDER BY id`,
          [user],
        );
        this.devices.set(user, (list = rows.map(deviceRow)));
      }
      return list;
    }

    /** Reads the device lists of several users in one query. */
    async prefetch(users: string[]): Promise<void> {
      const missing = [...new Set(users)].filter((u) => !this.devices.has(u));
      if (missing.length === 0) return;
      for (const u of missing) this.devices.set(u, []);
      const rows = await rowsOf<{ id: string; user: string; device: string }>(
        this.c,
        `SELECT id, user_id AS user, device FROM ${s}.devices WHERE user_id = ANY($1::text[]) ORDER BY id`,
        [missing],
      );
      for (const r of rows) this.devices.get(r.user)!.push(deviceRow(r));
    }

    /** A prefetched user's devices. */
    known(user: string): DeviceRow[] {
      return this.devices.get(user) ?? [];
    }

    add(e: NewEntry): void {
      e.item = this.item;
      if (this.item !== undefined && this.stream) {
        e.stream = this.stream;
        e.partial = true;
      }
      this.entries.push(e);
    }

    /**
     * Takes the entries of full devices out of the transaction (their bodies' references are
     * released, their items' offsets are not reported) and extends each such device's one
     * `inbox_full` notice by what it missed, under the head locks (`usage`: what each head
     * holds, less the notices replaced). A notice an ack is deleting meanwhile is left to it.
     */
    private async skip(
      skipped: Set<NewEntry>,
      usage: Map<number, InboxUsage>,
      messages: number[],
    ): Promise<void> {
      const missed = new Map<number, { ts: number; list: DroppedMessage[] }>();
      for (const e of skipped) {
        const shared = sharedMessage(e.message);
        if (shared !== undefined) messages.push(shared);
        if (e.sink) this.broken.add(e.sink);
        let m = missed.get(e.dev);
        if (!m) missed.set(e.dev, (m = { ts: e.ts, list: [] }));
        m.list.push(e.stream!);
      }
      this.entries.splice(0, this.entries.length, ...this.entries.filter((e) => !skipped.has(e)));
      const held = await rowsOf<{ dev: string; ids: string | null }>(
        this.c,
        `DELETE FROM ${s}.inbox WHERE (dev, pos) IN (
           SELECT dev, pos FROM ${s}.inbox
           WHERE dev = ANY($1::bigint[]) AND status = '${GAP_ROW_STATUS}' AND by_user = 'inbox_full'
           ORDER BY dev, pos FOR UPDATE SKIP LOCKED
         ) RETURNING dev, ids`,
        [[...missed.keys()]],
      );
      const notices = new Map<number, GapStream[][]>();
      for (const r of held) {
        const dev = Number(r.dev);
        usage.get(dev)!.entries--;
        let list = notices.get(dev);
        if (!list) notices.set(dev, (list = []));
        list.push(decodeGapStreams(r.ids ?? '[]'));
      }
      for (const [dev, m] of missed) {
        for (const streams of extendFullNotices(notices.get(dev) ?? [], m.list)) {
          this.gap(dev, m.ts, 'inbox_full', streams);
        }
      }
    }

    /** Queues a status entry; with `sink`, its offset is reported in `sink[slot]`. */
    status(
      dev: number,
      now: number,
      status: EntryStatus,
      ids: readonly string[],
      by: string,
      sink?: number[],
      slot?: number,
    ): void {
      this.row(dev, now, status, JSON.stringify(ids), by, sink, slot);
    }

    /** A gap notice (see gap-notices.ts for its stored form). */
    gap(dev: number, now: number, reason: GapReason, streams: GapStream[]): void {
      this.row(dev, now, GAP_ROW_STATUS, encodeGapStreams(streams), reason);
    }

    /** A row with neither message nor event: a status or a gap notice. */
    private row(
      dev: number,
      ts: number,
      status: NewEntry['status'],
      ids: string,
      by: string,
      sink?: number[],
      slot?: number,
    ): void {
      this.add({
        dev,
        ts,
        message: null,
        body: null,
        event: null,
        status,
        ids,
        by,
        size: 0,
        ...(sink ? { sink, slot } : {}),
      });
    }

    /** Records that the sender of a 1:1 message consented to its recipient (for `related`). */
    relate(from: string, to: string): void {
      if (from === to) return;
      const k = `${to.length}:${to}${from}`;
      if (this.consents.has(k) || knownConsents.has(k)) return;
      this.consents.add(k);
      this.newConsents.push([to, from]);
    }

    /**
     * Writes the transaction's new consents in one statement, sorted: writers on several nodes
     * inserting the same new pairs then take their index locks in one order (inserted one by one
     * in batch order, they deadlocked).
     */
    private async writeConsents(): Promise<void> {
      if (this.newConsents.length === 0) return;
      const pairs = this.newConsents.sort(([a1, b1], [a2, b2]) =>
        a1 < a2 ? -1 : a1 > a2 ? 1 : b1 < b2 ? -1 : b1 > b2 ? 1 : 0,
      );
      this.newConsents = [];
      await this.c.query(
        `INSERT INTO ${s}.consents (viewer, target) SELECT * FROM unnest($1::text[], $2::text[])
         ON CONFLICT DO NOTHING`,
        [pairs.map((p) => p[0]), pairs.map((p) => p[1])],
      );
    }

    /**
     * Writes the new consents, then takes the offsets (locking the heads) and inserts every new
     * entry in one statement.
     */
    async flush(): Promise<void> {
      await this.writeConsents();
      if (this.entries.length === 0 && this.freed.size === 0) return;
      const c = this.c;
      const devs = [...new Set([...this.entries.map((e) => e.dev), ...this.freed.keys()])].sort(
        (a, b) => a - b,
      );
      const limit = { entries: quotas.inboxEntries, bytes: quotas.inboxBytes };
      const { heads, placed } = await lockAndPlace(c, s, devs, this.freed, this.entries, limit);
      const last = new Map<number, number>();
      if (placed) {
        // Everything fitted and went in with the locks, offsets in entry order per device.
        for (const h of heads) last.set(Number(h.dev), Number(h.last_offset));
        for (const e of this.entries) {
          const pos = last.get(e.dev)! + 1;
          last.set(e.dev, pos);
          if (e.sink) e.sink[e.slot!] = pos;
        }
        return;
      }
      // Each inbox's usage after this transaction's deletes, under the lock: what the quotas see.
      const usage = new Map<number, InboxUsage>();
      for (const h of heads) {
        const dev = Number(h.dev);
        last.set(dev, Number(h.last_offset));
        const f = this.freed.get(dev);
        usage.set(dev, {
          entries: Number(h.entries) - (f?.entries ?? 0),
          bytes: Number(h.bytes) - (f?.bytes ?? 0),
        });
      }
      const plan = planInboxes(quotas, this.entries, new Map([...usage].map(([d, u]) => [d, { ...u }])));
      if (plan.refused.size > 0) throw new OverQuota(plan.refused);
      const droppedMessages: number[] = [];
      if (plan.skipped.size > 0) await this.skip(plan.skipped, usage, droppedMessages);
      const added = new Map<number, InboxUsage>();
      const kept: NewEntry[] = [];
      const positions: number[] = [];
      const droppedEvents: number[] = [];
      for (const e of this.entries) {
        const prev = last.get(e.dev);
        if (prev === undefined) {
          // Unregistered since this transaction listed it: the entry has no inbox to go to.
          const shared = sharedMessage(e.message);
          if (shared !== undefined) droppedMessages.push(shared);
          if (e.event !== null) droppedEvents.push(e.event);
          if (e.sink) this.broken.add(e.sink);
          continue;
        }
        const pos = prev + 1;
        last.set(e.dev, pos);
        const a = added.get(e.dev) ?? { entries: 0, bytes: 0 };
        a.entries++;
        a.bytes += e.size;
        added.set(e.dev, a);
        if (e.sink) e.sink[e.slot!] = pos;
        kept.push(e);
        positions.push(pos);
      }
      if (kept.length > 0 || usage.size > 0) {
        const headDevs = [...last.keys()];
        await c.query(
          `WITH heads AS (
             UPDATE ${s}.inbox_heads h SET last_offset = x.v, entries = x.n, bytes = x.b
             FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[]) AS x(dev, v, n, b)
             WHERE h.dev = x.dev
           )
           INSERT INTO ${s}.inbox (dev, pos, ${ENTRY_VALUE_COLUMNS})
           SELECT * FROM unnest($5::bigint[], $6::bigint[], ${entryValueParams(7)})`,
          [
            headDevs,
            headDevs.map((d) => last.get(d)!),
            headDevs.map((d) => usage.get(d)!.entries + (added.get(d)?.entries ?? 0)),
            headDevs.map((d) => usage.get(d)!.bytes + (added.get(d)?.bytes ?? 0)),
            kept.map((e) => e.dev),
            positions,
            ...entryValueArrays(kept),
          ],
        );
      }
      await release(c, droppedMessages, droppedEvents);
    }
  }

  /**
   * Drops one reference per listed id (repeated ids: several) from bodies and events, deleting
   * those left without any, with their `delivered` marks: one statement per table. It locks the
   * rows in id order first (`l`), so transactions releasing overlapping bodies wait for each other
   * rather than deadlock, and decides from the counts it locked, which are the latest committed:
   * a row that keeps references is updated, one that keeps none deleted (never both: a statement
   * may not change one row twice).
   */
  async function release(c: PgQueryable, messages: number[], events: number[]): Promise<void> {
    for (const [table, ids] of [
      ['messages', messages],
      ['group_events', events],
    ] as const) {
      if (ids.length === 0) continue;
      const counts = new Map<number, number>();
      for (const id of ids) counts.set(id, (counts.get(id) ?? 0) + 1);
      const keys = [...counts.keys()].sort((a, b) => a - b);
      const gone = `DELETE FROM ${s}.${table} t USING l WHERE t.id = l.id AND l.refs <= l.n RETURNING t.id`;
      await c.query(
        `WITH x AS (
           SELECT * FROM unnest($1::bigint[], $2::int[]) AS x(id, n)
         ), l AS (
           SELECT t.id, t.refs, x.n FROM ${s}.${table} t JOIN x ON x.id = t.id ORDER BY t.id FOR UPDATE OF t
         ), kept AS (
           UPDATE ${s}.${table} t SET refs = l.refs - l.n FROM l WHERE t.id = l.id AND l.refs > l.n
         )${
           table === 'messages'
             ? `, gone AS (${gone})
                DELETE FROM ${s}.delivered WHERE message IN (SELECT id FROM gone)`
             : ` ${gone}`
         }`,
        [keys, keys.map((k) => counts.get(k)!)],
      );
    }
  }

  /** Stores one form of an event once, referenced by `refs` entries (none: nothing stored). */
  async function storeEvent(c: PgQueryable, event: GroupEvent, refs: number): Promise<number | null> {
    if (refs === 0) return null;
    const [row] = await rowsOf<{ id: string }>(
      c,
      `INSERT INTO ${s}.group_events (data, refs) VALUES ($1, $2) RETURNING id`,
      [encodeEvent(event), refs],
    );
    return Number(row!.id);
  }

  /**
   * Takes a transaction-scoped advisory lock per user, in one global order. Linking a device and
   * adding its user to a group both take it, so they cannot miss each other: without it, a
   * device linked (on one node) while its user joins a group (on another) would read the
   * membership before the join commits while the join reads the devices before the link commits,
   * and the new device would never learn the group.
   */
  async function lockUsers(c: PgQueryable, users: string[]): Promise<void> {
    if (users.length === 0) return;
    await c.query(
      `SELECT pg_advisory_xact_lock(k) FROM (
         SELECT hashtextextended($1 || u, 0) AS k FROM unnest($2::text[]) AS u ORDER BY u
       ) AS keys`,
      [`postbox:${s}:user:`, [...new Set(users)]],
    );
  }

  /**
   * A device new to the store (or a new pending inbox) learns its user's groups from snapshots,
   * as a newly added member would; inside the caller's transaction. Returns how many.
   */
  async function joinSnapshots(c: PgQueryable, user: string, dev: number, now: number): Promise<number> {
    const w = new Writer(c);
    const groups = await rowsOf<{ group_id: string }>(
      c,
      `SELECT group_id FROM ${s}.group_members WHERE user_id = $1 ORDER BY joined`,
      [user],
    );
    for (const { group_id: id } of groups) {
      const g = (await loadGroup(c, id, 'FOR SHARE'))!;
      const ev = await storeEvent(c, joinSnapshot(id, g, user), 1);
      w.add({
        dev,
        ts: now,
        message: null,
        body: null,
        event: ev,
        status: null,
        ids: null,
        by: null,
        size: 0,
      });
    }
    await w.flush();
    return groups.length;
  }

  /**
   * Removes devices (or a pending inbox) whose head and device rows the caller's transaction has
   * locked: their entries (releasing bodies and events in one step, so in one lock order), heads,
   * keys, push tokens and rows.
   */
  async function dropDevices(c: PgQueryable, devs: string[]): Promise<void> {
    const removed = await rowsOf<{ message: string | null; event: string | null }>(
      c,
      `DELETE FROM ${s}.inbox WHERE dev = ANY($1::bigint[]) RETURNING message, event`,
      [devs],
    );
    await release(
      c,
      removed.flatMap((r) => sharedMessage(r.message) ?? []),
      removed.flatMap((r) => (r.event === null ? [] : [Number(r.event)])),
    );
    await c.query(
      `WITH h AS (DELETE FROM ${s}.inbox_heads WHERE dev = ANY($1::bigint[])),
            k AS (DELETE FROM ${s}.device_keys WHERE dev = ANY($1::bigint[])),
            p AS (DELETE FROM ${s}.prekeys WHERE dev = ANY($1::bigint[])),
            q AS (DELETE FROM ${s}.kyber_prekeys WHERE dev = ANY($1::bigint[])),
            t AS (DELETE FROM ${s}.push_tokens WHERE dev = ANY($1::bigint[]))
       DELETE FROM ${s}.devices WHERE id = ANY($1::bigint[])`,
      [devs],
    );
  }

  async function loadGroup(c: PgQueryable, id: string, lock = ''): Promise<GroupView | undefined> {
    const [row] = await rowsOf<{ name: string; ver: number }>(
      c,
      `SELECT name, ver FROM ${s}.groups WHERE id = $1 ${lock}`,
      [id],
    );
    if (!row) return undefined;
    const members = new Map<string, GroupRole>();
    const list = await rowsOf<GroupMember>(
      c,
      `SELECT user_id AS user, role FROM ${s}.group_members WHERE group_id = $1 ORDER BY joined`,
      [id],
    );
    for (const m of list) members.set(m.user, m.role);
    return { name: row.name, ver: row.ver, members };
  }

  /**
   * Claims `(from, id)` for this item: true when it is new. A concurrent transaction holding the
   * same key makes the insert wait for its outcome (the unique key is the dedupe). A 1:1 message
   * records its recipient (a group message's record is completed by its commit).
   */
  async function claim(c: PgQueryable, item: AppendInput, now: number): Promise<boolean> {
    const to = item.kind === 'msg' ? item.to : null;
    const r = await c.query(
      `INSERT INTO ${s}.dedupe (from_user, from_device, msg_id, ts, to_user) VALUES ($1, $2, $3, $4, $5)
       ON CONFLICT DO NOTHING`,
      [item.from.user, item.from.device, item.id, now, to],
    );
    return r.rowCount === 1;
  }

  /** Gives back the claim of an item that was refused: a refusal writes nothing. */
  async function unclaim(c: PgQueryable, item: AppendInput): Promise<void> {
    await c.query(`DELETE FROM ${s}.dedupe WHERE from_user = $1 AND from_device = $2 AND msg_id = $3`, [
      item.from.user,
      item.from.device,
      item.id,
    ]);
  }

  async function commitGroup(
    c: PgQueryable,
    w: Writer,
    item: GroupInput,
    now: number,
  ): Promise<AppendOutcome> {
    const change = item.change;
    // Users who may join: their devices being linked meanwhile wait, or are waited for (below).
    // Users invited too: their pending invites are counted against their quota below, and a
    // concurrent invite on another node must wait for this one's to be committed (or not made).
    if (change.op === 'create')
      await lockUsers(c, [item.from.user, ...change.members, ...(change.invite ?? [])]);
    else if (change.op === 'add') await lockUsers(c, [...change.members, ...(change.invite ?? [])]);
    else if (change.op === 'accept') await lockUsers(c, [item.from.user]);
    const current = await loadGroup(c, item.group, 'FOR UPDATE');
    const named = [
      'members' in change ? change.members : [],
      'invite' in change ? (change.invite ?? []) : [],
      item.from.user,
    ].flat();
    await w.prefetch(named);
    const invited = await rowsOf<{ user_id: string; here: boolean; n: string }>(
      c,
      `SELECT user_id, bool_or(group_id = $1) AS here, count(*) AS n FROM ${s}.group_invites
       WHERE user_id = ANY($2::text[]) GROUP BY user_id`,
      [item.group, [...new Set(named)]],
    );
    const pending: PendingInvites = {
      has: (u) => invited.some((r) => r.user_id === u && r.here),
      count: (u) => Number(invited.find((r) => r.user_id === u)?.n ?? 0),
    };
    const hasDevice = (u: string): boolean => w.known(u).length > 0;
    const plan = planChange(item, current, hasDevice, pending.has);
    if (typeof plan === 'string') return { ok: false, code: plan };
    if (plan && plan.joined.length > 0) {
      // Counted under the joining users' locks (taken above), so two nodes cannot both pass it.
      const rows = await rowsOf<{ user_id: string; n: string }>(
        c,
        `SELECT user_id, count(*) AS n FROM ${s}.group_members WHERE user_id = ANY($1::text[]) GROUP BY user_id`,
        [plan.joined],
      );
      const counts = new Map(rows.map((r) => [r.user_id, Number(r.n)]));
      if (overGroupQuota(plan.joined, (u) => counts.get(u) ?? 0, quotas.groupsPerUser) !== undefined) {
        return { ok: false, code: 'quota_exceeded' };
      }
    }
    const invites = planInvites(item, current, plan, hasDevice, pending, quotas.invitesPerUser);
    if (typeof invites === 'string') return { ok: false, code: invites };
    const notify = new NotifySet();
    if (plan !== null) {
      const refused = await applyPlan(c, w, item, plan, now, notify);
      if (refused) return { ok: false, code: refused };
    }
    if (invites.drop.length > 0) {
      await c.query(`DELETE FROM ${s}.group_invites WHERE group_id = $1 AND user_id = ANY($2::text[])`, [
        item.group,
        invites.drop,
      ]);
    }
    if (invites.add.length > 0) {
      await c.query(
        `INSERT INTO ${s}.group_invites (group_id, user_id) SELECT $1, u FROM unnest($2::text[]) AS u
         ON CONFLICT DO NOTHING`,
        [item.group, invites.add.map((a) => a.user)],
      );
    }
    const tell = [...invites.add, ...(invites.own ? [{ user: item.from.user, event: invites.own }] : [])];
    for (const { user, event } of tell) {
      const devices = w.known(user);
      const id = await storeEvent(c, event, devices.length);
      for (const r of devices) {
        w.add({
          dev: r.id,
          ts: now,
          message: null,
          body: null,
          event: id,
          status: null,
          ids: null,
          by: null,
          size: 0,
        });
        notify.add({ user, device: r.device });
      }
    }
    return { ok: true, ts: now, duplicate: false, notify: notify.list };
  }

  /** Writes a planned membership change and queues its events; a refusal when it cannot. */
  async function applyPlan(
    c: PgQueryable,
    w: Writer,
    item: GroupInput,
    plan: ChangePlan,
    now: number,
    notify: NotifySet,
  ): Promise<AppendRefusal | undefined> {
    const { event, after, joined, removed } = plan;
    if (plan.created) {
      const r = await c.query(
        `INSERT INTO ${s}.groups (id, name, ver) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
        [item.group, after.name, after.ver],
      );
      if (r.rowCount !== 1) return 'forbidden'; // created meanwhile by another node
    } else {
      await c.query(`UPDATE ${s}.groups SET name = $1, ver = $2 WHERE id = $3`, [
        after.name,
        after.ver,
        item.group,
      ]);
    }
    if (removed.length > 0) {
      await c.query(`DELETE FROM ${s}.group_members WHERE group_id = $1 AND user_id = ANY($2::text[])`, [
        item.group,
        removed,
      ]);
    }
    if (plan.roles.size > 0) {
      await c.query(
        `UPDATE ${s}.group_members m SET role = x.role FROM unnest($2::text[], $3::text[]) AS x(user_id, role)
         WHERE m.group_id = $1 AND m.user_id = x.user_id`,
        [item.group, [...plan.roles.keys()], [...plan.roles.values()]],
      );
    }
    const marks = membershipMarks(item, plan);
    if (joined.length > 0) {
      // In join order: the identity column orders members by when they joined.
      await c.query(
        `INSERT INTO ${s}.group_members (group_id, user_id, role, since_ver, acted_ver)
         SELECT $1, u, r, $4, CASE WHEN u = $5 THEN $4 ELSE -1 END
         FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS x(u, r, n) ORDER BY n`,
        [item.group, joined, joined.map((u) => after.members.get(u)!), marks.ver, marks.acted ?? null],
      );
    }
    if (marks.acted !== undefined && !joined.includes(marks.acted)) {
      await c.query(`UPDATE ${s}.group_members SET acted_ver = $3 WHERE group_id = $1 AND user_id = $2`, [
        item.group,
        marks.acted,
        marks.ver,
      ]);
    }
    const memberDevices = await rowsOf<{ id: string; user: string; device: string }>(
      c,
      `SELECT d.id, d.user_id AS user, d.device
       FROM ${s}.group_members gm JOIN ${s}.devices d ON d.user_id = gm.user_id
       WHERE gm.group_id = $1 ORDER BY gm.joined, d.id`,
      [item.group],
    );
    await w.prefetch(removed);
    const { targets, full } = changeTargets(plan, memberDevices.map(deviceRow), (u) => w.known(u));
    const fullId = await storeEvent(c, { ...event, name: after.name, snapshot: snapshotOf(after) }, full);
    const deltaId = await storeEvent(c, event, targets.length - full);
    for (const t of targets) {
      w.add({
        dev: t.device.id,
        ts: now,
        message: null,
        body: null,
        event: t.full ? fullId : deltaId,
        status: null,
        ids: null,
        by: null,
        size: 0,
      });
      notify.add(t.device);
    }
    return undefined;
  }

  /**
   * Inserts a group message's body once and queues one entry per target device referencing it;
   * returns the array their offsets will be in once the writer flushes. (1:1 messages, plain or
   * end-to-end encrypted, are stored by `claimBatch`, a batch at a time.)
   */
  async function storeMessage(
    c: PgQueryable,
    w: Writer,
    item: MessageInput,
    targets: Array<{ dev: number; own: boolean }>,
    now: number,
  ): Promise<number[]> {
    if (targets.length === 0) return [];
    const [row] = await rowsOf<{ id: string }>(
      c,
      `INSERT INTO ${s}.messages (from_user, from_device, msg_id, to_user, to_group, seq, ts, body, refs)
       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id`,
      [
        item.from.user,
        item.from.device,
        item.id,
        item.to,
        item.group === true,
        item.seq,
        now,
        item.body,
        targets.length,
      ],
    );
    return queueEntries(w, item, targets, Number(row!.id), now);
  }

  /** Queues a message's one entry holding the message itself (see `inEntry`); returns where its offset goes. */
  function queueInEntry(
    w: Writer,
    item: MessageInput,
    target: { dev: number; own: boolean },
    now: number,
    envelope?: Uint8Array,
  ): number[] {
    const offsets = [0];
    const body = envelope ?? item.body;
    w.add({
      dev: target.dev,
      own: target.own,
      ts: now,
      message: IN_ENTRY,
      body,
      event: null,
      status: null,
      ids: null,
      by: null,
      size: body.byteLength,
      fromUser: item.from.user,
      fromDevice: item.from.device,
      msgId: item.id,
      toUser: item.to,
      seq: item.seq,
      sink: offsets,
      slot: 0,
    });
    return offsets;
  }

  /** Queues one entry per target referencing body `message`; returns where their offsets go. */
  function queueEntries(
    w: Writer,
    item: MessageInput,
    targets: Array<{ dev: number; own: boolean }>,
    message: number,
    now: number,
    bodies?: Uint8Array[],
  ): number[] {
    const offsets: number[] = new Array<number>(targets.length).fill(0);
    targets.forEach(({ dev, own }, i) => {
      w.add({
        dev,
        own,
        ts: now,
        message,
        body: bodies ? bodies[i]! : null,
        event: null,
        status: null,
        ids: null,
        by: null,
        size: (bodies ? bodies[i]! : item.body).byteLength,
        sink: offsets,
        slot: i,
      });
    });
    return offsets;
  }

  /**
   * A group message committed at its turn (after a membership change in its batch, which decides
   * who gets it; the ones before are claimed by `claimBatch`), its key already claimed: the same
   * group lock, member read and marks as there, for this one group.
   */
  async function commitGroupMessage(
    c: PgQueryable,
    w: Writer,
    item: MessageInput,
    now: number,
  ): Promise<AppendOutcome> {
    const plan = planMessage(item, readsOf(w, undefined, await lockGroups(c, s, [item.to])));
    if (!plan.ok) return plan;
    const ver = plan.ver!;
    // Its dedupe record keeps the group's version; sending in a group is taking part in it.
    await c.query(
      `UPDATE ${s}.dedupe SET gver = $4 WHERE from_user = $1 AND msg_id = $3 AND from_device = $2`,
      [item.from.user, item.from.device, item.id, ver],
    );
    await markActed(c, s, [{ group: item.to, user: item.from.user, ver }]);
    const { targets } = plan;
    const offsets = await storeMessage(
      c,
      w,
      item,
      targets.map((t) => ({ dev: t.id, own: t.user === item.from.user })),
      now,
    );
    return { ok: true, ts: now, duplicate: false, notify: targets.map(addressOf), offsets };
  }

  /**
   * What the append planner reads (planner.ts), answered from what the transaction loaded: the
   * writer's prefetched device lists, and a batch's keyed devices and locked groups.
   */
  function readsOf(
    w: Writer,
    keyed?: ReadonlyMap<string, KeyedRow[]>,
    groups?: ReadonlyMap<string, GroupTargets>,
  ): AppendReads<DeviceRow> {
    return {
      devices: (user) => w.known(user),
      keyed: (user) => keyed?.get(user) ?? [],
      memberVer(group, user) {
        const g = groups?.get(group);
        return g?.members.has(user) ? g.ver : undefined;
      },
      memberDevices: (group) => groups?.get(group)?.devices ?? [],
    };
  }

  /**
   * A read receipt, claimed by `claimBatch` (null: its key was known, a duplicate): a `read` status
   * with the ids that count to every device of the user whose messages were read. (1:1 messages
   * are planned and claimed by `claimBatch` and committed by `commitClaimed`.)
   */
  async function commitReceipt(
    c: PgQueryable,
    w: Writer,
    item: ReceiptInput,
    now: number,
    index: number,
    claims: BatchClaims,
  ): Promise<AppendOutcome | null> {
    // `claimBatch` read the device lists and claimed every receipt the planner accepts (id null:
    // its key was known).
    const claimed = claims.items.get(index);
    let ids = claimed?.ids;
    if (claimed && claimed.id !== null && ids === undefined) {
      // After a membership change in its batch: what counts is read at its turn.
      const records = await receiptRecords(c, s, [{ index, item }]);
      ids = countedIds(item, index, records.get(index)!, claims.at);
    }
    const plan = planReceipt(item, readsOf(w), () => ids ?? []);
    if (!plan.ok || claimed!.id === null) return plan.ok ? null : plan;
    if (plan.ids.length === 0) return { ok: true, ts: now, duplicate: false, notify: [] };
    for (const t of plan.targets) w.status(t.id, now, 'read', plan.ids, item.from.user);
    return { ok: true, ts: now, duplicate: false, notify: plan.targets.map(addressOf) };
  }

  /**
   * The ids of a receipt that count (see `receiptIds`): of its records, those of messages
   * committed before it, which are all but the ones this batch claimed at a later index (`at`:
   * dedupe key → batch index of every message `claimBatch` claimed).
   */
  function countedIds(
    item: ReceiptInput,
    index: number,
    records: ReceiptRecord[],
    at: ReadonlyMap<string, number>,
  ): string[] {
    const before = records.filter((r) => (at.get(claimKey(item.to, r.device, r.id)) ?? -1) < index);
    const since = new Map(before.flatMap((r) => (r.since === null ? [] : [[r.to, r.since] as const])));
    return receiptIds(item, before, (g) => since.get(g));
  }

  /**
   * An end-to-end encrypted or group message that `claimBatch` resolved and claimed (`id`: its
   * body row; 0 when it has no target): one entry per target device, each with its own envelope's
   * body for an encrypted one.
   */
  function commitClaimed(
    w: Writer,
    item: MessageInput,
    id: number,
    targets: NonNullable<Claimed['targets']>,
    now: number,
  ): AppendOutcome {
    const own = targets.devices.map((t) => ({ dev: t.id, own: t.user === item.from.user }));
    const offsets = inEntry(item, targets.devices)
      ? queueInEntry(w, item, own[0]!, now, targets.bodies?.[0])
      : id > 0
        ? queueEntries(w, item, own, id, now, targets.bodies)
        : [];
    if (targets.consent) w.relate(item.from.user, item.to);
    const notify = targets.devices.map((t) => ({ user: t.user, device: t.device }));
    return { ok: true, ts: now, duplicate: false, notify, offsets };
  }

  /** The commit time of an item whose dedupe key is known, or undefined. */
  async function original(c: PgQueryable, item: AppendInput): Promise<number | undefined> {
    const [row] = await rowsOf<{ ts: string }>(
      c,
      `SELECT ts FROM ${s}.dedupe WHERE from_user = $1 AND from_device = $2 AND msg_id = $3`,
      [item.from.user, item.from.device, item.id],
    );
    return row && Number(row.ts);
  }

  /** A 1:1 message or a read receipt (not a group's, not end-to-end encrypted). */
  const isDirect = (item: AppendInput): item is MessageInput | ReceiptInput =>
    item.kind !== 'group' && !(item.kind === 'msg' && (item.group || item.envelopes));

  /** An end-to-end encrypted message (a group's is refused). */
  const isSealed = (item: AppendInput): item is MessageInput & { envelopes: DeviceEnvelope[] } =>
    item.kind === 'msg' && item.envelopes !== undefined;

  /** A group message (not end-to-end encrypted). */
  const isGroupMessage = (item: AppendInput): item is MessageInput & { group: true } =>
    item.kind === 'msg' && item.group === true && item.envelopes === undefined;

  /**
   * Claims the messages and receipts of a batch together. First the reads: the device lists of
   * every plain 1:1 item in one query, the key directory's devices of every end-to-end encrypted
   * message in one more (their device lists are checked here), and the groups of the group
   * messages before the batch's first membership change, locked and read in two (see
   * `lockGroups`). Then one statement claims every dedupe key and stores every body (see
   * `claimDirect`), one marks the group senders as having taken part, and one reads what the
   * receipts before that first change are checked against: a batch of them costs a few round
   * trips, not a few per item. Membership changes, and the group messages and receipts after the
   * first of them (which depend on what it changes), are committed one at a time.
   */
  async function claimBatch(
    c: PgQueryable,
    w: Writer,
    batch: AppendInput[],
    skip: Set<number>,
    now: number,
  ): Promise<BatchClaims> {
    const items = new Map<number, Claimed>();
    const firstChange = batch.findIndex((item) => item.kind === 'group');
    const early = (index: number): boolean => !skip.has(index) && (firstChange < 0 || index < firstChange);
    const keyed = await keyedDevices(
      c,
      s,
      batch.flatMap((item, i) => (!skip.has(i) && isSealed(item) ? [item.to, item.from.user] : [])),
    );
    const groups = await lockGroups(
      c,
      s,
      batch.flatMap((item, i) => (early(i) && isGroupMessage(item) ? [item.to] : [])),
    );
    await w.prefetch(batch.filter(isDirect).flatMap((item) => [item.to, item.from.user]));
    const claims: DirectClaim[] = [];
    // Refused here: nothing is claimed (the outcome is still a duplicate when the key is known).
    const refuse = (index: number, refusal: Refusal) => items.set(index, { id: null, refusal });
    const reads = readsOf(w, keyed, groups);
    batch.forEach((item, index) => {
      if (skip.has(index)) return;
      // Every message but a group's after the batch's first membership change (committed at its turn).
      if (
        isSealed(item) ||
        (isDirect(item) && item.kind === 'msg') ||
        (isGroupMessage(item) && early(index))
      ) {
        const plan = planMessage(item, reads);
        if (!plan.ok) return refuse(index, plan);
        const { targets: devices, bodies, consent } = plan;
        // A message with one entry keeps its body there: no shared row to count (see `commitClaimed`).
        const refs = inEntry(item, devices) ? 0 : devices.length;
        if (bodies) {
          items.set(index, { id: null, targets: { devices, bodies, consent } });
          claims.push({ index, item, refs, body: EMPTY });
        } else {
          items.set(index, { id: null, targets: { devices, consent } });
          claims.push(plan.ver === null ? { index, item, refs } : { index, item, refs, ver: plan.ver });
        }
      } else if (item.kind === 'receipt') {
        if (!planReceipt(item, reads, () => []).ok) return; // refused in `commit`, claiming nothing
        items.set(index, { id: null });
        claims.push({ index, item, refs: 0 });
      }
    });
    const ids = await claimDirect(c, s, claims, now);
    const at = new Map<string, number>();
    const acted: Array<{ group: string; user: string; ver: number }> = [];
    for (const k of claims) {
      const id = ids.get(k.index)!;
      items.get(k.index)!.id = id;
      if (k.item.kind !== 'msg' || id === null) continue;
      at.set(claimKey(k.item.from.user, k.item.from.device, k.item.id), k.index);
      // Sending in a group is taking part in it.
      if (k.ver !== undefined) acted.push({ group: k.item.to, user: k.item.from.user, ver: k.ver });
    }
    await markActed(c, s, acted);
    // A receipt counts what was committed before it, in batch order: with the batch's records here
    // (less the messages claimed for later items), or, after a membership change, at its turn.
    const readers = claims.flatMap((k) =>
      k.item.kind === 'receipt' && ids.get(k.index) !== null && early(k.index)
        ? [{ index: k.index, item: k.item }]
        : [],
    );
    const records = await receiptRecords(c, s, readers);
    for (const { index, item } of readers) {
      items.get(index)!.ids = countedIds(item, index, records.get(index)!, at);
    }
    // The originals of the duplicates (a resent batch is all of them) and of the refused items
    // (one whose key is known is a duplicate, not a refusal), in one query.
    const known = await originals(
      c,
      s,
      [...items].flatMap(([i, k]) => (k.id === null ? [batch[i]!] : [])),
    );
    return { items, at, known };
  }

  async function commit(
    c: PgQueryable,
    w: Writer,
    item: AppendInput,
    now: number,
    index: number,
    claims: BatchClaims,
  ): Promise<AppendOutcome> {
    const duplicate = (ts: number | undefined): AppendOutcome => duplicateOf(ts ?? now);
    const claimed = claims.items.get(index);
    // Known or refused in `claimBatch`, which read the original times then.
    const known = () => claims.known.get(claimKey(item.from.user, item.from.device, item.id));
    if (item.kind === 'msg' && (claimed?.refusal || claimed?.targets)) {
      if (claimed.refusal) {
        const ts = known();
        return ts === undefined ? claimed.refusal : duplicate(ts);
      }
      if (claimed.id === null) return duplicate(known());
      return commitClaimed(w, item, claimed.id, claimed.targets!, now);
    }
    if (item.kind === 'receipt') {
      const out = await commitReceipt(c, w, item, now, index, claims);
      if (out?.ok) return out;
      if (out === null) return duplicate(known());
      // Refused (its recipient is not in the directory): a duplicate all the same when its key is known.
      const ts = await original(c, item);
      return ts !== undefined ? duplicate(ts) : out;
    }
    if (!(await claim(c, item, now))) return duplicate(await original(c, item));
    let out: AppendOutcome;
    if (item.kind === 'group') out = await commitGroup(c, w, item, now);
    else out = await commitGroupMessage(c, w, item, now);
    if (!out.ok) await unclaim(c, item);
    return out;
  }

  /** Appends one status per group to every device of the group's user. */
  async function fanOut(
    w: Writer,
    groups: Groups,
    status: EntryStatus,
    now: number,
    notify: NotifySet,
    written?: WrittenStatuses,
  ) {
    await w.prefetch([...groups.values()].map((g) => g.user));
    for (const g of groups.values()) {
      for (const r of w.known(g.user)) {
        const device = { user: g.user, device: r.device };
        w.status(r.id, now, status, g.ids, g.by, written?.offsets, written?.list.length);
        notify.add(device);
        written?.list.push({
          device,
          entry: { offset: 0, kind: 'status', status, ids: [...g.ids], by: g.by, ts: now },
        });
      }
    }
  }

  /** The entries of `written` with the offsets the flush gave them; none when one was dropped. */
  function writtenEntries(w: Writer, written: WrittenStatuses): WrittenEntry[] | undefined {
    if (written.list.length === 0 || w.broken.has(written.offsets)) return undefined;
    written.list.forEach((we, k) => (we.entry.offset = written.offsets[k]!));
    return written.list;
  }

  /**
   * Marks (message, user) as told for each removed message entry of a user other than its sender
   * and queues `status` to the sender (in its part's `out`) for the marks that are new; then
   * releases the bodies and events of every removed entry. All parts at once, marks in (message,
   * user) order and bodies in id order: two nodes acking overlapping messages (two devices of one
   * user, a group body, a sender's copies) then take their locks in one order and never deadlock.
   */
  async function settle(
    c: PgQueryable,
    parts: Array<{ removed: RemovedRow[]; user: (r: RemovedRow) => string; out: Groups }>,
  ) {
    const told = parts.flatMap((p) =>
      p.removed
        .filter((r) => r.from_user !== null && tellsSender(r.from_user, p.user(r)))
        .map((r) => ({ r, user: p.user(r), out: p.out })),
    );
    // A message stored in its one entry is told once by that entry: no mark to write.
    for (const m of told) {
      if (sharedMessage(m.r.message) === undefined)
        tellSender(m.out, { from: m.r.from_user!, id: m.r.msg_id! }, m.user, () => true);
    }
    const marks = told
      .filter((m) => sharedMessage(m.r.message) !== undefined)
      .sort(
        (a, b) =>
          Number(a.r.message) - Number(b.r.message) || (a.user < b.user ? -1 : a.user > b.user ? 1 : 0),
      );
    if (marks.length > 0) {
      const fresh = await rowsOf<{ message: string; user_id: string }>(
        c,
        `INSERT INTO ${s}.delivered (message, user_id)
         SELECT * FROM unnest($1::bigint[], $2::text[]) ON CONFLICT DO NOTHING RETURNING message, user_id`,
        [marks.map((m) => m.r.message), marks.map((m) => m.user)],
      );
      const isFresh = new Set(fresh.map((f) => `${f.message}:${f.user_id}`));
      for (const m of marks) {
        // Not fresh: already told (or a repeat within this call).
        const first = () => isFresh.delete(`${m.r.message}:${m.user}`);
        tellSender(m.out, { from: m.r.from_user!, id: m.r.msg_id! }, m.user, first);
      }
    }
    const all = parts.flatMap((p) => p.removed);
    await release(
      c,
      all.flatMap((r) => sharedMessage(r.message) ?? []),
      all.flatMap((r) => (r.event === null ? [] : [Number(r.event)])),
    );
  }

  /**
   * One bounded expiry step, in one transaction: walks on from `walk` over up to `expiryBatchSize`
   * devices whose head rows count entries, removes up to `expiryBatchSize` of their entries
   * committed before `cutoff`, each inbox by offset (skipping rows another transaction holds: an
   * ack on another node), and tells the senders `expired` for each (message, recipient user) among
   * them not yet accounted for. After a full step the next reads the same devices again; every
   * step removes an entry or moves the walk on. (Schema step 9: no index on
   * `inbox.ts` is written and deleted with every entry for an hourly job.)
   */
  function expireStep(cutoff: number, now: number, notify: NotifySet, walk: ExpiryWalk): Promise<number> {
    return tx(async (c) => {
      const w = new Writer(c);
      const devs = (
        await rowsOf<{ dev: string }>(
          c,
          `SELECT dev FROM ${s}.inbox_heads WHERE dev > $1 AND entries > 0 ORDER BY dev LIMIT $2`,
          [walk.after, expiryBatchSize],
        )
      ).map((r) => Number(r.dev));
      walk.done = devs.length < expiryBatchSize;
      if (devs.length === 0) return 0;
      const removed = await rowsOf<RemovedRow>(
        c,
        `WITH picked AS (
           SELECT x.dev, x.pos FROM unnest($3::bigint[]) AS v(dev)
           CROSS JOIN LATERAL (
             SELECT dev, pos FROM ${s}.inbox
             WHERE dev = v.dev AND ts < $1 ORDER BY pos LIMIT $2 FOR UPDATE SKIP LOCKED
           ) x
           LIMIT $2
         ), del AS (
           DELETE FROM ${s}.inbox i USING picked p WHERE i.dev = p.dev AND i.pos = p.pos
           RETURNING i.dev, i.pos, i.message, i.event, i.size, i.status, i.ids,
                     i.from_user, i.from_device, i.msg_id, i.to_user, i.seq
         )
         SELECT del.dev, del.pos, del.message, del.event, del.size, del.status, del.ids,
                d.user_id AS owner, d.device AS owner_device, ${ownOrShared('del', 'm')}, m.to_group
         FROM del JOIN ${s}.devices d ON d.id = del.dev LEFT JOIN ${s}.messages m ON m.id = del.message
         ORDER BY del.dev, del.pos`,
        [cutoff, expiryBatchSize, devs],
      );
      // A full step reads the same devices again (which of them it finished is not known: the
      // pick stops at its limit without sorting, so it locks no more than it deletes).
      if (removed.length === expiryBatchSize) walk.done = false;
      else walk.after = devs[devs.length - 1]!;
      // Read before settle: it may delete the messages (the rows already carry their streams).
      const gaps = new GapCollector<number>();
      for (const r of removed) {
        if (r.status === GAP_ROW_STATUS) {
          gaps.carry(
            Number(r.dev),
            { user: r.owner!, device: r.owner_device! },
            decodeGapStreams(r.ids ?? '[]'),
          );
        }
        if (r.from_user === null) continue; // not a message
        const from = { user: r.from_user, device: r.from_device! };
        const stream = { from, to: r.to_user!, group: r.to_group === true, seq: Number(r.seq) };
        gaps.add(Number(r.dev), { user: r.owner!, device: r.owner_device! }, stream);
      }
      const expired: Groups = new Map();
      w.released(removed);
      await settle(c, [{ removed, user: (r) => r.owner!, out: expired }]);
      await fanOut(w, expired, 'expired', now, notify);
      for (const d of gaps.notices()) {
        for (const streams of d.notices) w.gap(d.key, now, 'expired', streams);
        notify.add(d.addr);
      }
      await w.flush();
      return removed.length;
    });
  }

  let pendingAcks: PendingAck[] = [];
  /**
   * Whether an ack flush is running. One at a time: the acks made meanwhile wait for it and then
   * go together in the next, so under load a flush carries more acks (fewer statements and
   * commits per ack), and at light load nothing waits.
   */
  let ackFlushing = false;
  const scheduleAcks = (): void => void setImmediate(() => void track(flushAcks()));

  /** Commits every pending ack in one transaction, unless a flush is running (it runs them next). */
  async function flushAcks(): Promise<void> {
    if (ackFlushing) return;
    const batch = pendingAcks;
    pendingAcks = [];
    if (batch.length === 0) return;
    ackFlushing = true;
    try {
      await commitAcks(batch);
    } finally {
      ackFlushing = false;
      // Tracked before this flush settles, so `close` waits for it too.
      if (pendingAcks.length > 0) void track(flushAcks());
    }
  }

  /** Commits `batch` in one transaction; all of them fail together if it fails. */
  async function commitAcks(batch: PendingAck[]): Promise<void> {
    let results: NotifyResult[];
    try {
      results = await tx(async (c) => {
        const w = new Writer(c);
        // Every ack's entries in one statement, rows locked in (device, offset) order.
        const deleted = await deleteAcked(c, s, batch);
        const parts = batch.map((a, i) => {
          const removed: RemovedRow[] = deleted[i]!;
          w.released(removed);
          // sender user → ids newly delivered to this (recipient) user
          return { removed, user: () => a.device.user, out: new Map() as Groups };
        });
        // The whole batch's marks and releases together, in one lock order (see settle).
        await settle(c, parts);
        // The senders' device lists in one query (fanOut then reads none).
        await w.prefetch(parts.flatMap((p) => [...p.out.values()].map((g) => g.user)));
        const out: NotifyResult[] = [];
        const written: WrittenStatuses[] = [];
        for (let i = 0; i < batch.length; i++) {
          const notify = new NotifySet();
          written.push({ offsets: [], list: [] });
          await fanOut(w, parts[i]!.out, 'delivered', batch[i]!.now, notify, written[i]);
          out.push({ count: parts[i]!.removed.length, notify: notify.list });
        }
        await w.flush();
        // The statuses as written, so the engine pushes them without reading them back.
        out.forEach((r, i) => {
          const entries = writtenEntries(w, written[i]!);
          if (entries) r.entries = entries;
        });
        return out;
      });
    } catch (e) {
      for (const a of batch) a.reject(e);
      return;
    }
    batch.forEach((a, i) => a.resolve(results[i]!));
  }

  function toEntry(r: InboxRow): InboxEntry | undefined {
    const offset = Number(r.pos);
    // A message entry: a reference to a shared one, or (`IN_ENTRY`) the message itself.
    if (r.message !== null) {
      if (r.from_user === null) return undefined; // unreachable: refs keep the body while referenced
      const out: InboxEntry = {
        offset,
        kind: 'msg',
        id: r.msg_id!,
        from: { user: r.from_user, device: r.from_device! },
        to: r.to_user!,
        seq: Number(r.seq),
        ts: Number(r.mts),
        body: new Uint8Array(r.own_body ?? r.body ?? EMPTY),
      };
      if (r.to_group) out.group = true;
      return out;
    }
    if (r.event !== null) {
      if (r.event_data === null) return undefined; // unreachable: refs keep the event while referenced
      return { offset, kind: 'group', event: decodeEvent(r.event_data), ts: Number(r.ts) };
    }
    if (r.status === GAP_ROW_STATUS) {
      const reason = r.by_user as GapReason;
      return { offset, kind: 'gap', reason, streams: decodeGapStreams(r.ids ?? '[]'), ts: Number(r.ts) };
    }
    return {
      offset,
      kind: 'status',
      status: r.status as EntryStatus,
      ids: JSON.parse(r.ids ?? '[]') as string[],
      by: r.by_user ?? '',
      ts: Number(r.ts),
    };
  }

  return {
    name: 'postgres',
    capabilities: { pushTokens: true, inboxSize: true, ping: true, atomicBatch: true, actionCounts: true },

    async registerDevice(device: DeviceAddress, now: number): Promise<NotifyResult> {
      check();
      assertNotPending(LABEL, device);
      return tx(async (c) => {
        // Under the user's lock, as registerUser: a pending inbox exists only while its user has
        // no device, so a device that takes it over is new. Appends that listed the pending
        // inbox before the rename write to the same row, so to the device.
        await lockUsers(c, [device.user]);
        const [taken] = await rowsOf<{ id: string }>(
          c,
          `UPDATE ${s}.devices SET device = $1, registered_at = $2 WHERE user_id = $3 AND device = $4
           RETURNING id`,
          [device.device, now, device.user, PENDING_DEVICE],
        );
        const [row] = taken
          ? [taken]
          : await rowsOf<{ id: string }>(
              c,
              `WITH d AS (
                 INSERT INTO ${s}.devices (user_id, device, registered_at) VALUES ($1, $2, $3)
                 ON CONFLICT (user_id, device) DO NOTHING RETURNING id
               ), h AS (INSERT INTO ${s}.inbox_heads (dev) SELECT id FROM d)
               SELECT id FROM d`,
              [device.user, device.device, now],
            );
        if (!row) return { count: 0, notify: [] };
        const dev = Number(row.id);
        const count = await joinSnapshots(c, device.user, dev, now);
        const waiting =
          count > 0 ||
          (taken !== undefined &&
            (await rowsOf(c, `SELECT 1 FROM ${s}.inbox WHERE dev = $1 LIMIT 1`, [dev])).length > 0);
        return { count, notify: waiting ? [{ user: device.user, device: device.device }] : [] };
      });
    },

    async registerUser(user: string, now: number): Promise<boolean> {
      check();
      return tx(async (c) => {
        await lockUsers(c, [user]);
        const [row] = await rowsOf<{ id: string }>(
          c,
          `WITH d AS (
             INSERT INTO ${s}.devices (user_id, device, registered_at)
             SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM ${s}.devices WHERE user_id = $1)
             RETURNING id
           ), h AS (INSERT INTO ${s}.inbox_heads (dev) SELECT id FROM d)
           SELECT id FROM d`,
          [user, PENDING_DEVICE, now],
        );
        if (!row) return false; // a device, or a pending inbox already
        await joinSnapshots(c, user, Number(row.id), now);
        return true;
      });
    },

    async unregisterUser(user: string): Promise<string[] | undefined> {
      check();
      return tx(async (c) => {
        await lockUsers(c, [user]);
        const rows = await rowsOf<{ dev: string; device: string }>(
          c,
          `SELECT h.dev, d.device FROM ${s}.inbox_heads h JOIN ${s}.devices d ON d.id = h.dev
           WHERE d.user_id = $1 ORDER BY h.dev FOR UPDATE OF h, d`,
          [user],
        );
        if (rows.length === 0) return undefined;
        await dropDevices(
          c,
          rows.map((r) => r.dev),
        );
        return realDevices(rows.map((r) => r.device));
      });
    },

    async unregisterDevice(device: DeviceAddress): Promise<boolean> {
      check();
      return tx(async (c) => {
        // The head and device rows first: an append that listed this device either committed
        // its entries before (they are deleted below) or waits, then finds no head and drops
        // them; a key upload (which locks the device row) either committed its keys before or
        // waits, then finds no device.
        const [row] = await rowsOf<{ dev: string }>(
          c,
          `SELECT h.dev FROM ${s}.inbox_heads h JOIN ${s}.devices d ON d.id = h.dev
           WHERE d.user_id = $1 AND d.device = $2 FOR UPDATE OF h, d`,
          [device.user, device.device],
        );
        if (!row) return false;
        await dropDevices(c, [row.dev]);
        return true;
      });
    },

    async devices(user: string): Promise<string[]> {
      check();
      const rows = await rowsOf<{ device: string }>(
        pool,
        `SELECT device FROM ${s}.devices WHERE user_id = $1 ORDER BY id`,
        [user],
      );
      return realDevices(rows.map((r) => r.device));
    },

    async append(batch: AppendInput[], now: number): Promise<AppendOutcome[]> {
      check();
      if (batch.length === 0) return [];
      // One transaction for the whole batch: one WAL flush at COMMIT (group commit).
      let written = new Set<string>();
      // Items found over an inbox quota under the locks of an earlier attempt (see OverQuota).
      const refused = new Set<number>();
      const attempt = () =>
        tx(async (c) => {
          const w = new Writer(c);
          written = w.consents;
          const claimed = await claimBatch(c, w, batch, refused, now);
          const out: AppendOutcome[] = [];
          for (let i = 0; i < batch.length; i++) {
            const item = batch[i]!;
            if (refused.has(i)) {
              const ts = await original(c, item);
              out.push(ts === undefined ? { ok: false, code: 'inbox_full' } : duplicateOf(ts));
              continue;
            }
            w.item = item.kind === 'group' ? undefined : i;
            // A message in a sequence may skip full devices (see `placeItem`).
            w.stream =
              item.kind === 'msg' && item.seq > 0
                ? { from: item.from, to: item.to, group: item.group === true, seq: item.seq }
                : undefined;
            out.push(await commit(c, w, item, now, i, claimed));
            w.item = undefined;
            w.stream = undefined;
          }
          await w.flush();
          for (const o of out) if (o.ok && o.offsets && w.broken.has(o.offsets)) delete o.offsets;
          return out;
        });
      let outcomes: AppendOutcome[];
      for (;;) {
        try {
          outcomes = await attempt();
          break;
        } catch (e) {
          // Each round refuses at least one more item, so this ends within the batch's length.
          if (!(e instanceof OverQuota)) throw e;
          for (const i of e.items) refused.add(i);
        }
      }
      // Committed: later transactions need not write these pairs again (rows are never deleted).
      if (knownConsents.size + written.size > MAX_KNOWN_CONSENTS) knownConsents.clear();
      for (const k of written) knownConsents.add(k);
      return outcomes;
    },

    async readInbox(device: DeviceAddress, after: number, limit: number): Promise<InboxEntry[]> {
      check();
      if (limit <= 0 || Number.isNaN(after) || after >= Number.MAX_SAFE_INTEGER) return [];
      // Offsets are safe integers: `> 4.5` is `> 4`. A NaN, infinite or huge limit reads on (and
      // never reaches PostgreSQL as a number its bigint cannot hold).
      const from = after < 0 ? 0 : Math.floor(after);
      const max = limit < Number.MAX_SAFE_INTEGER ? Math.ceil(limit) : null;
      const rows = await rowsOf<InboxRow>(
        pool,
        `SELECT i.pos, i.ts, i.message, i.status, i.ids, i.by_user, i.event, ${ownOrShared('i', 'm')},
                m.to_group, coalesce(m.ts, i.ts) AS mts, m.body, i.body AS own_body, e.data AS event_data
         FROM ${s}.inbox i
         LEFT JOIN ${s}.messages m ON m.id = i.message
         LEFT JOIN ${s}.group_events e ON e.id = i.event
         WHERE i.dev = (SELECT id FROM ${s}.devices WHERE user_id = $1 AND device = $2) AND i.pos > $3
         ORDER BY i.pos LIMIT $4`,
        [device.user, device.device, from, max],
      );
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
      // Group commit for acks: every ack called in this turn of the event loop (or while the
      // previous flush runs) joins one transaction; each caller gets its own result.
      return new Promise<NotifyResult>((resolve, reject) => {
        pendingAcks.push({ device, offsets, now, resolve, reject });
        if (pendingAcks.length === 1 && !ackFlushing) scheduleAcks();
      });
    },

    async expire(cutoff: number, now: number): Promise<NotifyResult> {
      check();
      const notify = new NotifySet();
      let count = 0;
      // Bounded steps, each its own transaction. A store closed mid-way stops early; the rest
      // expires on the next call.
      const walk: ExpiryWalk = { after: 0, done: false };
      for (;;) {
        count += await expireStep(cutoff, now, notify, walk);
        if (walk.done || closed) break;
      }
      while (!closed) {
        const r = await track(
          pool.query(
            `DELETE FROM ${s}.dedupe WHERE ctid = ANY(ARRAY(SELECT ctid FROM ${s}.dedupe WHERE ts < $1 LIMIT $2))`,
            [cutoff, expiryBatchSize],
          ),
        );
        if ((r.rowCount ?? 0) < expiryBatchSize) break;
      }
      return { count, notify: notify.list };
    },

    async group(id: string): Promise<GroupState | undefined> {
      check();
      const g = await loadGroup(pool, id);
      return g && { id, name: g.name, ver: g.ver, members: snapshotOf(g) };
    },

    async groupsOf(user: string): Promise<string[]> {
      check();
      const rows = await rowsOf<{ group_id: string }>(
        pool,
        `SELECT group_id FROM ${s}.group_members WHERE user_id = $1 ORDER BY joined`,
        [user],
      );
      return rows.map((r) => r.group_id);
    },

    async related(viewer: string, target: string): Promise<boolean> {
      check();
      if (viewer === target) return true;
      // Target wrote to viewer, or took part in a group while viewer was in it.
      const r = await pool.query(
        `SELECT EXISTS (SELECT 1 FROM ${s}.consents WHERE viewer = $1 AND target = $2)
             OR EXISTS (SELECT 1 FROM ${s}.group_members v JOIN ${s}.group_members t ON t.group_id = v.group_id
                        WHERE v.user_id = $1 AND t.user_id = $2 AND t.acted_ver >= v.since_ver) AS related`,
        [viewer, target],
      );
      return (r.rows[0] as { related: boolean }).related;
    },

    async setLastSeen(user: string, ts: number): Promise<void> {
      check();
      if (Number.isNaN(ts)) return; // never newer than anything
      await track(
        pool.query(
          `INSERT INTO ${s}.last_seen (user_id, ts) VALUES ($1, $2)
           ON CONFLICT (user_id) DO UPDATE SET ts = excluded.ts WHERE excluded.ts > last_seen.ts`,
          [user, ts],
        ),
      );
    },

    async lastSeen(user: string): Promise<number | undefined> {
      check();
      const [row] = await rowsOf<{ ts: number }>(pool, `SELECT ts FROM ${s}.last_seen WHERE user_id = $1`, [
        user,
      ]);
      return row?.ts;
    },

    async putKeys(device: DeviceAddress, keys: KeyUpload): Promise<void> {
      check();
      // A pending inbox never has keys: nobody holds their private halves.
      if (isPendingDevice(device.device)) throw notRegistered(LABEL, device);
      await tx(async (c) => {
        // The device row locked: uploads of one device (and its unlinking) take turns.
        const [row] = await rowsOf<{ id: string }>(
          c,
          `SELECT id FROM ${s}.devices WHERE user_id = $1 AND device = $2 FOR UPDATE`,
          [device.user, device.device],
        );
        if (!row) throw notRegistered(LABEL, device);
        const [old] = await rowsOf<KeysRow>(c, `SELECT * FROM ${s}.device_keys WHERE dev = $1`, [row.id]);
        const kind = uploadKind(old?.identity_key, keys, LABEL); // throws: the transaction rolls back
        if (kind === 'reinstall') {
          await c.query(
            `WITH p AS (DELETE FROM ${s}.prekeys WHERE dev = $1) DELETE FROM ${s}.kyber_prekeys WHERE dev = $1`,
            [row.id],
          );
        }
        const { signed, kyber } = keptKeys(keys, old);
        await c.query(
          `INSERT INTO ${s}.device_keys (dev, identity_key, registration_id, signed_id, signed_key, signed_sig,
                                         kyber_id, kyber_key, kyber_sig)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
           ON CONFLICT (dev) DO UPDATE SET identity_key = excluded.identity_key,
             registration_id = excluded.registration_id, signed_id = excluded.signed_id,
             signed_key = excluded.signed_key, signed_sig = excluded.signed_sig, kyber_id = excluded.kyber_id,
             kyber_key = excluded.kyber_key, kyber_sig = excluded.kyber_sig`,
          [
            row.id,
            keys.identityKey,
            keys.registrationId,
            signed.id,
            signed.key,
            signed.signature,
            kyber.id,
            kyber.key,
            kyber.signature,
          ],
        );
        // One row per key id (a repeated id: the last key, in the first one's place in line); a
        // re-uploaded id replaces the key in place, so its place in line stays.
        const pre = new Map((keys.preKeys ?? []).map((k) => [k.id, k]));
        if (pre.size > 0) {
          await c.query(
            `INSERT INTO ${s}.prekeys (dev, key_id, key)
             SELECT $1, i, k FROM unnest($2::int[], $3::bytea[]) WITH ORDINALITY AS x(i, k, n) ORDER BY n
             ON CONFLICT (dev, key_id) DO UPDATE SET key = excluded.key`,
            [row.id, [...pre.keys()], [...pre.values()].map((k) => k.key)],
          );
        }
        const kyb = new Map((keys.kyberPreKeys ?? []).map((k) => [k.id, k]));
        if (kyb.size > 0) {
          await c.query(
            `INSERT INTO ${s}.kyber_prekeys (dev, key_id, key, signature)
             SELECT $1, i, k, g FROM unnest($2::int[], $3::bytea[], $4::bytea[]) WITH ORDINALITY AS x(i, k, g, n)
             ORDER BY n
             ON CONFLICT (dev, key_id) DO UPDATE SET key = excluded.key, signature = excluded.signature`,
            [
              row.id,
              [...kyb.keys()],
              [...kyb.values()].map((k) => k.key),
              [...kyb.values()].map((k) => k.signature),
            ],
          );
        }
        // Counted after the writes, under the device row's lock: over the quota, throwing rolls
        // the whole upload back.
        const [n] = await rowsOf<{ pre: string; kyber: string }>(
          c,
          `SELECT (SELECT count(*) FROM ${s}.prekeys WHERE dev = $1) AS pre,
                  (SELECT count(*) FROM ${s}.kyber_prekeys WHERE dev = $1) AS kyber`,
          [row.id],
        );
        if (Number(n!.pre) > quotas.preKeys || Number(n!.kyber) > quotas.preKeys) {
          throw preKeyQuotaError(LABEL, quotas.preKeys);
        }
      });
    },

    async countActions(
      kind: string,
      users: readonly string[],
      windowMs: number,
      now: number,
    ): Promise<number[]> {
      check();
      const distinct = [...new Set(users)].sort();
      if (distinct.length === 0) return [];
      // One statement: each row is locked by its upsert until the end, so concurrent counts from
      // any nodes see different values; users in sorted order so two calls lock alike (and tx
      // retries the rare deadlock).
      const rows = await tx((c) =>
        rowsOf<{ user_id: string; n: number }>(
          c,
          `INSERT INTO ${s}.action_counts AS a (kind, user_id, win, n)
           SELECT $1, u, $3, 1 FROM unnest($2::text[]) AS u ORDER BY u
           ON CONFLICT (kind, user_id) DO UPDATE
             SET n = CASE WHEN a.win = excluded.win THEN a.n + 1 ELSE 1 END, win = excluded.win
           RETURNING user_id, n`,
          [kind, distinct, actionWindow(now, windowMs)],
        ),
      );
      const counts = new Map(rows.map((r) => [r.user_id, Number(r.n)]));
      return users.map((u) => counts.get(u)!);
    },

    async claimKeys(
      users: string | readonly string[],
      device?: string,
      options?: ClaimOptions,
    ): Promise<KeyBundle[]> {
      check();
      return claimBundles(pool, s, users, device, options);
    },

    async keyCount(device: DeviceAddress): Promise<{ preKeys: number; kyberPreKeys: number } | undefined> {
      check();
      const [r] = await rowsOf<{ pre: string; kyber: string }>(
        pool,
        `SELECT (SELECT count(*) FROM ${s}.prekeys WHERE dev = d.id) AS pre,
                (SELECT count(*) FROM ${s}.kyber_prekeys WHERE dev = d.id) AS kyber
         FROM ${s}.devices d JOIN ${s}.device_keys k ON k.dev = d.id WHERE d.user_id = $1 AND d.device = $2`,
        [device.user, device.device],
      );
      return r && { preKeys: Number(r.pre), kyberPreKeys: Number(r.kyber) };
    },

    async setPushToken(device: DeviceAddress, token: PushToken | undefined): Promise<void> {
      check();
      await track(
        token
          ? pool.query(
              `INSERT INTO ${s}.push_tokens (dev, kind, token)
               SELECT id, $3, $4 FROM ${s}.devices WHERE user_id = $1 AND device = $2
               ON CONFLICT (dev) DO UPDATE SET kind = excluded.kind, token = excluded.token`,
              [device.user, device.device, token.kind, token.token],
            )
          : pool.query(
              `DELETE FROM ${s}.push_tokens
               WHERE dev = (SELECT id FROM ${s}.devices WHERE user_id = $1 AND device = $2)`,
              [device.user, device.device],
            ),
      );
    },

    async pushToken(device: DeviceAddress): Promise<PushToken | undefined> {
      check();
      const [r] = await rowsOf<PushToken>(
        pool,
        `SELECT p.kind, p.token FROM ${s}.push_tokens p JOIN ${s}.devices d ON d.id = p.dev
         WHERE d.user_id = $1 AND d.device = $2`,
        [device.user, device.device],
      );
      return r && { kind: r.kind, token: r.token };
    },

    async inboxSize(): Promise<number> {
      check();
      // The statistics' live-row count: an estimate, but free (count(*) reads the whole table).
      const [r] = await rowsOf<{ n: string | null }>(
        pool,
        `SELECT n_live_tup AS n FROM pg_stat_user_tables WHERE relid = to_regclass($1)`,
        [`${s}.inbox`],
      );
      return Math.max(0, Number(r?.n ?? 0));
    },

    async ping(): Promise<void> {
      check();
      await pingPostgres(pool, LABEL);
    },

    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      // Acks already accepted, and every write under way, finish before the pool ends.
      await flushAcks();
      while (running.size > 0) await Promise.allSettled([...running]);
      if (owned) await pool.end();
    },
  };
}

export { migratePostgresServerStore, POSTGRES_SERVER_SCHEMA_VERSION } from './postgres-schema.js';
export { openPostgresTraceStore } from './postgres-trace.js';
export type { PostgresTraceOptions } from './postgres-trace.js';
