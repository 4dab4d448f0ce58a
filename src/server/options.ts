/**
 * The server's options and events, and the configuration they resolve to (every default
 * applied once, here).
 * @packageDocumentation
 */
import {
  DEFAULT_MAX_FRAME_BYTES,
  DEFAULT_MAX_PRE_HELLO_FRAME_BYTES,
  MAX_GROUP_MEMBERS,
} from '../protocol/index.js';
import type { Clock } from '../util/clock.js';
import type { ClusterAdapter } from './cluster/types.js';
import type { CostBudgetOptions } from './costs.js';
import type { GroupConsent } from './group-consent.js';
import type { StoreHealth } from './health.js';
import type { ServerMetrics } from './metrics.js';
import type { PushProvider } from './push/types.js';
import type { DeviceAddress, ServerStore } from './store.js';
import type { TraceStore } from './trace.js';

/** Who a connection is, as decided by the app's {@link Authenticate} hook. */
export interface AuthResult {
  /** The user id; one that breaks the id rule (see `isUserId`) refuses the connection. */
  user: string;
  /** The device id; one that breaks the id rule (see `isDeviceId`) refuses the connection. */
  device: string;
  /**
   * When the credentials expire, ms since the epoch: the session is closed then (within half a
   * heartbeat interval) with close code 4007, and the client reconnects with fresh credentials.
   * One already past refuses the connection. @default never
   */
  expiresAt?: number;
}

/**
 * The app's authentication hook. Gets the `cred` of the client's `hello` and returns the
 * user and device, or `null` (or throws) to reject. The sender identity of every later frame
 * comes from this result, never from frame fields.
 */
export type Authenticate = (
  credentials: unknown,
  context: { device?: string; remoteAddress?: string },
) => AuthResult | null | Promise<AuthResult | null>;

/**
 * What a viewer may see of a target user's presence: `true` (online and last seen), `false`
 * (nothing: subscribing fails with `forbidden`), or `'online'` (online/offline, no last-seen time).
 */
export type PresenceVisibility = boolean | 'online';

/**
 * The presence privacy hook: may `viewer` see `target`'s presence? `store` answers questions such
 * as {@link ServerStore.related} (did `target` consent to `viewer`: write to it, or take part in a
 * group with it).
 */
export type PresencePolicy = (
  viewer: string,
  target: string,
  store: ServerStore,
) => PresenceVisibility | Promise<PresenceVisibility>;

/** Minimal logger; `console` fits. */
export interface Logger {
  debug(msg: string, data?: unknown): void;
  info(msg: string, data?: unknown): void;
  warn(msg: string, data?: unknown): void;
  error(msg: string, data?: unknown): void;
}

/** A logger that drops everything: the default. @internal */
export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };

/** Options of {@link createServer}. */
export interface ServerOptions {
  /** Durable state. The server does not close it; its owner does. */
  store: ServerStore;
  /** Decides who a connection is. */
  authenticate: Authenticate;
  /** Time source. @default systemClock */
  clock?: Clock;
  /** Heartbeat interval advertised to clients; a connection silent for twice this is closed. @default 25000 */
  heartbeatMs?: number;
  /**
   * A connection must complete `hello` (authentication included) within this, to the
   * millisecond: each connection has a timer of its own until its session opens, so a silent
   * socket is held this long and no longer; after it, close 4000. @default 10000
   */
  helloTimeoutMs?: number;
  /** Undelivered entries older than this expire. @default 30 days */
  retentionMs?: number;
  /** How often expiry runs. @default 1 hour */
  expiryIntervalMs?: number;
  /** Largest frame accepted, checked before decoding. @default 262144 */
  maxFrameBytes?: number;
  /**
   * Largest frame accepted before the session is authenticated (its `hello`, and a linking
   * device's pings), checked before decoding: a bigger one gets `too_large` and close code 1009.
   * An unauthenticated peer has no business sending more than its credentials. @default 16384
   */
  maxPreHelloFrameBytes?: number;
  /** Largest message body. @default 65536 */
  maxBodyBytes?: number;
  /** Unacked deliveries in flight per connection (flow control for slow links). @default 64 */
  deliveryWindow?: number;
  /** Sends waiting for commit per connection; more closes the connection with `rate_limited`. @default 256 */
  maxPendingSends?: number;
  /** Most items in one store append (one group commit). @default 512 */
  maxCommitBatch?: number;
  /**
   * Most inbox rows one store append is expected to write (estimated per item from what earlier
   * commits to the same group or user wrote): a batch of large group messages is cut short, and
   * the engine yields to the event loop between batches, so one sender's fan-out cannot hold the
   * store (or, with SQLite, the event loop) for long. Batches are filled round-robin across
   * senders; items of more than a 128th of this (64 rows) never share a batch with smaller ones,
   * and while small items are being sent, a batch of large ones holds at most a quarter of this
   * (one message to a full 1,024-member group): another sender's 1:1 message waits for at most
   * the batch that is running and one large one (see docs/security.md, "Commit batches").
   * @default 8192
   */
  maxCommitRows?: number;
  /**
   * What a device and its user may spend per second in the cost model (see docs/security.md,
   * "Cost budgets"): every frame costs the rows it writes, the lookups it makes, a durable
   * write of its own as many rows as an fsync, and its size (one unit per `bytesPerUnit` bytes,
   * charged before it is decoded). Over budget a frame is refused with `rate_limited`; a device
   * that keeps sending reaches a burst of debt and is closed with 4003.
   * @default DEFAULT_COST_BUDGETS (device 10,000/s, burst 20,000; user 20,000/s, burst 40,000; 64 bytes a unit)
   */
  costBudgets?: CostBudgetOptions;
  /**
   * Who joins a group at once when another user creates it with them or adds them, and who gets
   * an invite to accept or decline instead (see docs/groups.md, "Consent"): `'related'` (users who
   * consented to the actor: wrote to it, or took part in a group with it), `'invite'` (nobody),
   * `'open'` (everybody), or the app's own `GroupConsentRule`. The server API
   * (`changeGroup`) is the app itself and adds directly. @default 'related'
   */
  groupConsent?: GroupConsent;
  /**
   * Groups one user may create per hour (fixed hours); more are refused with `quota_exceeded`.
   * This and `maxGroupJoinsPerDay` count through the store when it declares `actionCounts` (every
   * built-in store does), so a cluster allows each once; else each node counts on its own.
   * @default 30
   */
  maxGroupCreatesPerHour?: number;
  /**
   * Groups one user may be put into per day (added at once, or accepting an invite): past it,
   * adds of that user become invites, and its accepts are refused with `quota_exceeded`. @default 100
   */
  maxGroupJoinsPerDay?: number;
  /**
   * Frames per second a device may send (all its connections together, so reconnecting does not
   * reset the count) before its connection is closed with `rate_limited`. @default 2000
   */
  maxFramesPerSecond?: number;
  /** Invalid frames a connection may send before it is closed. @default 8 */
  maxInvalidFrames?: number;
  /** Pause deliveries while the connection buffers more than this many bytes. @default 1 MiB */
  sendHighWaterBytes?: number;
  /** Most members a group may have; at most 1,024. @default 1024 */
  maxGroupMembers?: number;
  /**
   * How a new device of a user who already has devices joins: `'approval'` (it gets a link code
   * that an existing device must approve, see docs/devices.md) or `'open'` (the `authenticate`
   * hook's word is enough, for apps whose credentials already prove the device).
   * @default 'approval'
   */
  linking?: 'approval' | 'open';
  /** How long a link code stays valid. @default 300000 (5 minutes) */
  linkCodeTtlMs?: number;
  /**
   * Who may see whose presence: `'contacts'` (users who consented to the viewer: wrote to it, or
   * took part in a group with it; see {@link ServerStore.related}), `'everyone'`, `'nobody'`, or a
   * {@link PresencePolicy} hook. 1:1 typing notices always need that consent, whatever this says.
   * @default 'contacts'
   */
  presence?: 'contacts' | 'everyone' | 'nobody' | PresencePolicy;
  /**
   * A user who goes offline is announced offline only after this long without coming back, so a
   * flapping connection does not storm subscribers. @default 3000
   */
  presenceDebounceMs?: number;
  /**
   * Most presence subscriptions a device holds at once (they live as long as its session, and a
   * device has one session at a time). @default 256
   */
  maxSubscriptions?: number;
  /**
   * Typing notices a user (all its devices together) may send per 10 s; more are dropped, the
   * first with a `rate_limited` error. @default 20
   */
  maxTypingPer10s?: number;
  /**
   * Key bundles a user (all its devices together) may claim per 10 s; a claim past it is refused
   * with `rate_limited`. Counts each user asked for, then each bundle handed out. @default 4096
   */
  maxKeyClaimsPer10s?: number;
  /**
   * Key claims this node answers per second, all users together (a token bucket holding two
   * seconds' worth): each user a `kget` frame names counts one. A frame past it is refused with
   * `rate_limited` (retryable; the client's key wait asks again after its backoff). Bounds what many
   * accounts, each within `maxKeyClaimsPer10s`, can make the key directory do together. 0: no
   * bound. @default 2000
   */
  maxNodeKeyClaimsPerSecond?: number;
  /**
   * One-time prekeys a user may take of any one device per day (Signal's defence against
   * draining them). Past it, that user's claims for that device are still answered, with a
   * bundle of the signed prekey and the last-resort Kyber key and no one-time key, which makes a
   * session just as well. 0 hands out only such bundles. @default 5
   */
  maxOneTimeKeyClaimsPerDay?: number;
  /**
   * Wakes devices without a connection when entries land in their inbox (content-free; see
   * docs/push.md). Devices register tokens with `client.setPushToken`.
   */
  push?: PushProvider;
  /** At most one wake-up per device per this interval. @default 60000 */
  pushIntervalMs?: number;
  /** Monitoring hooks (see {@link ServerMetrics}). @default none */
  metrics?: ServerMetrics;
  /**
   * A device is told (`klow`) to upload more one-time keys when either of its supplies falls
   * below this, on connect and when a claim takes one of its one-time EC keys. 0 turns the
   * notice off. @default 10
   */
  keyLowWater?: number;
  /**
   * Makes this server one gateway node of many (see docs/scaling.md): entries for devices
   * connected to other nodes ring those nodes' doorbells, presence and typing cross nodes, and a
   * device's newest connection wins cluster-wide. Start it (`await cluster.start(nodeId)`) before
   * the first connection; the server never stops it: its owner does, after
   * {@link PostboxServer.close}. Without it the server is a single node and keeps all of this in
   * its own memory.
   */
  cluster?: ClusterAdapter;
  /**
   * An open session re-reads its inbox when it has not read it for this long, so an entry whose
   * doorbell was lost (its node died mid-ring, Redis dropped it, the registry was stale or
   * unreachable) still arrives without a reconnect. Costs one inbox read per idle connection
   * per interval. 0 turns it off. @default 30000 with a cluster, 0 without (one node's rings
   * are not lost)
   */
  inboxPollMs?: number;
  /**
   * Handshakes (`hello` until `welcome`: authentication, device registration) in progress at
   * once. Past it a new connection gets `unavailable` and close code 1013 ("try again later"),
   * and its client backs off with jitter, so the clients of a dead gateway reconnecting all at
   * once cannot overload the survivors' stores. @default 256
   */
  maxConcurrentHandshakes?: number;
  /**
   * While the store fails, it is probed this often (with `ServerStore.ping` when the store
   * declares it, else a small read) so that {@link PostboxServer.storeHealth} (and `/readyz`)
   * turns healthy again once it answers, even with no client sending. 0 turns probing off: then
   * only a successful commit does.
   * @default 1000
   */
  storeProbeMs?: number;
  /** @default silent */
  logger?: Logger;
  /**
   * Where the delivery trace is kept (see {@link PostboxServer.trace}): metadata only, bounded.
   * `false` turns it off. @default memoryTraceStore() — the last 50,000 events
   */
  trace?: TraceStore | false;
  /** Also write every trace event to `logger.debug('trace', event)`. @default false */
  traceLog?: boolean;
}

/** Events of {@link PostboxServer}. */
export interface ServerEvents {
  /** A device completed `hello`. */
  online: (device: DeviceAddress) => void;
  /** A device's session ended. */
  offline: (device: DeviceAddress, code: number) => void;
  /**
   * A store failure; affected connections were closed with 1013 (try again later) so their
   * clients back off and resend.
   */
  error: (error: unknown) => void;
  /** The store started failing, or answers again (see {@link PostboxServer.storeHealth}). */
  storeHealth: (health: StoreHealth) => void;
  /** A user's announced presence changed (after the debounce). */
  presence: (user: string, online: boolean, lastSeen: number | undefined) => void;
  /** A device was linked to its user by another device's approval. */
  linked: (device: DeviceAddress, approvedBy: DeviceAddress) => void;
  /** A device was unlinked. */
  unlinked: (device: DeviceAddress) => void;
}

/**
 * The options with every default applied: what the engine's parts read (not exported from
 * `postbox/server`).
 */
export type EngineConfig = Required<
  Omit<
    ServerOptions,
    | 'store'
    | 'authenticate'
    | 'clock'
    | 'logger'
    | 'presence'
    | 'push'
    | 'metrics'
    | 'cluster'
    | 'trace'
    | 'traceLog'
    | 'costBudgets'
  >
>;

/** Applies the defaults of {@link ServerOptions}. @internal */
export function resolveConfig(options: ServerOptions): EngineConfig {
  return {
    heartbeatMs: options.heartbeatMs ?? 25_000,
    helloTimeoutMs: options.helloTimeoutMs ?? 10_000,
    retentionMs: options.retentionMs ?? 30 * 24 * 3600_000,
    expiryIntervalMs: options.expiryIntervalMs ?? 3600_000,
    maxFrameBytes: options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES,
    maxPreHelloFrameBytes: options.maxPreHelloFrameBytes ?? DEFAULT_MAX_PRE_HELLO_FRAME_BYTES,
    maxBodyBytes: options.maxBodyBytes ?? 64 * 1024,
    deliveryWindow: options.deliveryWindow ?? 64,
    maxPendingSends: options.maxPendingSends ?? 256,
    maxCommitBatch: options.maxCommitBatch ?? 512,
    maxCommitRows: options.maxCommitRows ?? 8192,
    groupConsent: options.groupConsent ?? 'related',
    maxGroupCreatesPerHour: options.maxGroupCreatesPerHour ?? 30,
    maxGroupJoinsPerDay: options.maxGroupJoinsPerDay ?? 100,
    maxFramesPerSecond: options.maxFramesPerSecond ?? 2000,
    maxInvalidFrames: options.maxInvalidFrames ?? 8,
    sendHighWaterBytes: options.sendHighWaterBytes ?? 1024 * 1024,
    maxGroupMembers: Math.min(MAX_GROUP_MEMBERS, options.maxGroupMembers ?? MAX_GROUP_MEMBERS),
    linking: options.linking ?? 'approval',
    linkCodeTtlMs: options.linkCodeTtlMs ?? 300_000,
    presenceDebounceMs: options.presenceDebounceMs ?? 3000,
    maxSubscriptions: options.maxSubscriptions ?? 256,
    maxTypingPer10s: options.maxTypingPer10s ?? 20,
    maxKeyClaimsPer10s: options.maxKeyClaimsPer10s ?? 4096,
    maxNodeKeyClaimsPerSecond: options.maxNodeKeyClaimsPerSecond ?? 2000,
    maxOneTimeKeyClaimsPerDay: options.maxOneTimeKeyClaimsPerDay ?? 5,
    keyLowWater: options.keyLowWater ?? 10,
    pushIntervalMs: options.pushIntervalMs ?? 60_000,
    inboxPollMs: options.inboxPollMs ?? (options.cluster ? 30_000 : 0),
    maxConcurrentHandshakes: options.maxConcurrentHandshakes ?? 256,
    storeProbeMs: options.storeProbeMs ?? 1000,
  };
}
