/**
 * Durable SQLite commits that do not stop the event loop. With `synchronous=FULL`, `COMMIT`
 * fsyncs the WAL on the calling thread: every commit stalls the whole server for a disk flush
 * (milliseconds), and sends, acks and statuses queue behind each other. Here the connection runs
 * with `synchronous=NORMAL` (a commit only writes the WAL frames to the OS) and the store flushes
 * the `-wal` file itself with `fdatasync` on libuv's thread pool, before it tells anyone the
 * transaction happened. A commit that returned to the store and was flushed this way is as
 * durable as under `FULL`: the same frames reach the disk before the same answer leaves. SQLite
 * still syncs the WAL before each checkpoint and the database after it (as it does under
 * `NORMAL`), so a crash never tears what was checkpointed.
 *
 * Flushes are grouped: a caller waits for a flush that *starts* after its call, one flush at a
 * time, and everyone who called while one ran shares the next. The next flush starts as soon as
 * the previous one ends.
 * @packageDocumentation
 */
import { closeSync, fdatasync, fsyncSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import type { SqliteDatabase } from '../../util/sqlite.js';

/** Flushes a SQLite connection's WAL off the event loop (see the module header). */
export interface WalSync {
  /** Resolves once everything committed on the connection before the call is on disk. */
  synced(): Promise<void>;
  /** True while a flush runs: a commit made now is on disk only after the next one. */
  busy(): boolean;
  /** Resolves once the flush running now has ended (at once when none runs), asking for none. */
  ended(): Promise<void>;
  /** Resolves when no flush runs or waits. */
  idle(): Promise<void>;
  /** Waits for the flushes under way and closes the `-wal` file handle. */
  close(): Promise<void>;
}

/**
 * What the store does around each flush. `beforeFlush` runs just before a flush starts (commits
 * made in it are covered by that flush) and may return a callback that gets the flush's promise;
 * `afterFlush` runs once a flush succeeded.
 */
export interface WalSyncHooks {
  beforeFlush?: () => ((flush: Promise<void>) => void) | undefined;
  afterFlush?: () => void;
}

/** The `better-sqlite3` members that say where a database lives. */
interface NamedDatabase {
  readonly name?: unknown;
  readonly memory?: unknown;
}

/**
 * Switches `db` to `synchronous=NORMAL` with its WAL flushed by the returned {@link WalSync}, or
 * returns undefined (and leaves `synchronous=FULL`) when the database is not a WAL file this
 * process can open: in memory, a temporary database, or a wrapper that does not say its path.
 * @internal
 */
export function walSync(db: SqliteDatabase, hooks: WalSyncHooks = {}): WalSync | undefined {
  const { name, memory } = db as unknown as NamedDatabase;
  if (memory === true || typeof name !== 'string' || name === '' || name === ':memory:') return undefined;
  const mode = db.prepare('PRAGMA journal_mode').get() as { journal_mode?: string } | undefined;
  if (String(mode?.journal_mode ?? '').toLowerCase() !== 'wal') return undefined;
  let fd: number;
  try {
    // Created if SQLite has not yet: an empty WAL file is a valid one.
    fd = openSync(`${name}-wal`, 'a');
  } catch {
    return undefined;
  }
  try {
    // The WAL's directory entry must survive a power loss too; it is made once.
    const dir = openSync(dirname(name), 'r');
    try {
      fsyncSync(dir);
    } finally {
      closeSync(dir);
    }
  } catch {
    // Some file systems refuse to sync a directory; the file's own flushes still hold.
  }
  db.exec('PRAGMA synchronous = NORMAL');

  let open = true;
  const group = groupFlushes(
    () =>
      new Promise<void>((resolve, reject) => {
        if (!open) return resolve(); // closed after SQLite synced and checkpointed
        fdatasync(fd, (e) => {
          if (e) return reject(e);
          resolve();
          hooks.afterFlush?.();
        });
      }),
    hooks.beforeFlush,
  );
  return {
    synced: group.synced,
    busy: group.busy,
    ended: group.ended,
    idle: group.idle,
    async close(): Promise<void> {
      await group.idle();
      if (!open) return;
      open = false;
      closeSync(fd);
    },
  };
}

/**
 * Group flushing: `synced()` resolves after a `flush()` that started after the call. One flush
 * runs at a time; the callers that come while it runs share the next, which starts when it ends.
 * `before` runs just before each flush starts (see {@link WalSyncHooks}).
 * @internal
 */
export function groupFlushes(
  flush: () => Promise<void>,
  before?: WalSyncHooks['beforeFlush'],
): {
  synced(): Promise<void>;
  busy(): boolean;
  ended(): Promise<void>;
  idle(): Promise<void>;
} {
  let running: Promise<void> | undefined;
  let queued: Promise<void> | undefined;
  const start = (): Promise<void> => {
    const onStart = before?.();
    const p = flush();
    running = p;
    onStart?.(p);
    const done = (): void => {
      if (running === p) running = undefined;
    };
    p.then(done, done);
    return p;
  };
  const settled = (p: Promise<void> | undefined): Promise<void> =>
    p
      ? p.then(
          () => undefined,
          () => undefined,
        )
      : Promise.resolve();
  return {
    synced(): Promise<void> {
      if (!running) return start();
      // The running flush may have started before the caller's commit: wait for the next one.
      return (queued ??= settled(running).then(() => {
        queued = undefined;
        return start();
      }));
    },
    busy: () => running !== undefined,
    ended: () => settled(running),
    async idle(): Promise<void> {
      await settled(queued);
      await settled(running);
    },
  };
}
