// The services some scenarios need (PostgreSQL, Redis): reachability probes that say why not,
// and URLs safe to print.
import pg from 'pg';

/** The URL without its password, for printing. */
export function redact(url) {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(unparseable URL)';
  }
}

/** Why PostgreSQL at `url` cannot be used, or undefined when it can. */
export async function pgUnreachable(url) {
  const c = new pg.Client({ connectionString: url, connectionTimeoutMillis: 3000 });
  try {
    await c.connect();
    await c.query('SELECT 1');
    return undefined;
  } catch (e) {
    return `PostgreSQL at ${redact(url)} is not reachable (${e.message || e.code || e})`;
  } finally {
    await c.end().catch(() => undefined);
  }
}
