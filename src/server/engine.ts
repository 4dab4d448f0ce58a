import { EventEmitter } from 'eventemitter3';
import {
  CLOSE_CODES,
  assertDeviceId,
  assertUserId,
  PostboxError,
  encodeAtOffset,
  encodeFrame,
  isPostboxError,
  type ClientFrame,
  type ErrorCode,
  type KeyGetFrame,
  type KeysFrame,
  type PushTokenFrame,
  type HelloFrame,
  type TypingFrame,
} from '../protocol/index.js';
import type { Connection, ServerTransport } from '../transport/types.js';
import { systemClock, type Clock, type TimerHandle } from '../util/clock.js';
import { performance } from 'node:perf_hooks';
import { deviceKey } from './cluster/common.js';
import type { ClusterAdapter, PresenceEvent, TypingNotice, Unsubscribe } from './cluster/types.js';
import { BoundedMap, Limits } from './limits.js';
import { RateLimitedLog } from './client-log.js';
import { FairCommitQueue, FanoutEstimate, SERVER_SIDE, yieldToEventLoop } from './commit-batch.js';
import { CostBudgets, DEFAULT_COST_BUDGETS, frameCost } from './costs.js';
import { applyConsent, GroupCaps } from './group-consent.js';
import { memoryTraceStore, Tracer, type TraceEvent } from './trace.js';
import { StoreHealthMonitor, type StoreHealth } from './health.js';
import { noMetrics, type ServerMetrics } from './metrics.js';
import { assertAddress, assertGroupChange } from './identity.js';
import type { PushProvider, PushToken } from './push/types.js';
import { isPendingDevice } from './users.js';
import { KeyWaiters } from './key-waiters.js';
import {
  resolveConfig,
  silentLogger,
  type AuthResult,
  type Authenticate,
  type EngineConfig,
  type Logger,
  type PresencePolicy,
  type PresenceVisibility,
  type ServerEvents,
  type ServerOptions,
} from './options.js';
import { Session } from './session.js';
import type { ServiceFrame, SessionHost } from './session-host.js';
import {
  REFUSAL_TEXT,
  committedMsgFrame,
  keyBundlesFrame,
  keyUpload,
  presenceFrame,
  typingFrame,
  wireDifference,
} from './wire.js';
import type {
  AppendInput,
  DeviceAddress,
  GroupChange,
  GroupInput,
  KeyBundle,
  MessageInput,
  NotifyResult,
  ServerStore,
} from './store.js';

export type {
  AuthResult,
  Authenticate,
  Logger,
  PresencePolicy,
  PresenceVisibility,
  ServerEvents,
  ServerOptions,
} from './options.js';

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

/**
 * The embeddable server engine. Hand it connections with {@link PostboxServer.accept} or a
 * transport with {@link PostboxServer.listen}. All durable state lives in the store; the engine
 * keeps only sessions and hints, so a new engine over the same store carries on after a crash.
 */
export class PostboxServer extends EventEmitter<ServerEvents> {
  readonly store: ServerStore;
  private readonly authenticate: Authenticate;
  /** @internal */ readonly clock: Clock;
  /** @internal */ readonly opts: EngineConfig;
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

  /** What this server's sessions may ask of it. */
  private readonly host: SessionHost;

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
    this.opts = resolveConfig(options);
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
    this.host = this.sessionHost();
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
    const session = new Session(this.host, connection);
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

  // ------------------------------------------------------------ what a session may ask

  /** The one object through which sessions reach the server (see session-host.ts). */
  private sessionHost(): SessionHost {
    // eslint-disable-next-line @typescript-eslint/no-this-alias -- `closing` is read live
    const server = this;
    return {
      clock: this.clock,
      config: this.opts,
      metrics: this.metrics,
      tracer: this.tracer,
      log: this.log,
      store: this.store,
      get closing() {
        return server.closing;
      },
      enterHandshake: () => {
        if (this.handshakes >= this.opts.maxConcurrentHandshakes) return false;
        this.handshakes++;
        return true;
      },
      leaveHandshake: () => {
        this.handshakes--;
      },
      authenticate: (hello, remoteAddress) => this.authenticateHello(hello, remoteAddress),
      inDebt: (addr, now) => this.budgets.inDebt(addr.user, addr.device, now),
      needsApproval: (addr) => this.needsApproval(addr),
      startLink: (session) => this.startLink(session),
      registerInCluster: (addr) => (this.cluster ? this.registerInCluster(addr) : undefined),
      unregisterInCluster: (addr) => this.unregisterInCluster(addr),
      bind: (session) => this.bind(session),
      unbind: (session, code) => this.unbind(session, code),
      frameAllowed: (addr, now) => this.limits.frame(addr.user, addr.device, now),
      afford: (session, frame, now) => this.afford(session, frame, now),
      groupCapRefusal: (input) => this.groupCapRefusal(input),
      commit: (session, r, input) =>
        this.enqueueCommit({ session, input, r, consent: input.kind === 'group' }),
      serve: (session, frame, now) => this.serve(session, frame, now),
      deliverWritten: (res) => this.deliverWritten(res),
      ring: (devices) => this.ring(devices),
      checkKeySupply: (addr) => this.checkKeySupply(addr),
      storeFailed: (error, session) => this.reportStoreFailure(error, [session]),
    };
  }

  /** A frame a session hands over as it comes: to the part of the server that serves it. */
  private serve(session: Session, frame: ServiceFrame, now: number): void {
    switch (frame.t) {
      case 'keys':
        void this.putKeys(session, frame);
        return;
      case 'ptok':
        void this.setPushToken(session, frame);
        return;
      case 'kget':
        void this.claimKeys(session, frame);
        return;
      case 'lnk':
        void this.approveLink(session, frame.r, frame.code);
        return;
      case 'unl':
        void this.unlinkFromSession(session, frame.r, frame.d);
        return;
      case 'sub':
        void this.subscribe(session, frame.r, frame.u);
        return;
      case 'unsub':
        this.unsubscribe(session, frame.u);
        return;
      case 'typ': {
        const verdict = this.limits.typing(session.addr!.user, now);
        if (verdict !== 'ok') {
          // Dropped, not fatal: typing is ephemeral and a flood only costs the flooder.
          if (verdict === 'first-over') session.sendError('rate_limited', 'too many typing notices');
          return;
        }
        // Ephemeral: a store that cannot say who is in the group drops the notice, nothing more.
        this.typing(session, frame).catch((e) =>
          this.clientLog.warn(session.addr!.user, 'typing notice dropped', e),
        );
        return;
      }
    }
  }

  private async authenticateHello(
    hello: HelloFrame,
    remoteAddress: string | undefined,
  ): Promise<AuthResult | null> {
    const ctx: { device?: string; remoteAddress?: string } = {};
    if (hello.dev !== undefined) ctx.device = hello.dev;
    if (remoteAddress !== undefined) ctx.remoteAddress = remoteAddress;
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
    const frame = typingFrame(n);
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
      s.send(presenceFrame(user, online, showLastSeen ? lastSeen : undefined));
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
    session.send(presenceFrame(target, online, lastSeen));
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
    const upload = keyUpload(f);
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
    session.send(keyBundlesFrame(f, bundles, keyless));
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
    if (verdict === 'ok') return true;
    const r = 'r' in frame ? frame.r : undefined;
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
    // A group entry reads the same on every device but for its offset: packed once.
    let encode: ((offset: number) => Uint8Array) | undefined;
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
      const offset = offsets[i]!;
      if (!s.canTake(offset)) {
        ring.push(d);
        continue;
      }
      let data: Uint8Array;
      if (input.group)
        data = (encode ??= encodeAtOffset(committedMsgFrame(input, ts, 0, input.body, d.user)))(offset);
      else
        data = encodeFrame(committedMsgFrame(input, ts, offset, bodies?.get(keyOf(d)) ?? input.body, d.user));
      s.take(offset, data);
      if (this.tracer.on) this.tracer.pushedMessage(d, input.id, offset);
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

/**
 * Creates a server engine.
 * @example
 * const server = createServer({ store: memoryServerStore(), authenticate: verifyToken });
 * await server.listen(websocketServerTransport({ port: 8080 }));
 */
export function createServer(options: ServerOptions): PostboxServer {
  return new PostboxServer(options);
}
