/**
 * What `postbox serve` and `postbox trace` read of a `postgres://` store URL themselves: the query
 * parameters that are postbox's, not libpq's, taken out before the rest goes to `pg`.
 * @packageDocumentation
 */

/** A `postgres://` store URL, split. */
export interface PostgresStoreUrl {
  /** The URL without postbox's parameters. */
  connectionString: string;
  /** `?schema=S`: the schema of the store's tables. */
  schema?: string;
  /** `?prepared=off`: the store sends its statements as text (behind a pooler that cannot track prepared ones). */
  preparedStatements?: false;
}

/**
 * Splits a store URL: `schema` and `prepared` (`on`, the default, or `off`) are postbox's; every
 * other parameter (`connect_timeout`, `query_timeout`, `sslmode`, …) stays for `pg`.
 * @throws RangeError when `prepared` is neither `on` nor `off`.
 */
export function parsePostgresStoreUrl(url: string): PostgresStoreUrl {
  const u = new URL(url);
  const schema = u.searchParams.get('schema');
  const prepared = u.searchParams.get('prepared');
  if (prepared !== null && prepared !== 'on' && prepared !== 'off') {
    throw new RangeError(`--store: prepared must be on or off, got ${prepared}`);
  }
  u.searchParams.delete('schema');
  u.searchParams.delete('prepared');
  return {
    connectionString: u.toString(),
    ...(schema ? { schema } : {}),
    ...(prepared === 'off' ? { preparedStatements: false as const } : {}),
  };
}
