/**
 * The client's storage contract: a durable outbox with sequence counters, the inbound
 * dedupe/order state, and the message history the app renders from.
 */
import type { ErrorCode } from '../protocol/errors.js';

/** A message's status as the sender sees it. Moves only forward; see `nextStatus`. */
export type MessageStatus = 'pending' | 'sent' | 'delivered' | 'read' | 'failed' | 'expired';

/** What the app hands to `send`, plus what the engine adds before storing it. */
export interface OutboxDraft {
  /** Client-generated ULID. */
  id: string;
  /**
   * `msg` for messages, `read` for read receipts, `group` for membership changes (the change,
   * msgpack-encoded, in `body`).
   */
  kind: 'msg' | 'read' | 'group' | 'ctl';
  /** Recipient user, or a group id (group ids start with `#`). */
  to: string;
  /** Conversation the sequence counter belongs to. */
  conv: string;
  /** Message body (kind `msg`). */
  body?: Uint8Array;
  /** Message ids being read (kind `read`). */
  ids?: string[];
  /** Local creation time. */
  createdAt: number;
}

/**
 * Why an outgoing item ended `failed` or `expired`, stored with it (see
 * {@link ClientStore.setStatus}).
 */
export interface SendFailure {
  /**
   * The code: the server's refusal (`unknown_recipient`, `not_member`, `too_large`, `forbidden`,
   * …), `mismatched_devices` when the device-list corrections ran out, `no_keys` when the
   * recipient's devices published no keys within `keyWaitMs`, or `expired`.
   */
  reason: ErrorCode;
  /** A human message (the server's words when it gave some): for logs and support, not for branching. */
  detail: string;
}

/**
 * A stored outgoing item. `seq` is set for messages, absent for receipts; `reason` and `detail`
 * (a {@link SendFailure}) only when it failed or expired.
 */
export interface OutboxEntry extends OutboxDraft, Partial<SendFailure> {
  seq?: number;
  status: MessageStatus;
}

/**
 * Moves an entry held in memory to `status`, with `failure`'s reason and detail or none: the
 * one rule of what `setStatus` leaves on an entry (the memory store and the engine's in-memory
 * copies both follow it).
 * @internal
 */
export function applyEntryStatus(
  e: Pick<OutboxEntry, 'status' | 'reason' | 'detail'>,
  status: MessageStatus,
  failure: SendFailure | undefined,
): void {
  e.status = status;
  // Only when there is one to delete: `delete` turns the object into a slow dictionary, and this
  // runs on every status of every message.
  if (e.reason !== undefined) delete e.reason;
  if (e.detail !== undefined) delete e.detail;
  if (failure) {
    e.reason = failure.reason;
    e.detail = failure.detail;
  }
}

/** A stored inbound message. */
export interface InboundMessage {
  id: string;
  /** Conversation, from this user's point of view (the peer for 1:1). */
  conv: string;
  from: string;
  fromDevice: string;
  /** Recipient user, as the sender addressed it. */
  to: string;
  seq: number;
  /** Server commit time. */
  ts: number;
  body: Uint8Array;
  /** Held in the reorder buffer, not yet shown to the app. */
  held: boolean;
  /** Marked read on this device (or on another device of this user). */
  read: boolean;
}

/** One atomic inbound change; see {@link ClientStore.applyInbound}. */
export interface InboundChange {
  /** A new message to insert unless `(from, fromDevice, id)` is already stored. */
  insert?: InboundMessage;
  /** Ids of held messages now released to the app. */
  release?: string[];
  /** New next-expected sequence per stream key. */
  streams?: Array<{ key: string; next: number }>;
}

/** One write of {@link ClientStore.putState}: `value` undefined deletes the key. */
export interface StateWrite {
  ns: string;
  key: string;
  value: Uint8Array | undefined;
}

/**
 * One shown message of a conversation's history: received (`inbound`) or sent from this device
 * (`outgoing`, always of kind `msg`). `pos` is its history position (see {@link ClientStore}).
 */
export type HistoryRecord =
  | { pos: number; inbound: InboundMessage; outgoing?: undefined }
  | { pos: number; outgoing: OutboxEntry; inbound?: undefined };

/** A conversation as {@link ClientStore.conversations} lists it. */
export interface ConversationRecord {
  conv: string;
  /** Its shown message with the highest history position. */
  last: HistoryRecord;
  /** Its shown inbound messages that are not read. */
  unread: number;
}

/**
 * Durable client state. Every method is atomic; the engine serialises calls for one store.
 *
 * Rules every adapter keeps (the conformance suite in `postbox/testing` checks them):
 * - **Sequence with the outbox write.** `enqueue(draft, true)` gives the draft's conversation its
 *   next sequence number (1, 2, 3, … per conversation) in the same atomic write that stores the
 *   entry; a re-opened store continues the count, never reuses or skips a number.
 * - **Durable outbox.** Entries stay `pending` (and are returned by `pending()` in enqueue order)
 *   until `setStatus` moves them on, across re-opens. The failure `setStatus` is given (why an
 *   entry failed or expired) is stored with the status, and every read of the entry (`outgoing`,
 *   `outgoingIn`, `history`, `conversations`) returns it as `reason` and `detail`, across re-opens;
 *   an entry set without one has neither. An id already in the outbox is refused:
 *   `enqueue` rejects and changes nothing. The `state` writes passed to `enqueue` commit in the
 *   same atomic write as the entry, or not at all.
 * - **Inbound dedupe.** A message is stored at most once per `(from, fromDevice, id)`.
 * - **Held and released.** A message inserted with `held: true` is returned by `held()` until a
 *   later change lists its id in `release`; stream positions persist across re-opens.
 * - **State namespaces.** `putState` writes (or deletes) any number of `(ns, key)` values in one
 *   atomic write; `getState` and `listState` read them back, byte for byte, across re-opens;
 *   `listState` returns a namespace's keys that start with a prefix in ascending order
 *   (of their UTF-8 bytes; the same as code-unit order for the ASCII keys the engine uses). The engine keeps group views and per-member receipts there; adapters (encryption)
 *   keep their own state in their own namespaces.
 * - **History positions.** A message is *shown* once the app can see it: an outgoing entry of
 *   kind `msg` when it is enqueued, an inbound message when it is inserted not held, or when a
 *   later change releases it. At that moment it takes the next number of one store-wide counter
 *   (an inserted message before the ones its change releases, those in `release` order), so
 *   positions follow the order in which the engine showed messages (per-sender order included,
 *   which arrival order is not). Positions never change, are never reused and survive re-opens.
 *   `history` and `conversations` serve shown messages only (never receipts, membership changes
 *   or held messages) and read by position through an index: neither scans a conversation's
 *   whole history nor every stored message.
 */
export interface ClientStore {
  /** For logs and conformance reports. */
  readonly name: string;
  /**
   * Stores an outgoing item as `pending`. When `sequenced`, assigns the conversation's next
   * sequence number (starting at 1) in the same atomic write, so a crash cannot reuse or skip one.
   * `state` (the engine's bookkeeping of the item, e.g. a group message's recipients) is written in
   * that same atomic write: a crash keeps the entry and its state, or neither. Rejects, changing
   * nothing, when `draft.id` is already in the outbox. When this resolves the entry is durable.
   */
  enqueue(draft: OutboxDraft, sequenced: boolean, state?: StateWrite[]): Promise<OutboxEntry>;
  /** Items still `pending`, in enqueue order. */
  pending(): Promise<OutboxEntry[]>;
  /**
   * Records an outgoing item's status (the engine has already checked it moves forward) and, for
   * `failed` and `expired`, why: the failure replaces any stored before, in the same write.
   */
  setStatus(id: string, status: MessageStatus, failure?: SendFailure): Promise<void>;
  /** An outgoing item by id. */
  outgoing(id: string): Promise<OutboxEntry | undefined>;
  /**
   * Applies one inbound change atomically. When `insert` is a duplicate (its
   * `(from, fromDevice, id)` is already stored, held or not) nothing of the change is applied and
   * `inserted` is false; otherwise the whole change is applied and `inserted` tells whether it
   * carried a message.
   */
  applyInbound(change: InboundChange): Promise<{ inserted: boolean }>;
  /** Next expected sequence for a stream key, or undefined when never seen. */
  streamNext(key: string): Promise<number | undefined>;
  /** All held (not yet released) inbound messages. */
  held(): Promise<InboundMessage[]>;
  /** Inbound messages of a conversation in arrival order. */
  inbound(conv: string): Promise<InboundMessage[]>;
  /**
   * Optional: a conversation's shown inbound messages that are not read, in arrival order —
   * what `inbound(conv)` returns, less the held and the read ones — read through an index, so
   * that marking a conversation read costs what is unread in it, not its whole history. Without
   * it the engine filters `inbound(conv)`.
   */
  unreadInbound?(conv: string): Promise<InboundMessage[]>;
  /** Outgoing items of a conversation in enqueue order. */
  outgoingIn(conv: string): Promise<OutboxEntry[]>;
  /** Marks inbound messages read (unknown ids are ignored). */
  markRead(ids: string[]): Promise<void>;
  /** A value of a state namespace, or undefined. */
  getState(ns: string, key: string): Promise<Uint8Array | undefined>;
  /** Writes and deletes state values, all in one atomic write. */
  putState(writes: StateWrite[]): Promise<void>;
  /** The namespace's entries whose key starts with `prefix` (all when omitted), in key order. */
  listState(ns: string, prefix?: string): Promise<Array<{ key: string; value: Uint8Array }>>;
  /**
   * A page of a conversation's shown messages, received and sent, newest first: at most `limit`
   * of those with a history position below `before` (all positions when undefined). Paging with
   * `before` set to the last position of the previous page visits every shown message once.
   */
  history(conv: string, before: number | undefined, limit: number): Promise<HistoryRecord[]>;
  /**
   * Every conversation that has a shown message, the one with the latest shown message first,
   * each with that message and its number of unread inbound messages (shown, `read` false).
   */
  conversations(): Promise<ConversationRecord[]>;
  /** Releases resources; the data stays for the next open. */
  close(): Promise<void>;
}
