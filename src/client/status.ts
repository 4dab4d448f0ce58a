import type { MessageStatus } from './store.js';

/**
 * Where each status may go next. A status moves only forward:
 * `pending → sent → delivered → read`, or ends in `failed` (the server refused it, nothing was
 * stored) or `expired` (stored, but no recipient device fetched it within the retention period).
 * Skipping ahead is allowed (a `read` may arrive before the `sent` ack it overtook).
 */
const NEXT: Readonly<Record<MessageStatus, readonly MessageStatus[]>> = {
  pending: ['sent', 'delivered', 'read', 'failed', 'expired'],
  sent: ['delivered', 'read', 'expired'],
  delivered: ['read'],
  read: [],
  failed: [],
  expired: [],
};

/**
 * Progress rank of each status, for checks that statuses never go back: along every allowed
 * transition the rank strictly grows.
 */
export const STATUS_RANK: Readonly<Record<MessageStatus, number>> = {
  pending: 0,
  sent: 1,
  failed: 1,
  delivered: 2,
  expired: 2,
  read: 3,
};

/**
 * The receipt state machine's one transition function: the status after `event` is applied to
 * `current`. Events that would move backwards or sideways (a late `delivered` after `read`, a
 * duplicate `sent`) leave the status unchanged, whatever order receipts arrive in.
 * @example
 * nextStatus('read', 'delivered') // 'read'
 * nextStatus('pending', 'read')   // 'read'
 */
export function nextStatus(current: MessageStatus, event: MessageStatus): MessageStatus {
  return NEXT[current].includes(event) ? event : current;
}

/** A member's receipt of a group message this device sent, as stored (`rcpt` namespace). */
export type MemberReceipt = 'delivered' | 'read' | 'expired';

/** Stored codes of member receipts (0: none yet). */
export const MEMBER_RECEIPT_CODE = { delivered: 1, read: 2, expired: 3 } as const;
/** Member receipts by stored code (0: none yet). */
export const MEMBER_RECEIPT_NAME = [undefined, 'delivered', 'read', 'expired'] as const;

/**
 * Where a member's receipt may go next (`none`: no receipt from that member yet). Unlike a 1:1
 * status, a member's `expired` is not final: the server expires one *device's* copy, and another
 * device of the same member may still fetch the message, so a later `delivered` or `read` from
 * that member is believed (and counts it as delivered). A member's `expired` only ever follows
 * no receipt at all: after `delivered` it says nothing new.
 */
const MEMBER_NEXT: Readonly<Record<MemberReceipt | 'none', readonly MemberReceipt[]>> = {
  none: ['delivered', 'read', 'expired'],
  delivered: ['read'],
  read: [],
  expired: ['delivered', 'read'],
};

/**
 * A member's receipt `event` applied to its stored receipt `current`: the new receipt, with
 * what it adds to the message's counters (a member counts as delivered once, and as read once),
 * or undefined when it changes nothing.
 * @example
 * memberStep('expired', 'delivered') // { next: 'delivered', delivered: 1, read: 0 }
 * memberStep('read', 'delivered')    // undefined
 */
export function memberStep(
  current: MemberReceipt | undefined,
  event: MemberReceipt,
): { next: MemberReceipt; delivered: 0 | 1; read: 0 | 1 } | undefined {
  if (!MEMBER_NEXT[current ?? 'none'].includes(event)) return undefined;
  const wasDelivered = current === 'delivered' || current === 'read';
  return {
    next: event,
    delivered: event !== 'expired' && !wasDelivered ? 1 : 0,
    read: event === 'read' ? 1 : 0,
  };
}
