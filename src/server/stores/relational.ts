/**
 * What the built-in server stores share besides the key-directory rules: the membership-change
 * rules worked out before anything is written (all three stores), the stored form of group
 * events (the SQL stores) and small collectors. Pure code: each store reads and writes its own
 * state around it.
 * What store-kit.ts re-exports from here is public (`postbox/server/store-kit`).
 * @packageDocumentation
 */
import { Packr } from 'msgpackr';
import { addressKey } from '../address.js';
import type {
  AppendRefusal,
  DeviceAddress,
  GroupChange,
  GroupEvent,
  GroupInput,
  GroupMember,
  GroupRole,
  KeyBundle,
  KeyUpload,
  ReceiptInput,
} from '../store.js';

/** Status groups: one status entry per group goes to every device of `user`. */
export type Groups = Map<string, { user: string; by: string; ids: string[] }>;

// Length-prefixed so that no two different tuples share a key.
const uniq = (users: string[]): string[] => [...new Set(users)];

/** Collects devices that got new entries, each once, in first-seen order. */
export class NotifySet {
  private readonly seen = new Set<string>();
  readonly list: DeviceAddress[] = [];
  add(d: DeviceAddress): void {
    const k = addressKey(d);
    if (this.seen.has(k)) return;
    this.seen.add(k);
    this.list.push({ user: d.user, device: d.device });
  }
}

// Plain msgpack: the stored events stay readable by any msgpack implementation.
const packr = new Packr({ useRecords: false, moreTypes: false });

/**
 * A stored group event: the msgpack array `[group, ver, op, by, members, name | nil, snapshot |
 * nil]`, the snapshot flattened to `[user, isAdmin (0/1), …]`, so no field name is stored and a
 * 1,024-member snapshot costs about its user ids.
 */
export type EventTuple = [
  string,
  number,
  GroupEvent['op'],
  string,
  string[],
  string | null,
  Array<string | number> | null,
];

/** A group event in its stored form ({@link EventTuple}). */
export function encodeEvent(e: GroupEvent): Buffer {
  const snapshot = e.snapshot?.flatMap((m) => [m.user, m.role === 'admin' ? 1 : 0]) ?? null;
  const tuple: EventTuple = [e.group, e.ver, e.op, e.by, e.members, e.name ?? null, snapshot];
  return packr.pack(tuple);
}

/** A group event from its stored form ({@link EventTuple}). */
export function decodeEvent(data: Uint8Array): GroupEvent {
  const [group, ver, op, by, members, name, snapshot] = packr.unpack(data) as EventTuple;
  const e: GroupEvent = { group, ver, op, by, members };
  if (name !== null) e.name = name;
  if (snapshot !== null) {
    e.snapshot = [];
    for (let i = 0; i < snapshot.length; i += 2) {
      e.snapshot.push({ user: snapshot[i] as string, role: snapshot[i + 1] === 1 ? 'admin' : 'member' });
    }
  }
  return e;
}

/** A group as a change sees it: `members` maps user → role in join order. */
export interface GroupView {
  name: string;
  ver: number;
  members: Map<string, GroupRole>;
}

/** What a membership change does, worked out before anything is written. */
export interface ChangePlan {
  /** The event as existing and removed members get it (no snapshot). */
  event: GroupEvent;
  /** The group after the change. */
  after: GroupView;
  created: boolean;
  /** Users new to the group, in join order (they get the snapshot form). */
  joined: string[];
  /** Users the change took out of the group. */
  removed: string[];
  /** Role changes of users who stay members. */
  roles: Map<string, GroupRole>;
}

/**
 * Validates a membership change against the group's current state and works out its effect,
 * without writing (every built-in store applies the plan its own way). Returns `null` for a change
 * with nothing to do, or the refusal code.
 */
export function planChange(
  item: GroupInput,
  current: GroupView | undefined,
  hasDevice: (user: string) => boolean,
  invited: (user: string) => boolean = () => false,
): ChangePlan | null | AppendRefusal {
  const actor = item.from.user;
  const c: GroupChange = item.change;
  // A decline changes no membership (see planInvites); an accept adds the invitee, by itself.
  if (c.op === 'decline') return null;
  if (c.op === 'accept') {
    if (current?.members.has(actor)) return null; // accepted already (say, on another device)
    if (!current || !invited(actor)) return 'forbidden';
    if (current.members.size + 1 > item.maxMembers) return 'group_full';
    const after: GroupView = { name: current.name, ver: current.ver + 1, members: new Map(current.members) };
    after.members.set(actor, 'member');
    const event: GroupEvent = { group: item.group, ver: after.ver, op: 'add', by: actor, members: [actor] };
    return { event, after, created: false, joined: [actor], removed: [], roles: new Map() };
  }
  if (c.op === 'create') {
    if (current) return 'forbidden';
    const members = uniq([actor, ...c.members]);
    if (members.length > item.maxMembers) return 'group_full';
    if (members.some((u) => !hasDevice(u))) return 'unknown_recipient';
    const after: GroupView = { name: c.name, ver: 1, members: new Map() };
    for (const u of members) after.members.set(u, u === actor ? 'admin' : 'member');
    const event: GroupEvent = {
      group: item.group,
      ver: 1,
      op: 'create',
      by: actor,
      members: members.filter((u) => u !== actor),
      name: c.name,
    };
    return { event, after, created: true, joined: members, removed: [], roles: new Map() };
  }
  if (!current || !current.members.has(actor)) return 'not_member';
  const isAdmin = current.members.get(actor) === 'admin';
  const after: GroupView = { name: current.name, ver: current.ver, members: new Map(current.members) };
  const roles = new Map<string, GroupRole>();
  let changed: string[] = [];
  let joined: string[] = [];
  let removed: string[] = [];
  switch (c.op) {
    case 'add': {
      if (!isAdmin) return 'forbidden';
      changed = uniq(c.members).filter((u) => !after.members.has(u));
      if (after.members.size + changed.length > item.maxMembers) return 'group_full';
      if (changed.some((u) => !hasDevice(u))) return 'unknown_recipient';
      for (const u of changed) after.members.set(u, 'member');
      joined = changed;
      break;
    }
    case 'remove': {
      if (!isAdmin) return 'forbidden';
      changed = uniq(c.members).filter((u) => u !== actor && after.members.has(u));
      for (const u of changed) after.members.delete(u);
      removed = changed;
      break;
    }
    case 'leave': {
      changed = [actor];
      after.members.delete(actor);
      removed = changed;
      // A group never ends up without an admin: the longest-standing member takes over.
      if (isAdmin && after.members.size > 0 && ![...after.members.values()].includes('admin')) {
        const heir = after.members.keys().next().value as string;
        after.members.set(heir, 'admin');
        roles.set(heir, 'admin');
      }
      break;
    }
    case 'promote':
    case 'demote': {
      if (!isAdmin) return 'forbidden';
      const to: GroupRole = c.op === 'promote' ? 'admin' : 'member';
      changed = uniq(c.members).filter((u) => after.members.has(u) && after.members.get(u) !== to);
      if (to === 'member') {
        const admins = [...after.members.values()].filter((r) => r === 'admin').length;
        if (changed.length >= admins) return 'forbidden';
      }
      for (const u of changed) {
        after.members.set(u, to);
        roles.set(u, to);
      }
      break;
    }
    case 'rename': {
      if (!isAdmin) return 'forbidden';
      if (c.name === after.name) return null;
      after.name = c.name;
      break;
    }
  }
  if (c.op !== 'rename' && changed.length === 0) return null;
  after.ver++;
  const event: GroupEvent = { group: item.group, ver: after.ver, op: c.op, by: actor, members: changed };
  if (c.op === 'rename') event.name = after.name;
  return { event, after, created: false, joined, removed, roles };
}

/** A group's whole membership, in join order, as snapshots carry it. */
export function snapshotOf(g: GroupView): GroupMember[] {
  return [...g.members].map(([user, role]) => ({ user, role }));
}

/** A signed key from its columns, in buffers of its own. */
export function signedKey(id: number, key: Uint8Array, signature: Uint8Array): KeyBundle['signedPreKey'] {
  return { id, key: new Uint8Array(key), signature: new Uint8Array(signature) };
}

/** Queues `status` about message `id` from `by` to the sender user `user`, grouped per pair. */
export function queueStatus(groups: Groups, user: string, by: string, id: string): void {
  const gk = `${user.length}:${user}${by}`;
  let g = groups.get(gk);
  if (!g) groups.set(gk, (g = { user, by, ids: [] }));
  g.ids.push(id);
}

/** A device's directory entry as the SQL stores keep it (the `kyber_*` columns: the last-resort key). */
export interface KeysRow {
  identity_key: Uint8Array;
  registration_id: number;
  signed_id: number;
  signed_key: Uint8Array;
  signed_sig: Uint8Array;
  kyber_id: number;
  kyber_key: Uint8Array;
  kyber_sig: Uint8Array;
}

/**
 * The signed prekey and last-resort Kyber key a device has after an upload: the uploaded ones,
 * else the stored ones (`uploadKind` made sure that only an update, which has them, leaves them out).
 */
export function keptKeys(
  keys: KeyUpload,
  old: KeysRow | undefined,
): { signed: KeyBundle['signedPreKey']; kyber: KeyBundle['signedPreKey'] } {
  return {
    signed: keys.signedPreKey ?? { id: old!.signed_id, key: old!.signed_key, signature: old!.signed_sig },
    kyber: keys.lastResortKyber ?? { id: old!.kyber_id, key: old!.kyber_key, signature: old!.kyber_sig },
  };
}

/** A one-time key as a claim took it out of the directory. */
export interface ClaimedKey {
  key_id: number;
  key: Uint8Array;
  signature?: Uint8Array | null;
}

/**
 * A device's bundle from its directory entry and the one-time keys claimed for it: the Kyber
 * one-time key, else the last-resort one; the EC one-time key only when there was one.
 */
export function bundleFrom(
  user: string,
  device: string,
  r: KeysRow,
  pre: ClaimedKey | undefined,
  kyber: ClaimedKey | undefined,
): KeyBundle {
  const bundle: KeyBundle = {
    user,
    device,
    registrationId: r.registration_id,
    identityKey: new Uint8Array(r.identity_key),
    signedPreKey: signedKey(r.signed_id, r.signed_key, r.signed_sig),
    kyberPreKey: kyber
      ? signedKey(kyber.key_id, kyber.key, kyber.signature!)
      : signedKey(r.kyber_id, r.kyber_key, r.kyber_sig),
  };
  if (pre) bundle.preKey = { id: pre.key_id, key: new Uint8Array(pre.key) };
  return bundle;
}

/**
 * `inbox.message` of an entry that holds its 1:1 message itself (the SQLite store's schema step 14,
 * the PostgreSQL store's step 10). Not NULL, and never a row id: a node from before those steps
 * (several processes on one SQLite file, or a PostgreSQL rolling upgrade) finds no shared row for
 * it and skips the entry (its read returns nothing for a reference without a body) instead of
 * reading it as a status; the entry waits in the inbox for a newer node to deliver it.
 */
export const IN_ENTRY = 0;

/**
 * Whether a message is stored in its one entry (see {@link IN_ENTRY}): a 1:1 message, plain or
 * end-to-end encrypted, with exactly one target device. Nothing is shared, so there is no
 * `messages` row to write, count down and delete, and its ack needs no `delivered` mark: one entry
 * is told once.
 */
export const inEntry = (item: { group?: boolean }, targets: readonly unknown[]): boolean =>
  targets.length === 1 && item.group !== true;

/** The shared `messages` row an entry references, or undefined (none, or the message is in the entry). */
export const sharedMessage = (message: string | number | null): number | undefined =>
  message === null || Number(message) === IN_ENTRY ? undefined : Number(message);

/**
 * The columns of a message entry as a query reads them, from the entry `i` when it holds its message
 * (see {@link IN_ENTRY}) or else from the shared `messages` row `m` it references: `from_user`,
 * `from_device`, `msg_id`, `to_user`, `seq`. NULL in all of them for any other entry. The same SQL
 * in both stores.
 */
export const ownOrShared = (i: string, m: string): string =>
  ['from_user', 'from_device', 'msg_id', 'to_user', 'seq']
    .map((col) => `coalesce(${i}.${col}, ${m}.${col}) AS ${col}`)
    .join(', ');

/** Whether `d` is the sending device: a message never goes to it (it has what it sent). */
export const isSender = (d: { user: string; device: string }, from: DeviceAddress): boolean =>
  d.user === from.user && d.device === from.device;

/** A message's targets among `devices`: every one but the sending device. */
export function exceptSender<T extends { user: string; device: string }>(
  devices: readonly T[],
  from: DeviceAddress,
): T[] {
  return devices.filter((d) => !isSender(d, from));
}

/** The event a device new to the store gets for one of its user's groups: a snapshot, as on an add. */
export function joinSnapshot(group: string, g: GroupView, user: string): GroupEvent {
  return {
    group,
    ver: g.ver,
    op: 'add',
    by: user,
    members: [user],
    name: g.name,
    snapshot: snapshotOf(g),
  };
}

/** What a store keeps of a committed message to check statuses about it (the "Receipts" rule). */
export interface SentRecord {
  /** The message id. */
  id: string;
  /** The recipient user, or the group id for a group message. */
  to: string;
  /** For a group message, the group's version when it committed; null for a 1:1 message. */
  ver: number | null;
}

/**
 * The ids of a receipt that count (the "Receipts" rule): those of a message from its `to` that
 * went to its reader. `records` are the stored records of the messages of `to` with those ids (a
 * message id may have several, one per sending device); `since(group)` is the version at which
 * the reader's current membership of a group began, undefined when it is not a member. Ids keep
 * the receipt's order, each once.
 */
export function receiptIds(
  item: ReceiptInput,
  records: SentRecord[],
  since: (group: string) => number | undefined,
): string[] {
  const reader = item.from.user;
  const ok = new Set<string>();
  for (const r of records) {
    if (r.ver === null ? r.to === reader : (since(r.to) ?? Infinity) <= r.ver) ok.add(r.id);
  }
  return [...new Set(item.ids)].filter((id) => ok.has(id));
}

/**
 * Who consents to whom by a committed membership change (the "Consent" rule), as versions each
 * store records: users who joined are members from the change's version on, and the actor, when
 * still a member, took part in the group at that version.
 */
export function membershipMarks(
  item: GroupInput,
  plan: ChangePlan,
): { ver: number; joined: string[]; acted: string | undefined } {
  const actor = item.from.user;
  return {
    ver: plan.after.ver,
    joined: plan.joined,
    acted: plan.after.members.has(actor) ? actor : undefined,
  };
}

/**
 * Where one `expire` call of a SQL store is in its walk over the devices with entries (row ids in
 * ascending order): past device `after`; `done` once a step saw the last of them. A step that
 * fills its batch leaves `after` before the device it stopped in (SQLite) or where it was
 * (PostgreSQL), so the next step reads that device again; every step removes an entry or moves
 * `after` on.
 * @internal
 */
export interface ExpiryWalk {
  after: number;
  done: boolean;
}
