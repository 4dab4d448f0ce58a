/**
 * The PostgreSQL store's key claim (`ServerStore.claimKeys`): the bundles of every device of every
 * user named, in two statements however many users a `kget` frame names (it used to be two per
 * user): one reads the directory entries, one takes the one-time keys.
 * @internal
 * @packageDocumentation
 */
import type { KeyBundle } from '../../protocol/keys.js';
import type { ClaimOptions } from '../store.js';
import { claimedUsers } from './directory.js';
import { bundleFrom, type KeysRow } from './relational.js';

/** What the claim needs of a connection or pool (see `PgQueryable` in postgres.ts). */
interface Queryable {
  query(text: string, values?: unknown[]): Promise<{ rows: unknown[] }>;
}

/** A one-time key the claim took, and whose it was. */
interface Claimed {
  dev: string;
  kind: 'ec' | 'kyber';
  key_id: number;
  key: Uint8Array;
  signature: Uint8Array | null;
}

/**
 * Claims bundles in schema `s` (see `ServerStore.claimKeys`). Each one-time key row is deleted
 * as it is read, by one statement for all devices; `FOR UPDATE SKIP LOCKED`: a concurrent claim
 * (on any node) holding a device's oldest row takes it, this one the next, so no key is handed
 * out twice and no claim waits for another.
 */
export async function claimBundles(
  pool: Queryable,
  s: string,
  users: string | readonly string[],
  device: string | undefined,
  options: ClaimOptions | undefined,
): Promise<KeyBundle[]> {
  const named = claimedUsers(users);
  if (named.length === 0) return [];
  const { rows } = (await pool.query(
    `SELECT d.id, d.device, d.user_id, k.*
       FROM unnest($1::text[]) WITH ORDINALITY AS u(name, n)
       JOIN ${s}.devices d ON d.user_id = u.name
       JOIN ${s}.device_keys k ON k.dev = d.id
      WHERE $2::text IS NULL OR d.device = $2
      ORDER BY u.n, d.id`,
    [named, device ?? null],
  )) as { rows: Array<KeysRow & { id: string; device: string; user_id: string }> };
  if (rows.length === 0) return [];
  const oneTime = rows.filter((r) => options?.oneTime?.(r.device, r.user_id) ?? true);
  const claimed: Claimed[] = [];
  if (oneTime.length > 0) {
    const taken = await pool.query(
      `WITH ec AS (
         DELETE FROM ${s}.prekeys p WHERE p.id = ANY(ARRAY(
           SELECT k.id FROM unnest($1::bigint[]) AS x(dev) CROSS JOIN LATERAL (
             SELECT id FROM ${s}.prekeys WHERE dev = x.dev ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED
           ) k))
         RETURNING p.dev, p.key_id, p.key
       ), ky AS (
         DELETE FROM ${s}.kyber_prekeys p WHERE p.id = ANY(ARRAY(
           SELECT k.id FROM unnest($1::bigint[]) AS x(dev) CROSS JOIN LATERAL (
             SELECT id FROM ${s}.kyber_prekeys WHERE dev = x.dev ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED
           ) k))
         RETURNING p.dev, p.key_id, p.key, p.signature
       )
       SELECT dev, 'ec' AS kind, key_id, key, NULL::bytea AS signature FROM ec
       UNION ALL SELECT dev, 'kyber', key_id, key, signature FROM ky`,
      [oneTime.map((r) => r.id)],
    );
    claimed.push(...(taken.rows as Claimed[]));
  }
  const byDevice = new Map<string, { ec?: Claimed; kyber?: Claimed }>();
  for (const k of claimed) {
    const got = byDevice.get(String(k.dev)) ?? {};
    got[k.kind] = k;
    byDevice.set(String(k.dev), got);
  }
  return rows.map((r) => {
    const got = byDevice.get(String(r.id));
    return bundleFrom(r.user_id, r.device, r, got?.ec, got?.kyber);
  });
}
