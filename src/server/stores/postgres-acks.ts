/**
 * The PostgreSQL store's acks, a batch at a time: every device's acked entries of one flush
 * deleted by one statement (it was one per acking device), the rows locked first in (device,
 * offset) order so two nodes deleting overlapping entries wait for each other rather than
 * deadlock.
 * @packageDocumentation
 */
import type { DeviceAddress } from '../store.js';

/** What the delete needs of a connection (see `PgQueryable` in postgres.ts). */
interface Queryable {
  query(text: string, values?: unknown[]): Promise<{ rows: unknown[] }>;
}

/** A deleted entry, with what the ack needs of its message (null for other entries). */
export interface AckedRow {
  dev: string;
  pos: string;
  message: string | null;
  event: string | null;
  size: number;
  from_user: string | null;
  msg_id: string | null;
}

/**
 * Deletes the entries each ack names of its own device's inbox (offsets a device does not have
 * are ignored; no other device's entry is touched) and returns each ack's deleted rows, in offset
 * order, in the order of `acks`. An entry named by two acks of one device goes to the first.
 */
export async function deleteAcked(
  c: Queryable,
  s: string,
  acks: ReadonlyArray<{ device: DeviceAddress; offsets: readonly number[] }>,
): Promise<AckedRow[][]> {
  const users: string[] = [];
  const devices: string[] = [];
  const positions: number[] = [];
  for (const a of acks) {
    for (const o of a.offsets) {
      if (!Number.isSafeInteger(o)) continue;
      users.push(a.device.user);
      devices.push(a.device.device);
      positions.push(o);
    }
  }
  const out = acks.map((): AckedRow[] => []);
  if (positions.length === 0) return out;
  const { rows } = await c.query(
    `WITH x AS (
       SELECT DISTINCT d.id AS dev, x.pos
       FROM unnest($1::text[], $2::text[], $3::bigint[]) AS x(u, dv, pos)
       JOIN ${s}.devices d ON d.user_id = x.u AND d.device = x.dv
     ), picked AS (
       SELECT i.dev, i.pos FROM ${s}.inbox i JOIN x ON i.dev = x.dev AND i.pos = x.pos
       ORDER BY i.dev, i.pos FOR UPDATE OF i
     ), del AS (
       DELETE FROM ${s}.inbox i USING picked p WHERE i.dev = p.dev AND i.pos = p.pos
       RETURNING i.dev, i.pos, i.message, i.event, i.size
     )
     SELECT del.*, d.user_id AS owner, d.device AS owner_device, m.from_user, m.msg_id
     FROM del JOIN ${s}.devices d ON d.id = del.dev LEFT JOIN ${s}.messages m ON m.id = del.message
     ORDER BY del.dev, del.pos`,
    [users, devices, positions],
  );
  // Each deleted row to the first ack of its device that named its offset.
  const claimant = new Map<string, number>();
  acks.forEach((a, i) => {
    for (const o of a.offsets) {
      const k = `${a.device.user.length}:${a.device.user}${a.device.device.length}:${a.device.device}#${o}`;
      if (!claimant.has(k)) claimant.set(k, i);
    }
  });
  for (const r of rows as Array<AckedRow & { owner: string; owner_device: string }>) {
    const k = `${r.owner.length}:${r.owner}${r.owner_device.length}:${r.owner_device}#${Number(r.pos)}`;
    const i = claimant.get(k);
    if (i === undefined) continue; // unreachable: every deleted row was named
    const { owner: _owner, owner_device: _device, ...row } = r;
    out[i]!.push(row);
  }
  return out;
}
