/**
 * What the SQLite stores need of a `better-sqlite3` database, declared structurally so that no
 * public signature depends on the peer's types, plus the setup they share: connection pragmas,
 * `user_version` migrations and explicit transactions. Only the store modules import
 * `better-sqlite3` itself; this file imports nothing.
 * @packageDocumentation
 */

/** The result of running a statement that writes. */
export interface SqliteRunResult {
  /** Rows inserted, updated or deleted by the statement (not by triggers). */
  changes: number;
  /** Rowid of the last inserted row. */
  lastInsertRowid: number | bigint;
}

/** A prepared statement: the subset of `better-sqlite3`'s `Statement` the stores use. */
export interface SqliteStatement {
  /** Executes the statement. */
  run(...params: unknown[]): SqliteRunResult;
  /** Executes the statement and returns its first row, or undefined. */
  get(...params: unknown[]): unknown;
  /** Executes the statement and returns every row. */
  all(...params: unknown[]): unknown[];
  /**
   * Turns 64-bit integer results into bigints (`true`) or numbers (`false`). The stores turn it
   * off on their own statements, whatever the database's default.
   */
  safeIntegers?(toggle?: boolean): unknown;
  /**
   * Makes the statement return each row as an array of its column values (`true`). Optional: a
   * store reads the rows of a statement that lacks it as objects (see `arrayRows`).
   */
  raw?(toggle?: boolean): unknown;
}

/**
 * An open SQLite connection: the subset of `better-sqlite3`'s `Database` (v11 or later) the
 * stores use. A real `better-sqlite3` database fits it; so does a wrapper that forwards these
 * members (for instance, to count statements in a test).
 */
export interface SqliteDatabase {
  /** Compiles a statement; the stores prepare each statement once and reuse it. */
  prepare(sql: string): SqliteStatement;
  /** Runs one or more statements that return nothing (schema changes). */
  exec(sql: string): unknown;
  /** Closes the connection. */
  close(): unknown;
  /** True while a transaction is open on this connection. */
  readonly inTransaction: boolean;
}

/** Where a SQLite store keeps its data: a file it opens, or a connection the caller owns. */
export type SqliteSource =
  | {
      /**
       * Database file; created when missing. `':memory:'` gives a private in-memory database
       * (for tests: it is lost on close). The store opens it and closes it on `close()`.
       */
      path: string;
      database?: undefined;
    }
  | {
      /**
       * An already open `better-sqlite3` database. The store sets its connection pragmas and
       * migrates its tables, but never closes it: the caller does, after the store's `close()`.
       * Do not keep a transaction open on it across an `await` while the store is in use.
       */
      database: SqliteDatabase;
      path?: undefined;
    };

/** Options every SQLite store takes besides its {@link SqliteSource}. */
export interface SqliteConnectionOptions {
  /**
   * How long a statement waits for another connection's lock before failing with `SQLITE_BUSY`.
   * @default 5000
   */
  busyTimeoutMs?: number;
}

/** One schema migration step; step `i` (0-based) takes `user_version` from `i` to `i + 1`. */
export type SqliteMigration = (db: SqliteDatabase) => void;

/**
 * Sets the pragmas the stores' durability promise rests on: `journal_mode=WAL` (readers never
 * block the writer, commits append to the `-wal` file), `synchronous=FULL` (a commit returns only
 * after the WAL is fsynced: committed means durable, also across power loss), and a busy timeout.
 * Throws when the database refuses WAL (an in-memory database reports `memory`, which is fine).
 * The server store then moves a file it opened itself to `synchronous=NORMAL` and flushes the WAL
 * before each answer off the event loop (src/server/stores/sqlite-sync.ts): as durable, not
 * blocking.
 * @internal
 */
export function configureConnection(db: SqliteDatabase, label: string, busyTimeoutMs: number): void {
  if (!Number.isInteger(busyTimeoutMs) || busyTimeoutMs < 0) {
    throw new RangeError(`${label}: busyTimeoutMs must be a non-negative integer, got ${busyTimeoutMs}`);
  }
  // The busy timeout first: switching to WAL needs a lock another connection may hold.
  db.exec(`PRAGMA busy_timeout = ${busyTimeoutMs}`);
  const row = db.prepare('PRAGMA journal_mode = WAL').get() as { journal_mode?: string } | undefined;
  const mode = String(row?.journal_mode ?? '').toLowerCase();
  if (mode !== 'wal' && mode !== 'memory') {
    throw new Error(`${label}: could not switch the database to WAL mode (journal_mode is "${mode}")`);
  }
  db.exec('PRAGMA synchronous = FULL');
}

/**
 * Brings the schema up to date: reads `PRAGMA user_version` and applies the missing steps in
 * order, each in its own `BEGIN IMMEDIATE` transaction together with the version bump, so a crash
 * leaves the database at a step boundary and two processes opening it at once apply each step
 * once. A database newer than the steps this code knows is refused rather than misread.
 * Returns the resulting version (the number of steps).
 * @internal
 */
export function migrate(db: SqliteDatabase, steps: readonly SqliteMigration[], label: string): number {
  const read = db.prepare('PRAGMA user_version');
  const version = (): number => Number((read.get() as { user_version: number | bigint }).user_version);
  const check = (v: number): void => {
    if (v > steps.length) {
      throw new Error(
        `${label}: the database has schema version ${v}, newer than this postbox knows (${steps.length}); ` +
          'upgrade postbox or open a database written by this version',
      );
    }
  };
  const start = version();
  check(start);
  if (start === steps.length) return start; // up to date: no write lock taken
  const tx = transactor(db);
  for (;;) {
    const done = tx(() => {
      const v = version(); // again under the write lock: another process may have migrated
      check(v);
      if (v === steps.length) return true;
      steps[v]!(db);
      db.exec(`PRAGMA user_version = ${v + 1}`);
      return false;
    });
    if (done) return steps.length;
  }
}

/**
 * Makes a runner of write transactions: `tx(fn)` runs `fn` between `BEGIN IMMEDIATE` (the write
 * lock is taken up front, so the transaction never fails half-way on a lock upgrade) and
 * `COMMIT`, and rolls back when `fn` or the commit throws. `fn` must be synchronous: nothing
 * else runs on the connection until it returns. Not reentrant.
 * @internal
 */
export function transactor(db: SqliteDatabase): <T>(fn: () => T) => T {
  const begin = db.prepare('BEGIN IMMEDIATE');
  const commit = db.prepare('COMMIT');
  const rollback = db.prepare('ROLLBACK');
  return <T>(fn: () => T): T => {
    begin.run();
    try {
      const result = fn();
      commit.run();
      return result;
    } catch (error) {
      // SQLite may already have rolled back on its own (e.g. SQLITE_FULL, SQLITE_IOERR).
      if (db.inTransaction) rollback.run();
      throw error;
    }
  };
}

/**
 * Prepares `sql` once and makes its integers come back as numbers even when the caller's database
 * defaults to bigints.
 * @internal
 */
export function prepareNumeric(db: SqliteDatabase, sql: string): SqliteStatement {
  const stmt = db.prepare(sql);
  stmt.safeIntegers?.(false);
  return stmt;
}

/**
 * A reader of `stmt`'s rows as arrays of column values, in the statement's column order: through
 * better-sqlite3's `raw` mode where the statement has it, or from each row object's values (a
 * wrapper without it). For reads of many rows: better-sqlite3 builds a row object key by key,
 * which for a full group's 1,023 member devices was about a third of the read. The statement is
 * switched to raw mode for good: use it only through the returned reader.
 * @internal
 */
export function arrayRows(stmt: SqliteStatement): (...params: unknown[]) => unknown[][] {
  if (typeof stmt.raw === 'function') {
    stmt.raw(true);
    return (...params) => stmt.all(...params) as unknown[][];
  }
  return (...params) => stmt.all(...params).map((row) => Object.values(row as object));
}

/** Statements that change rows (the fault hook's writes). */
const WRITING = /^\s*(INSERT|UPDATE|DELETE|REPLACE)\b/i;

/**
 * `stmt`, asking `beforeWrite` (a test's fault hook) before each execution when `sql` changes
 * rows; the statement itself when there is no hook or it only reads.
 * @internal
 */
export function hookWrites(
  stmt: SqliteStatement,
  sql: string,
  beforeWrite: ((write: string) => void) | undefined,
): SqliteStatement {
  if (!beforeWrite || !WRITING.test(sql)) return stmt;
  const what = sql.trim().split(/\s+/, 3).join(' ');
  return {
    run(...params) {
      beforeWrite(what);
      return stmt.run(...params);
    },
    get(...params) {
      beforeWrite(what);
      return stmt.get(...params);
    },
    all(...params) {
      beforeWrite(what);
      return stmt.all(...params);
    },
  };
}

/**
 * Opens (or adopts) a store's connection, configures it and migrates its schema. When the store
 * opened the database itself and setup fails, the database is closed again before the error is
 * rethrown.
 * @internal
 */
export function openStoreDatabase(
  source: SqliteSource,
  open: (path: string) => SqliteDatabase,
  steps: readonly SqliteMigration[],
  label: string,
  busyTimeoutMs: number,
): { db: SqliteDatabase; owned: boolean } {
  const given = source.database;
  if (given !== undefined && source.path !== undefined) {
    throw new TypeError(`${label}: pass either path or database, not both`);
  }
  if (given === undefined && typeof source.path !== 'string') {
    throw new TypeError(`${label}: pass a path (a file, or ':memory:') or an open database`);
  }
  const db = given ?? open(source.path!);
  try {
    configureConnection(db, label, busyTimeoutMs);
    migrate(db, steps, label);
  } catch (error) {
    if (given === undefined) db.close();
    throw error;
  }
  return { db, owned: given === undefined };
}
