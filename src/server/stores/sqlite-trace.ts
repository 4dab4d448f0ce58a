/**
 * The delivery trace in a SQLite file: one table, written in batches, with its own retention.
 * Kept in a file of its own (by default beside the store's) so trace writes never contend for
 * the message store's write lock or wait for its fsync.
 * @packageDocumentation
 */
import Database from 'better-sqlite3';
import {
  bufferedTraceStore,
  fromTraceRow,
  type TraceEvent,
  type TraceRow,
  type TraceStore,
  type TraceTableOptions,
} from '../trace.js';

/** Options of {@link sqliteTraceStore}. */
export interface SqliteTraceOptions extends TraceTableOptions {
  /** The trace database file (created when missing), e.g. `postbox.sqlite-trace`. */
  path: string;
  /** Open read-only, to query a running server's trace (`postbox trace`). @default false */
  readonly?: boolean;
}

/**
 * A {@link TraceStore} in a SQLite file. Trace writes are not fsynced (`synchronous=OFF`): the
 * trace is a diagnostic, and a crash may lose its last second, never a message.
 * @example
 * ```ts
 * import { sqliteTraceStore } from 'postbox/server/sqlite';
 * const server = createServer({ store, authenticate, trace: sqliteTraceStore({ path: './postbox.sqlite-trace' }) });
 * ```
 */
export function sqliteTraceStore(options: SqliteTraceOptions): TraceStore {
  const db = new Database(options.path, { readonly: options.readonly ?? false });
  if (!options.readonly) {
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = OFF');
    db.exec(`CREATE TABLE IF NOT EXISTS trace (
      id TEXT NOT NULL, at INTEGER NOT NULL, kind TEXT NOT NULL,
      device TEXT, detail TEXT, node TEXT);
      CREATE INDEX IF NOT EXISTS trace_id ON trace (id);
      CREATE INDEX IF NOT EXISTS trace_at ON trace (at);`);
  }
  const select = db.prepare<[string], TraceRow>(
    'SELECT id, at, kind, device, detail, node FROM trace WHERE id = ? ORDER BY at, rowid',
  );
  const insert = options.readonly
    ? undefined
    : db.prepare('INSERT INTO trace (id, at, kind, device, detail, node) VALUES (?, ?, ?, ?, ?, ?)');
  const write = db.transaction((events: TraceEvent[]) => {
    for (const e of events) {
      insert!.run(e.id, e.at, e.kind, e.device ?? null, e.detail ?? null, e.node ?? null);
    }
  });
  return bufferedTraceStore(
    {
      write: (events) => void write(events),
      prune: (cutoff) => void db.prepare('DELETE FROM trace WHERE at < ?').run(cutoff),
      query: (id) => select.all(id).map(fromTraceRow),
      close: () => void db.close(),
    },
    options,
  );
}
