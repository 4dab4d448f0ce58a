/**
 * The storage driver under {@link driverStore}: what a backend provides when the store kit runs
 * the whole {@link ServerStore} contract for it. A driver keeps records in keyed tables and
 * applies a call's writes all or nothing; it decides nothing. Offsets, usage, releasing a body
 * with its last entry, "delivered once per user", statuses, expiry's notices, the pending inbox,
 * group changes and invites, key claims: all of that is the kit's (driver-store.ts).
 *
 * **Synchronous reads and writes, asynchronous loads and commits.** Every table call of a
 * driver returns its answer, not a promise, and {@link StoreDriver.atomically} runs a whole store
 * call's reads and writes as one unit: what an engine that lives in the process gives (plain
 * maps, as the memory store does; better-sqlite3; LMDB). A backend reached over the network
 * (DynamoDB, Cassandra, FoundationDB) serves the tables from what it has loaded and adds
 * {@link StoreDriver.remote}: a read it cannot answer returns `undefined` and is noted; after the
 * unit the kit asks `missed()`, and if anything was missed it throws the unit away (rolled back
 * by `atomically`), awaits `fetch()` and runs it again, so each round loads every record the
 * previous one reached; a unit that missed nothing is made durable by `flush()` (its writes all or
 * nothing, on the condition that what it read is unchanged: say one `TransactWriteItems` with a
 * version check per record) before the call answers, or run again when the condition failed. The kit runs a remote driver's
 * calls one at a time, so a unit and its flush are not interleaved with another call's.
 *
 * Records are plain values. A driver may hand back its live record or a copy: the kit changes the
 * record it got and then writes it back with `set` (or `save` for an inbox head), so either works.
 * @packageDocumentation
 */
import type { PushToken } from '../push/types.js';
import type {
  DeviceAddress,
  EntryStatus,
  GapReason,
  GapStream,
  GroupEvent,
  GroupRole,
  KeyBundle,
} from '../store.js';
import type { SentRecord } from './relational.js';

/**
 * One inbox entry as a driver keeps it at (device, offset). `msg` points at a stored message by
 * its key; `body` is this device's own envelope of an end-to-end encrypted message, and `size`
 * the body bytes the entry counts for in the inbox-bytes quota. `group` points at a stored
 * group event by its key: one change's event (a full form with a snapshot of up to 1,024
 * members) is stored once, not once per device.
 */
export type DriverEntry =
  | { kind: 'msg'; ts: number; message: string; body?: Uint8Array; size: number }
  | { kind: 'status'; ts: number; status: EntryStatus; ids: string[]; by: string }
  | { kind: 'group'; ts: number; event: string }
  | { kind: 'gap'; ts: number; reason: GapReason; streams: GapStream[] };

/** A committed message, stored once and kept while `refs` inbox entries point at it. */
export interface DriverMessage {
  /** The sending device. */
  from: DeviceAddress;
  /** The sender's message id. */
  id: string;
  /** The recipient user, or the group id. */
  to: string;
  /** A group message. */
  group: boolean;
  /** The sender device's sequence number for this stream. */
  seq: number;
  /** Commit time. */
  ts: number;
  /** The body every entry shows; empty for an end-to-end encrypted message (entries carry their own). */
  body: Uint8Array;
  /** Inbox entries that point at it. */
  refs: number;
  /** Recipient users the sender was told about (`delivered` or `expired`), each once. */
  told: Set<string>;
}

/** A device's inbox counters: its offsets never skip or repeat, and its usage is the quotas' view. */
export interface InboxHead {
  /** The last offset handed out; never decreases, so an offset is not reused after deletes. */
  last: number;
  /** Entries in the inbox. */
  count: number;
  /** Message body bytes of its entries (the inbox-bytes quota). */
  bytes: number;
  /** Offsets of its `inbox_full` gap notices (some may be acked since; checked when used). */
  full?: number[];
}

/** One device's inbox, as a call of the kit works on it. */
export interface DriverInbox {
  /** The device it belongs to. */
  readonly device: DeviceAddress;
  /** Its counters, changed in place by the kit and written back with {@link DriverInbox.save}. */
  readonly head: InboxHead;
  /** The entry at `offset`, if it is still there. */
  get(offset: number): DriverEntry | undefined;
  /** Stores an entry at an offset the kit took from the head. */
  put(offset: number, entry: DriverEntry): void;
  /** Deletes the entry at `offset`. */
  delete(offset: number): void;
  /**
   * The entries after `offset`, in increasing offset order. The kit may delete the entry just
   * handed out before asking for the next one.
   */
  after(offset: number): Iterable<[number, DriverEntry]>;
  /** Writes the head back. */
  save(): void;
}

/** A group event as stored once for every inbox entry that shows it. */
export interface StoredEvent {
  /** Commit time: the entries that point at it carry the same, and expire with it. */
  ts: number;
  /** The event. */
  event: GroupEvent;
}

/** A group as a driver keeps it. */
export interface DriverGroup {
  /** The group's name. */
  name: string;
  /** Its version: one more with each change. */
  ver: number;
  /** Members and their roles, in join order. */
  members: Map<string, GroupRole>;
  /** Member → the version its current membership began at. */
  since: Map<string, number>;
  /** Member → the latest version at which it took part (created, changed, sent a message). */
  acted: Map<string, number>;
}

/** A one-time EC prekey, as the directory stores and hands it out. */
export type DriverPreKey = NonNullable<KeyBundle['preKey']>;
/** A signed prekey or a Kyber prekey. */
export type DriverSignedKey = KeyBundle['signedPreKey'];

/** A device's entry in the key directory. Maps keep upload order: the oldest key is first. */
export interface DriverKeys {
  /** The device's registration id. */
  registrationId: number;
  /** Its identity key. */
  identityKey: Uint8Array;
  /** Its current signed prekey. */
  signedPreKey: DriverSignedKey;
  /** Its last-resort Kyber prekey (handed out when no one-time Kyber key is left). */
  lastResortKyber: DriverSignedKey;
  /** One-time EC prekeys by id: a re-uploaded id replaces the key in place. */
  preKeys: Map<number, DriverPreKey>;
  /** One-time Kyber prekeys by id. */
  kyberPreKeys: Map<number, DriverSignedKey>;
}

/** Where a message with some id went, and when: what a receipt naming that id is checked against. */
export interface SentAt extends SentRecord {
  /** Commit time (the record expires with its message's dedupe record). */
  ts: number;
}

/** One keyed table of a driver. */
export interface DriverTable<K, V> {
  /** The record at `key`, if any. */
  get(key: K): V | undefined;
  /** Writes the record at `key`. */
  set(key: K, value: V): void;
  /** Deletes the record at `key` (nothing when there is none). */
  delete(key: K): void;
}

/** A table whose records carry a commit time, dropped together once older than a cutoff. */
export interface ExpiringTable<V> extends DriverTable<string, V> {
  /** Drops every record older than `cutoff` (for a list, the list's older items). */
  dropOlder(cutoff: number): void;
}

/**
 * What a driver whose records live elsewhere adds (see {@link StoreDriver.remote}): it answers
 * reads from what it has loaded, notes what it could not answer, loads that when asked, and makes
 * a finished unit's writes durable.
 */
export interface DriverRemote {
  /** True when a read since the last `fetch` found its record (or scan) not loaded. */
  missed(): boolean;
  /** Loads every record and scan that was missed; `missed()` is false afterwards. */
  fetch(): Promise<void>;
  /**
   * Makes the writes of the unit that just ran (and missed nothing) durable, all or nothing. A
   * rejection rejects the store call. Resolves `false` when a record the unit read changed
   * meanwhile (another node wrote it: a failed condition, a version that moved): nothing is
   * written, and the kit runs the unit again from a cold cache. The driver forgets what it
   * loaded after every flush, written or not.
   */
  flush(): Promise<boolean | void>;
}

/**
 * The storage a {@link driverStore} runs on. Keys are the kit's: user ids, group ids, and strings
 * it builds for compound keys (length-prefixed, so no two tuples share one).
 */
export interface StoreDriver {
  /**
   * Runs `fn` (synchronous) as one unit: every write it made is kept when it returns, none
   * when it throws. The kit runs each writing call of the store in one such unit, and each read
   * that must see one state.
   */
  atomically<T>(fn: () => T): T;
  /** For records that live elsewhere: load on a miss, flush after a unit (see {@link DriverRemote}). */
  readonly remote?: DriverRemote;
  /** User → its device ids in registration order (a pending inbox's id while it has none). */
  readonly devices: DriverTable<string, string[]>;
  /** The device's inbox, created empty when `create` is set. */
  inbox(device: DeviceAddress, create: true): DriverInbox;
  /** The device's inbox, if it has one. */
  inbox(device: DeviceAddress, create?: false): DriverInbox | undefined;
  /** Deletes a device's inbox (its head and entries). */
  dropInbox(device: DeviceAddress): void;
  /**
   * Every inbox, in any order. Given `olderThan` (expiry's cutoff), a driver may leave out the
   * inboxes it knows hold no entry older than it (from an index by time, say).
   */
  inboxes(olderThan?: number): Iterable<DriverInbox>;
  /** Message key → the message, while an entry points at it. */
  readonly messages: DriverTable<string, DriverMessage>;
  /** Dedupe key → the original commit time (messages, receipts, group changes). */
  readonly dedupe: ExpiringTable<number>;
  /** (sender user, message id) → where messages with that id went. */
  readonly sent: ExpiringTable<SentAt[]>;
  /**
   * Event key → a group event and its commit time, written once per change and form, kept until
   * expiry drops it with the entries of the same time that point at it.
   */
  readonly events: ExpiringTable<StoredEvent>;
  /** Group id → the group. */
  readonly groups: DriverTable<string, DriverGroup>;
  /** User → ids of the groups it is in. */
  readonly userGroups: DriverTable<string, Set<string>>;
  /** Group → users holding a pending invite to it. */
  readonly invites: DriverTable<string, Set<string>>;
  /** How many pending invites `user` holds, over every group. */
  invitesOf(user: string): number;
  /** (viewer, target) pairs where the target wrote to the viewer 1:1 (consent to be seen). */
  readonly consents: DriverTable<string, true>;
  /** User → last-seen time. */
  readonly lastSeen: DriverTable<string, number>;
  /** Device → its keys in the directory. */
  readonly keys: DriverTable<DeviceAddress, DriverKeys>;
  /** Device → its push token. */
  readonly pushTokens: DriverTable<DeviceAddress, PushToken>;
  /** (action kind, user) → its count in its current window. */
  readonly actions: DriverTable<string, { win: number; n: number }>;
}
