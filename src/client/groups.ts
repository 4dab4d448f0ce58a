import { Packr } from 'msgpackr';
import type { GroupEventFrame, GroupOp } from '../protocol/index.js';

/** A member of a group as this device knows it. */
export interface GroupMemberView {
  user: string;
  role: 'admin' | 'member';
}

/**
 * A group as this device knows it, built from the ordered membership events in its inbox, so
 * every device of every member converges on the same view (same version, same members in join
 * order, same roles).
 */
export interface GroupView {
  id: string;
  name: string;
  /** Version of the last change applied. */
  ver: number;
  /** Members in join order. */
  members: GroupMemberView[];
  /** This device's user is a member (false after it left or was removed). */
  member: boolean;
  /** The version at which this device's user (last) joined: it has the messages sent since. */
  since: number;
}

/** A membership change as the app sees it (the `group` event). */
export interface GroupChangeEvent {
  group: string;
  ver: number;
  /**
   * What happened; `sync` is no change at all: a device new to its user (just linked, or
   * re-installed) learning a group the user was already in. Show it as history, not as news.
   */
  op: GroupOp | 'sync';
  /** The user who made the change (for `sync`, this device's own user). */
  by: string;
  /** Users the change is about (none for `sync`). */
  members: string[];
  /** Server commit time. */
  ts: number;
}

const packr = new Packr({ useRecords: false, moreTypes: false });

/** Encodes a view for the client store's `group` namespace. */
export function encodeView(v: GroupView): Uint8Array {
  return packr.pack([
    v.name,
    v.ver,
    v.members.map((m) => [m.user, m.role === 'admin' ? 1 : 0]),
    v.member ? 1 : 0,
    v.since,
  ]);
}

/** Decodes a stored view. */
export function decodeView(id: string, data: Uint8Array): GroupView {
  const [name, ver, members, member, since] = packr.unpack(data) as [
    string,
    number,
    Array<[string, number]>,
    number,
    number,
  ];
  return {
    id,
    name,
    ver,
    members: members.map(([user, admin]) => ({ user, role: admin ? 'admin' : 'member' })),
    member: member === 1,
    since,
  };
}

/** Encodes a membership change request for the outbox. */
export function encodeChange(c: { op: GroupOp; m?: string[]; n?: string }): Uint8Array {
  return packr.pack([c.op, c.m ?? null, c.n ?? null]);
}

/** Decodes an outbox membership change request. */
export function decodeChange(data: Uint8Array): { op: GroupOp; m?: string[]; n?: string } {
  const [op, m, n] = packr.unpack(data) as [GroupOp, string[] | null, string | null];
  const out: { op: GroupOp; m?: string[]; n?: string } = { op };
  if (m) out.m = m;
  if (n !== null) out.n = n;
  return out;
}

/**
 * Applies one membership event to a view, returning the new view or `undefined` when the event
 * changes nothing (already applied: its version is not newer; or it is about a group this device
 * never knew and carries no snapshot). Pure: the input view is not modified.
 *
 * The server's rule for a leaving last admin (the longest-standing remaining member becomes
 * admin) is recomputed here from the join order, so the event does not need to carry it.
 */
export function applyGroupEvent(
  view: GroupView | undefined,
  ev: GroupEventFrame,
  me: string,
): GroupView | undefined {
  if (view && ev.v <= view.ver) return undefined;
  if (ev.s) {
    const members = ev.s.map(([user, admin]): GroupMemberView => ({
      user,
      role: admin ? 'admin' : 'member',
    }));
    const member = members.some((m) => m.user === me);
    return {
      id: ev.g,
      name: ev.n ?? view?.name ?? '',
      ver: ev.v,
      members,
      member,
      // A snapshot goes to devices new to the group: a membership period starts here.
      since: member && !view?.member ? ev.v : (view?.since ?? ev.v),
    };
  }
  if (!view) return undefined;
  const next: GroupView = { ...view, ver: ev.v, members: view.members.map((m) => ({ ...m })) };
  const about = new Set(ev.m);
  switch (ev.op) {
    case 'create':
    case 'add':
      for (const user of ev.m) {
        if (!next.members.some((m) => m.user === user)) next.members.push({ user, role: 'member' });
      }
      break;
    case 'remove':
    case 'leave': {
      const leaverWasAdmin = next.members.some((m) => about.has(m.user) && m.role === 'admin');
      next.members = next.members.filter((m) => !about.has(m.user));
      if (ev.op === 'leave' && leaverWasAdmin && next.members.length > 0) {
        if (!next.members.some((m) => m.role === 'admin')) next.members[0]!.role = 'admin';
      }
      break;
    }
    case 'promote':
    case 'demote':
      for (const m of next.members) if (about.has(m.user)) m.role = ev.op === 'promote' ? 'admin' : 'member';
      break;
    case 'rename':
      if (ev.n !== undefined) next.name = ev.n;
      break;
  }
  next.member = next.members.some((m) => m.user === me);
  return next;
}

/**
 * Whether a group event is the snapshot the server gives a device new to its user for each group
 * the user is already in. It comes as an `add` of the user by itself, which no person can cause
 * (an added user is someone else's doing, and a member cannot add itself again), so the shape
 * alone says it.
 */
export function isJoinSnapshot(ev: GroupEventFrame, me: string): boolean {
  return ev.op === 'add' && ev.s !== undefined && ev.by === me && ev.m.length === 1 && ev.m[0] === me;
}

/** Encodes the recipients of a group message this device sent (the `gsend` namespace). */
export function encodeRecipients(users: string[]): Uint8Array {
  return packr.pack(users);
}

/** Decodes recorded recipients. */
export function decodeRecipients(data: Uint8Array): string[] {
  return packr.unpack(data) as string[];
}

/** How many recipients have a group message delivered, and read (the `gcount` namespace). */
export function encodeCounts(c: { delivered: number; read: number }): Uint8Array {
  return packr.pack([c.delivered, c.read]);
}

/** Decodes receipt counters. */
export function decodeCounts(data: Uint8Array): { delivered: number; read: number } {
  const [delivered, read] = packr.unpack(data) as [number, number];
  return { delivered, read };
}
