/**
 * The outbox's durability point, in one place: an item the app hands the client is either
 * committed in the client store (and then sent, resent until acked) or refused with an error,
 * and a refused item was never stored and will never be sent.
 * @packageDocumentation
 */
import { PostboxError, isPostboxError } from '../protocol/index.js';

/**
 * The error a send (or a group request) rejects with when the client store did not take it:
 * `unavailable` (retryable: the app may try again), with the store's error as `cause`.
 */
export function storeRefused(what: 'message' | 'request', cause: unknown): PostboxError {
  if (isPostboxError(cause)) return cause;
  return new PostboxError(
    'unavailable',
    `the client store did not take the ${what}: it was not stored and will not be sent; try again`,
    { cause },
  );
}

/** What a caller-given message id may be (see `SendOptions.id`): within the wire's 64 characters. */
const MESSAGE_ID = /^[0-9A-Za-z_-]{1,64}$/;

/** Throws `invalid_frame` unless `id` may be a caller-given message id. */
export function assertMessageId(id: unknown): asserts id is string {
  if (typeof id !== 'string' || !MESSAGE_ID.test(id)) {
    throw new PostboxError('invalid_frame', 'message id: 1-64 of A-Z a-z 0-9 _ - (a ULID is best)');
  }
}
