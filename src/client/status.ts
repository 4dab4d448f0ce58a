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
