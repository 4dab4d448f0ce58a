/**
 * When the acks of received entries leave (like TCP's delayed ACK, but only under load): an idle
 * connection acks at once, so the sender's ✓✓ is not held back; once an ack frame has left, the
 * next waits until `delayMs` after it, so a busy device sends at most one ack frame per
 * `delayMs` (plus the ones a full batch forces) and a burst still costs one frame.
 * @packageDocumentation
 */

/**
 * Milliseconds the pending acks wait before they leave: 0 when no ack frame left within the last
 * `delayMs` (or acks are not delayed at all), else what remains of `delayMs` since the last one.
 * @internal
 */
export function ackWait(now: number, lastAckAt: number | undefined, delayMs: number): number {
  if (delayMs <= 0 || lastAckAt === undefined) return 0;
  return Math.max(0, lastAckAt + delayMs - now);
}
