/**
 * The PostgreSQL store's acks, a batch at a time: every device's acked entries of one flush
 * deleted by one statement (it was one per acking device), the rows locked first in (device,
 * offset) order so two nodes deleting overlapping entries wait for each other rather than
 * deadlock.
 * @packageDocumentation
 */
import type { DeviceAddress } from '../store.js';
import { ownOrShared } from './relational.js';

/** What the delete needs of a connection (see `PgQueryable` in postgres.ts). */
interface Queryable {
  query(text: string, values?: unknown[]): Promise<{ rows: unknown[] }>;
}

/**
 * A deleted entry, with what the ack needs of its message (null for other entries): from the entry
 * itself when it holds its message (`message` 0, `IN_ENTRY`), else from the shared row.
 */
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
  const named: number[] = []; // the ack (index into `acks`) that named each offset
  acks.forEach((a, i) => {
    for (const o of a.offsets) {
      if (!Number.isSafeInteger(o)) continue;
      users.push(a.device.user);
      devices.push(a.device.device);
      positions.push(o);
      named.push(i);
    }
  });
  const out = acks.map((): AckedRow[] => []);
  if (positions.length === 0) return out;
  const { rows } = await c.query(
    `WITH x AS (
       SELECT DISTINCT ON (d.id, x.pos) d.id AS dev, x.pos, x.n
       FROM unnest($1::text[], $2::text[], $3::bigint[], $4::int[]) AS x(u, dv, pos, n)
       JOIN ${s}.devices d ON d.user_id = x.u AND d.device = x.dv
       ORDER BY d.id, x.pos, x.n
     ), picked AS (
       SELECT i.dev, i.pos FROM ${s}.inbox i JOIN x ON i.dev = x.dev AND i.pos = x.pos
       ORDER BY i.dev, i.pos FOR UPDATE OF i
     ), del AS (
       DELETE FROM ${s}.inbox i USING picked p WHERE i.dev = p.dev AND i.pos = p.pos
       RETURNING i.dev, i.pos, i.message, i.event, i.size, i.from_user, i.from_device, i.msg_id, i.to_user, i.seq
     )
     SELECT del.dev, del.pos, del.message, del.event, del.size, x.n, ${ownOrShared('del', 'm')}
     FROM del JOIN x ON x.dev = del.dev AND x.pos = del.pos LEFT JOIN ${s}.messages m ON m.id = del.message
     ORDER BY del.dev, del.pos`,
    [users, devices, positions, named],
  );
  // Each deleted row to the first ack of its device that named its offset (`DISTINCT ON` kept it).
  for (const r of rows as Array<AckedRow & { n: number }>) {
    const { n, ...row } = r;
    out[n]!.push(row);
  }
  return out;
}
