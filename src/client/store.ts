/**
 * The client's storage contract: a durable outbox with sequence counters, the inbound
 * dedupe/order state, and the message history the app renders from.
 */

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

/** A stored outgoing item. `seq` is set for messages, absent for receipts. */
export interface OutboxEntry extends OutboxDraft {
  seq?: number;
  status: MessageStatus;
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
 * Durable client state. Every method is atomic; the engine serialises calls for one store.
 *
 * Rules every adapter keeps (the conformance suite in `postbox/testing` checks them):
 * - **Sequence with the outbox write.** `enqueue(draft, true)` gives the draft's conversation its
 *   next sequence number (1, 2, 3, … per conversation) in the same atomic write that stores the
 *   entry; a re-opened store continues the count, never reuses or skips a number.
 * - **Durable outbox.** Entries stay `pending` (and are returned by `pending()` in enqueue order)
 *   until `setStatus` moves them on, across re-opens.
 * - **Inbound dedupe.** A message is stored at most once per `(from, fromDevice, id)`.
 * - **Held and released.** A message inserted with `held: true` is returned by `held()` until a
 *   later change lists its id in `release`; stream positions persist across re-opens.
 * - **State namespaces.** `putState` writes (or deletes) any number of `(ns, key)` values in one
 *   atomic write; `getState` and `listState` read them back, byte for byte, across re-opens;
 *   `listState` returns a namespace's keys that start with a prefix in ascending order
 *   (of their UTF-8 bytes; the same as code-unit order for the ASCII keys the engine uses). The engine keeps group views and per-member receipts there; adapters (encryption)
 *   keep their own state in their own namespaces.
 */
export interface ClientStore {
  /** For logs and conformance reports. */
  readonly name: string;
  /**
   * Stores an outgoing item as `pending`. When `sequenced`, assigns the conversation's next
   * sequence number (starting at 1) in the same atomic write, so a crash cannot reuse or skip one.
   */
  enqueue(draft: OutboxDraft, sequenced: boolean): Promise<OutboxEntry>;
  /** Items still `pending`, in enqueue order. */
  pending(): Promise<OutboxEntry[]>;
  /** Records an outgoing item's status (the engine has already checked it moves forward). */
  setStatus(id: string, status: MessageStatus): Promise<void>;
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
  /** Releases resources; the data stays for the next open. */
  close(): Promise<void>;
}
