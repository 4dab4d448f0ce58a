/**
 * The server's storage contract. The store is the source of truth: everything the server
 * engine keeps in memory is a cache or a hint that can be rebuilt from it.
 */

/** A user's device. */
export interface DeviceAddress {
  user: string;
  device: string;
}

/** Status kinds that travel in inbox entries. */
export type EntryStatus = 'delivered' | 'read' | 'expired';

/** A message to commit: stored once, referenced from every recipient device's inbox. */
export interface MessageInput {
  kind: 'msg';
  /** The authenticated sender (never taken from a frame field). */
  from: DeviceAddress;
  /** Client-generated id; with `from` it is the dedupe key. */
  id: string;
  /** Recipient user. */
  to: string;
  /** Per-(conversation, sender device) sequence number. */
  seq: number;
  body: Uint8Array;
}

/** A client-produced receipt (read) to commit to the recipient's and the sender's other devices. */
export interface ReceiptInput {
  kind: 'receipt';
  from: DeviceAddress;
  id: string;
  /** The user whose messages were read. */
  to: string;
  status: 'read';
  ids: string[];
}

/** One item of an {@link ServerStore.append} batch. */
export type AppendInput = MessageInput | ReceiptInput;

/** What happened to one appended item. */
export type AppendOutcome =
  | {
      ok: true;
      /** Commit time; for a duplicate, the original commit time. */
      ts: number;
      /** True when `(from, id)` was already committed: nothing was written. */
      duplicate: boolean;
      /** Devices that got a new inbox entry (doorbells to ring). */
      notify: DeviceAddress[];
    }
  | { ok: false; code: 'unknown_recipient' };

/** An inbox entry as read back for delivery. */
export type InboxEntry =
  | {
      offset: number;
      kind: 'msg';
      id: string;
      from: DeviceAddress;
      to: string;
      seq: number;
      /** Commit time of the message. */
      ts: number;
      body: Uint8Array;
    }
  | {
      offset: number;
      kind: 'status';
      status: EntryStatus;
      ids: string[];
      /** The user the status is from (delivered/read) or about (expired). */
      by: string;
      ts: number;
    };

/** Result of operations that may put new entries into inboxes. */
export interface NotifyResult {
  /** How many entries the operation removed. */
  count: number;
  /** Devices that got new inbox entries. */
  notify: DeviceAddress[];
}

/**
 * Durable server state: devices, messages, per-device inboxes, dedupe records.
 *
 * Rules every adapter keeps (the conformance suite in `postbox/testing` checks them):
 * - **Atomic append with dedupe.** Each item of {@link ServerStore.append} is all-or-nothing:
 *   its dedupe record, its body (stored once) and one entry in every recipient device's inbox.
 *   The whole batch commits in one transaction (group commit), durably, before the promise
 *   resolves. A second item with a known `(from.user, from.device, id)`, in the same batch or
 *   any later one, writes nothing and reports `duplicate: true` with the original commit time.
 * - **Recipients are resolved at commit time.** A message or receipt to user `to` goes to every
 *   device of `to` plus every device of the sender's user, never to the sending device itself
 *   (so a note to oneself reaches one's other devices). When `to` has no device the item fails
 *   with `unknown_recipient` and writes nothing. Its commit time is the `now` of the append, and
 *   the items of one batch enter each inbox in batch order.
 * - **No skip.** Offsets are positive and strictly increasing per device; a reader that has seen
 *   offset X never later finds a committed entry with offset ≤ X.
 * - **Delivered once.** When a device of the recipient user acks a message entry, and no device
 *   of that user had acked the same message before, one `delivered` status (listing the ids,
 *   `by` the recipient user) is appended to every device of the sender's user, in the same
 *   transaction as the delete. Acks by the sender's own other devices produce nothing.
 * - **Store once, reference many.** A body is kept while any inbox entry references it.
 * - **Expiry.** {@link ServerStore.expire} removes inbox entries (messages and statuses)
 *   committed strictly before the cutoff;
 *   for each removed message that no recipient device had acked, an `expired` status (`by` the
 *   recipient user) is appended, at `now`, to every device of the sender's user. Dedupe records
 *   older than the cutoff are dropped.
 */
export interface ServerStore {
  /** For logs and conformance reports. */
  readonly name: string;
  /** Records that a device exists (idempotent). Messages go to devices registered at commit time. */
  registerDevice(device: DeviceAddress, now: number): Promise<void>;
  /** The user's registered device ids, in registration order. */
  devices(user: string): Promise<string[]>;
  /** Commits a batch; see the interface rules. Outcomes are in input order. */
  append(batch: AppendInput[], now: number): Promise<AppendOutcome[]>;
  /** Up to `limit` entries of the device's inbox with offset > `after`, in offset order. */
  readInbox(device: DeviceAddress, after: number, limit: number): Promise<InboxEntry[]>;
  /**
   * Deletes the device's entries at `offsets`; offsets the device does not have (already acked,
   * never existed) are ignored, and no other device's entry is ever touched. Returns how many
   * entries were deleted and which devices got a `delivered` status.
   */
  ack(device: DeviceAddress, offsets: number[], now: number): Promise<NotifyResult>;
  /** Removes entries and dedupe records committed before `cutoff`; tells senders `expired`. */
  expire(cutoff: number, now: number): Promise<NotifyResult>;
  /** Releases resources. The data stays for the next open. */
  close(): Promise<void>;
}
