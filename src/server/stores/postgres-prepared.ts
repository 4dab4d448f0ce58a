/**
 * Named (prepared) statements for the PostgreSQL server store. Sent as plain text, every
 * statement is parsed, analysed and planned again on each call: for the store's few large
 * statements (the batch claim, the head flush) that was most of PostgreSQL's CPU per append
 * (2.24 ms of backend CPU per one-message append measured, 0.58 ms named; docs/postgres.md).
 * Named, each connection parses a statement once and keeps its plan.
 *
 * One wrapper around the pool does it for every statement of the store: a statement with
 * parameters and one command gets a name derived from its text (so the same text has the same
 * name on every connection and in every store, and different texts never share one), at most
 * {@link MAX_NAMED_STATEMENTS} per store so that a statement built with a varying text cannot grow
 * every connection's cache without bound (past the bound, texts go unnamed as before).
 *
 * A named statement outlives a schema change on its connection, and PostgreSQL refuses to run one
 * whose result columns changed (`cached plan must not change result type`, a rolling upgrade
 * whose migration altered a table the statement returns). Such a connection is dropped instead of
 * returned to the pool, and the call runs once more on a fresh connection, which prepares the
 * statement anew. So is one whose statements were deallocated behind `pg`'s back (a pooler's
 * `DISCARD ALL`).
 * @packageDocumentation
 */
import { createHash } from 'node:crypto';
import type { PgPool, PgPoolClient, PgQueryResult } from './postgres.js';
import { guardConnection } from './postgres-pool.js';

/** Most statement texts one store names; later ones run unnamed. */
export const MAX_NAMED_STATEMENTS = 512;

/** Text → name of the statements a store has named. */
export class StatementNames {
  private readonly names = new Map<string, string>();

  /** The name of `text` sent with `values`; undefined when it goes unnamed. */
  nameOf(text: string, values: readonly unknown[] | undefined): string | undefined {
    // Without parameters there is nothing to bind (and `BEGIN`, `COMMIT` are not planned); more
    // than one command cannot be prepared.
    if (values === undefined || values.length === 0) return undefined;
    const known = this.names.get(text);
    if (known !== undefined || this.names.size >= MAX_NAMED_STATEMENTS || text.includes(';')) return known;
    const name = `postbox_${createHash('sha256').update(text).digest('base64url').slice(0, 24)}`;
    this.names.set(text, name);
    return name;
  }

  /** How many texts are named. */
  get size(): number {
    return this.names.size;
  }
}

/**
 * Whether `e` says a connection's named statements no longer match what `pg` believes it prepared
 * there: PostgreSQL refusing one whose result columns changed since (`0A000`, `cached plan must
 * not change result type`), or not knowing one (`26000`: something ran `DEALLOCATE` or
 * `DISCARD ALL` on the connection, as a pooler's reset query does).
 */
export function isStalePlan(e: unknown): boolean {
  if (typeof e !== 'object' || e === null) return false;
  const { code, message } = e as { code?: unknown; message?: unknown };
  if (code === '26000') return true;
  return (
    code === '0A000' &&
    typeof message === 'string' &&
    message.includes('cached plan must not change result type')
  );
}

/** Characters an element of an array literal must escape inside its quotes. */
const SPECIAL = /["\\]/;
const SPECIALS = /["\\]/g;

/**
 * An array parameter as PostgreSQL's array literal, written here instead of by `pg`: the store
 * binds whole columns as arrays (a batch's ids, users, offsets, bodies), and `pg` quotes every
 * element, numbers too, with two regular-expression passes each (~4 % of a gateway node's CPU in
 * the multinode bench). Same literal for PostgreSQL: strings quoted and escaped, numbers and
 * bigints bare, bytes as `\\x` hex, null and undefined as `NULL`, nested arrays nested. Anything
 * else (a boolean, a date, an object) leaves the whole array to `pg`, unchanged.
 */
export function arrayLiteral(a: readonly unknown[]): string | undefined {
  let out = '{';
  for (let i = 0; i < a.length; i++) {
    if (i > 0) out += ',';
    const v = a[i];
    if (v === null || v === undefined) out += 'NULL';
    else if (typeof v === 'string') out += `"${SPECIAL.test(v) ? v.replace(SPECIALS, '\\$&') : v}"`;
    else if (typeof v === 'number' || typeof v === 'bigint') out += String(v);
    else if (v instanceof Uint8Array)
      out += `\\\\x${Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString('hex')}`;
    else if (Array.isArray(v)) {
      const inner = arrayLiteral(v);
      if (inner === undefined) return undefined;
      out += inner;
    } else return undefined;
  }
  return `${out}}`;
}

/** A parameter as sent: an array as its literal when {@link arrayLiteral} writes it, anything else as it is. */
const encodeArray = (v: unknown): unknown => (Array.isArray(v) ? (arrayLiteral(v) ?? v) : v);

/**
 * `pool`, with each connection it lends (and its own `query`) sending the statements `names`
 * names as named statements. A connection on which one turned out stale is dropped on release.
 */
export function preparedPool(pool: PgPool, names: StatementNames): PgPool {
  // One wrapper per connection, kept while the connection lives: the store listens on each
  // connection once (`guardConnection`), and a connection's stale flag stays with it.
  const wrappers = new WeakMap<PgPoolClient, PgPoolClient>();
  const wrap = (c: PgPoolClient): PgPoolClient => {
    let w = wrappers.get(c);
    if (w) return w;
    // Lent by this wrapper's own `query` too, where no caller listens: a reset must not kill the process.
    guardConnection(c);
    let stale = false;
    w = {
      query(text, values) {
        if (typeof text !== 'string') return c.query(text, values);
        const name = names.nameOf(text, values);
        if (name === undefined) return c.query(text, values);
        return c.query({ name, text, values: values!.map(encodeArray) }).catch((e: unknown) => {
          if (isStalePlan(e)) stale = true;
          throw e;
        });
      },
      release: (error) => c.release(stale || error),
    };
    if (c.on) w.on = (event, listener) => c.on!(event, listener);
    wrappers.set(c, w);
    return w;
  };
  const connect = async (): Promise<PgPoolClient> => wrap(await pool.connect());
  return {
    connect,
    async query(text, values): Promise<PgQueryResult> {
      if (typeof text !== 'string' || names.nameOf(text, values) === undefined)
        return pool.query(text, values);
      // As the pool's own `query` does: a connection of its own for the one statement, dropped
      // when the statement failed; once more on a fresh one when its named statement was stale.
      for (let attempt = 0; ; attempt++) {
        const c = await connect();
        try {
          const r = await c.query(text, values);
          c.release();
          return r;
        } catch (e) {
          c.release(e instanceof Error ? e : true);
          if (attempt > 0 || !isStalePlan(e)) throw e;
        }
      }
    },
    end: () => pool.end(),
  };
}
