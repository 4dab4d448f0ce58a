/**
 * How the PostgreSQL server store talks to a database that can go away: the pool it makes (with
 * timeouts, so a black-holed database fails calls in bounded time instead of hanging them), the
 * `error` events `pg` emits when a connection is reset (unhandled, they would kill the process),
 * and the health probe. Split from `postgres.ts`, which holds the store's SQL.
 * @packageDocumentation
 */
import pg from 'pg';

/** How long opening a connection (or waiting for a free one of the pool) may take. */
export const DEFAULT_CONNECT_TIMEOUT_MS = 5000;
/** How long one statement may go unanswered before its call fails and its connection is dropped. */
export const DEFAULT_QUERY_TIMEOUT_MS = 10_000;

/** Settings of a pool the store makes from a connection string. */
export interface OwnedPoolSettings {
  /** Where the database is. */
  connectionString: string;
  /** Connections in the pool. */
  max: number;
  /** See `connectTimeoutMs` of the store's options; undefined: the URL's, else the default. */
  connectTimeoutMs: number | undefined;
  /** See `queryTimeoutMs` of the store's options; undefined: the default. */
  queryTimeoutMs: number | undefined;
  /** Gets the `error` events of idle connections. */
  onError: (error: unknown) => void;
}

/**
 * The libpq `connect_timeout` (seconds) of a URL connection string, in ms; `pg` itself ignores it.
 * Undefined for key=value strings and when absent or not a positive number.
 */
function urlConnectTimeoutMs(connectionString: string): number | undefined {
  let v: string | null;
  try {
    v = new URL(connectionString).searchParams.get('connect_timeout');
  } catch {
    return undefined;
  }
  const s = Number(v);
  return v !== null && Number.isFinite(s) && s > 0 ? s * 1000 : undefined;
}

/**
 * A `pg` pool with bounded waits. `forMigrations` leaves statements without a timeout: a
 * migration may rewrite a large table, which is no outage. A `query_timeout` in the URL wins
 * over `queryTimeoutMs` (pg reads it last).
 */
export function makePool(settings: OwnedPoolSettings, forMigrations = false): pg.Pool {
  const connect =
    settings.connectTimeoutMs ?? urlConnectTimeoutMs(settings.connectionString) ?? DEFAULT_CONNECT_TIMEOUT_MS;
  const pool = new pg.Pool({
    connectionString: settings.connectionString,
    max: forMigrations ? 1 : settings.max,
    connectionTimeoutMillis: connect,
    ...(forMigrations ? {} : { query_timeout: settings.queryTimeoutMs ?? DEFAULT_QUERY_TIMEOUT_MS }),
    // Lets the kernel find a silently dead peer of an idle connection.
    keepAlive: true,
  });
  // An idle connection that is reset (database restart, failover, pgbouncer, firewall) makes the
  // pool emit `error`; the pool has already dropped it and the next call opens a fresh one.
  pool.on('error', settings.onError);
  return pool;
}

/** The part of a checked-out connection that emits `error` (a `pg` `PoolClient` does). */
interface Emitter {
  on?(event: 'error', listener: (error: Error) => void): unknown;
}

const guarded = new WeakSet<object>();

/** Listens to nothing: the call under way already rejects with the same error. */
const ignore = (): void => {};

/**
 * Gives a checked-out connection an `error` listener, once. `pg` emits `error` on a connection
 * whose socket fails even while a query of it is running (the query rejects too), and a pool
 * lends its connections without a listener: a reset mid-transaction would kill the process.
 * (Idle, the connection's error reaches the pool's `error` event instead.)
 */
export function guardConnection(c: object): void {
  if (guarded.has(c)) return;
  const on = (c as Emitter).on;
  if (typeof on !== 'function') return;
  guarded.add(c);
  on.call(c, 'error', ignore);
}

/**
 * Whether a failed statement left its connection unusable: an error PostgreSQL did not report (a
 * reset, a timeout, a closed socket: no `severity`, no SQLSTATE). Such a connection gets no
 * `ROLLBACK` (it would wait behind the lost statement) and goes back to the pool to be destroyed.
 */
export function brokenConnection(e: unknown): boolean {
  if (typeof e !== 'object' || e === null) return true;
  const { severity, code } = e as { severity?: unknown; code?: unknown };
  return !(typeof severity === 'string' && typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code));
}

/** The query side of a pool, as the probe needs it. */
interface Queryable {
  query(text: string): Promise<{ rows: unknown[] }>;
}

/**
 * The store's health probe: one round trip, and a refusal when the connection reached a standby
 * (after a failover a stale address can lead to the old primary, now read-only), where every
 * write would fail although the database answers.
 */
export async function pingPostgres(pool: Queryable, label: string): Promise<void> {
  const { rows } = await pool.query('SELECT pg_is_in_recovery() AS standby');
  if ((rows[0] as { standby?: boolean } | undefined)?.standby) {
    throw new Error(`${label}: connected to a standby (read-only); writes would fail`);
  }
}

/** Quotes a schema name after checking it is a plain identifier (it is spliced into SQL). */
export function quoteSchemaName(schema: string, label: string): string {
  if (!/^[A-Za-z_][A-Za-z0-9_]{0,62}$/.test(schema)) {
    throw new RangeError(`${label}: schema must be a plain identifier (letters, digits, _), got ${schema}`);
  }
  return `"${schema}"`;
}
