/**
 * When the acks of received entries leave (like TCP's delayed ACK, but only under load): an idle
 * connection acks at once, so the sender's ✓✓ is not held back; once an ack frame has left, the
 * next waits until `delayMs` after it, so a busy device sends at most one ack frame per
 * `delayMs` (plus the ones a full batch forces) and a burst still costs one frame.
 *
 * Only a message's ack makes something happen for someone else (the sender's ✓✓). A status's
 * ack only lets the server drop it, and a status delivered again (its connection ended before
 * the ack left) changes nothing, as statuses only move forward: so status acks are *quiet*. They
 * wait up to {@link QUIET_ACK_FACTOR} × `delayMs` for a frame to ride with (a message's ack, or
 * any frame this device sends), which saves the sender one ack frame per message life. Group
 * events and gap notices are not quiet: applied again they would tell the app again.
 * @packageDocumentation
 */

/**
 * A quiet ack waits at most this many `delayMs` (250 ms with the default 25) before it leaves
 * on its own. With `delayMs` 0 nothing waits.
 * @internal
 */
export const QUIET_ACK_FACTOR = 10;

/**
 * Milliseconds the pending acks wait before they leave: 0 when no ack frame left within the last
 * `delayMs` (or acks are not delayed at all), else what remains of `delayMs` since the last one.
 * When every pending ack is quiet, at least {@link QUIET_ACK_FACTOR} × `delayMs`.
 * @internal
 */
export function ackWait(now: number, lastAckAt: number | undefined, delayMs: number, quiet = false): number {
  if (delayMs <= 0) return 0;
  const paced = lastAckAt === undefined ? 0 : Math.max(0, lastAckAt + delayMs - now);
  return quiet ? Math.max(paced, delayMs * QUIET_ACK_FACTOR) : paced;
}
