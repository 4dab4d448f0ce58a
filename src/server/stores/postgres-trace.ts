/**
 * The delivery trace in PostgreSQL: one table in the store's schema, written in batches (one
 * multi-row insert a second), with its own retention. Every gateway node writes to it, so
 * `server.trace(id)` on any node sees the whole path of a message across nodes.
 * @packageDocumentation
 */
import {
  bufferedTraceStore,
  fromTraceRow,
  type TraceRow,
  type TraceStore,
  type TraceTableOptions,
} from '../trace.js';
import { makePool, quoteSchemaName } from './postgres-pool.js';

/** A SQL string literal of a schema name already checked by `quoteSchemaName`. */
const literal = (name: string): string => `'${name.replace(/'/g, "''")}'`;

/** Options of {@link openPostgresTraceStore}. */
export interface PostgresTraceOptions extends TraceTableOptions {
  /** A `postgres://` connection string. */
  connectionString: string;
  /** The schema the `trace` table lives in (created when missing). @default 'public' */
  schema?: string;
  /** Gets the `error` events of idle connections. @default ignore */
  onError?: (error: unknown) => void;
}

/**
 * A {@link TraceStore} in PostgreSQL, on a small pool of its own (two connections), so trace
 * writes never take a connection from the message store.
 * @example
 * ```ts
 * import { openPostgresTraceStore } from 'postbox/server/postgres';
 * const trace = await openPostgresTraceStore({ connectionString: process.env.DATABASE_URL! });
 * ```
 */
export async function openPostgresTraceStore(options: PostgresTraceOptions): Promise<TraceStore> {
  const s = quoteSchemaName(options.schema ?? 'public', 'postgres trace');
  const pool = makePool({
    connectionString: options.connectionString,
    max: 2,
    connectTimeoutMs: undefined,
    queryTimeoutMs: undefined,
    onError: options.onError ?? (() => {}),
  });
  try {
    // Nodes that start together race on CREATE ... IF NOT EXISTS (it is not atomic against a
    // concurrent create: "duplicate key ... pg_class_relname_nsp_index"), so the DDL runs in one
    // transaction under the same advisory lock as the store's migrations.
    await pool.query(`BEGIN;
      SELECT pg_advisory_xact_lock(hashtextextended('postbox:' || ${literal(options.schema ?? 'public')}, 0));
      CREATE SCHEMA IF NOT EXISTS ${s};
      CREATE TABLE IF NOT EXISTS ${s}.trace (
        id TEXT NOT NULL, at BIGINT NOT NULL, kind TEXT NOT NULL, device TEXT, detail TEXT, node TEXT);
      CREATE INDEX IF NOT EXISTS trace_id ON ${s}.trace (id);
      CREATE INDEX IF NOT EXISTS trace_at ON ${s}.trace (at);
      COMMIT`);
  } catch (e) {
    await pool.end();
    throw e;
  }
  return bufferedTraceStore(
    {
      async write(events) {
        await pool.query(
          `INSERT INTO ${s}.trace (id, at, kind, device, detail, node)
           SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[])`,
          [
            events.map((e) => e.id),
            events.map((e) => e.at),
            events.map((e) => e.kind),
            events.map((e) => e.device ?? null),
            events.map((e) => e.detail ?? null),
            events.map((e) => e.node ?? null),
          ],
        );
      },
      async prune(cutoff) {
        await pool.query(`DELETE FROM ${s}.trace WHERE at < $1`, [cutoff]);
      },
      async query(id) {
        const r = await pool.query<TraceRow>(
          `SELECT id, at, kind, device, detail, node FROM ${s}.trace WHERE id = $1 ORDER BY at`,
          [id],
        );
        return r.rows.map(fromTraceRow);
      },
      close: () => pool.end(),
    },
    options,
  );
}
