/**
 * Why a send did not make it, in one place: the failure an outgoing item carries when its status
 * becomes `failed` (the server refused it, or the engine gave up on it) or `expired`. It is stored
 * with the outbox entry in the same write as the status, so the `status` event, `messageInfo()`
 * and `history()` (after a restart too) all say the same thing.
 * @packageDocumentation
 */
import { PostboxError } from '../protocol/index.js';
import type { MessageStatus, SendFailure } from './store.js';

/**
 * Longest `detail` kept. A server's message is short, but it comes from the peer: the client
 * stores it with every failed entry, so a hostile or buggy server must not make that unbounded.
 */
export const MAX_DETAIL_CHARS = 300;

/**
 * The failure an outgoing item to `to` carries once its status is `status`: `error` (the
 * server's refusal, or why the engine gave up) for `failed`, the retention period for `expired`,
 * none for every other status.
 */
export function failureFor(
  status: MessageStatus,
  to: string,
  error: PostboxError | undefined,
): SendFailure | undefined {
  if (status === 'expired') {
    return {
      reason: 'expired',
      detail: `no device of ${to} fetched it within the server's retention period`,
    };
  }
  if (status !== 'failed') return undefined;
  const e = error ?? new PostboxError('internal', 'failed for an unknown reason');
  const detail =
    e.message.length > MAX_DETAIL_CHARS ? `${e.message.slice(0, MAX_DETAIL_CHARS - 1)}…` : e.message;
  return { reason: e.code, detail };
}

/** Copies a stored failure (if any) onto what the app is shown: a status change, message info, history. */
export function withFailure<T extends Partial<SendFailure>>(target: T, from: Partial<SendFailure>): T {
  if (from.reason !== undefined) {
    target.reason = from.reason;
    target.detail = from.detail ?? '';
  }
  return target;
}
