/**
 * The PostgreSQL store's bulk reads and claims for the messages and receipts of a batch (plain,
 * end-to-end encrypted and group messages, read receipts): the dedupe keys and bodies of all of
 * them in one statement, the key directory's devices of every sealed message in one query, the
 * groups of every group message locked and their member devices read in two, and the sent records
 * every receipt is checked against in one more, where each item used to cost round trips of its
 * own.
 * @packageDocumentation
 */
import type { MessageInput, ReceiptInput } from '../store.js';
import type { SentRecord } from './relational.js';

/** What the claim needs of a connection (see `PgQueryable` in postgres.ts). */
interface Queryable {
  query(text: string, values?: unknown[]): Promise<{ rows: unknown[] }>;
}

/**
 * A 1:1 item of the batch to claim: its index and how many inbox entries will reference its body
 * (none: no body is stored, as for a receipt or a message kept in its one entry, `inEntry` in
 * relational.ts). `body` is what the message row keeps: the item's own
 * unless given (an end-to-end encrypted message keeps an empty one: each entry has its envelope).
 */
export interface DirectClaim {
  index: number;
  item: MessageInput | ReceiptInput;
  refs: number;
  body?: Uint8Array;
  /** A group message: the group's version it commits at (its dedupe record keeps it). */
  ver?: number;
}

const EMPTY = new Uint8Array(0);

/** The dedupe key of an item, as one string (the parts are length-prefixed). */
const keyOf = (user: string, device: string, id: string): string =>
  `${user.length}:${user}${device.length}:${device}${id}`;

/**
 * Claims the dedupe key of every listed item and stores the body of each message claimed, in one
 * statement, at `now`. Returns each index's body id (0 for an item claimed without a body: a
 * receipt, or a message to no device), or null where the key was known (committed before, or a repeat of an earlier item of the same batch:
 * the first wins, as one at a time).
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
  const msg = (k: DirectClaim): k is DirectClaim & { item: MessageInput } => k.item.kind === 'msg';
  const { rows } = await c.query(
    `WITH x AS (
       SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bytea[],
                            $7::int[], $9::bool[], $10::int[])
                     WITH ORDINALITY AS x(fu, fd, id, tu, seq, body, refs, msg, ver, n)
     ), d AS (
       INSERT INTO ${s}.dedupe (from_user, from_device, msg_id, ts, to_user, gver)
       SELECT fu, fd, id, $8, CASE WHEN msg THEN tu END, ver FROM x ORDER BY id, fu, fd, n
       ON CONFLICT DO NOTHING RETURNING from_user, from_device, msg_id
     ), f AS (
       SELECT DISTINCT ON (x.fu, x.fd, x.id) x.* FROM x
       JOIN d ON d.from_user = x.fu AND d.from_device = x.fd AND d.msg_id = x.id
       ORDER BY x.fu, x.fd, x.id, x.n
     ), m AS (
       INSERT INTO ${s}.messages (from_user, from_device, msg_id, to_user, to_group, seq, ts, body, refs)
       SELECT fu, fd, id, tu, ver IS NOT NULL, seq, $8, body, refs FROM f WHERE msg AND refs > 0 ORDER BY n
       RETURNING id, from_user, from_device, msg_id
     )
     SELECT id, from_user, from_device, msg_id FROM m
     UNION ALL SELECT 0, fu, fd, id FROM f WHERE NOT (msg AND refs > 0)`,
    [
      claims.map((k) => k.item.from.user),
      claims.map((k) => k.item.from.device),
      claims.map((k) => k.item.id),
      claims.map((k) => k.item.to),
      claims.map((k) => (msg(k) ? k.item.seq : 0)),
      claims.map((k) => k.body ?? (msg(k) ? k.item.body : EMPTY)),
      claims.map((k) => k.refs),
      now,
      claims.map(msg),
      claims.map((k) => k.ver ?? null),
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

/**
 * The commit times of the items whose dedupe keys are known (a duplicate's outcome carries its
 * original's), by {@link claimKey}, in one query; keys not found are left out.
 */
export async function originals(
  c: Queryable,
  s: string,
  items: ReadonlyArray<{ from: { user: string; device: string }; id: string }>,
): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  if (items.length === 0) return out;
  const { rows } = await c.query(
    `SELECT d.from_user, d.from_device, d.msg_id, d.ts
     FROM unnest($1::text[], $2::text[], $3::text[]) AS x(fu, fd, id)
     JOIN ${s}.dedupe d ON d.from_user = x.fu AND d.msg_id = x.id AND d.from_device = x.fd`,
    [items.map((i) => i.from.user), items.map((i) => i.from.device), items.map((i) => i.id)],
  );
  for (const r of rows as Array<{ from_user: string; from_device: string; msg_id: string; ts: string }>) {
    out.set(keyOf(r.from_user, r.from_device, r.msg_id), Number(r.ts));
  }
  return out;
}

/** A device with keys, as the device-list check sees it. */
export interface KeyedRow {
  id: number;
  user: string;
  device: string;
  rid: number;
}

/** The devices with keys of each of `users`, in registration order, in one query. */
export async function keyedDevices(
  c: Queryable,
  s: string,
  users: readonly string[],
): Promise<Map<string, KeyedRow[]>> {
  const out = new Map<string, KeyedRow[]>();
  const wanted = [...new Set(users)];
  for (const u of wanted) out.set(u, []);
  if (wanted.length === 0) return out;
  const { rows } = await c.query(
    `SELECT d.id, d.user_id AS user, d.device, k.registration_id AS rid
     FROM ${s}.devices d JOIN ${s}.device_keys k ON k.dev = d.id
     WHERE d.user_id = ANY($1::text[]) ORDER BY d.id`,
    [wanted],
  );
  for (const r of rows as Array<{ id: string; user: string; device: string; rid: number }>) {
    out.get(r.user)!.push({ id: Number(r.id), user: r.user, device: r.device, rid: r.rid });
  }
  return out;
}

/** A group as its messages of a batch commit to it: its version and its members' devices. */
export interface GroupTargets {
  ver: number;
  /** Its members (a member without a device too). */
  members: Set<string>;
  /** Every device of every member, in member (join) then registration order. */
  devices: Array<{ id: number; user: string; device: string }>;
}

/**
 * Locks `groups` (`FOR SHARE`, in id order: a membership change of one of them waits for this
 * transaction, so each of its messages reaches the members of one version), then reads each one's
 * version, members and member devices. Groups that do not exist are left out. Two statements: the
 * read comes after the lock, so it sees the membership the lock holds still.
 */
export async function lockGroups(
  c: Queryable,
  s: string,
  groups: readonly string[],
): Promise<Map<string, GroupTargets>> {
  const out = new Map<string, GroupTargets>();
  const ids = [...new Set(groups)].sort();
  if (ids.length === 0) return out;
  const locked = await c.query(
    `SELECT id, ver FROM ${s}.groups WHERE id = ANY($1::text[]) ORDER BY id FOR SHARE`,
    [ids],
  );
  for (const r of locked.rows as Array<{ id: string; ver: number }>) {
    out.set(r.id, { ver: Number(r.ver), members: new Set(), devices: [] });
  }
  if (out.size === 0) return out;
  const { rows } = await c.query(
    `SELECT gm.group_id AS g, gm.user_id AS user, d.id, d.device
     FROM ${s}.group_members gm LEFT JOIN ${s}.devices d ON d.user_id = gm.user_id
     WHERE gm.group_id = ANY($1::text[]) ORDER BY gm.group_id, gm.joined, d.id`,
    [[...out.keys()]],
  );
  for (const r of rows as Array<{ g: string; user: string; id: string | null; device: string | null }>) {
    const g = out.get(r.g)!;
    g.members.add(r.user);
    if (r.id !== null) g.devices.push({ id: Number(r.id), user: r.user, device: r.device! });
  }
  return out;
}

/**
 * Marks each listed sender as having taken part in its group at the version its message committed
 * at (the "Consent" rule), where that moves its mark on: one statement.
 */
export async function markActed(
  c: Queryable,
  s: string,
  acted: ReadonlyArray<{ group: string; user: string; ver: number }>,
): Promise<void> {
  if (acted.length === 0) return;
  // The rows are locked in key order: two batches marking overlapping (group, user) rows then wait
  // for each other instead of deadlocking.
  await c.query(
    `WITH x AS (
       SELECT g, u, max(v) AS v FROM unnest($1::text[], $2::text[], $3::int[]) AS y(g, u, v) GROUP BY g, u
     ), l AS (
       SELECT m.joined, x.v FROM ${s}.group_members m JOIN x ON m.group_id = x.g AND m.user_id = x.u
       WHERE m.acted_ver < x.v ORDER BY m.group_id, m.user_id FOR UPDATE OF m
     )
     UPDATE ${s}.group_members m SET acted_ver = l.v FROM l WHERE m.joined = l.joined AND m.acted_ver < l.v`,
    [acted.map((a) => a.group), acted.map((a) => a.user), acted.map((a) => a.ver)],
  );
}

/** A stored record of a sent message as a receipt is checked against it (see `receiptIds`). */
export interface ReceiptRecord extends SentRecord {
  /** The device that sent it (with `to` of the receipt and `id`, its dedupe key). */
  device: string;
  /** For a group message: the version the reader's membership began at, null when not a member. */
  since: number | null;
}

/**
 * The sent records of every listed receipt's messages, by batch index: for each id it names, the
 * committed messages of its `to` with that id, where each went, and for group messages the
 * version the reader's current membership began at. One query for the whole batch.
 */
export async function receiptRecords(
  c: Queryable,
  s: string,
  receipts: ReadonlyArray<{ index: number; item: ReceiptInput }>,
): Promise<Map<number, ReceiptRecord[]>> {
  const out = new Map<number, ReceiptRecord[]>();
  const n: number[] = [];
  const reader: string[] = [];
  const sender: string[] = [];
  const id: string[] = [];
  for (const { index, item } of receipts) {
    out.set(index, []);
    for (const m of new Set(item.ids)) {
      n.push(index);
      reader.push(item.from.user);
      sender.push(item.to);
      id.push(m);
    }
  }
  if (n.length === 0) return out;
  const { rows } = await c.query(
    `SELECT x.n, d.msg_id AS id, d.from_device AS device, d.to_user AS "to", d.gver AS ver,
            m.since_ver AS since
     FROM unnest($1::int[], $2::text[], $3::text[], $4::text[]) AS x(n, reader, fu, id)
     JOIN ${s}.dedupe d ON d.from_user = x.fu AND d.msg_id = x.id AND d.to_user IS NOT NULL
     LEFT JOIN ${s}.group_members m
       ON d.gver IS NOT NULL AND m.group_id = d.to_user AND m.user_id = x.reader`,
    [n, reader, sender, id],
  );
  for (const r of rows as Array<ReceiptRecord & { n: number; ver: string | number | null }>) {
    out.get(r.n)!.push({
      id: r.id,
      device: r.device,
      to: r.to,
      ver: r.ver === null ? null : Number(r.ver),
      since: r.since === null ? null : Number(r.since),
    });
  }
  return out;
}

export { keyOf as claimKey };
