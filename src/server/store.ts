/**
 * The server's storage contract. The store is the source of truth: everything the server
 * engine keeps in memory is a cache or a hint that can be rebuilt from it.
 *
 * Over 500 lines because it is the contract written out (types and their rules, no code): the
 * rules belong next to the methods they bind.
 */
import type { KeyBundle, KeyUpload } from '../protocol/keys.js';
import type { DeviceAddress } from './address.js';
import type { PushToken } from './push/types.js';

export type { KeyBundle, KeyUpload } from '../protocol/keys.js';
export type { DeviceAddress } from './address.js';

/** Status kinds that travel in inbox entries. */
export type EntryStatus = 'delivered' | 'read' | 'expired';

/** A message to commit: stored once, referenced from every recipient device's inbox. */
export interface MessageInput {
  kind: 'msg';
  /** The authenticated sender (never taken from a frame field). */
  from: DeviceAddress;
  /** Client-generated id; with `from` it is the dedupe key. */
  id: string;
  /** Recipient user, or the group id when `group` is set. */
  to: string;
  /** `to` is a group: the message goes to every device of every member at commit time. */
  group?: boolean;
  /** Per-(conversation, sender device) sequence number. */
  seq: number;
  /** The body every recipient device gets (empty when `envelopes` carries the bodies). */
  body: Uint8Array;
  /**
   * End-to-end encrypted 1:1 message: one ciphertext per device, for every device of `to` and
   * every other device of the sender's user that has keys in the directory. Each device's inbox
   * entry carries its own envelope's body. The list is checked against the directory at commit
   * (see {@link ServerStore} "Device lists").
   */
  envelopes?: DeviceEnvelope[];
}

/** One device's ciphertext of an end-to-end encrypted message. */
export interface DeviceEnvelope {
  user: string;
  device: string;
  /** The registration id the sender's session with this device was made for. */
  rid: number;
  body: Uint8Array;
}

/**
 * A client-produced receipt (read) to commit to the devices of the user whose messages were read
 * and the reader's other devices. Only ids of messages the reader received count (see
 * {@link ServerStore} "Receipts"); the others are dropped.
 */
export interface ReceiptInput {
  kind: 'receipt';
  from: DeviceAddress;
  id: string;
  /** The user whose messages were read. */
  to: string;
  status: 'read';
  ids: string[];
}

/** A member's role in a group: admins may add, remove, promote, demote and rename. */
export type GroupRole = 'admin' | 'member';

/** One member of a group. */
export interface GroupMember {
  user: string;
  role: GroupRole;
}

/**
 * A membership change, as a client asks for it.
 * - `create`: a new group named `name`; the creator is its first admin, `members` (other users)
 *   join as members.
 * - `add` / `remove`: admins only; users already in (add) or not in (remove) are skipped.
 * - `leave`: the acting user leaves. When the last admin leaves, the longest-standing remaining
 *   member becomes admin, so a group never ends up without one.
 * - `promote` / `demote`: admins only; change members' roles.
 * - `rename`: admins only.
 * - `invite` (on `create` and `add`): users to invite rather than add (the server's consent rule
 *   decided they have not consented to the actor): each gets a pending invite and an `invite`
 *   event with the group's name and members; it joins only when it sends `accept`.
 * - `accept` / `decline`: the acting user takes or refuses its pending invite.
 */
export type GroupChange =
  | { op: 'create'; name: string; members: string[]; invite?: string[] }
  | { op: 'add'; members: string[]; invite?: string[] }
  | { op: 'accept' }
  | { op: 'decline' }
  | { op: 'remove'; members: string[] }
  | { op: 'leave' }
  | { op: 'promote'; members: string[] }
  | { op: 'demote'; members: string[] }
  | { op: 'rename'; name: string };

/** A membership change to commit. Deduplicated by `(from, id)` like a message. */
export interface GroupInput {
  kind: 'group';
  from: DeviceAddress;
  /** Client-generated request id; with `from` it is the dedupe key. */
  id: string;
  group: string;
  change: GroupChange;
  /** Most members the group may have after the change (the server's configured cap). */
  maxMembers: number;
}

/**
 * A committed membership change as every affected device receives it. Events of one group carry
 * versions 1, 2, 3, … in commit order. The devices of users who are new to the group (the
 * creation, an `add`, a newly linked device) get a `snapshot` of the whole group after the change
 * instead of having to know the history.
 */
export interface GroupEvent {
  group: string;
  /** The group's version after this change (for an invite or a decline: the group's current one). */
  ver: number;
  /** An accepted invite reads as an `add` of the invitee by itself; `invite` goes only to invitees. */
  op: Exclude<GroupChange['op'], 'accept'> | 'invite';
  /** The user who made the change. */
  by: string;
  /** Users the change is about (added, removed, promoted, demoted; the leaver for `leave`). */
  members: string[];
  /** The group's name (always on `create`, `rename` and snapshots). */
  name?: string;
  /** The whole membership after the change, for devices that did not know the group. */
  snapshot?: GroupMember[];
}

/** A group as the store holds it. */
export interface GroupState {
  id: string;
  name: string;
  ver: number;
  /** Members in join order. */
  members: GroupMember[];
}

/** One item of an {@link ServerStore.append} batch. */
export type AppendInput = MessageInput | ReceiptInput | GroupInput;

/** Why an append item was refused; nothing of it was written. */
export type AppendRefusal =
  | 'unknown_recipient'
  | 'not_member'
  | 'forbidden'
  | 'group_full'
  | 'mismatched_devices'
  | 'stale_devices'
  | 'inbox_full'
  | 'quota_exceeded';

/** The device-list difference of a `mismatched_devices` / `stale_devices` refusal. */
export interface DeviceMismatch {
  /** Devices with keys the envelopes left out. */
  missing?: DeviceAddress[];
  /** Envelopes for devices that are not (or no longer) in the directory. */
  extra?: DeviceAddress[];
  /** Envelopes made for another registration id than the directory's (re-installed devices). */
  stale?: DeviceAddress[];
}

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
      /**
       * For a message item: the offset of its new entry in each `notify` device's inbox (same
       * order), so the engine can push it to a waiting connection without reading it back.
       * Optional: without it the engine reads the inbox as for any other entry.
       */
      offsets?: number[];
    }
  | { ok: false; code: AppendRefusal; devices?: DeviceMismatch };

/** An inbox entry as read back for delivery. */
export type InboxEntry =
  | {
      offset: number;
      kind: 'msg';
      id: string;
      from: DeviceAddress;
      /** Recipient user, or the group id when `group` is set. */
      to: string;
      group?: boolean;
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
    }
  | {
      offset: number;
      kind: 'group';
      event: GroupEvent;
      /** Commit time of the change. */
      ts: number;
    }
  | GapNotice;

/**
 * Why the server dropped message entries a device never acked (see {@link GapNotice}):
 * `expired`, removed unfetched at the end of the retention period; `inbox_full`, never stored for
 * the device because its inbox was at its quota (the message went to the other recipients).
 */
export type GapReason = 'expired' | 'inbox_full';

/** The dropped messages of one stream: one sender device in one conversation. */
export interface GapStream {
  from: DeviceAddress;
  /** As on the messages: the recipient user, or the group id when `group` is set. */
  to: string;
  group?: boolean;
  /** Dropped sequence numbers as inclusive `[first, last]` ranges, ascending, not touching. */
  ranges: Array<[number, number]>;
}

/**
 * An inbox entry telling its device which of its message entries the server removed before the
 * device acked them, and why: per stream (conversation, sender device), the sequence numbers
 * (see {@link ServerStore} "Expiry"). Acked and deleted like any entry.
 */
export interface GapNotice {
  offset: number;
  kind: 'gap';
  reason: GapReason;
  streams: GapStream[];
  /** When the server dropped them. */
  ts: number;
}

/** Options of {@link ServerStore.claimKeys}. */
export interface ClaimOptions {
  /**
   * Asked once for each device about to be claimed, synchronously inside the claim, with the
   * device's id and its user's: whether this claim may take that device's one-time keys. For a
   * device it answers false for, the bundle has the signed prekey, the last-resort Kyber key and
   * no EC prekey, and the device's one-time keys stay in the directory (the server's per-claimer
   * budget, see `maxOneTimeKeyClaimsPerDay`).
   * @default every device's one-time keys may be taken
   */
  oneTime?: (device: string, user: string) => boolean;
}

/** An inbox entry an operation just wrote, as it would read back, and whose inbox it is in. */
export interface WrittenEntry {
  device: DeviceAddress;
  entry: InboxEntry;
}

/** Result of operations that may put new entries into inboxes. */
export interface NotifyResult {
  /** How many entries the operation removed. */
  count: number;
  /** Devices that got new inbox entries. */
  notify: DeviceAddress[];
  /**
   * The entries the operation wrote, committed and durable, each as {@link ServerStore.readInbox}
   * would return it, in offset order per device (every device listed in `notify`). Optional:
   * with it the engine pushes them to waiting connections without reading them back (the `delivered`
   * status of an ack reaches the sender one store round trip sooner); without it, or for devices
   * it leaves out, the engine reads the inbox as for any other entry.
   */
  entries?: WrittenEntry[];
}

/**
 * What a store does beyond the required methods, declared once instead of probed for: the engine
 * and the conformance suite read this object, never `typeof store.x === 'function'`. Each flag
 * is a promise the store keeps for every call; `false` means the engine uses its fallback (and
 * the conformance suite skips the cases that need it, printing why). A store object without
 * `capabilities` (a store written before it existed) reads as declaring none of them.
 */
export interface StoreCapabilities {
  /**
   * {@link ServerStore.setPushToken} and {@link ServerStore.pushToken} are implemented and
   * durable: a token set through one node (or before a restart) is read back through any other.
   * Without it the engine keeps tokens in memory, and a restarted server knows a token again
   * only when its device reconnects.
   */
  readonly pushTokens: boolean;
  /**
   * {@link ServerStore.inboxSize} is implemented (possibly as an estimate, see there).
   */
  readonly inboxSize: boolean;
  /**
   * {@link ServerStore.ping} is implemented: one round trip, no write, rejects while the backend
   * cannot take writes. Without it the engine's health probe is a small read
   * ({@link ServerStore.devices}).
   */
  readonly ping: boolean;
  /**
   * A failed {@link ServerStore.append} commits none of its batch: the whole batch is one
   * transaction. Without it the store still keeps what every store must (see "Atomicity" on
   * {@link ServerStore}): each item all-or-nothing, and a failed call leaves a prefix of the batch
   * committed, so the client's resend (deduplicated) completes it in order.
   */
  readonly atomicBatch: boolean;
  /**
   * {@link ServerStore.countActions} is implemented, atomically for every node that shares the
   * store: the engine's per-user caps on group creations and joins count through it, so a cluster
   * allows each cap once and not once per node. Without it each node counts on its own.
   */
  readonly actionCounts?: boolean;
  /**
   * {@link ServerStore.append} may be called again while an earlier call is pending (the engine
   * keeps a sender's later items out of it until the sender's earlier call is answered), and
   * given {@link AppendOptions.sliceRows} it commits a group message with more recipient devices
   * than that in slices: one transaction with its dedupe record, its body, a first slice of
   * entries and a durable record of the devices still to write (fixed then: the recipients are
   * resolved at commit time), then one transaction per slice with the event loop free between
   * them, so other calls commit meanwhile. The call resolves once every slice is durable. A
   * failure between slices leaves the item *pending*, not half-written: a resend of it (the
   * dedupe hit) or the store's next open writes the rest, each device's entry exactly once. The
   * items of the call still take effect in batch order (an item after a sliced one is written
   * after its last slice), but such a call is not one transaction ({@link atomicBatch} holds for
   * calls without `sliceRows`).
   */
  readonly slicedAppend?: boolean;
}

/** How a store that declares {@link StoreCapabilities.slicedAppend} may split one append. */
export interface AppendOptions {
  /** Most inbox entries a transaction of this call writes for one group message (see there). */
  sliceRows?: number;
}

/**
 * A fault hook for tests: a store given one calls it before each underlying write (an inbox
 * entry, a message, a dedupe record, a deleted entry; for the SQL stores each writing statement),
 * with a short name of the write. A throw fails that write as a failing backend would: the call
 * must reject and leave nothing half-done (see "Atomicity" on {@link ServerStore}). The stores of
 * this package take it as their `beforeWrite` option; the conformance suite's `WriteFaults`
 * drives it (docs/adapters.md).
 */
export type BeforeWrite = (write: string) => void;

/**
 * Durable server state: devices, groups, messages, per-device inboxes, dedupe records, last-seen
 * times.
 *
 * Rules every adapter keeps (the conformance suite in `postbox/testing` checks them):
 * - **Atomicity.** A call that rejects (the backend failed midway) leaves no item half-written:
 *   for {@link ServerStore.append}, each item is all-or-nothing (its dedupe record, body and
 *   every inbox entry, or none of them) and the committed items are a prefix of the batch (all or
 *   none of it when the store declares {@link StoreCapabilities.atomicBatch}; a group message
 *   written in slices may instead be left pending, see {@link StoreCapabilities.slicedAppend}); an
 *   {@link ServerStore.ack} deletes its entries and appends their `delivered` statuses together,
 *   or does neither; {@link ServerStore.registerDevice} and the unregister calls likewise, and
 *   {@link ServerStore.expire} each of its steps (removals with their statuses and notices). The
 *   engine answers a failed call by making its clients resend, and dedupe makes the resend
 *   complete the batch exactly once.
 * - **Atomic append with dedupe.** Each item of {@link ServerStore.append} is all-or-nothing:
 *   its dedupe record, its body or event (stored once) and one entry in every recipient device's
 *   inbox. The whole batch commits in one transaction (group commit), durably, before the promise
 *   resolves; the fan-out of one item to many devices is part of that one write, never a round
 *   trip per device. A second item with a known `(from.user, from.device, id)`, in the same batch
 *   or any later one, writes nothing and reports `duplicate: true` with the original commit time.
 *   Items of one batch take effect in batch order (a change to a group applies to the messages
 *   after it).
 * - **Recipients are resolved at commit time.** A message or receipt to user `to` goes to every
 *   device of `to` plus every device of the sender's user, never to the sending device itself
 *   (so a note to oneself reaches one's other devices). When `to` is not in the directory (see
 *   "User directory") the item fails with `unknown_recipient`. A group message goes to every
 *   device of every member at that moment except the sending device; a sender who is not a
 *   member (or an unknown group) gets `not_member`. Its commit time is the `now` of the append, and the items of one batch enter
 *   each inbox in batch order.
 * - **Receipts.** A receipt names messages of user `to` by id; an id counts only when a message
 *   with that id from `to` was committed (and its dedupe record is not yet expired) and went to
 *   the reader: a 1:1 message to the reader's user, or a group message committed while the
 *   reader was a member of the group (it joined at or before the group version the message was
 *   committed at, and has not left since). The status entries list only the ids that count, in
 *   the receipt's order; when none does, the receipt writes only its dedupe record (and is still
 *   `ok`, with nothing to `notify`).
 * - **Consent** ({@link ServerStore.related}). `related(viewer, target)` holds when `target`
 *   made a relationship with `viewer`: a 1:1 message from `target` to `viewer` was committed, or
 *   both are members of a group in which `target` took part while `viewer` was in it (created
 *   it, changed it, or sent a message in it, at or after the version `viewer` joined at). Being
 *   added to a group by someone else, or receiving a message, is no consent.
 * - **Groups.** `create` fails with `forbidden` when the group id exists, with `unknown_recipient`
 *   when a listed user is not in the directory and with `group_full` past `maxMembers`; other
 *   changes fail with `not_member` when the actor is not a member and with `forbidden` when an
 *   admin-only change comes from a member, or a `demote` would leave the group without an admin;
 *   `add` past `maxMembers` fails with `group_full`, and with `unknown_recipient` when it names a
 *   user not in the directory. Users a change cannot apply to are skipped (adding a member,
 *   removing a non-member or oneself — that is `leave`), and a change left with nothing to do
 *   succeeds writing only its dedupe record. A change that succeeds raises the group's version by one and appends
 *   one `group` entry ({@link GroupEvent}) to every device of every member after the change and of
 *   every user it removed, the acting device included; devices of users new to the group get the
 *   event with a `snapshot`. A device registered later gets a snapshot of each of its user's
 *   groups in its inbox.
 * - **User directory.** A user is in the directory while it has a registered device or a pending
 *   inbox. {@link ServerStore.registerUser} gives a user with neither a pending inbox: the inbox
 *   of the reserved device id `PENDING_DEVICE` (`'#pending'`, which no valid device id can be),
 *   standing in for the devices the user does not have yet. It is a device of the user in every
 *   other rule (messages, receipts, statuses, group events and group messages to the user go to
 *   it; adding the user to a group succeeds; its entries expire, and tell senders `expired`,
 *   like any), except that {@link ServerStore.devices} never lists it, it never has keys (an
 *   end-to-end encrypted message to a user who has only it is `unknown_recipient`: there is no
 *   key to encrypt to), and a user never has it beside a registered device. The first device
 *   registered for a user with a pending inbox takes it over in the same transaction: the
 *   pending entries become the device's, in their order, and the pending inbox is gone; then the
 *   device gets a snapshot of each group like any new device. A device registered later gets
 *   none of them. Unlinking a user's last device takes the user out of the directory (no pending
 *   inbox is made).
 * - **No skip.** Offsets are positive and strictly increasing per device; a reader that has seen
 *   offset X never later finds a committed entry with offset ≤ X.
 * - **Delivered once per user.** When a device of user U acks a message entry, U is not the
 *   sender's user, and no device of U had acked the same message before, one `delivered` status
 *   (listing the ids, `by` U) is appended to every device of the sender's user, in the same
 *   transaction as the delete. For a 1:1 message U is the recipient; for a group message each
 *   member produces its own. Acks by the sender's own other devices produce nothing.
 * - **Store once, reference many.** A body (and a group event) is kept while any inbox entry
 *   references it.
 * - **Expiry.** {@link ServerStore.expire} removes inbox entries committed strictly before the
 *   cutoff; for each (removed message, recipient user U ≠ sender user) where no device of U had
 *   acked it, one `expired` status (`by` U) is appended, at `now`, to every device of the
 *   sender's user. Every device that lost message entries (with a sequence number above 0) is
 *   told which, in the same transaction: one {@link GapNotice} (`reason: 'expired'`, at `now`)
 *   per device per transaction, listing each removed entry's stream and sequence number exactly
 *   once (split into several notices past 256 ranges, `MAX_GAP_RANGES`); a store that expires in
 *   several transactions may give a device several notices, never the same entry twice. A notice
 *   that expires itself is carried, not lost: its streams and ranges are named again in the
 *   device's notice of that transaction (merged with what it drops then). The
 *   notice goes after every entry the device already has, so a client that holds later messages
 *   of a stream sees them before it. Dedupe records older than the cutoff are dropped.
 * - **Unlinking.** {@link ServerStore.unregisterDevice} removes the device and every entry of its
 *   inbox (releasing bodies) and its keys, producing no statuses.
 * - **Device lists.** A message with `envelopes` (1:1 only; a group message with envelopes is
 *   refused `forbidden`) is checked at commit against the key directory. Expected: every device
 *   of `to` with keys, and every device of the sender's user with keys but the sending one.
 *   Envelopes for unexpected devices, or expected devices without an envelope, refuse the item
 *   with `mismatched_devices` (`devices.extra` / `devices.missing`); otherwise envelopes whose
 *   `rid` is not the device's current registration id refuse it with `stale_devices`
 *   (`devices.stale`). When `to` has no device with keys it is `unknown_recipient`. Accepted,
 *   the message goes to exactly the expected devices, each entry with its own envelope's body
 *   (registered devices without keys get nothing: they could not decrypt it).
 * - **Quotas** (a store's `quotas` option, see `StoreQuotas` in quotas.ts), enforced in the
 *   transaction of the write, across nodes and restarts (items of one batch count against each
 *   other in batch order). A message with a sequence number skips every target device it would
 *   take past its inbox entries or body bytes: such a device gets no entry of it but, in the same
 *   transaction, an `inbox_full` {@link GapNotice} naming its stream and number; a device has at
 *   most one such notice (split past 256 ranges) that later skips replace by one naming
 *   everything (at a new offset, after the device's other entries), so a full inbox grows by no
 *   entry per skipped message. The message is refused with `inbox_full`, writing nothing, only
 *   when none of its recipient devices has room (those outside the sender's user; for a note to
 *   self, the sender's other devices); the outcome's `notify` lists the skipped devices too and
 *   has no `offsets` then. A receipt or a control message (sequence number 0) that would take
 *   any target past its quota is refused as a whole (see `placeItem`). Entries the store makes
 *   itself (statuses of acks and expiry, group events, snapshots, gap notices) are never refused
 *   but count;
 *   acks, expiry and unlinking free quota. A create or add that would make a user a member of more
 *   than `groupsPerUser` groups is refused with `quota_exceeded`. {@link ServerStore.putKeys}
 *   rejects with a `PostboxError` `quota_exceeded`, writing nothing, when the device would have
 *   more than `preKeys` one-time keys of a kind (re-uploaded ids count once).
 * - **Key directory.** {@link ServerStore.putKeys} replaces a device's identity key,
 *   registration id, signed prekey and last-resort Kyber key when given and adds one-time keys;
 *   a new identity key (a re-install) first drops the device's old one-time keys.
 *   {@link ServerStore.claimKeys} hands out each one-time key at most once, also under
 *   concurrent claims from several connections and nodes, and whether a claim names one user
 *   or many: one EC and one Kyber one-time key per device (oldest first), the last-resort Kyber key once the one-time ones ran out, no EC
 *   prekey once those ran out; for a device that {@link ClaimOptions.oneTime} refuses, the
 *   last-resort Kyber key and no EC prekey, taking nothing.
 */
export interface ServerStore {
  /** For logs and conformance reports. */
  readonly name: string;
  /** What the store implements beyond the required methods (see {@link StoreCapabilities}). */
  readonly capabilities: StoreCapabilities;
  /**
   * Records that a device exists (idempotent). Messages go to devices registered at commit time.
   * A device new to the store takes over its user's pending inbox, if any (see "User directory"),
   * and gets a snapshot of each group its user is in; the result lists it in `notify` when its
   * inbox has entries, and counts the snapshots. Rejects the reserved id `PENDING_DEVICE`.
   */
  registerDevice(device: DeviceAddress, now: number): Promise<NotifyResult>;
  /**
   * Puts a user in the directory before any device of it exists (idempotent; see "User
   * directory"): a user with neither a device nor a pending inbox gets an empty pending inbox,
   * with a snapshot of each group it is still a member of. Resolves true when it did, false when
   * the user already was in the directory (nothing is written then).
   */
  registerUser(user: string, now: number): Promise<boolean>;
  /**
   * Takes a user out of the directory in one step: its pending inbox and every device, each as
   * {@link ServerStore.unregisterDevice} removes one (inbox, keys, push token; no statuses). Group
   * memberships stay, as when its devices are unlinked one by one. Resolves with the ids of the
   * devices removed, or undefined when the user was not in the directory.
   */
  unregisterUser(user: string): Promise<string[] | undefined>;
  /** Removes a device and its whole inbox (no statuses are produced). False when it was unknown. */
  unregisterDevice(device: DeviceAddress): Promise<boolean>;
  /** The user's registered device ids, in registration order (never `PENDING_DEVICE`). */
  devices(user: string): Promise<string[]>;
  /**
   * Commits a batch; see the interface rules. Outcomes are in input order. `options` is read only
   * by a store that declares {@link StoreCapabilities.slicedAppend}.
   */
  append(batch: AppendInput[], now: number, options?: AppendOptions): Promise<AppendOutcome[]>;
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
  /** A group's current state, or undefined when it does not exist. */
  group(id: string): Promise<GroupState | undefined>;
  /** Ids of the groups the user is a member of. */
  groupsOf(user: string): Promise<string[]>;
  /**
   * Whether `target` consented to `viewer` (see "Consent"): it wrote to `viewer`, or took part in
   * a group while `viewer` was in it. Directed: `related(a, b)` says nothing about
   * `related(b, a)`. A user is related to itself. The default presence privacy rule, and what a
   * 1:1 typing notice from `viewer` to `target` needs.
   */
  related(viewer: string, target: string): Promise<boolean>;
  /** Records when a user was last online (durable; a later call with an older time is ignored). */
  setLastSeen(user: string, ts: number): Promise<void>;
  /** When the user was last online, or undefined when never recorded. */
  lastSeen(user: string): Promise<number | undefined>;
  /**
   * Publishes a registered device's public keys (see "Key directory"). Fails (rejects) for an
   * unregistered device and for a first upload without a signed prekey and last-resort Kyber key.
   */
  putKeys(device: DeviceAddress, keys: KeyUpload): Promise<void>;
  /**
   * Claims a bundle for every device that has keys of `users` (one user id, or several: each
   * named once counts once, in the order first named), user by user and each user's devices in
   * registration order; with `device`, only the device of that id of each user. Empty when there
   * is none. One atomic step however many users are named (one write transaction in the SQL
   * stores: the server claims a whole `kget` frame with one call). `options.oneTime` may keep a
   * device's one-time keys out of the claim.
   */
  claimKeys(users: string | readonly string[], device?: string, options?: ClaimOptions): Promise<KeyBundle[]>;
  /**
   * How many unclaimed one-time keys a device has left; undefined for a device without keys in
   * the directory (never uploaded, or unregistered), so the server nags only devices that encrypt.
   */
  keyCount(device: DeviceAddress): Promise<{ preKeys: number; kyberPreKeys: number } | undefined>;
  /**
   * Records (or with `undefined` removes) a registered device's push token (see docs/push.md);
   * unregistering a device removes it. Optional, with {@link ServerStore.pushToken}: a store that
   * has both declares {@link StoreCapabilities.pushTokens}.
   */
  setPushToken?(device: DeviceAddress, token: PushToken | undefined): Promise<void>;
  /** A device's push token, if it registered one. */
  pushToken?(device: DeviceAddress): Promise<PushToken | undefined>;
  /**
   * How many entries wait in all inboxes (delivered and not yet acked, or not yet delivered): the
   * inbox depth that `/metrics` reports. Optional; may be an estimate where an exact count is
   * costly (the PostgreSQL store reads the table's live-row statistics). Declared by
   * {@link StoreCapabilities.inboxSize}.
   */
  inboxSize?(): Promise<number>;
  /**
   * A cheap check that the backend answers and can take writes as far as a quick look can tell
   * (one round trip; no write). The engine probes with it while the store is failing, to report
   * it healthy again (`/readyz`) without waiting for a client's send. Optional: without it the
   * engine probes with a small read ({@link ServerStore.devices}). Declared by
   * {@link StoreCapabilities.ping}.
   */
  ping?(): Promise<void>;
  /**
   * Counts one more action of `kind` (the engine's: `'group-create'`, `'group-join'`) for each
   * of `users` (each named once) in the fixed window of `windowMs` that holds `now` (windows start
   * at whole multiples of `windowMs`, so every node agrees which one it is), and resolves with
   * each user's count in that window after this call, in the order named. Atomic per user: of
   * concurrent calls from any nodes, each sees a different count. Need not be durable (a crash
   * may forget recent counts). Optional; declared by {@link StoreCapabilities.actionCounts}.
   */
  countActions?(kind: string, users: readonly string[], windowMs: number, now: number): Promise<number[]>;
  /** Releases resources. The data stays for the next open. */
  close(): Promise<void>;
}
