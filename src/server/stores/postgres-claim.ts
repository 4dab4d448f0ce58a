/**
 * The PostgreSQL store's bulk claim: the dedupe keys and bodies of every plain 1:1 message of a
 * batch in one statement, where each message used to cost a round trip of its own.
 * @packageDocumentation
 */
import type { MessageInput } from '../store.js';

/** What the claim needs of a connection (see `PgQueryable` in postgres.ts). */
interface Queryable {
  query(text: string, values?: unknown[]): Promise<{ rows: unknown[] }>;
}

/** A plain 1:1 message of the batch: its index, and how many inbox entries will reference it. */
export interface DirectClaim {
  index: number;
  item: MessageInput;
  refs: number;
}

/** The dedupe key of a message, as one string (the parts are length-prefixed). */
const keyOf = (user: string, device: string, id: string): string =>
  `${user.length}:${user}${device.length}:${device}${id}`;

/**
 * Claims the dedupe key of every listed message and stores the body of each one claimed, in one
 * statement, at `now`. Returns each index's body id, or null where the key was known (committed
 * before, or a repeat of an earlier message of the same batch: the first wins, as one at a time).
 *
 * Keys are inserted in primary-key order, so two transactions claiming overlapping keys take their
 * index locks in one order (a concurrent holder of a key makes the insert wait for its outcome,
 * which is the dedupe across nodes); bodies go in batch order, so their ids follow it.
 */
export async function claimDirect(
  c: Queryable,
  s: string,
  claims: DirectClaim[],
  now: number,
): Promise<Map<number, number | null>> {
  const out = new Map<number, number | null>();
  if (claims.length === 0) return out;
  const { rows } = await c.query(
    `WITH x AS (
       SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bytea[],
                            $7::int[]) WITH ORDINALITY AS x(fu, fd, id, tu, seq, body, refs, n)
     ), d AS (
       INSERT INTO ${s}.dedupe (from_user, from_device, msg_id, ts, to_user)
       SELECT fu, fd, id, $8, tu FROM x ORDER BY fu, id, fd, n
       ON CONFLICT DO NOTHING RETURNING from_user, from_device, msg_id
     )
     INSERT INTO ${s}.messages (from_user, from_device, msg_id, to_user, to_group, seq, ts, body, refs)
     SELECT fu, fd, id, tu, false, seq, $8, body, refs FROM (
       SELECT DISTINCT ON (x.fu, x.fd, x.id) x.* FROM x
       JOIN d ON d.from_user = x.fu AND d.from_device = x.fd AND d.msg_id = x.id
       ORDER BY x.fu, x.fd, x.id, x.n
     ) f ORDER BY n
     RETURNING id, from_user, from_device, msg_id`,
    [
      claims.map((k) => k.item.from.user),
      claims.map((k) => k.item.from.device),
      claims.map((k) => k.item.id),
      claims.map((k) => k.item.to),
      claims.map((k) => k.item.seq),
      claims.map((k) => k.item.body),
      claims.map((k) => k.refs),
      now,
    ],
  );
  const ids = new Map<string, number>();
  for (const r of rows as Array<{ id: string; from_user: string; from_device: string; msg_id: string }>) {
    ids.set(keyOf(r.from_user, r.from_device, r.msg_id), Number(r.id));
  }
  for (const k of claims) {
    const key = keyOf(k.item.from.user, k.item.from.device, k.item.id);
    const id = ids.get(key);
    out.set(k.index, id ?? null);
    ids.delete(key); // a repeat later in the batch is a duplicate of the first
  }
  return out;
}
