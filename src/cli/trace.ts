// `postbox trace ID`: what a running (or stopped) `postbox serve` recorded about one message,
// read from its trace table; and the trace store `postbox serve` writes to.
import { parseArgs } from 'node:util';
import type { TraceEvent, TraceStore } from '../server/trace.js';
import { parsePostgresStoreUrl } from './store-url.js';

/** Where `postbox serve` keeps its trace: beside the SQLite file, or in the PostgreSQL schema. */
export interface TraceLocation {
  /** The store's SQLite file (the trace is `FILE-trace` beside it). */
  data: string;
  /** A `postgres://…[?schema=S]` store URL: the trace is a table in that schema. */
  store?: string;
}

/** The trace file of a SQLite store file. */
export const traceFileOf = (data: string): string => `${data}-trace`;

/** Opens the trace store of a `postbox serve` (read-only for `postbox trace`). */
export async function openServeTrace(
  where: TraceLocation,
  options: { retentionDays: number; readonly?: boolean; onError?: (e: unknown) => void },
): Promise<TraceStore> {
  const retentionMs = options.retentionDays * 24 * 3600_000;
  if (where.store) {
    const { openPostgresTraceStore } = await import('../server/stores/postgres-trace.js');
    const { connectionString, schema } = parsePostgresStoreUrl(where.store);
    return openPostgresTraceStore({
      connectionString,
      retentionMs,
      ...(schema ? { schema } : {}),
      ...(options.onError ? { onError: options.onError } : {}),
    });
  }
  const { sqliteTraceStore } = await import('../server/stores/sqlite-trace.js');
  return sqliteTraceStore({
    path: traceFileOf(where.data),
    retentionMs,
    ...(options.readonly ? { readonly: true } : {}),
  });
}

/** One event as a line: time, what, device, detail, node. */
export function formatTraceEvent(e: TraceEvent): string {
  const parts = [new Date(e.at).toISOString(), e.kind.padEnd(9), e.device ?? '-'];
  if (e.detail !== undefined) parts.push(e.detail);
  if (e.node !== undefined) parts.push(`(node ${e.node})`);
  return parts.join('  ');
}

/** The `postbox trace` command. */
export async function traceCommand(argv: string[], help: string): Promise<void> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      data: { type: 'string' },
      store: { type: 'string' },
      json: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help || positionals.length !== 1) {
    process.stdout.write(help);
    if (!values.help) process.exitCode = 2;
    return;
  }
  const id = positionals[0]!;
  const store = values.store ?? process.env.POSTBOX_STORE;
  const trace = await openServeTrace(
    { data: values.data ?? process.env.POSTBOX_DATA ?? './postbox.sqlite', ...(store ? { store } : {}) },
    { retentionDays: 7, readonly: true },
  );
  try {
    const events = await trace.query(id);
    if (values.json) process.stdout.write(`${JSON.stringify(events)}\n`);
    else if (events.length === 0)
      process.stdout.write(`no trace of ${id} (never seen, or older than the trace's retention)\n`);
    else for (const e of events) process.stdout.write(`${formatTraceEvent(e)}\n`);
  } finally {
    await trace.close();
  }
}
