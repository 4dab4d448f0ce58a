import { EventEmitter } from 'eventemitter3';
import {
  CLOSE_CODES,
  DEFAULT_MAX_FRAME_BYTES,
  DEFAULT_MAX_PRE_HELLO_FRAME_BYTES,
  assertDeviceId,
  assertUserId,
  GAP_FRAME_VERSION,
  INBOX_FULL_GAP_VERSION,
  MIN_PROTOCOL_VERSION,
  PROTOCOL_VERSION,
  PostboxError,
  decodeClientFrame,
  peekClientRequestId,
  encodeAtOffset,
  encodeFrame,
  isPostboxError,
  negotiateVersion,
  MAX_GROUP_MEMBERS,
  type ClientFrame,
  type ErrFrame,
  type ErrorCode,
  type GapFrame,
  type GroupEventFrame,
  type KeyGetFrame,
  type KeysFrame,
  type PushTokenFrame,
  type GroupFrame,
  type HelloFrame,
  type MsgFrame,
  type ServerFrame,
  type TypingFrame,
} from '../protocol/index.js';
import type { Connection, ConnectionHandlers, ServerTransport } from '../transport/types.js';
import { systemClock, type Clock, type TimerHandle } from '../util/clock.js';
import { performance } from 'node:perf_hooks';
import { deviceKey } from './cluster/common.js';
import type { ClusterAdapter, PresenceEvent, TypingNotice, Unsubscribe } from './cluster/types.js';
import { BoundedMap, Limits } from './limits.js';
import { RateLimitedLog } from './client-log.js';
import { FairCommitQueue, FanoutEstimate, SERVER_SIDE, yieldToEventLoop } from './commit-batch.js';
import {
  CostBudgets,
  DEFAULT_COST_BUDGETS,
  frameCost,
  type CostBudgetOptions,
  type CostVerdict,
} from './costs.js';
import { applyConsent, GroupCaps, type GroupConsent } from './group-consent.js';
import { memoryTraceStore, Tracer, type TraceEvent, type TraceStore } from './trace.js';
import { StoreHealthMonitor, type StoreHealth } from './health.js';
import { noMetrics, type ServerMetrics } from './metrics.js';
import { acceptAuth, assertAddress, assertGroupChange } from './identity.js';
import type { PushProvider, PushToken } from './push/types.js';
import { isPendingDevice } from './users.js';
import { KeyWaiters } from './key-waiters.js';
import type {
  AppendInput,
  DeviceAddress,
  DeviceMismatch,
  GroupChange,
  GroupInput,
  KeyBundle,
  KeyUpload,
  InboxEntry,
  MessageInput,
  NotifyResult,
  ServerStore,
} from './store.js';

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

const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };

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
   * senders, so another sender's message waits for at most one batch. @default 8192
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
  /** Groups one user may create per hour; more are refused with `quota_exceeded`. @default 30 */
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
   * below this, on connect and when its keys are claimed. 0 turns the notice off. @default 10
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
   * While the store fails, it is probed this often (with `ServerStore.ping`) so that
   * {@link PostboxServer.storeHealth} (and `/readyz`) turns healthy again once it answers, even
   * with no client sending. 0 turns probing off: then only a successful commit does.
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

/** Announced presence of one user and its pending offline announcement. */
interface PresenceState {
  sessions: number;
  announced: boolean;
  timer: TimerHandle | undefined;
}

interface PendingCommit {
  /** The connection that asked, answered with `ok`/`err`; absent for server-side changes. */
  session?: Session;
  input: AppendInput;
  r: number;
  /** Called with the refusal code, or undefined when committed. */
  done?: (code: ErrorCode | undefined) => void;
  /** A client's create or add: who joins and who is invited is decided just before it commits. */
  consent?: boolean;
}

const REFUSAL_TEXT: Record<string, string> = {
  unknown_recipient: 'recipient is not registered (no device, not in the user directory)',
  not_member: 'not a member of the group',
  forbidden: 'not allowed',
  group_full: 'group is at its member cap',
  inbox_full: "a recipient device's inbox is full; try again later",
  quota_exceeded: 'a storage quota would be exceeded',
  mismatched_devices: 'device list does not match the directory',
  stale_devices: 'some devices were re-registered',
};

/** Wire form of a device-list difference. */
function wireDifference(d: DeviceMismatch): NonNullable<ErrFrame['d']> {
  const out: NonNullable<ErrFrame['d']> = {};
  const list = (l: DeviceAddress[]): Array<[string, string]> => l.map((a) => [a.user, a.device]);
  if (d.missing?.length) out.m = list(d.missing);
  if (d.extra?.length) out.x = list(d.extra);
  if (d.stale?.length) out.s = list(d.stale);
  return out;
}

/**
 * A device's session key. Unambiguous for any two strings, not only valid ids: a separator
 * character would let ids containing it collide, and one device take over another's session.
 */
const keyOf = deviceKey;

/**
 * A session opening while the cluster does not answer its registration within this opens anyway
 * (its entries then come by the inbox poll).
 */
const CLUSTER_REGISTER_TIMEOUT_MS = 3000;

/** How long {@link PostboxServer.close} waits for the cluster to take this node's leave. */
const CLUSTER_CLOSE_WAIT_MS = 5000;

/** With a cluster, a group's cached member list (for typing) is re-read after this long. */
const MEMBER_CACHE_MS = 5000;

/** Most groups whose members the typing cache keeps (the least recently read are dropped). */
const MEMBER_CACHE_MAX = 10_000;

type WireKey = [number, Uint8Array, Uint8Array];

/** What a ciphertext may add to `maxBodyBytes` (a PreKey message carries ~1.9 KB of keys). */
const CIPHERTEXT_OVERHEAD = 4096;

/**
 * The embeddable server engine. Hand it connections with {@link PostboxServer.accept} or a
 * transport with {@link PostboxServer.listen}. All durable state lives in the store; the engine
 * keeps only sessions and hints, so a new engine over the same store carries on after a crash.
 */
export class PostboxServer extends EventEmitter<ServerEvents> {
  readonly store: ServerStore;
  private readonly authenticate: Authenticate;
  /** @internal */ readonly clock: Clock;
  /** @internal */ readonly opts: Required<
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
  private readonly presencePolicy: PresencePolicy;
  /** @internal */ readonly log: Logger;
  private readonly sessions = new Map<string, Session>();
  /** Sessions that claimed a user's keys and got none: told (`kr`) when that user publishes keys. */
  private readonly keyWaiters = new KeyWaiters();
  private readonly connections = new Set<Session>();
  private readonly transports: ServerTransport[] = [];
  private readonly commitQueue = new FairCommitQueue<PendingCommit>();
  /** @internal how many inbox rows each queued item is expected to write. */
  readonly fanout: FanoutEstimate;
  private committing = false;
  private flushScheduled = false;
  private idleWaiters: Array<() => void> = [];
  private sweepTimer: TimerHandle | undefined;
  private expiryTimer: TimerHandle | undefined;
  private closing = false;
  /** user → its devices' open sessions. */
  private readonly userSessions = new Map<string, Set<Session>>();
  /** user → presence bookkeeping, for users online or with an offline announcement pending. */
  private readonly presence = new Map<string, PresenceState>();
  /** user → sessions subscribed to its presence. */
  private readonly watchers = new Map<string, Set<Session>>();
  /** link code → the session of the device waiting for approval. */
  private readonly linkCodes = new Map<string, Session>();
  private readonly push: PushProvider | undefined;
  /** @internal */ readonly metrics: ServerMetrics;
  /** @internal */ readonly tracer: Tracer;
  /** device → push token, for a store that does not keep them. */
  private readonly pushTokens = new Map<string, PushToken>();
  /** device → time of its last wake-up (bounded: the oldest are forgotten past 100k). */
  private readonly lastWake = new BoundedMap<string, number>(100_000);
  /**
   * group id → member users and when they were read; a cache for typing notices, dropped on every
   * change made here (with a cluster, changes made on other nodes age it out). Bounded: typing in
   * ever more groups must not grow it without end.
   */
  private readonly memberCache = new BoundedMap<string, { members: Set<string>; at: number }>(
    MEMBER_CACHE_MAX,
  );
  /** The gateway cluster this node belongs to, if any. */
  private readonly cluster: ClusterAdapter | undefined;
  private readonly clusterHandlers: Unsubscribe[] = [];
  /** Cluster calls in flight that {@link close} waits for (unregistrations, presence checks). */
  private readonly clusterOps = new Set<Promise<unknown>>();
  /**
   * With a cluster: watched user → the newest presence (highest version) applied here, so an
   * older event arriving late is dropped.
   */
  private readonly presenceSeen = new Map<string, { v: number; online: boolean; at: number }>();
  /** With a cluster: user whose last device left → its pending offline check (the debounce). */
  private readonly offlineChecks = new Map<string, { timer: TimerHandle; run: () => Promise<void> }>();
  /** @internal handshakes in progress. */
  handshakes = 0;
  /** @internal client-caused warnings, a few lines per device or user per minute. */
  readonly clientLog: RateLimitedLog;
  /** @internal the per-user and per-device limits (see limits.ts). */
  readonly limits: Limits;
  /** @internal the per-device and per-user cost budgets (see costs.ts). */
  readonly budgets: CostBudgets;
  private readonly groupCaps: GroupCaps;
  private readonly health: StoreHealthMonitor;

  constructor(options: ServerOptions) {
    super();
    this.store = options.store;
    this.authenticate = options.authenticate;
    this.clock = options.clock ?? systemClock;
    this.log = options.logger ?? silentLogger;
    this.tracer = new Tracer(
      options.trace === false ? undefined : (options.trace ?? memoryTraceStore()),
      this.clock,
      options.traceLog ? (msg, e) => this.log.debug(msg, e) : undefined,
      () => this.cluster?.nodeId,
    );
    this.opts = {
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
      maxOneTimeKeyClaimsPerDay: options.maxOneTimeKeyClaimsPerDay ?? 5,
      keyLowWater: options.keyLowWater ?? 10,
      pushIntervalMs: options.pushIntervalMs ?? 60_000,
      inboxPollMs: options.inboxPollMs ?? (options.cluster ? 30_000 : 0),
      maxConcurrentHandshakes: options.maxConcurrentHandshakes ?? 256,
      storeProbeMs: options.storeProbeMs ?? 1000,
    };
    this.limits = new Limits(this.opts);
    this.clientLog = new RateLimitedLog(this.log, () => this.clock.now());
    this.budgets = new CostBudgets(options.costBudgets ?? DEFAULT_COST_BUDGETS);
    this.groupCaps = new GroupCaps(this.opts);
    // Devices per member: a user has a few; assume 2 for a group not committed to yet.
    this.fanout = new FanoutEstimate(2 * this.opts.maxGroupMembers);
    this.health = new StoreHealthMonitor({
      store: this.store,
      clock: this.clock,
      log: this.log,
      probeMs: this.opts.storeProbeMs,
      changed: (h) => this.emit('storeHealth', h),
    });
    this.cluster = options.cluster;
    if (this.cluster) this.joinCluster(this.cluster);
    this.push = options.push;
    this.metrics = options.metrics ?? noMetrics;
    const p = options.presence ?? 'contacts';
    this.presencePolicy =
      typeof p === 'function'
        ? p
        : p === 'everyone'
          ? () => true
          : p === 'nobody'
            ? () => false
            : (viewer, target, store) => store.related(viewer, target);
    this.scheduleSweep();
    this.scheduleExpiry();
  }

  /**
   * What this server (and, with a shared trace store, every node of its cluster) recorded about
   * message `id`, oldest first: committed or refused, pushed to which device, acked by which,
   * which statuses went back to the sender. Metadata only. Empty when the trace is off or the
   * events aged out of the trace store.
   */
  trace(id: string): Promise<TraceEvent[]> {
    return this.tracer.query(id);
  }

  /** Client-caused warning lines not logged for being over the rate (see docs/security.md). */
  get clientLogDropped(): number {
    return this.clientLog.dropped;
  }

  /** Number of open connections (authenticated or not). */
  get connectionCount(): number {
    return this.connections.size;
  }

  /**
   * Whether the store answered: failing from a store call that failed until a commit succeeds or
   * a probe answers (see {@link ServerOptions.storeProbeMs}). `postbox serve` answers `/readyz`
   * with 503 while it fails.
   */
  storeHealth(): StoreHealth {
    return this.health.current;
  }

  /** Devices with an open, authenticated session. */
  onlineDevices(): DeviceAddress[] {
    return [...this.sessions.values()].map((s) => s.addr!);
  }

  /** Accepts connections from a transport until {@link close}. */
  async listen(transport: ServerTransport): Promise<void> {
    this.transports.push(transport);
    await transport.listen((c) => this.accept(c));
  }

  /** Takes over one connection: expects `hello` first. */
  accept(connection: Connection): void {
    if (this.closing) {
      connection.close(CLOSE_CODES.goingAway, 'server shutting down');
      return;
    }
    const session = new Session(this, connection);
    this.connections.add(session);
    this.metrics.connection(1);
  }

  /**
   * Registers a device ahead of its first connection, so messages sent to its user before it
   * connects wait in its inbox. (A device is also registered when it first says `hello`.) When
   * you know the user but not yet its device id, use {@link PostboxServer.registerUser} instead.
   * @throws PostboxError `invalid_frame` for an invalid user or device id.
   */
  async registerDevice(user: string, device: string): Promise<void> {
    assertAddress({ user, device });
    const res = await this.store.registerDevice({ user, device }, this.clock.now());
    this.ring(res.notify);
  }

  /**
   * Puts a user in the user directory before any device of it connects (idempotent; see
   * docs/devices.md, "User directory"): messages, read receipts and group adds to the user are
   * accepted from then on (instead of `unknown_recipient`) and wait in a pending inbox that the
   * user's first device takes over, in order, when it registers. Later devices get only what is
   * sent after they exist, as always. With end-to-end encryption a 1:1 message still needs a
   * device with keys. Resolves true when the user was new to the directory, false when it
   * already had a device or a pending inbox. The same is `store.registerUser(user, Date.now())`,
   * for an admin process that has the store but no server.
   * @throws PostboxError `invalid_frame` for an invalid user id.
   */
  async registerUser(user: string): Promise<boolean> {
    assertUserId(user, 'user');
    return this.store.registerUser(user, this.clock.now());
  }

  /**
   * Takes a user out of the user directory: drops its pending inbox and unlinks every device of
   * it (each as {@link PostboxServer.unlinkDevice} does: inbox deleted, session closed with 4005,
   * `unlinked` emitted), in one store step. Messages to it are `unknown_recipient` from then on;
   * its group memberships stay. Resolves false when the user was not in the directory.
   * @throws PostboxError `invalid_frame` for an invalid user id.
   */
  async unregisterUser(user: string): Promise<boolean> {
    assertUserId(user, 'user');
    const removed = await this.store.unregisterUser(user);
    if (removed === undefined) return false;
    const addrs = removed.map((device) => ({ user, device }));
    await this.closeUnlinked(addrs);
    for (const a of addrs) this.emit('unlinked', a);
    return true;
  }

  /**
   * Unlinks a device: deletes it and its inbox and closes its session (close code 4005), as a
   * device's own `unlinkDevice` does. Resolves false when the device was not registered.
   * @throws PostboxError `invalid_frame` for an invalid user or device id.
   */
  async unlinkDevice(user: string, device: string): Promise<boolean> {
    const addr = { user, device };
    assertAddress(addr);
    const removed = await this.store.unregisterDevice(addr);
    await this.closeUnlinked([addr]);
    if (removed) this.emit('unlinked', addr);
    return removed;
  }

  /** Closes the sessions of unlinked devices, here and (connected to another node) there. */
  private async closeUnlinked(addrs: DeviceAddress[]): Promise<void> {
    for (const a of addrs) this.sessions.get(keyOf(a))?.close(CLOSE_CODES.unlinked, 'device unlinked');
    if (this.cluster && addrs.length > 0) await this.cluster.closeDevices(addrs, CLOSE_CODES.unlinked);
  }

  /**
   * Commits a membership change on behalf of `actor` (a device of the acting user), through the
   * same ordered commit path as clients' changes: for server-side group management. Rejects with
   * the refusal's {@link PostboxError} code (`invalid_frame` for an invalid id).
   */
  changeGroup(actor: DeviceAddress, group: string, change: GroupChange, id: string): Promise<void> {
    return new Promise((resolve, reject) => {
      assertGroupChange(actor, group, change);
      this.enqueueCommit({
        input: { kind: 'group', from: actor, id, group, change, maxMembers: this.opts.maxGroupMembers },
        r: 0,
        done: (code) =>
          code === undefined ? resolve() : reject(new PostboxError(code, `group change refused: ${code}`)),
      });
    });
  }

  /**
   * Cuts a user off (every device) or one device, now: closes their sessions with close code
   * 4007 ("get fresh credentials and reconnect") on this node and, with a cluster, on every node.
   * It revokes nothing by itself: make your `authenticate` hook refuse them first, or their
   * clients reconnect at once. See docs/operations.md, "Cutting off a user or device".
   * @throws PostboxError `invalid_frame` for an invalid user or device id.
   */
  async disconnect(user: string, device?: string): Promise<void> {
    assertUserId(user, 'user');
    if (device !== undefined) assertDeviceId(device, 'device');
    // Open sessions, and handshakes the hook already let through (their `hello` came before the
    // hook started refusing): a scan of this node's connections, fine for a rare admin call.
    for (const s of [...this.connections]) {
      const a = s.addr ?? s.pendingAddr;
      if (a?.user === user && (device === undefined || a.device === device))
        s.close(CLOSE_CODES.reauthenticate, 'credentials revoked');
    }
    if (!this.cluster) return;
    // Its sessions on other nodes are of devices the store knows.
    const devices = device !== undefined ? [device] : await this.store.devices(user);
    await this.cluster.closeDevices(
      devices.map((d) => ({ user, device: d })),
      CLOSE_CODES.reauthenticate,
    );
  }

  /** Whether the user has an open session on this server (this node, with a cluster). */
  isOnline(user: string): boolean {
    return (this.presence.get(user)?.sessions ?? 0) > 0;
  }

  /** Runs expiry now (it also runs every `expiryIntervalMs`). */
  async expireNow(): Promise<NotifyResult> {
    const now = this.clock.now();
    const result = await this.store.expire(now - this.opts.retentionMs, now);
    this.ring(result.notify);
    return result;
  }

  /**
   * Stops accepting, finishes in-flight commits (their acks are sent), then closes every
   * connection with "going away" so clients reconnect, and stops every timer of its own, so a
   * process whose other handles are closed exits at once. The store is left open: its owner
   * closes it (after this resolves); so is the cluster adapter.
   */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.health.stop();
    this.clock.clearTimeout(this.sweepTimer);
    this.clock.clearTimeout(this.expiryTimer);
    await Promise.all(this.transports.map((t) => t.close()));
    await this.idle();
    for (const s of [...this.connections]) s.close(CLOSE_CODES.goingAway, 'server shutting down');
    // Pending offline announcements would keep the process alive for the debounce, with no one
    // left to tell (every connection just closed; last seen was stored when each left).
    for (const p of this.presence.values()) this.clock.clearTimeout(p.timer);
    this.presence.clear();
    if (this.cluster) {
      // Unregister every device, then announce now the users who left with this node (their
      // clients reconnect elsewhere and are announced online again there). A backend that does
      // not answer holds the shutdown for a few seconds at most: the TTL cleans up after it.
      const deadline = this.clock.now() + CLUSTER_CLOSE_WAIT_MS;
      while (this.clusterOps.size > 0 && this.clock.now() < deadline)
        await this.settledBy(deadline, [...this.clusterOps]);
      const checks = [...this.offlineChecks.values()];
      this.offlineChecks.clear();
      for (const c of checks) this.clock.clearTimeout(c.timer);
      await this.settledBy(
        deadline,
        checks.map((c) => c.run()),
      );
      for (const off of this.clusterHandlers.splice(0)) off();
    }
  }

  /** Waits until every promise settled or the clock passed `deadline`, whichever comes first. */
  private async settledBy(deadline: number, promises: Array<Promise<unknown>>): Promise<void> {
    let timer: TimerHandle | undefined;
    const late = new Promise<void>((resolve) => {
      timer = this.clock.setTimeout(resolve, Math.max(0, deadline - this.clock.now()));
    });
    await Promise.race([Promise.allSettled(promises), late]);
    this.clock.clearTimeout(timer);
  }

  /** Resolves when no commit is queued or running. */
  idle(): Promise<void> {
    if (!this.committing && this.commitQueue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  // ------------------------------------------------------------ internals used by Session

  /** @internal */
  get hasCluster(): boolean {
    return this.cluster !== undefined;
  }

  /** @internal */
  get isClosing(): boolean {
    return this.closing;
  }

  /** @internal */
  async authenticateHello(hello: HelloFrame, session: Session): Promise<AuthResult | null> {
    const ctx: { device?: string; remoteAddress?: string } = {};
    if (hello.dev !== undefined) ctx.device = hello.dev;
    if (session.conn.remoteAddress !== undefined) ctx.remoteAddress = session.conn.remoteAddress;
    return this.authenticate(hello.cred, ctx);
  }

  /** @internal */
  bind(session: Session): void {
    const key = keyOf(session.addr!);
    const old = this.sessions.get(key);
    if (old && old !== session) old.close(CLOSE_CODES.replaced, 'replaced by a newer connection');
    this.sessions.set(key, session);
    let mine = this.userSessions.get(session.addr!.user);
    if (!mine) this.userSessions.set(session.addr!.user, (mine = new Set()));
    mine.add(session);
    this.emit('online', session.addr!);
    // With a cluster, presence follows the cluster's registry (see registerInCluster).
    if (!this.cluster) this.presenceUp(session.addr!.user);
  }

  /** @internal */
  unbind(session: Session, code: number): void {
    if (this.connections.delete(session)) this.metrics.connection(-1);
    this.commitQueue.drop(session);
    if (session.linkCode !== undefined) this.linkCodes.delete(session.linkCode);
    for (const target of session.subscriptions?.keys() ?? []) this.unwatch(session, target);
    if (!session.addr) return;
    const key = keyOf(session.addr);
    if (this.sessions.get(key) === session) {
      this.sessions.delete(key);
      const mine = this.userSessions.get(session.addr.user);
      mine?.delete(session);
      if (mine?.size === 0) this.userSessions.delete(session.addr.user);
      this.emit('offline', session.addr, code);
      if (this.cluster) this.unregisterInCluster(session.addr);
      else this.presenceDown(session.addr.user);
    }
  }

  // ------------------------------------------------------------ cluster

  /** Hooks this node's sessions to the cluster's doorbells, take-overs, presence and typing. */
  private joinCluster(c: ClusterAdapter): void {
    this.clusterHandlers.push(
      c.onDoorbell((devices) => {
        for (const d of devices) this.sessions.get(keyOf(d))?.notify();
      }),
      c.onReplaced((devices) => {
        for (const d of devices)
          this.sessions.get(keyOf(d))?.close(CLOSE_CODES.replaced, 'replaced by a newer connection');
      }),
      c.onPresence((e) => this.onClusterPresence(e)),
      c.onTyping((users, notice) => this.deliverTyping(users, notice)),
      c.onClose((devices, code) => {
        for (const d of devices) this.sessions.get(keyOf(d))?.close(code, 'closed by the cluster');
      }),
      c.onLinkApproved((code) => {
        // Approved from another node, which already registered the device: open its session.
        const pending = this.linkCodes.get(code);
        if (!pending) return;
        this.linkCodes.delete(code);
        pending.linkCode = undefined;
        void pending.completeLink();
      }),
    );
  }

  /** Runs a cluster call that {@link close} must wait for; its failure is logged, not thrown. */
  private clusterOp(what: string, op: () => Promise<void>): Promise<void> {
    const p = op().catch((e) => this.log.warn(`cluster ${what} failed`, e));
    this.clusterOps.add(p);
    void p.finally(() => this.clusterOps.delete(p));
    return p;
  }

  /**
   * @internal Registers a device that is opening a session here, before its first inbox read:
   * from then on every commit for it rings this node, and every commit before is in that read.
   * When the cluster is unreachable the session opens anyway and gets its entries by polling.
   */
  registerInCluster(addr: DeviceAddress): Promise<void> {
    return this.clusterOp('register', async () => {
      // A hung backend must not hold handshakes (and so the handshake cap) forever.
      let timer: TimerHandle | undefined;
      const late = new Promise<never>((_, reject) => {
        timer = this.clock.setTimeout(
          () => reject(new Error(`no answer within ${CLUSTER_REGISTER_TIMEOUT_MS} ms`)),
          CLUSTER_REGISTER_TIMEOUT_MS,
        );
      });
      const r = await Promise.race([this.cluster!.register(addr), late]).finally(() =>
        this.clock.clearTimeout(timer),
      );
      const pending = this.offlineChecks.get(addr.user);
      if (pending) {
        // Back before its offline announcement: watchers never saw the user leave.
        this.clock.clearTimeout(pending.timer);
        this.offlineChecks.delete(addr.user);
      }
      if (r.cameOnline) this.publishPresence(addr.user, true, r.v, this.clock.now());
    });
  }

  /**
   * @internal Forgets a device that closed its session here (unless a newer session of it is
   * open here again). When that was the user's last device anywhere, last seen is written and,
   * after the debounce, the user is announced offline if no device came back meanwhile.
   */
  unregisterInCluster(addr: DeviceAddress): void {
    const c = this.cluster!;
    void this.clusterOp('unregister', async () => {
      // A newer session of the device replacing this one here binds right after this one closes.
      await undefined;
      if (this.sessions.has(keyOf(addr))) return;
      const r = await c.unregister(addr);
      if (!r.wentOffline || this.sessions.has(keyOf(addr))) return;
      const user = addr.user;
      const at = this.clock.now();
      this.store.setLastSeen(user, at).catch((e) => this.log.error('setLastSeen failed', e));
      const old = this.offlineChecks.get(user);
      if (old) this.clock.clearTimeout(old.timer);
      const run = async (): Promise<void> => {
        const [now] = await c.presence([user]);
        if (now && !now.online) this.publishPresence(user, false, now.v, at);
      };
      const check = {
        run,
        timer: this.clock.setTimeout(() => {
          if (this.offlineChecks.get(user) !== check) return;
          this.offlineChecks.delete(user);
          void this.clusterOp('presence check', run);
        }, this.opts.presenceDebounceMs),
      };
      this.offlineChecks.set(user, check);
    });
  }

  /** Announces a user's presence to every node watching it (this one hears it back). */
  private publishPresence(user: string, online: boolean, v: number, at: number): void {
    this.emit('presence', user, online, online ? undefined : at);
    // Never rejects by contract; a third-party adapter that does must not end the process.
    this.cluster!.publishPresence({ user, online, v, at }).catch((e) =>
      this.log.warn('presence publish failed', e),
    );
  }

  /** A presence event from the cluster: to this node's watchers, unless it is older than what they saw. */
  private onClusterPresence(e: PresenceEvent): void {
    if (e.lost && e.origin === this.cluster!.nodeId) {
      // This node reaped a dead node's last device of the user: nobody else records last seen.
      this.store.setLastSeen(e.user, e.at).catch((err) => this.log.error('setLastSeen failed', err));
      this.emit('presence', e.user, false, e.at);
    }
    if (!this.watchers.has(e.user)) return;
    const seen = this.presenceSeen.get(e.user);
    if (seen && seen.v >= e.v) return;
    this.presenceSeen.set(e.user, { v: e.v, online: e.online, at: e.at });
    // Levels, not edges: a second "online" (two nodes saw devices come) tells watchers nothing.
    if (seen?.online && e.online) return;
    this.tellWatchers(e.user, e.online, e.online ? undefined : e.at);
  }

  /** A typing notice to this node's sessions of `users` (the typist's own user left out). */
  private deliverTyping(users: Iterable<string>, n: TypingNotice): void {
    const frame: ServerFrame = n.group
      ? { t: 'typn', f: n.from.user, fd: n.from.device, on: n.on, to: n.to, g: true }
      : { t: 'typn', f: n.from.user, fd: n.from.device, on: n.on };
    let encoded: Uint8Array | undefined;
    for (const user of users) {
      if (user === n.from.user) continue;
      for (const s of this.userSessions.get(user) ?? []) s.sendEncoded((encoded ??= encodeFrame(frame)));
    }
  }

  /** Rings the nodes of devices not connected here; wakes by push those connected nowhere. */
  private async ringRemote(devices: DeviceAddress[]): Promise<void> {
    const c = this.cluster!;
    await c.ring(devices);
    if (!this.push) return;
    let where: Array<string | undefined>;
    try {
      where = await c.locate(devices);
    } catch (e) {
      // Unknown whereabouts: a wake-up too many beats a device left asleep.
      this.log.warn('cluster locate failed', e);
      where = [];
    }
    for (let i = 0; i < devices.length; i++) if (where[i] === undefined) void this.wake(devices[i]!);
  }

  // ------------------------------------------------------------ presence

  private presenceUp(user: string): void {
    let p = this.presence.get(user);
    if (!p) this.presence.set(user, (p = { sessions: 0, announced: false, timer: undefined }));
    p.sessions++;
    if (p.timer !== undefined) {
      // Back before the offline announcement: subscribers never saw it leave.
      this.clock.clearTimeout(p.timer);
      p.timer = undefined;
    }
    if (!p.announced) {
      p.announced = true;
      this.announce(user, true, undefined);
    }
  }

  private presenceDown(user: string): void {
    const p = this.presence.get(user);
    if (!p || --p.sessions > 0) return;
    const now = this.clock.now();
    this.store.setLastSeen(user, now).catch((e) => this.log.error('setLastSeen failed', e));
    p.timer = this.clock.setTimeout(() => {
      p.timer = undefined;
      if (p.sessions > 0) return;
      this.presence.delete(user);
      this.announce(user, false, now);
    }, this.opts.presenceDebounceMs);
  }

  private announce(user: string, online: boolean, lastSeen: number | undefined): void {
    this.emit('presence', user, online, lastSeen);
    this.tellWatchers(user, online, lastSeen);
  }

  /** Sends a presence change to this node's sessions watching `user`. */
  private tellWatchers(user: string, online: boolean, lastSeen: number | undefined): void {
    for (const s of this.watchers.get(user) ?? []) {
      const showLastSeen = s.subscriptions?.get(user) === true;
      s.send(
        online || lastSeen === undefined || !showLastSeen
          ? { t: 'pres', u: user, on: online }
          : { t: 'pres', u: user, on: false, ls: lastSeen },
      );
    }
  }

  /** @internal `sub`: privacy check, then the current state, then changes until unsubscribe or close. */
  async subscribe(session: Session, r: number, target: string): Promise<void> {
    const viewer = session.addr!.user;
    let visible: PresenceVisibility;
    let lastSeen: number | undefined;
    try {
      visible = viewer === target ? true : await this.presencePolicy(viewer, target, this.store);
      lastSeen = visible === true ? await this.store.lastSeen(target) : undefined;
    } catch (e) {
      this.log.warn('presence policy failed', e);
      visible = false;
    }
    if (session.isClosed()) return;
    if (visible === false) {
      session.sendError('forbidden', 'presence not visible', r);
      return;
    }
    const subs = (session.subscriptions ??= new Map());
    if (!subs.has(target) && subs.size >= this.opts.maxSubscriptions) {
      session.sendError('rate_limited', `over ${this.opts.maxSubscriptions} subscriptions`, r);
      return;
    }
    subs.set(target, visible === true);
    let set = this.watchers.get(target);
    if (!set) {
      this.watchers.set(target, (set = new Set()));
      if (this.cluster) void this.clusterOp('watch', () => this.cluster!.watch(target));
    }
    set.add(session);
    session.send({ t: 'ok', r });
    let online = this.presence.get(target)?.announced === true;
    if (this.cluster) {
      try {
        const [now] = await this.cluster.presence([target]);
        const seen = this.presenceSeen.get(target);
        // An event newer than this read may have arrived meanwhile; the newest wins.
        if (now && (!seen || seen.v < now.v))
          this.presenceSeen.set(target, { v: now.v, online: now.online, at: this.clock.now() });
        online = this.presenceSeen.get(target)?.online ?? false;
      } catch (e) {
        this.log.warn('cluster presence read failed', e);
      }
      if (session.isClosed() || !session.subscriptions?.has(target)) return;
    }
    session.send(
      online || lastSeen === undefined
        ? { t: 'pres', u: target, on: online }
        : { t: 'pres', u: target, on: false, ls: lastSeen },
    );
  }

  /** @internal */
  unsubscribe(session: Session, target: string): void {
    session.subscriptions?.delete(target);
    this.unwatch(session, target);
  }

  /** Drops one session from `target`'s watchers; the last one stops the cluster's events. */
  private unwatch(session: Session, target: string): void {
    const set = this.watchers.get(target);
    if (!set?.delete(session) || set.size > 0) return;
    this.watchers.delete(target);
    if (this.cluster) {
      this.presenceSeen.delete(target);
      void this.clusterOp('unwatch', () => this.cluster!.unwatch(target));
    }
  }

  // ------------------------------------------------------------ typing

  /** @internal forwards a typing notice to the online devices it concerns; nothing is stored. */
  async typing(session: Session, f: TypingFrame): Promise<void> {
    const from = session.addr!;
    let users: Iterable<string>;
    if (f.g) {
      const now = this.clock.now();
      const cached = this.memberCache.get(f.to);
      let members =
        cached && (!this.cluster || now - cached.at < MEMBER_CACHE_MS) ? cached.members : undefined;
      if (!members) {
        const g = await this.store.group(f.to);
        members = new Set(g?.members.map((m) => m.user));
        if (g) this.memberCache.set(f.to, { members, at: now });
      }
      if (!members.has(from.user)) {
        session.sendError('not_member', 'not a member of the group');
        return;
      }
      users = members;
    } else {
      // Only to a user who consented to the typist (wrote to it, or took part in a group with
      // it). Dropped without an error otherwise, as for a user offline: an error would tell a
      // stranger who consented, and a client typing into a brand-new chat is no fault.
      if (!(await this.consented(from.user, f.to))) return;
      users = [f.to];
    }
    const notice: TypingNotice = { from, to: f.to, on: f.on };
    if (f.g) notice.group = true;
    if (!this.cluster) return this.deliverTyping(users, notice);
    // Through the cluster, this node's own sessions included (see ClusterAdapter.typing).
    const to = [...users].filter((u) => u !== from.user);
    if (to.length > 0) await this.cluster.typing(to, notice);
  }

  /** Whether `target` consented to `viewer` ({@link ServerStore.related}); a store fault says no. */
  private async consented(viewer: string, target: string): Promise<boolean> {
    try {
      return await this.store.related(viewer, target);
    } catch (e) {
      this.log.warn('relation check failed', e);
      return false;
    }
  }

  // ------------------------------------------------------------ devices

  /** @internal a new device awaits approval: hands out its link code. */
  startLink(session: Session): { code: string; exp: number } {
    const bytes = new Uint8Array(15);
    globalThis.crypto.getRandomValues(bytes);
    let code = '';
    for (const b of bytes) code += 'ABCDEFGHJKMNPQRSTVWXYZ0123456789'[b & 31];
    session.linkCode = code;
    this.linkCodes.set(code, session);
    const addr = session.pendingAddr;
    if (this.cluster && addr) {
      // So that a device of the user connected to any node can approve it.
      const c = this.cluster;
      void this.clusterOp('offer link', () => c.offerLink(code, addr, this.opts.linkCodeTtlMs));
    }
    return { code, exp: this.clock.now() + this.opts.linkCodeTtlMs };
  }

  /** @internal `lnk`: an existing device approves the device showing `code`. */
  async approveLink(approver: Session, r: number, code: string): Promise<void> {
    const pending = this.linkCodes.get(code);
    const by = approver.addr!;
    if (!pending && this.cluster) return this.approveRemoteLink(approver, r, code);
    if (!pending || pending.isClosed() || pending.pendingAddr?.user !== by.user) {
      approver.sendError('forbidden', 'no device of this user awaits approval with that code', r);
      return;
    }
    this.linkCodes.delete(code);
    pending.linkCode = undefined;
    const ok = await pending.completeLink();
    if (!ok) {
      approver.sendError('unavailable', 'the new device could not be registered', r);
      return;
    }
    approver.send({ t: 'ok', r });
    this.emit('linked', pending.addr!, by);
  }

  /**
   * Approves a device waiting on another node: takes its code from the cluster (once, and only for
   * a device of the approver's user), registers the device in the store (the approval is durable:
   * should the notice to its node be lost, its next hello needs no approval), and the waiting
   * node opens its session.
   */
  private async approveRemoteLink(approver: Session, r: number, code: string): Promise<void> {
    const by = approver.addr!;
    let device: DeviceAddress | undefined;
    try {
      device = await this.cluster!.takeLink(code, by.user);
    } catch (e) {
      this.log.warn('cluster takeLink failed', e);
      approver.sendError('unavailable', 'link codes are unavailable, try again', r);
      return;
    }
    if (!device) {
      approver.sendError('forbidden', 'no device of this user awaits approval with that code', r);
      return;
    }
    try {
      const res = await this.store.registerDevice(device, this.clock.now());
      this.ring(res.notify);
    } catch (e) {
      this.log.error('store failure registering a linked device', e);
      approver.sendError('unavailable', 'the new device could not be registered', r);
      return;
    }
    approver.send({ t: 'ok', r });
    this.emit('linked', device, by);
  }

  /** @internal `unl`: a device unlinks a device of its own user. */
  // ------------------------------------------------------------ key directory

  /** @internal publishes a device's keys (`keys` frame). */
  async putKeys(session: Session, f: KeysFrame): Promise<void> {
    const upload: KeyUpload = { registrationId: f.rid, identityKey: f.ik };
    if (f.spk) upload.signedPreKey = { id: f.spk[0], key: f.spk[1], signature: f.spk[2] };
    if (f.lrk) upload.lastResortKyber = { id: f.lrk[0], key: f.lrk[1], signature: f.lrk[2] };
    if (f.pk) upload.preKeys = f.pk.map(([id, key]) => ({ id, key }));
    if (f.kpk) upload.kyberPreKeys = f.kpk.map(([id, key, signature]) => ({ id, key, signature }));
    try {
      await this.store.putKeys(session.addr!, upload);
    } catch (e) {
      if (isPostboxError(e) && e.code === 'quota_exceeded') {
        session.sendError('quota_exceeded', 'too many one-time keys for this device', f.r);
        return;
      }
      // A first upload without a signed prekey, or a store fault: the device retries.
      this.clientLog.warn(keyOf(session.addr!), 'key upload refused', e);
      session.sendError('invalid_frame', 'key upload refused', f.r);
      return;
    }
    session.send({ t: 'ok', r: f.r });
    // A first upload (or a rotation) carries the signed prekey: whoever waited can write now.
    if (f.spk) {
      for (const k of this.keyWaiters.take(session.addr!.user)) {
        this.sessions.get(k)?.send({ t: 'kr', u: session.addr!.user });
      }
    }
  }

  /**
   * @internal claims bundles (`kget` frame) and tells devices that run low. The claiming user's
   * bundles per 10 s are limited, and so are the one-time keys it takes of each device (see
   * {@link ServerOptions.maxOneTimeKeyClaimsPerDay}).
   */
  async claimKeys(session: Session, f: KeyGetFrame): Promise<void> {
    const claimer = session.addr!.user;
    // Asking for one user twice in a frame gets nothing a second answer would not.
    const users = [...new Set(f.u)];
    if (!this.limits.claim(claimer, users.length, this.clock.now())) {
      session.sendError('rate_limited', 'too many key claims', f.r);
      return;
    }
    const bundles: KeyBundle[] = [];
    // Users with registered devices but no keys yet: the sender holds its message for them.
    const keyless: string[] = [];
    try {
      for (const user of users) {
        const oneTime = (device: string) => this.limits.oneTimeKey(claimer, user, device, this.clock.now());
        const got = await this.store.claimKeys(user, users.length === 1 ? f.d : undefined, { oneTime });
        bundles.push(...got);
        if (got.length === 0 && f.d === undefined) {
          this.keyWaiters.add(user, keyOf(session.addr!));
          if ((await this.store.devices(user)).length > 0) keyless.push(user);
        }
      }
    } catch (e) {
      this.log.error('key claim failed', e);
      session.sendError('unavailable', 'key directory unavailable', f.r);
      return;
    }
    this.limits.claimed(claimer, bundles.length, this.clock.now());
    session.send({
      t: 'kb',
      r: f.r,
      b: bundles.map((b) => {
        const t: [string, string, number, Uint8Array, WireKey, WireKey, ...Array<[number, Uint8Array]>] = [
          b.user,
          b.device,
          b.registrationId,
          b.identityKey,
          [b.signedPreKey.id, b.signedPreKey.key, b.signedPreKey.signature],
          [b.kyberPreKey.id, b.kyberPreKey.key, b.kyberPreKey.signature],
        ];
        if (b.preKey) t.push([b.preKey.id, b.preKey.key]);
        return t;
      }),
      ...(keyless.length > 0 ? { w: keyless } : {}),
    });
    for (const b of bundles) void this.checkKeySupply(b);
  }

  /** @internal tells a connected device whose one-time keys run low to upload more. */
  async checkKeySupply(device: DeviceAddress): Promise<void> {
    const low = this.opts.keyLowWater;
    const s = low > 0 ? this.sessions.get(keyOf(device)) : undefined;
    if (!s) return;
    try {
      const n = await this.store.keyCount(device);
      if (n && (n.preKeys < low || n.kyberPreKeys < low))
        s.send({ t: 'klow', pk: n.preKeys, kpk: n.kyberPreKeys });
    } catch (e) {
      this.log.warn('key count failed', e);
    }
  }

  async unlinkFromSession(session: Session, r: number, device: string): Promise<void> {
    try {
      await this.unlinkDevice(session.addr!.user, device);
    } catch (e) {
      this.reportStoreFailure(e, [session]);
      return;
    }
    session.send({ t: 'ok', r });
  }

  /** @internal whether approval is needed before this device may open a session. */
  async needsApproval(addr: DeviceAddress): Promise<boolean> {
    if (this.opts.linking === 'open') return false;
    const devices = await this.store.devices(addr.user);
    return devices.length > 0 && !devices.includes(addr.device);
  }

  /**
   * @internal Charges a frame of an open session to its device's and user's budgets (see
   * costs.ts): false when it must not run (refused with `rate_limited`, or the session closed).
   */
  afford(session: Session, frame: ClientFrame, now: number): boolean {
    const addr = session.addr!;
    const verdict = this.budgets.charge(
      addr.user,
      addr.device,
      frameCost(frame, () => this.fanout.rowsOf(frame)),
      now,
    );
    return verdict === 'ok' || this.refuseOverBudget(session, verdict, 'r' in frame ? frame.r : undefined);
  }

  /**
   * @internal Charges a frame's size to the budgets before it is decoded (costs.ts): false when it
   * must not be decoded at all (a device in debt, or one that cannot pay for the bytes). Its
   * request id is read from the bytes so that the refusal is still answered.
   */
  affordBytes(session: Session, data: Uint8Array, now: number): boolean {
    const addr = session.addr!;
    const verdict = this.budgets.charge(addr.user, addr.device, this.budgets.byteCost(data.byteLength), now);
    return verdict === 'ok' || this.refuseOverBudget(session, verdict, peekClientRequestId(data));
  }

  private refuseOverBudget(session: Session, verdict: CostVerdict, r: number | undefined): false {
    // A refused request is answered; other frames get one notice per stretch of refusals.
    if (r !== undefined || !session.overBudget) session.sendError('rate_limited', 'over the cost budget', r);
    session.overBudget = true;
    if (verdict === 'close') session.close(CLOSE_CODES.rateLimited, 'over the cost budget');
    return false;
  }

  /**
   * @internal Why a client's group change is refused before it is queued (over the creator's
   * creations per hour, or an accept over the joiner's joins per day), or undefined.
   */
  groupCapRefusal(input: GroupInput): string | undefined {
    const now = this.clock.now();
    const op = input.change.op;
    if (op === 'create' && !this.groupCaps.create(input.from.user, now)) return 'too many groups created';
    if (op === 'accept' && !this.groupCaps.join(input.from.user, now)) return 'too many groups joined';
    return undefined;
  }

  /** Splits a client's create or add into users who join and users who are invited (group-consent.ts). */
  private async decideConsent(input: AppendInput): Promise<void> {
    if (input.kind !== 'group') return;
    await applyConsent(input, this.opts.groupConsent, this.store, this.groupCaps, this.clock.now());
  }

  /** @internal */
  enqueueCommit(p: PendingCommit): void {
    this.commitQueue.push(p.session ?? SERVER_SIDE, p, this.fanout.rows(p.input));
    if (!this.flushScheduled && !this.committing) {
      this.flushScheduled = true;
      // A microtask lets every frame of the current I/O turn join the batch.
      queueMicrotask(() => {
        this.flushScheduled = false;
        void this.flush();
      });
    }
  }

  /**
   * Pushes a just-committed message straight to each recipient session that has delivered
   * everything before it (the common case for online devices), without reading it back from the
   * store; the others are rung as usual.
   */
  private deliverNew(
    input: MessageInput,
    ts: number,
    devices: DeviceAddress[],
    offsets: number[],
    ring: DeviceAddress[],
  ): void {
    const entry: InboxEntry = {
      offset: 0,
      kind: 'msg',
      id: input.id,
      from: input.from,
      to: input.to,
      seq: input.seq,
      ts,
      body: input.body,
    };
    // A group entry reads the same on every device but for its offset: packed once.
    let encode: ((offset: number) => Uint8Array) | undefined;
    if (input.group) entry.group = true;
    // An encrypted 1:1 message carries one ciphertext per device.
    const bodies = input.envelopes && new Map(input.envelopes.map((e) => [keyOf(e), e.body]));
    for (let i = 0; i < devices.length; i++) {
      const d = devices[i]!;
      const s = this.sessions.get(keyOf(d));
      if (!s) {
        // Not here: the entry waits in its inbox; its node is rung (or a push wakes it).
        if (this.push || this.cluster) ring.push(d);
        continue;
      }
      entry.offset = offsets[i]!;
      if (bodies) entry.body = bodies.get(keyOf(d)) ?? input.body;
      if (input.group) encode ??= encodeAtOffset(s.entryFrame(entry));
      if (!s.offer(entry, encode)) ring.push(d);
    }
  }

  /**
   * @internal Pushes the entries a store call says it wrote ({@link NotifyResult.entries}) to the
   * sessions here that can take them at once, and rings every other device of the result.
   */
  deliverWritten(res: NotifyResult): void {
    if (!res.entries) return this.ring(res.notify);
    const ring: DeviceAddress[] = [];
    const seen = new Map<string, boolean>(); // device → all its entries so far went out
    for (const { device, entry } of res.entries) {
      const k = keyOf(device);
      if (seen.get(k) === false) continue; // an earlier entry could not go: the read takes them all
      const sent = this.sessions.get(k)?.offer(entry) ?? false;
      seen.set(k, sent);
      if (!sent) ring.push(device);
    }
    for (const d of res.notify) if (!seen.has(keyOf(d))) ring.push(d);
    this.ring(ring);
  }

  /** @internal */
  ring(devices: DeviceAddress[]): void {
    if (devices.length > 0) this.metrics.doorbell(devices.length);
    let remote: DeviceAddress[] | undefined;
    for (const d of devices) {
      if (isPendingDevice(d.device)) {
        // A pending inbox has no connection, token or node. Its user's first device may have
        // taken it over after the commit listed it: a session of the user here reads again.
        for (const s of this.userSessions.get(d.user) ?? []) s.notify();
        continue;
      }
      const s = this.sessions.get(keyOf(d));
      if (s) s.notify();
      else if (this.cluster) (remote ??= []).push(d);
      else if (this.push) void this.wake(d);
    }
    if (remote) this.ringRemote(remote).catch((e) => this.log.warn('cluster ring failed', e));
  }

  /** A device without a connection got an inbox entry: wake it, at most once per interval. */
  private async wake(device: DeviceAddress): Promise<void> {
    const k = keyOf(device);
    const now = this.clock.now();
    const last = this.lastWake.get(k);
    if (last !== undefined && now - last < this.opts.pushIntervalMs) return;
    this.lastWake.set(k, now);
    try {
      const token = this.store.pushToken ? await this.store.pushToken(device) : this.pushTokens.get(k);
      if (!token || this.sessions.has(k)) return;
      await this.push!.wake(device, token, { ts: now });
      this.metrics.push(true);
    } catch (e) {
      this.metrics.push(false);
      this.log.warn('push wake-up failed', e);
    }
  }

  /** @internal registers or removes a device's push token (`ptok`). */
  async setPushToken(session: Session, f: PushTokenFrame): Promise<void> {
    const token = f.k !== undefined && f.tok !== undefined ? { kind: f.k, token: f.tok } : undefined;
    const addr = session.addr!;
    try {
      if (this.store.setPushToken) await this.store.setPushToken(addr, token);
      else if (token) this.pushTokens.set(keyOf(addr), token);
      else this.pushTokens.delete(keyOf(addr));
    } catch (e) {
      this.log.error('push token not stored', e);
      session.sendError('unavailable', 'push token not stored', f.r);
      return;
    }
    session.send({ t: 'ok', r: f.r });
  }

  /**
   * @internal A store call failed: the store counts as failing (logged once per outage), and the
   * sessions it concerned are closed with 1013 (try again later), unanswered: their clients back
   * off, reconnect (to another gateway of their list) and resend everything unacked in order.
   */
  reportStoreFailure(error: unknown, sessions: Iterable<Session>): void {
    this.health.failed(error);
    if (this.listenerCount('error') > 0) this.emit('error', error);
    for (const s of sessions) s.close(CLOSE_CODES.tryAgainLater, 'store unavailable');
  }

  private async flush(): Promise<void> {
    if (this.committing) return;
    this.committing = true;
    try {
      for (let first = true; this.commitQueue.length > 0; first = false) {
        // Between batches, other connections' frames, acks and reads run (see maxCommitRows).
        if (!first) await yieldToEventLoop();
        const batch = this.commitQueue.take(this.opts.maxCommitBatch, this.opts.maxCommitRows);
        if (batch.length === 0) continue; // their sessions closed while this one yielded
        let outcomes;
        const started = performance.now();
        try {
          // In queue order, so a message after a create still commits after it.
          for (const p of batch) if (p.consent) await this.decideConsent(p.input);
          outcomes = await this.store.append(
            batch.map((p) => p.input),
            this.clock.now(),
          );
          this.metrics.commit(performance.now() - started, batch.length, true);
          this.health.succeeded();
        } catch (error) {
          this.metrics.commit(performance.now() - started, batch.length, false);
          // Answering an error here while later sends of the same connection commit would
          // break per-sender order; closing makes the client resend everything in order.
          const sessions = new Set<Session>();
          for (const p of batch) {
            if (p.session) sessions.add(p.session);
            else p.done?.('unavailable');
          }
          this.reportStoreFailure(error, sessions);
          continue;
        }
        const notify: DeviceAddress[] = [];
        for (let i = 0; i < batch.length; i++) {
          const p = batch[i]!;
          const out = outcomes[i]!;
          this.fanout.learn(p.input, out);
          this.metrics.sent(p.input.kind, out.ok ? undefined : out.code);
          if (out.ok && p.input.kind === 'group') this.memberCache.delete(p.input.group);
          p.done?.(out.ok ? undefined : out.code);
          if (this.tracer.on) this.tracer.committed(p.input, out);
          if (p.session) p.session.pendingSends--;
          if (out.ok) {
            p.session?.send({ t: 'ok', r: p.r });
            if (out.offsets && p.input.kind === 'msg' && !out.duplicate) {
              this.deliverNew(p.input, out.ts, out.notify, out.offsets, notify);
            } else for (const n of out.notify) notify.push(n);
          } else if (p.session) {
            p.session.sendError(
              out.code,
              REFUSAL_TEXT[out.code] ?? out.code,
              p.r,
              out.devices && wireDifference(out.devices),
            );
          }
        }
        this.ring(notify);
      }
    } finally {
      this.committing = false;
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  private scheduleSweep(): void {
    const every = Math.max(50, Math.floor(this.opts.heartbeatMs / 2));
    this.sweepTimer = this.clock.setTimeout(() => {
      const now = this.clock.now();
      for (const s of [...this.connections]) s.checkLiveness(now);
      if (!this.closing) this.scheduleSweep();
    }, every);
  }

  private scheduleExpiry(): void {
    this.expiryTimer = this.clock.setTimeout(() => {
      this.expireNow()
        .catch((e) => this.log.error('expiry failed', e))
        .finally(() => {
          if (!this.closing) this.scheduleExpiry();
        });
    }, this.opts.expiryIntervalMs);
  }
}

const WIRE_STATUS = { delivered: 'd', read: 'r', expired: 'x' } as const;
const WIRE_GAP_REASON = { expired: 'x', inbox_full: 'f' } as const;

/** A session's connection handlers: one small object rather than three closures per connection. */
class SessionHandlers implements ConnectionHandlers {
  constructor(private readonly session: Session) {}
  frame(data: Uint8Array): void {
    this.session.onFrame(data);
  }
  close(code: number): void {
    this.session.onClosed(code);
  }
  drain(): void {
    this.session.pump();
  }
}

/** One connection's state: handshake, rate limits, commit pipeline and delivery window. */
class Session {
  addr: DeviceAddress | undefined;
  private state: 'hello' | 'authenticating' | 'linking' | 'open' | 'closed' = 'hello';
  /** From the hook's answer until the session opens (link approval included): who it is. */
  pendingAddr: DeviceAddress | undefined;
  /** While awaiting link approval: the code it was given. */
  linkCode: string | undefined;
  private linkStartedAt = 0;
  /** When the credentials of this session expire (the hook's `expiresAt`), if they do. */
  private expiresAt: number | undefined;
  private version = PROTOCOL_VERSION;
  /** Presence subscriptions: target user → whether its last-seen time may be shown. */
  subscriptions: Map<string, boolean> | undefined;
  pendingSends = 0;
  /** @internal a frame of this session was refused over budget since the last one that ran. */
  overBudget = false;
  private lastFrameAt: number;
  /** Closes the connection if it has not opened (or started linking) by the `hello` deadline. */
  private helloTimer: TimerHandle | undefined;
  private invalidFrames = 0;
  private rateWindowStart: number;
  private rateCount = 0;
  // Delivery window.
  private cursor = 0;
  /** Offsets delivered and not yet acked; made on the first delivery (idle sessions never need one). */
  private inflight: Set<number> | undefined;
  private reading = false;
  private dirty = false;
  /**
   * The last read reached the end of the inbox and nothing was appended since (every append
   * rings): an ack or a drain then frees room without a pointless read of an empty tail.
   */
  private drained = false;
  /** When the inbox was last read (for {@link ServerOptions.inboxPollMs}). */
  private lastReadAt = 0;

  constructor(
    private readonly server: PostboxServer,
    readonly conn: Connection,
  ) {
    this.lastFrameAt = this.rateWindowStart = server.clock.now();
    conn.setHandlers(new SessionHandlers(this));
    // A timer per handshake rather than a check in the liveness sweep, which runs every half
    // heartbeat (12.5 s): with it a silent socket was held 10-22 s. Node keeps timers of one
    // duration in one list, so this is O(1) to arm and to clear, and it lives only until hello.
    this.helloTimer = server.clock.setTimeout(() => this.helloExpired(), server.opts.helloTimeoutMs);
  }

  private helloExpired(): void {
    this.helloTimer = undefined;
    // Not `unauthorized`: a slow link is no reason for the client to give up for good.
    if (this.state === 'hello' || this.state === 'authenticating')
      this.close(CLOSE_CODES.heartbeatTimeout, 'no hello in time');
  }

  /** The handshake is over (opened, linking, or closed): its deadline no longer applies. */
  private endHandshake(): void {
    if (this.helloTimer === undefined) return;
    this.server.clock.clearTimeout(this.helloTimer);
    this.helloTimer = undefined;
  }

  send(frame: ServerFrame): void {
    if (this.state !== 'closed') this.conn.send(encodeFrame(frame));
  }

  /** Sends an already encoded frame (one encoding shared by many recipients). */
  sendEncoded(data: Uint8Array): void {
    if (this.state === 'open') this.conn.send(data);
  }

  sendError(code: ErrorCode, message: string, r?: number, devices?: ErrFrame['d']): void {
    this.server.metrics.error(code);
    const frame: ErrFrame = { t: 'err', c: code, m: message };
    if (r !== undefined) frame.r = r;
    if (devices) frame.d = devices;
    this.send(frame);
  }

  isClosed(): boolean {
    return this.state === 'closed';
  }

  close(code: number, reason: string): void {
    if (this.state === 'closed') return;
    this.conn.close(code, reason);
    this.onClosed(code);
  }

  checkLiveness(now: number): void {
    if (this.state === 'closed') return;
    if (this.expiresAt !== undefined && now >= this.expiresAt) {
      // Its credentials ran out: the client asks its `credentials` function for fresh ones.
      this.sendError('unauthorized', 'credentials expired');
      this.close(CLOSE_CODES.reauthenticate, 'credentials expired');
      return;
    }
    if (this.state === 'linking') {
      if (now - this.linkStartedAt > this.server.opts.linkCodeTtlMs)
        this.close(CLOSE_CODES.linkExpired, 'link code expired');
      return;
    }
    // Before the session opens, its own timer keeps the hello deadline (helloExpired).
    if (this.state !== 'open') return;
    if (now - this.lastFrameAt > this.server.opts.heartbeatMs * 2) {
      this.close(CLOSE_CODES.heartbeatTimeout, 'heartbeat timeout');
      return;
    }
    const poll = this.server.opts.inboxPollMs;
    // A doorbell may have been lost: look at the inbox anyway now and then.
    if (poll > 0 && now - this.lastReadAt >= poll) this.notify();
  }

  /** @internal the connection closed. */
  onClosed(code: number): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.endHandshake();
    this.server.unbind(this, code);
  }

  /** @internal one frame arrived. */
  onFrame(data: Uint8Array): void {
    if (this.state === 'closed') return;
    const now = this.server.clock.now();
    this.lastFrameAt = now;
    if (now - this.rateWindowStart >= 1000) {
      this.rateWindowStart = now;
      this.rateCount = 0;
    }
    // Counted per device once it is known, so that reconnecting does not reset the count.
    const addr = this.addr;
    const over = addr
      ? !this.server.limits.frame(addr.user, addr.device, now)
      : ++this.rateCount > this.server.opts.maxFramesPerSecond;
    if (over) {
      this.sendError('rate_limited', 'too many frames per second');
      this.close(CLOSE_CODES.rateLimited, 'rate limited');
      return;
    }
    // A device in debt, or one that cannot pay for the frame's bytes, is refused before decoding.
    if (this.state === 'open' && !this.server.affordBytes(this, data, now)) return;
    let frame: ClientFrame;
    try {
      // Before authentication only a hello-sized frame is decoded at all (issue 22).
      const max =
        this.state === 'open' ? this.server.opts.maxFrameBytes : this.server.opts.maxPreHelloFrameBytes;
      frame = decodeClientFrame(data, max);
    } catch (e) {
      const err = isPostboxError(e)
        ? e
        : new PostboxError('invalid_frame', 'undecodable frame', { cause: e });
      this.sendError(err.code, err.message, this.state === 'open' ? err.requestId : undefined);
      if (err.code === 'too_large') this.close(CLOSE_CODES.tooLarge, 'frame too large');
      else if (this.state !== 'open' || ++this.invalidFrames > this.server.opts.maxInvalidFrames) {
        this.close(CLOSE_CODES.protocolError, 'invalid frames');
      }
      return;
    }
    if (this.state !== 'open') {
      if (frame.t === 'hello' && this.state === 'hello') void this.onHello(frame);
      else if (this.state === 'linking' && (frame.t === 'ping' || frame.t === 'pong')) {
        if (frame.t === 'ping') this.send({ t: 'pong' });
      } else {
        this.sendError('unauthorized', 'say hello first');
        this.close(CLOSE_CODES.unauthorized, 'no hello');
      }
      return;
    }
    if (!this.server.afford(this, frame, now)) return;
    this.overBudget = false;
    switch (frame.t) {
      case 'send': {
        const max = this.server.opts.maxBodyBytes;
        // A ciphertext is its plaintext plus the session's overhead (a first, PreKey message
        // carries some 1.9 KB of keys).
        if (frame.b.byteLength > max || frame.e?.some((e) => e[3].byteLength > max + CIPHERTEXT_OVERHEAD)) {
          this.sendError('too_large', `body over ${max} bytes`, frame.r);
          return;
        }
        if (frame.g && (frame.e || frame.seq === 0)) {
          this.sendError('invalid_frame', 'a group message has one body and a sequence number', frame.r);
          return;
        }
        const input: MessageInput = {
          kind: 'msg',
          from: this.addr!,
          id: frame.id,
          to: frame.to,
          seq: frame.seq,
          body: frame.b,
        };
        if (frame.g) input.group = true;
        if (frame.e)
          input.envelopes = frame.e.map(([user, device, rid, body]) => ({ user, device, rid, body }));
        this.commit(frame.r, input);
        return;
      }
      case 'keys':
        void this.server.putKeys(this, frame);
        return;
      case 'ptok':
        void this.server.setPushToken(this, frame);
        return;
      case 'kget':
        void this.server.claimKeys(this, frame);
        return;
      case 'grp':
        return this.onGroup(frame);
      case 'lnk':
        void this.server.approveLink(this, frame.r, frame.code);
        return;
      case 'unl':
        void this.server.unlinkFromSession(this, frame.r, frame.d);
        return;
      case 'sub':
        void this.server.subscribe(this, frame.r, frame.u);
        return;
      case 'unsub':
        this.server.unsubscribe(this, frame.u);
        return;
      case 'typ': {
        const verdict = this.server.limits.typing(this.addr!.user, now);
        if (verdict !== 'ok') {
          // Dropped, not fatal: typing is ephemeral and a flood only costs the flooder.
          if (verdict === 'first-over') this.sendError('rate_limited', 'too many typing notices');
          return;
        }
        // Ephemeral: a store that cannot say who is in the group drops the notice, nothing more.
        this.server
          .typing(this, frame)
          .catch((e) => this.server.clientLog.warn(this.addr!.user, 'typing notice dropped', e));
        return;
      }
      case 'rcpt':
        this.commit(frame.r, {
          kind: 'receipt',
          from: this.addr!,
          id: frame.id,
          to: frame.to,
          status: 'read',
          ids: frame.ids,
        });
        return;
      case 'ack':
        void this.onAck(frame.o);
        return;
      case 'ping':
        this.send({ t: 'pong' });
        return;
      case 'pong':
        return;
      case 'hello':
        this.sendError('invalid_frame', 'already said hello');
        return;
    }
  }

  private async onHello(hello: HelloFrame): Promise<void> {
    const server = this.server;
    if (server.handshakes >= server.opts.maxConcurrentHandshakes) {
      // Shed load before it reaches the authenticator and the store; the client backs off. A bare
      // 1013, no `err` first: a client that read an error would close its side normally and
      // come back to this same busy gateway instead of moving on to another of its list.
      this.server.metrics.error('unavailable');
      this.close(CLOSE_CODES.tryAgainLater, 'server busy');
      return;
    }
    server.handshakes++;
    try {
      await this.handshake(hello);
    } finally {
      server.handshakes--;
    }
  }

  private async handshake(hello: HelloFrame): Promise<void> {
    this.state = 'authenticating';
    const version = negotiateVersion(hello.v, [MIN_PROTOCOL_VERSION, PROTOCOL_VERSION]);
    if (version === undefined) {
      this.sendError('unsupported_version', `server speaks ${MIN_PROTOCOL_VERSION}..${PROTOCOL_VERSION}`);
      this.close(CLOSE_CODES.unsupportedVersion, 'unsupported version');
      return;
    }
    let auth: AuthResult | null;
    try {
      auth = await this.server.authenticateHello(hello, this);
    } catch (e) {
      this.server.log.debug('authenticate threw', e);
      auth = null;
    }
    if (this.isClosed()) return;
    const accepted = acceptAuth(auth, this.server.clock.now());
    if ('refused' in accepted) {
      // An app whose hook passes on ids it never checked wants to hear about it.
      if (auth && accepted.refused !== 'credentials expired')
        this.server.log.warn(`authenticate hook's answer refused: ${accepted.refused}`);
      this.sendError('unauthorized', accepted.refused);
      this.close(CLOSE_CODES.unauthorized, 'unauthorized');
      return;
    }
    const addr = accepted.addr;
    if (this.server.budgets.inDebt(addr.user, addr.device, this.server.clock.now())) {
      // Closed for debt and back before paying it off: refused before any store work.
      this.sendError('rate_limited', 'over the cost budget: reconnect later');
      this.close(CLOSE_CODES.rateLimited, 'over the cost budget');
      return;
    }
    this.pendingAddr = addr;
    this.expiresAt = accepted.expiresAt;
    this.version = version;
    let approval: boolean;
    try {
      approval = await this.server.needsApproval(addr);
    } catch (e) {
      this.server.reportStoreFailure(e, [this]);
      return;
    }
    if (this.isClosed()) return;
    if (approval) {
      this.state = 'linking';
      this.endHandshake();
      this.linkStartedAt = this.server.clock.now();
      const { code, exp } = this.server.startLink(this);
      this.send({ t: 'lcode', code, exp });
      return;
    }
    await this.open(addr);
  }

  /** Registers the approved device and opens its session. False when the store failed. */
  async completeLink(): Promise<boolean> {
    if (this.state !== 'linking' || !this.pendingAddr) return false;
    return this.open(this.pendingAddr);
  }

  private async open(addr: DeviceAddress): Promise<boolean> {
    let registered: NotifyResult;
    try {
      registered = await this.server.store.registerDevice(addr, this.server.clock.now());
    } catch (e) {
      this.server.reportStoreFailure(e, [this]);
      return false;
    }
    if (this.isClosed()) return false;
    if (this.server.hasCluster) {
      await this.server.registerInCluster(addr);
      if (this.isClosed()) {
        this.server.unregisterInCluster(addr);
        return false;
      }
    }
    this.addr = addr;
    this.pendingAddr = undefined;
    this.state = 'open';
    this.endHandshake();
    // Heartbeats count from here: a slow handshake (authentication, store, cluster) is not silence.
    this.lastFrameAt = this.server.clock.now();
    this.server.bind(this);
    const o = this.server.opts;
    this.send({
      t: 'welcome',
      v: this.version,
      u: addr.user,
      d: addr.device,
      hb: o.heartbeatMs,
      lim: { frame: o.maxFrameBytes, body: o.maxBodyBytes, window: o.maxPendingSends, dw: o.deliveryWindow },
    });
    this.server.ring(registered.notify);
    this.pump();
    void this.server.checkKeySupply(addr);
    return true;
  }

  private onGroup(f: GroupFrame): void {
    let change: GroupChange;
    switch (f.op) {
      case 'create':
        if (f.n === undefined) return this.sendError('invalid_frame', 'create needs a name', f.r);
        change = { op: 'create', name: f.n, members: f.m ?? [] };
        break;
      case 'rename':
        if (f.n === undefined) return this.sendError('invalid_frame', 'rename needs a name', f.r);
        change = { op: 'rename', name: f.n };
        break;
      case 'leave':
      case 'accept':
      case 'decline':
        change = { op: f.op };
        break;
      case 'invite':
        return this.sendError('invalid_frame', 'invite is an event; add the user instead', f.r);
      default:
        if (!f.m) return this.sendError('invalid_frame', `${f.op} needs members`, f.r);
        change = { op: f.op, members: f.m };
    }
    const input: GroupInput = {
      kind: 'group',
      from: this.addr!,
      id: f.id,
      group: f.g,
      change,
      maxMembers: this.server.opts.maxGroupMembers,
    };
    const refused = this.server.groupCapRefusal(input);
    // Not rate_limited: that is retried at once, and these windows last hours.
    if (refused) return this.sendError('quota_exceeded', refused, f.r);
    this.commit(f.r, input);
  }

  private commit(r: number, input: AppendInput): void {
    if (this.server.isClosing) {
      // Not committing means not acking; the client resends to the next server.
      this.close(CLOSE_CODES.goingAway, 'server shutting down');
      return;
    }
    if (this.pendingSends >= this.server.opts.maxPendingSends) {
      this.sendError('rate_limited', 'too many sends awaiting commit', r);
      this.close(CLOSE_CODES.rateLimited, 'too many pending sends');
      return;
    }
    this.pendingSends++;
    this.server.enqueueCommit({ session: this, input, r, consent: input.kind === 'group' });
  }

  private async onAck(offsets: number[]): Promise<void> {
    if (this.inflight) for (const o of offsets) this.inflight.delete(o);
    if (this.server.tracer.on) this.server.tracer.acked(this.addr!, offsets);
    try {
      const res = await this.server.store.ack(this.addr!, offsets, this.server.clock.now());
      this.server.metrics.acked(res.count);
      this.server.deliverWritten(res);
    } catch (e) {
      this.server.reportStoreFailure(e, [this]);
      return;
    }
    this.pump();
  }

  /**
   * Delivers a just-committed entry without a store read when this session has delivered
   * everything before it (its inbox was drained and the entry is the very next offset) and has
   * room. False when it could not: the caller rings instead.
   */
  offer(e: InboxEntry, encode?: (offset: number) => Uint8Array): boolean {
    if (this.state !== 'open' || !this.drained || this.reading || this.cursor !== e.offset - 1) return false;
    if ((this.inflight?.size ?? 0) >= this.server.opts.deliveryWindow) return false;
    if (this.conn.bufferedAmount > this.server.opts.sendHighWaterBytes) return false;
    this.cursor = e.offset;
    (this.inflight ??= new Set()).add(e.offset);
    if (encode) this.sendEncoded(encode(e.offset));
    else this.send(this.entryFrame(e));
    if (this.server.tracer.on) this.server.tracer.pushed(this.addr!, e);
    this.server.metrics.delivered(1);
    return true;
  }

  /** New entries landed in this device's inbox. */
  notify(): void {
    this.drained = false;
    this.pump();
  }

  /** Pulls the next entries of the inbox into the delivery window. Store is the truth; this is idempotent. */
  pump(): void {
    if (this.state !== 'open' || this.drained) return;
    if (this.reading) {
      this.dirty = true;
      return;
    }
    const room = this.server.opts.deliveryWindow - (this.inflight?.size ?? 0);
    if (room <= 0 || this.conn.bufferedAmount > this.server.opts.sendHighWaterBytes) return;
    this.reading = true;
    this.dirty = false;
    this.lastReadAt = this.server.clock.now();
    this.server.store.readInbox(this.addr!, this.cursor, room).then(
      (entries) => {
        this.reading = false;
        if (this.state !== 'open') return;
        let unsendable: number[] | undefined;
        for (const e of entries) {
          this.cursor = e.offset;
          if (
            e.kind === 'gap' &&
            this.version < (e.reason === 'inbox_full' ? INBOX_FULL_GAP_VERSION : GAP_FRAME_VERSION)
          ) {
            (unsendable ??= []).push(e.offset);
            continue;
          }
          (this.inflight ??= new Set()).add(e.offset);
          this.send(this.entryFrame(e));
          if (this.server.tracer.on) this.server.tracer.pushed(this.addr!, e);
        }
        if (entries.length > 0) this.server.metrics.delivered(entries.length - (unsendable?.length ?? 0));
        if (unsendable) void this.ackUnsendable(unsendable);
        if (this.dirty || entries.length === room) this.pump();
        else this.drained = true;
      },
      (e) => {
        this.reading = false;
        this.server.reportStoreFailure(e, [this]);
      },
    );
  }

  /**
   * Deletes entries this session's protocol version has no frame for (gap notices before version
   * 2, `inbox_full` ones before 3), as the device's ack would; the next read goes past them anyway.
   */
  private async ackUnsendable(offsets: number[]): Promise<void> {
    try {
      const res = await this.server.store.ack(this.addr!, offsets, this.server.clock.now());
      this.server.ring(res.notify);
    } catch (e) {
      this.server.reportStoreFailure(e, [this]);
    }
  }

  /** The frame this session sends for an inbox entry. */
  entryFrame(e: InboxEntry): ServerFrame {
    if (e.kind === 'gap') {
      const s = e.streams.map((g): GapFrame['s'][number] => [
        g.from.user,
        g.from.device,
        g.to,
        ...g.ranges.flat(),
      ]);
      return { t: 'gap', o: e.offset, why: WIRE_GAP_REASON[e.reason], s, ts: e.ts };
    }
    if (e.kind === 'status') {
      return { t: 'st', o: e.offset, s: WIRE_STATUS[e.status], ids: e.ids, by: e.by, ts: e.ts };
    }
    if (e.kind === 'group') {
      const ev = e.event;
      const f: GroupEventFrame = {
        t: 'gev',
        o: e.offset,
        g: ev.group,
        v: ev.ver,
        op: ev.op,
        by: ev.by,
        m: ev.members,
        ts: e.ts,
      };
      if (ev.name !== undefined) f.n = ev.name;
      if (ev.snapshot) f.s = ev.snapshot.map((m) => [m.user, m.role === 'admin' ? 1 : 0]);
      return f;
    }
    const f: MsgFrame = {
      t: 'msg',
      o: e.offset,
      id: e.id,
      f: e.from.user,
      fd: e.from.device,
      seq: e.seq,
      ts: e.ts,
      b: e.body,
    };
    if (e.group) {
      f.to = e.to;
      f.g = true;
    } else if (e.to !== this.addr!.user) f.to = e.to;
    return f;
  }
}

/**
 * Creates a server engine.
 * @example
 * const server = createServer({ store: memoryServerStore(), authenticate: verifyToken });
 * await server.listen(websocketServerTransport({ port: 8080 }));
 */
export function createServer(options: ServerOptions): PostboxServer {
  return new PostboxServer(options);
}
