/**
 * WAL checkpoints off the event loop. SQLite's automatic checkpoint runs on the connection that
 * commits, after the commit that crossed `wal_autocheckpoint` (1,000 pages): it copies the pages
 * into the database file and syncs the WAL and the database, all on the calling thread, so every
 * few hundred transactions one of them stalls the whole server for that long. With the WAL
 * flushed in the background (sqlite-sync.ts) the store turns the automatic checkpoint off and
 * asks a worker thread, with its own connection to the same file, for a `PASSIVE` checkpoint at
 * most every `intervalMs` while there are writes. A passive checkpoint takes no lock a writer
 * waits for: the event loop keeps committing while the worker copies and syncs.
 *
 * A passive checkpoint copies only the frames committed before it began; while writes go on, the
 * last frames are never all copied, and SQLite starts the WAL over from its beginning only when
 * they are. So when the worker reports the WAL past `capFrames`, the store runs one passive
 * checkpoint on its own connection, between two of its transactions: that one catches up, and the
 * next commit restarts the WAL (what the automatic checkpoint did every 1,000 pages, now once per
 * `capFrames`). Durability is SQLite's own: a checkpoint syncs the WAL before copying and the
 * database after, on whichever connection runs it.
 * @packageDocumentation
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import type { SqliteDatabase } from '../../util/sqlite.js';

/** Checkpoints a SQLite store's WAL on a worker thread (see the module header). */
export interface WalCheckpointer {
  /** A flush made commits durable: a checkpoint is asked for when one is due. */
  flushed(): void;
  /** Stops the worker (after the checkpoint under way, if any) and closes its connection. */
  close(): Promise<void>;
}

/** Tuning of {@link walCheckpointer}. */
export interface WalCheckpointOptions {
  /** Least time between two checkpoints the worker starts. @default 200 */
  intervalMs?: number;
  /** WAL frames past which the store's own connection catches up. @default 8192 (32 MiB of 4 KiB pages) */
  capFrames?: number;
  /** Told the WAL's size and how much of it the worker copied, after each of its checkpoints. */
  onCheckpoint?: (wal: { log: number; checkpointed: number }) => void;
}

/** What the worker answers for each checkpoint: SQLite's `wal_checkpoint` row, or an error. */
interface CheckpointReply {
  busy?: number;
  log?: number;
  checkpointed?: number;
  error?: string;
}

// The worker, as CommonJS source: the package ships ESM only, and a source string needs no file
// next to the compiled one (nor a loader for TypeScript under test).
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.driver);
const db = new Database(workerData.path, { fileMustExist: true });
db.pragma('busy_timeout = ' + workerData.busyTimeoutMs);
parentPort.on('message', (m) => {
  if (m === 'close') {
    db.close();
    parentPort.close();
    return;
  }
  try {
    const row = db.pragma('wal_checkpoint(PASSIVE)')[0];
    parentPort.postMessage({ busy: row.busy, log: row.log, checkpointed: row.checkpointed });
  } catch (e) {
    parentPort.postMessage({ error: String(e && e.message || e) });
  }
});
`;

/**
 * Turns off `db`'s automatic checkpoint and returns the {@link WalCheckpointer} that replaces it,
 * for the WAL database at `path`. The worker starts with the first flush. Should the worker fail,
 * the automatic checkpoint is turned back on. @internal
 */
export function walCheckpointer(
  db: SqliteDatabase,
  path: string,
  busyTimeoutMs: number,
  options: WalCheckpointOptions = {},
): WalCheckpointer {
  const intervalMs = options.intervalMs ?? 200;
  const capFrames = options.capFrames ?? 8192;
  db.exec('PRAGMA wal_autocheckpoint = 0');
  let worker: Worker | undefined;
  let exited: Promise<void> | undefined;
  let failed = false;
  let closed = false;
  let running = false;
  let dirty = false;
  let lastAt = -Infinity;
  let timer: ReturnType<typeof setTimeout> | undefined;

  const fallBack = (): void => {
    if (failed || closed) return;
    failed = true;
    try {
      db.exec('PRAGMA wal_autocheckpoint = 1000');
    } catch {
      // The connection is going away; nothing to checkpoint for.
    }
    void worker?.terminate();
    worker = undefined;
  };

  const catchUp = (): void => {
    // Between two of the store's transactions (a message callback never runs inside one).
    if (closed || db.inTransaction) return;
    try {
      db.prepare('PRAGMA wal_checkpoint(PASSIVE)').get();
    } catch {
      // Busy elsewhere (another process checkpointing): the next report tries again.
    }
  };

  const onReply = (r: CheckpointReply): void => {
    running = false;
    if (r.error !== undefined) return fallBack();
    if ((r.log ?? 0) >= capFrames && (r.checkpointed ?? 0) > 0) catchUp();
    options.onCheckpoint?.({ log: r.log ?? 0, checkpointed: r.checkpointed ?? 0 });
    if (dirty) schedule();
  };

  const start = (): Worker | undefined => {
    if (worker || failed) return worker;
    try {
      const driver = createRequire(import.meta.url).resolve('better-sqlite3');
      worker = new Worker(WORKER_SOURCE, { eval: true, workerData: { driver, path, busyTimeoutMs } });
    } catch {
      fallBack();
      return undefined;
    }
    worker.unref(); // never what keeps a process alive
    worker.on('message', onReply);
    worker.on('error', fallBack);
    const w = worker;
    exited = new Promise<void>((resolve) =>
      w.once('exit', () => {
        if (!closed) fallBack(); // gone without being asked: SQLite checkpoints again
        resolve();
      }),
    );
    return worker;
  };

  const request = (): void => {
    timer = undefined;
    if (closed || running || failed) return;
    const w = start();
    if (!w) return;
    running = true;
    dirty = false;
    lastAt = performance.now();
    w.postMessage('checkpoint');
  };

  function schedule(): void {
    if (closed || running || timer || failed) return;
    const wait = lastAt + intervalMs - performance.now();
    if (wait <= 0) return request();
    timer = setTimeout(request, wait);
    timer.unref?.();
  }

  return {
    flushed(): void {
      if (closed || failed) return;
      dirty = true;
      schedule();
    },
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      if (timer) clearTimeout(timer);
      const w = worker;
      worker = undefined;
      if (!w || failed) return;
      // Messages are handled in order: the worker finishes a checkpoint under way, then closes.
      // Ref'd until it has: an unref'd worker is no reason to keep running, so a script whose last
      // work is `await store.close()` would see its event loop empty and exit (code 13) before
      // the close resolved, skipping whatever came after.
      w.ref();
      w.postMessage('close');
      await exited;
    },
  };
}
