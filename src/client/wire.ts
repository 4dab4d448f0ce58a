/**
 * The client's wire rules, each in one place: the frame an outbox item goes out as, the
 * conversation a delivered message belongs to, the stored form of a received message, and the
 * error an `err` frame reports. Pure functions, table-tested (test/client-wire.test.ts).
 * @packageDocumentation
 */
import {
  PostboxError,
  isGroupId,
  type ClientFrame,
  type DeviceListDifference,
  type ErrFrame,
} from '../protocol/index.js';
import { decodeChange } from './groups.js';
import type { InboundMessage, OutboxEntry } from './store.js';

/** An empty body: an encrypted 1:1 send carries its ciphertexts in envelopes instead. */
export const EMPTY = new Uint8Array(0);

/** Statuses as the server's `st` frame spells them. */
export const STATUS_FROM_WIRE = { d: 'delivered', r: 'read', x: 'expired' } as const;

/**
 * `err` frames with no request id that need no `error` event: a refused typing notice
 * (`not_member`, `rate_limited`: dropped, like one sent offline), and the notices the server
 * sends right before closing (`rate_limited` for a frame flood, `unauthorized`,
 * `unsupported_version`), whose close the `connection` event reports.
 */
export const NOTICES_WITHOUT_REQUEST: ReadonlySet<string> = new Set([
  'not_member',
  'rate_limited',
  'unauthorized',
  'unsupported_version',
]);

/**
 * The frame an outbox item goes out as, under request `r`: a message (`b` is its body as given:
 * the plain path's, or a group ciphertext), a membership change, or a read receipt. Encrypted
 * 1:1 messages and control items are built by the sealing stage (they need envelopes).
 */
export function frameOf(e: OutboxEntry, r: number, body: Uint8Array | undefined = e.body): ClientFrame {
  if (e.kind === 'group') {
    const c = decodeChange(e.body!);
    const f: ClientFrame = { t: 'grp', r, id: e.id, g: e.to, op: c.op };
    if (c.m) f.m = c.m;
    if (c.n !== undefined) f.n = c.n;
    return f;
  }
  if (e.kind === 'read') return { t: 'rcpt', r, id: e.id, to: e.to, ids: e.ids! };
  const f: ClientFrame = { t: 'send', r, id: e.id, to: e.to, seq: e.seq!, b: body! };
  if (isGroupId(e.to)) f.g = true;
  return f;
}

/**
 * The conversation a message (or a typing notice) belongs to, from this user's point of view:
 * the group for a group message; for a copy of this user's own message sent from another of its
 * devices, the peer it was sent to (`to`; this user itself when absent: a note to self); else the
 * sender. The one rule for live messages, resend answers and typing notices.
 * @param group - `to` is a group (the frame's `g`, or a group id in a resend answer).
 */
export function conversationOf(from: string, to: string | undefined, group: boolean, me: string): string {
  if (group && to !== undefined) return to;
  return from === me ? (to ?? me) : from;
}

/**
 * A received message as stored: `to` is the user it was addressed to (the peer for this user's
 * own copies, this user otherwise; the group for a group message), and this user's own copies
 * are never unread here.
 */
export function inboundOf(
  conv: string,
  me: string,
  id: string,
  from: string,
  fromDevice: string,
  seq: number,
  ts: number,
  body: Uint8Array,
): InboundMessage {
  const self = from === me;
  const to = self || isGroupId(conv) ? conv : me;
  return { id, conv, from, fromDevice, to, seq, ts, body, held: false, read: self };
}

/** The error an `err` frame reports, with its device-list difference when it has one. */
export function errorOf(f: ErrFrame): PostboxError {
  if (!f.d) return new PostboxError(f.c, f.m ?? f.c);
  const list = (l: Array<[string, string]> | undefined) => l?.map(([user, device]) => ({ user, device }));
  const devices: DeviceListDifference = {};
  if (f.d.m) devices.missing = list(f.d.m)!;
  if (f.d.x) devices.extra = list(f.d.x)!;
  if (f.d.s) devices.stale = list(f.d.s)!;
  return new PostboxError(f.c, f.m ?? f.c, { devices });
}
