/**
 * The server's wire layer: client frames to the domain inputs the engine and the store take, and
 * store results (inbox entries, refusals, key bundles) to the frames a device receives. Pure
 * functions, no state: the only place that knows both the frame layout and the domain types.
 * Internal to the engine: not exported from `postbox/server`.
 * @packageDocumentation
 */
import type {
  ErrFrame,
  GapFrame,
  GroupEventFrame,
  GroupFrame,
  KeyGetFrame,
  KeysFrame,
  MsgFrame,
  ReceiptFrame,
  SendFrame,
  ServerFrame,
} from '../protocol/index.js';
import type { KeyBundle, KeyUpload } from '../protocol/keys.js';
import type { TypingNotice } from './cluster/types.js';
import type {
  DeviceAddress,
  DeviceMismatch,
  GroupChange,
  GroupInput,
  InboxEntry,
  MessageInput,
  ReceiptInput,
} from './store.js';

/** The text of an `err` answering a refused commit, by refusal code. */
export const REFUSAL_TEXT: Record<string, string> = {
  unknown_recipient: 'recipient is not registered (no device, not in the user directory)',
  not_member: 'not a member of the group',
  forbidden: 'not allowed',
  group_full: 'group is at its member cap',
  inbox_full: "a recipient device's inbox is full; try again later",
  quota_exceeded: 'a storage quota would be exceeded',
  mismatched_devices: 'device list does not match the directory',
  stale_devices: 'some devices were re-registered',
};

const WIRE_STATUS = { delivered: 'd', read: 'r', expired: 'x' } as const;
const WIRE_GAP_REASON = { expired: 'x', inbox_full: 'f' } as const;

type WireKey = [number, Uint8Array, Uint8Array];

/** Wire form of a device-list difference. */
export function wireDifference(d: DeviceMismatch): NonNullable<ErrFrame['d']> {
  const out: NonNullable<ErrFrame['d']> = {};
  const list = (l: DeviceAddress[]): Array<[string, string]> => l.map((a) => [a.user, a.device]);
  if (d.missing?.length) out.m = list(d.missing);
  if (d.extra?.length) out.x = list(d.extra);
  if (d.stale?.length) out.s = list(d.stale);
  return out;
}

/** The message a `send` frame of device `from` commits (its size already checked). */
export function messageInput(frame: SendFrame, from: DeviceAddress): MessageInput {
  const input: MessageInput = {
    kind: 'msg',
    from,
    id: frame.id,
    to: frame.to,
    seq: frame.seq,
    body: frame.b,
  };
  if (frame.g) input.group = true;
  if (frame.e) input.envelopes = frame.e.map(([user, device, rid, body]) => ({ user, device, rid, body }));
  return input;
}

/** The read receipt an `rcpt` frame of device `from` commits. */
export function receiptInput(frame: ReceiptFrame, from: DeviceAddress): ReceiptInput {
  return { kind: 'receipt', from, id: frame.id, to: frame.to, status: 'read', ids: frame.ids };
}

/**
 * The membership change a `grp` frame of device `from` asks for, or the reason it is malformed
 * (answered with `invalid_frame`).
 */
export function groupInput(
  f: GroupFrame,
  from: DeviceAddress,
  maxMembers: number,
): GroupInput | { invalid: string } {
  let change: GroupChange;
  switch (f.op) {
    case 'create':
      if (f.n === undefined) return { invalid: 'create needs a name' };
      change = { op: 'create', name: f.n, members: f.m ?? [] };
      break;
    case 'rename':
      if (f.n === undefined) return { invalid: 'rename needs a name' };
      change = { op: 'rename', name: f.n };
      break;
    case 'leave':
    case 'accept':
    case 'decline':
      change = { op: f.op };
      break;
    case 'invite':
      return { invalid: 'invite is an event; add the user instead' };
    default:
      if (!f.m) return { invalid: `${f.op} needs members` };
      change = { op: f.op, members: f.m };
  }
  return { kind: 'group', from, id: f.id, group: f.g, change, maxMembers };
}

/** The keys a `keys` frame publishes. */
export function keyUpload(f: KeysFrame): KeyUpload {
  const upload: KeyUpload = { registrationId: f.rid, identityKey: f.ik };
  if (f.spk) upload.signedPreKey = { id: f.spk[0], key: f.spk[1], signature: f.spk[2] };
  if (f.lrk) upload.lastResortKyber = { id: f.lrk[0], key: f.lrk[1], signature: f.lrk[2] };
  if (f.pk) upload.preKeys = f.pk.map(([id, key]) => ({ id, key }));
  if (f.kpk) upload.kyberPreKeys = f.kpk.map(([id, key, signature]) => ({ id, key, signature }));
  return upload;
}

/** The `kb` frame answering a `kget`: the claimed bundles, and the users still without keys. */
export function keyBundlesFrame(f: KeyGetFrame, bundles: KeyBundle[], keyless: string[]): ServerFrame {
  return {
    t: 'kb',
    r: f.r,
    b: bundles.map((b) => {
      const t: [string, string, number, Uint8Array, WireKey, WireKey, ...Array<[number, Uint8Array]>] = [
        b.user,
        b.device,
        b.registrationId,
        b.identityKey,
        [b.signedPreKey.id, b.signedPreKey.key, b.signedPreKey.signature],
        [b.kyberPreKey.id, b.kyberPreKey.key, b.kyberPreKey.signature],
      ];
      if (b.preKey) t.push([b.preKey.id, b.preKey.key]);
      return t;
    }),
    ...(keyless.length > 0 ? { w: keyless } : {}),
  };
}

/** The `typn` frame of a typing notice. */
export function typingFrame(n: TypingNotice): ServerFrame {
  return n.group
    ? { t: 'typn', f: n.from.user, fd: n.from.device, on: n.on, to: n.to, g: true }
    : { t: 'typn', f: n.from.user, fd: n.from.device, on: n.on };
}

/** The `pres` frame of a presence level; the last-seen time only when offline and shown. */
export function presenceFrame(user: string, online: boolean, lastSeen: number | undefined): ServerFrame {
  return online || lastSeen === undefined
    ? { t: 'pres', u: user, on: online }
    : { t: 'pres', u: user, on: false, ls: lastSeen };
}

/**
 * The `msg` frame of a message as device of user `recipient` gets it. `to` is on the wire only
 * when the recipient cannot infer it: a group's id, or the peer of a message one of its own
 * devices sent.
 */
function msgFrame(
  offset: number,
  id: string,
  from: DeviceAddress,
  to: string,
  group: boolean | undefined,
  seq: number,
  ts: number,
  body: Uint8Array,
  recipient: string,
): MsgFrame {
  const f: MsgFrame = { t: 'msg', o: offset, id, f: from.user, fd: from.device, seq, ts, b: body };
  if (group) {
    f.to = to;
    f.g = true;
  } else if (to !== recipient) f.to = to;
  return f;
}

/**
 * The `msg` frame of a message just committed, straight from what was committed (no inbox
 * entry is built for it): `body` is the recipient device's own (its envelope, when encrypted).
 */
export function committedMsgFrame(
  input: MessageInput,
  ts: number,
  offset: number,
  body: Uint8Array,
  recipient: string,
): MsgFrame {
  return msgFrame(offset, input.id, input.from, input.to, input.group, input.seq, ts, body, recipient);
}

/** The frame a device of user `recipient` gets for an inbox entry. */
export function entryFrame(e: InboxEntry, recipient: string): ServerFrame {
  if (e.kind === 'gap') {
    const s = e.streams.map((g): GapFrame['s'][number] => [
      g.from.user,
      g.from.device,
      g.to,
      ...g.ranges.flat(),
    ]);
    return { t: 'gap', o: e.offset, why: WIRE_GAP_REASON[e.reason], s, ts: e.ts };
  }
  if (e.kind === 'status') {
    return { t: 'st', o: e.offset, s: WIRE_STATUS[e.status], ids: e.ids, by: e.by, ts: e.ts };
  }
  if (e.kind === 'group') {
    const ev = e.event;
    const f: GroupEventFrame = {
      t: 'gev',
      o: e.offset,
      g: ev.group,
      v: ev.ver,
      op: ev.op,
      by: ev.by,
      m: ev.members,
      ts: e.ts,
    };
    if (ev.name !== undefined) f.n = ev.name;
    if (ev.snapshot) f.s = ev.snapshot.map((m) => [m.user, m.role === 'admin' ? 1 : 0]);
    return f;
  }
  return msgFrame(e.offset, e.id, e.from, e.to, e.group, e.seq, e.ts, e.body, recipient);
}
