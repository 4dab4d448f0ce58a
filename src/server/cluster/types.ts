/**
 * The cluster contract: what gateway nodes share so that many of them serve one deployment.
 *
 * A node keeps its sockets; the cluster keeps only *where* each device is connected, who is
 * online, and a few best-effort signals between nodes. None of it is durable state: the
 * {@link ServerStore} holds every message, and a device that reconnects anywhere drains its
 * inbox from there. So everything here may be lost (a node dies, Redis restarts) at the cost
 * of latency, never of a message.
 *
 * How the server engine uses it (see docs/scaling.md):
 * - a session binds → {@link ClusterAdapter.register}; unbinds → {@link ClusterAdapter.unregister};
 * - entries land in inboxes of devices not connected here → {@link ClusterAdapter.ring};
 *   {@link ClusterAdapter.onDoorbell} → the local session reads its inbox;
 * - another node took a device over → {@link ClusterAdapter.onReplaced} closes the old session;
 * - presence: `register`/`unregister` answer whether the user came online / went offline
 *   cluster-wide, the engine (which owns the debounce) announces with
 *   {@link ClusterAdapter.publishPresence}, and watchers everywhere get
 *   {@link ClusterAdapter.onPresence} for the users this node {@link ClusterAdapter.watch}es;
 * - typing → {@link ClusterAdapter.typing}; {@link ClusterAdapter.onTyping} delivers to local sessions;
 * - a device unlinked anywhere → {@link ClusterAdapter.closeDevices} closes its session wherever it is;
 * - a new device waiting for approval on one node, approved from a device on another →
 *   {@link ClusterAdapter.offerLink} / {@link ClusterAdapter.takeLink} /
 *   {@link ClusterAdapter.onLinkApproved}.
 *
 * @packageDocumentation
 */
import type { DeviceAddress } from '../address.js';
import type { InboxEntry } from '../store.js';

export type { DeviceAddress } from '../address.js';

/** What {@link ClusterAdapter.register} found and changed. */
export interface RegisterResult {
  /**
   * The node that held the device before, when it was another live node. The adapter has already
   * told that node ({@link ClusterAdapter.onReplaced}); the answer is for logs and metrics.
   */
  replaced: string | undefined;
  /** The user had no device on any live node before this one: announce it online. */
  cameOnline: boolean;
  /** The user's presence version after this change (see {@link PresenceEvent.v}). */
  v: number;
}

/** What {@link ClusterAdapter.unregister} found and changed. */
export interface UnregisterResult {
  /**
   * This node held the device and let it go. False when another node had taken it over (the
   * registration is then left alone) or it was not registered.
   */
  removed: boolean;
  /**
   * The user now has no device on any live node. The engine waits its presence debounce, asks
   * {@link ClusterAdapter.presence} again, and announces offline only if it still holds.
   */
  wentOffline: boolean;
  /** The user's presence version after this change. */
  v: number;
}

/** A user's presence as the cluster knows it now. */
export interface PresenceState {
  /** Some device of the user is registered on a live node. */
  online: boolean;
  /** Version of the user's presence (see {@link PresenceEvent.v}); 0 for a user never seen. */
  v: number;
}

/**
 * A presence announcement. Announcements are *levels*, not edges: the same state may arrive
 * twice (two nodes both saw the user come online) and a receiver keeps, per user, the highest
 * `v` it applied and drops an event whose `v` is not higher, which also settles a late
 * "offline" racing a newer "online".
 */
export interface PresenceEvent {
  /** The user whose presence this is. */
  user: string;
  /** Some device of the user is connected (true), or none is (false). */
  online: boolean;
  /**
   * The user's presence version when the state was read: it grows with every register and
   * unregister of one of the user's devices and with every reaping of a dead node's devices.
   */
  v: number;
  /** When the state was observed (ms since the epoch); the last-seen time of an offline event. */
  at: number;
  /** The node that published the event. */
  origin: string;
  /**
   * The user went offline because the node holding its last device died (its entries expired and
   * were reaped). Nobody else records this last-seen time: the engine of the `origin` node writes
   * `at` to {@link ServerStore.setLastSeen}. (The store, not the cluster, keeps last seen.)
   */
  lost?: boolean;
}

/** A typing notice to forward; never stored, dropped when nobody it concerns is online. */
export interface TypingNotice {
  /** The device that types. */
  from: DeviceAddress;
  /** The user typed to, or the group id when `group` is set. */
  to: string;
  /** `to` is a group. */
  group?: boolean;
  /** Started (true) or stopped (false) typing. */
  on: boolean;
}

/** Turns a handler off again. */
export type Unsubscribe = () => void;

/**
 * A small inbox entry (a status naming few messages, or a message with a short body) that rides
 * in a doorbell to the node holding its device, so that node pushes it without reading the inbox
 * back (issue 19, item 3). A hint like the doorbell itself: it was committed before the ring, and
 * a node that cannot use it reads the inbox. A message's `body` is bytes: an adapter that sends
 * doorbells over a text channel encodes it (the Redis adapter: base64), and one that cannot
 * carry an entry drops it (the device's node then reads).
 */
export interface DoorbellEntry {
  device: DeviceAddress;
  entry: Extract<InboxEntry, { kind: 'status' | 'msg' }>;
}

/**
 * The device → node registry with liveness, doorbells, and presence and typing across nodes.
 *
 * **Liveness.** Between {@link ClusterAdapter.start} and {@link ClusterAdapter.stop} the node
 * heartbeats; its entries stay valid only while the heartbeat is fresher than the adapter's TTL.
 * A node that dies (kill -9, network partition, a pause longer than the TTL) stops counting after
 * the TTL without anyone cleaning up: lookups skip it, its users count as offline, and a live node
 * reaps its leftovers in bounded batches, announcing the users who went offline with it
 * ({@link PresenceEvent.lost}). A node that finds its own liveness lost re-registers the devices
 * it still holds.
 *
 * **Hints only.** Doorbells, presence and typing events are best effort: at most once, never
 * queued for a node that is not listening, never replayed. A lost doorbell costs latency only,
 * because the inbox in the store is the truth: the device gets its entries when it next
 * connects or polls. A lost typing notice is nothing; a lost presence event is corrected by the
 * next one or by a fresh {@link ClusterAdapter.presence} read.
 *
 * **Bounded.** Nothing grows with traffic: in memory an adapter holds its own registrations and
 * watched users (both bounded by the node's sessions) and its handlers.
 *
 * Handlers run on the adapter's event loop turn; they must not throw (a throw is caught and
 * dropped) and should not block.
 */
export interface ClusterAdapter {
  /** Names the adapter in logs and reports. */
  readonly name: string;
  /** This node's id while started, else undefined. */
  readonly nodeId: string | undefined;

  /**
   * Joins the cluster as `nodeId` and starts heartbeating. Use an id unique per process
   * incarnation (e.g. host, port and a random suffix): a restarted node is a new node (the
   * adapters also key their entries by a random incarnation, so a reused id cannot mix with a
   * dead incarnation's leftovers). Rejects when the backend is unreachable.
   */
  start(nodeId: string): Promise<void>;
  /**
   * Leaves the cluster cleanly: removes this node's registrations (announcing users who went
   * offline), stops the heartbeat and closes connections. Idempotent.
   */
  stop(): Promise<void>;

  /**
   * Records that `device` is connected to this node, taking it over from any other node (which
   * is told through {@link ClusterAdapter.onReplaced}: the newest connection wins).
   */
  register(device: DeviceAddress): Promise<RegisterResult>;
  /**
   * Forgets `device` if this node holds it. A registration another node has taken over is left
   * alone, so a slow close on the old node cannot erase the new one.
   */
  unregister(device: DeviceAddress): Promise<UnregisterResult>;
  /**
   * Which live node holds each device, in order; undefined for a device not connected anywhere
   * or held by a dead node. One round trip for the whole list (a fan-out).
   */
  locate(devices: DeviceAddress[]): Promise<Array<string | undefined>>;

  /**
   * Rings the doorbell of each device's node: "new inbox entries for these devices". A hint:
   * devices not connected anywhere, or on a node that is not listening, are skipped silently.
   * Devices held by this node are delivered to its own {@link ClusterAdapter.onDoorbell} without a
   * network trip. Never rejects (a backend failure loses the hint, which is harmless).
   */
  ring(devices: DeviceAddress[], entries?: DoorbellEntry[]): Promise<void>;
  /**
   * Receives doorbells meant for this node: the devices whose sessions should read their inbox,
   * and the entries that rode with the ring (`entries`, as given to {@link ClusterAdapter.ring}:
   * the engine offers them to a session that can take them at once and has it read its inbox
   * otherwise). A listed device may already be gone; ignore it. An adapter that does not carry
   * entries passes none, and every listed session reads its inbox, as before.
   */
  onDoorbell(handler: (devices: DeviceAddress[], entries?: DoorbellEntry[]) => void): Unsubscribe;
  /**
   * Receives devices that another node took over (a newer connection of the same device): close
   * their sessions here with the "replaced" close code.
   */
  onReplaced(handler: (devices: DeviceAddress[]) => void): Unsubscribe;

  /** Presence of each user now, in order: online while any device is on a live node. */
  presence(users: string[]): Promise<PresenceState[]>;
  /**
   * Announces a user's presence to every node that {@link ClusterAdapter.watch}es it (this one
   * included). Best effort; never rejects.
   */
  publishPresence(event: Omit<PresenceEvent, 'origin'>): Promise<void>;
  /**
   * Starts receiving presence events of `user` (call when its first local watcher subscribes).
   * Counted: each `watch` needs one {@link ClusterAdapter.unwatch}.
   */
  watch(user: string): Promise<void>;
  /** Undoes one {@link ClusterAdapter.watch}; the last one stops the events. */
  unwatch(user: string): Promise<void>;
  /**
   * Receives presence events of watched users, from every node (this one included), and the
   * `lost` events this node published by reaping a dead node, watched or not (its engine records
   * those users' last seen: nobody else does).
   */
  onPresence(handler: (event: PresenceEvent) => void): Unsubscribe;

  /**
   * Forwards a typing notice to the nodes holding devices of `users`, this one included (so the
   * engine delivers typing only from {@link ClusterAdapter.onTyping}, never directly as well).
   * The engine has already checked membership and left the typist's own user out. Best effort;
   * never rejects.
   */
  typing(users: string[], notice: TypingNotice): Promise<void>;
  /**
   * Receives typing notices for users with devices on this node (possibly also users whose
   * devices have left since): send them to those users' local sessions.
   */
  onTyping(handler: (users: string[], notice: TypingNotice) => void): Unsubscribe;

  /**
   * Tells the nodes holding `devices` (this one included, through {@link ClusterAdapter.onClose})
   * to close their sessions with `code`: a device unlinked on one node must not stay connected to
   * another. Best effort; never rejects (the store already refuses the device).
   */
  closeDevices(devices: DeviceAddress[], code: number): Promise<void>;
  /** Receives devices whose sessions here must close, and the close code. */
  onClose(handler: (devices: DeviceAddress[], code: number) => void): Unsubscribe;

  /**
   * Publishes the link code of a device waiting on this node for approval by one of its user's
   * devices, for `ttlMs`, so a device connected to any node can approve it.
   */
  offerLink(code: string, device: DeviceAddress, ttlMs: number): Promise<void>;
  /**
   * Takes a link code offered on any node, once: only when its device belongs to `user` (else
   * the code stays and the answer is undefined, as for an unknown or expired code). The node
   * where the device waits is told through {@link ClusterAdapter.onLinkApproved}.
   */
  takeLink(code: string, user: string): Promise<DeviceAddress | undefined>;
  /** Receives the link codes of this node's waiting devices that were approved elsewhere. */
  onLinkApproved(handler: (code: string) => void): Unsubscribe;
}
