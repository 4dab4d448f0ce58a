/**
 * The PostgreSQL store's last write of a transaction in one statement: lock the head rows of
 * every inbox written to, and — when every inbox has room for everything — take the offsets,
 * insert every entry and update the heads in the same statement. The head locks are held until
 * `COMMIT`, so each round trip saved here is one less that writers of the same inbox wait for.
 * @packageDocumentation
 */
import type { InboxUsage } from '../quotas.js';

/** What the statement needs of a connection (see `PgQueryable` in postgres.ts). */
interface Queryable {
  query(text: string, values?: unknown[]): Promise<{ rows: unknown[] }>;
}

/** A head row as locked, before this transaction's writes. */
export interface HeadRow {
  dev: string;
  last_offset: string;
  entries: string;
  bytes: string;
}

/** The columns of the entries to insert, one element per entry, in offset order per device. */
export interface EntryColumns {
  dev: number[];
  ts: number[];
  message: Array<number | null>;
  body: Array<Uint8Array | null>;
  event: Array<number | null>;
  status: Array<string | null>;
  ids: Array<string | null>;
  by: Array<string | null>;
  size: number[];
}

/**
 * Locks the heads of `devs` (sorted: one lock order for every writer) and returns them as they
 * were; `placed` is true when the entries went in with them: every device had a head row and
 * stays within `limit` with all of its entries (after `freed`), so no item could be refused or
 * skipped. Otherwise nothing is written, the locks are held, and the caller places the entries.
 */
export async function lockAndPlace(
  c: Queryable,
  s: string,
  devs: number[],
  freed: Map<number, InboxUsage>,
  cols: EntryColumns,
  limit: InboxUsage,
): Promise<{ heads: HeadRow[]; placed: boolean }> {
  const added = new Map<number, InboxUsage>();
  cols.dev.forEach((dev, i) => {
    const a = added.get(dev) ?? { entries: 0, bytes: 0 };
    a.entries++;
    a.bytes += cols.size[i]!;
    added.set(dev, a);
  });
  const { rows } = await c.query(
    `WITH h AS (
       SELECT dev, last_offset, entries, bytes FROM ${s}.inbox_heads
       WHERE dev = ANY($1::bigint[]) ORDER BY dev FOR UPDATE
     ), a AS (
       SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[])
         AS a(dev, fe, fb, ae, ab)
     ), ok AS (
       SELECT count(h.dev) = cardinality($1::bigint[])
              AND coalesce(bool_and(h.entries - a.fe + a.ae <= $6::float8
                                    AND h.bytes - a.fb + a.ab <= $7::float8), true) AS ok
       FROM a LEFT JOIN h ON h.dev = a.dev
     ), e AS (
       SELECT * FROM unnest($8::bigint[], $9::float8[], $10::bigint[], $11::bytea[], $12::bigint[],
                            $13::text[], $14::text[], $15::text[], $16::int[])
         WITH ORDINALITY AS e(dev, ts, message, body, event, status, ids, by_user, size, n)
     ), ins AS (
       INSERT INTO ${s}.inbox (dev, pos, ts, message, body, event, status, ids, by_user, size)
       SELECT e.dev, h.last_offset + row_number() OVER (PARTITION BY e.dev ORDER BY e.n), e.ts,
              e.message, e.body, e.event, e.status, e.ids, e.by_user, e.size
       FROM e JOIN h ON h.dev = e.dev WHERE (SELECT ok FROM ok)
     ), upd AS (
       UPDATE ${s}.inbox_heads x
       SET last_offset = h.last_offset + a.ae, entries = h.entries - a.fe + a.ae, bytes = h.bytes - a.fb + a.ab
       FROM h JOIN a ON a.dev = h.dev WHERE x.dev = h.dev AND (SELECT ok FROM ok)
     )
     SELECT h.dev, h.last_offset, h.entries, h.bytes, (SELECT ok FROM ok) AS placed FROM h ORDER BY h.dev`,
    [
      devs,
      devs.map((d) => freed.get(d)?.entries ?? 0),
      devs.map((d) => freed.get(d)?.bytes ?? 0),
      devs.map((d) => added.get(d)?.entries ?? 0),
      devs.map((d) => added.get(d)?.bytes ?? 0),
      limit.entries,
      limit.bytes,
      cols.dev,
      cols.ts,
      cols.message,
      cols.body,
      cols.event,
      cols.status,
      cols.ids,
      cols.by,
      cols.size,
    ],
  );
  const heads = rows as Array<HeadRow & { placed: boolean }>;
  // No head row at all (every device unregistered meanwhile): nothing placed, the caller drops.
  return { heads, placed: heads.length > 0 && heads[0]!.placed };
}
