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

/** A new inbox entry's values, as the store's writer holds them. */
export interface EntryValues {
  dev: number;
  ts: number;
  message: number | null;
  body: Uint8Array | null;
  event: number | null;
  status: string | null;
  ids: string | null;
  by: string | null;
  size: number;
  /**
   * A 1:1 message stored in its one entry (schema step 10): its sender, id, recipient and
   * sequence number, its body in `body`; absent for every other entry.
   */
  fromUser?: string;
  fromDevice?: string;
  msgId?: string;
  toUser?: string;
  seq?: number;
}

/**
 * The inbox columns after `dev` and `pos`, in table order: the column, the array type it is
 * bound as, and the {@link EntryValues} field it comes from. The one list every statement that
 * inserts entries is built from.
 */
const VALUE_COLUMNS = [
  ['ts', 'float8', 'ts'],
  ['message', 'bigint', 'message'],
  ['body', 'bytea', 'body'],
  ['event', 'bigint', 'event'],
  ['status', 'text', 'status'],
  ['ids', 'text', 'ids'],
  ['by_user', 'text', 'by'],
  ['size', 'int', 'size'],
  ['from_user', 'text', 'fromUser'],
  ['from_device', 'text', 'fromDevice'],
  ['msg_id', 'text', 'msgId'],
  ['to_user', 'text', 'toUser'],
  ['seq', 'bigint', 'seq'],
] as const satisfies ReadonlyArray<readonly [string, string, keyof EntryValues]>;

/** The value columns, for an insert's column list: `ts, message, …, size`. */
export const ENTRY_VALUE_COLUMNS = VALUE_COLUMNS.map(([c]) => c).join(', ');

/** The value columns' parameters from `$first` on, typed as arrays: `$3::float8[], …`. */
export const entryValueParams = (first: number): string =>
  VALUE_COLUMNS.map(([, type], i) => `$${first + i}::${type}[]`).join(', ');

/**
 * The value columns' arrays for those parameters, one element per entry; NULL for a column that is
 * NULL in every entry (most are, in a batch of one kind of entry), which the statements' multi-array
 * `unnest` pads with NULLs: neither side builds or parses an array of NULLs.
 */
export const entryValueArrays = (entries: readonly EntryValues[]): unknown[] =>
  VALUE_COLUMNS.map(([, , field]) =>
    entries.some((e) => e[field] != null) ? entries.map((e) => e[field] ?? null) : null,
  );

/** The value columns of the `e` rows, for the insert's select list. */
const E_VALUES = VALUE_COLUMNS.map(([c]) => `e.${c}`).join(', ');

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
  entries: readonly EntryValues[],
  limit: InboxUsage,
): Promise<{ heads: HeadRow[]; placed: boolean }> {
  const added = new Map<number, InboxUsage>();
  for (const e of entries) {
    const a = added.get(e.dev) ?? { entries: 0, bytes: 0 };
    a.entries++;
    a.bytes += e.size;
    added.set(e.dev, a);
  }
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
       SELECT * FROM unnest($8::bigint[], ${entryValueParams(9)})
         WITH ORDINALITY AS e(dev, ${ENTRY_VALUE_COLUMNS}, n)
     ), ins AS (
       INSERT INTO ${s}.inbox (dev, pos, ${ENTRY_VALUE_COLUMNS})
       SELECT e.dev, h.last_offset + row_number() OVER (PARTITION BY e.dev ORDER BY e.n), ${E_VALUES}
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
      entries.map((e) => e.dev),
      ...entryValueArrays(entries),
    ],
  );
  const heads = rows as Array<HeadRow & { placed: boolean }>;
  // No head row at all (every device unregistered meanwhile): nothing placed, the caller drops.
  return { heads, placed: heads.length > 0 && heads[0]!.placed };
}
