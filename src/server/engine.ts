/**
 * The server engine's façade: {@link PostboxServer} takes the options, builds the engine's parts
 * and wires them together, opens a {@link Session} per connection, and offers the app's API
 * (admin calls, lifecycle, events). The parts:
 * - session.ts: one connection (handshake, frame checks, delivery window), behind
 *   session-host.ts, the one interface of what a session may ask of the server;
 * - wire.ts: frames to domain inputs, entries to frames;
 * - commit.ts: the commit queue and its batches; routing.ts: sessions by device and the ways to
 *   reach one (push down, ring, doorbell, wake);
 * - presence.ts, typing.ts, linking.ts, key-directory.ts, push-wake.ts: the other services.
 * See docs/engines.md, "Server engine", for the module map.
 *
 * Longer than 500 lines for its public surface: the app's API with its documentation is half the
 * file, and the wiring of the parts is most of the rest; no delivery logic lives here.
 * @packageDocumentation
 */
import { EventEmitter } from 'eventemitter3';
import {
  CLOSE_CODES,
  PostboxError,
  assertDeviceId,
  assertUserId,
  peekClientRequestId,
  type ClientFrame,
  type HelloFrame,
} from '../protocol/index.js';
import type { Connection, ServerTransport } from '../transport/types.js';
import { systemClock, type Clock, type TimerHandle } from '../util/clock.js';
import { RateLimitedLog } from './client-log.js';
import type { ClusterAdapter, Unsubscribe } from './cluster/types.js';
import { FanoutEstimate } from './commit-batch.js';
import { Committer } from './commit.js';
import { addressKey as deviceKey } from './address.js';
import { CostBudgets, DEFAULT_COST_BUDGETS, frameCost, type CostVerdict } from './costs.js';
import { GroupCaps } from './group-consent.js';
import { StoreHealthMonitor, type StoreHealth } from './health.js';
import { assertAddress, assertGroupChange } from './identity.js';
import { KeyDirectory } from './key-directory.js';
import { Limits } from './limits.js';
import { Linking } from './linking.js';
import { noMetrics, type ServerMetrics } from './metrics.js';
import {
  resolveConfig,
  silentLogger,
  type AuthResult,
  type Authenticate,
  type EngineConfig,
  type Logger,
  type PresencePolicy,
  type ServerEvents,
  type ServerOptions,
} from './options.js';
import { Presence } from './presence.js';
import { PushWake } from './push-wake.js';
import { Router } from './routing.js';
import type { ServiceFrame, SessionHost } from './session-host.js';
import { Session } from './session.js';
import type { DeviceAddress, GroupChange, NotifyResult, ServerStore } from './store.js';
import { memoryTraceStore, Tracer, type TraceEvent } from './trace.js';
import { Typing } from './typing.js';

export type {
  AuthResult,
  Authenticate,
  Logger,
  PresencePolicy,
  PresenceVisibility,
  ServerEvents,
  ServerOptions,
} from './options.js';

/** How long {@link PostboxServer.close} waits for the cluster to take this node's leave. */
const CLUSTER_CLOSE_WAIT_MS = 5000;

/** The presence policy an option names. */
function presencePolicy(p: ServerOptions['presence'] = 'contacts'): PresencePolicy {
  if (typeof p === 'function') return p;
  if (p === 'everyone') return () => true;
  if (p === 'nobody') return () => false;
  return (viewer, target, store) => store.related(viewer, target);
}

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
  /** @internal */ readonly log: Logger;
  /** @internal */ readonly metrics: ServerMetrics;
  /** @internal */ readonly tracer: Tracer;
  /** Every open connection, authenticated or not. */
  private readonly connections = new Set<Session>();
  private readonly transports: ServerTransport[] = [];
  private sweepTimer: TimerHandle | undefined;
  private expiryTimer: TimerHandle | undefined;
  private closing = false;
  /** Handshakes in progress. */
  private handshakes = 0;
  /** The gateway cluster this node belongs to, if any. */
  private readonly cluster: ClusterAdapter | undefined;
  private readonly clusterHandlers: Unsubscribe[] = [];
  /** Cluster calls in flight that {@link close} waits for (unregistrations, presence checks). */
  private readonly clusterOps = new Set<Promise<unknown>>();
  /** Client-caused warnings, a few lines per device or user per minute. */
  private readonly clientLog: RateLimitedLog;
  /** The per-user and per-device limits (see limits.ts). */
  private readonly limits: Limits;
  /** The per-device and per-user cost budgets (see costs.ts). */
  private readonly budgets: CostBudgets;
  /** How many inbox rows each queued item is expected to write. */
  private readonly fanout: FanoutEstimate;
  private readonly health: StoreHealthMonitor;
  // The parts.
  private readonly router: Router;
  private readonly commits: Committer;
  private readonly presence: Presence;
  private readonly typing: Typing;
  private readonly linking: Linking;
  private readonly keys: KeyDirectory;
  private readonly push: PushWake;
  /** What this server's sessions may ask of it. */
  private readonly host: SessionHost<Session>;

  constructor(options: ServerOptions) {
    super();
    const store = (this.store = options.store);
    this.authenticate = options.authenticate;
    const clock = (this.clock = options.clock ?? systemClock);
    const log = (this.log = options.logger ?? silentLogger);
    this.tracer = new Tracer(
      options.trace === false ? undefined : (options.trace ?? memoryTraceStore()),
      clock,
      options.traceLog ? (msg, e) => log.debug(msg, e) : undefined,
      () => this.cluster?.nodeId,
    );
    const config = (this.opts = resolveConfig(options));
    this.limits = new Limits(config);
    this.clientLog = new RateLimitedLog(log, () => clock.now());
    this.budgets = new CostBudgets(options.costBudgets ?? DEFAULT_COST_BUDGETS);
    // Devices per member: a user has a few; assume 2 for a group not committed to yet.
    this.fanout = new FanoutEstimate(2 * config.maxGroupMembers);
    this.health = new StoreHealthMonitor({
      store,
      clock,
      log,
      probeMs: config.storeProbeMs,
      changed: (h) => this.emit('storeHealth', h),
    });
    const cluster = (this.cluster = options.cluster);
    const metrics = (this.metrics = options.metrics ?? noMetrics);
    const clusterOp = (what: string, op: () => Promise<void>) => this.clusterOp(what, op);
    const storeFailed = (e: unknown, sessions: Iterable<Session>) => this.reportStoreFailure(e, sessions);
    this.push = new PushWake({
      store,
      clock,
      log,
      metrics,
      provider: options.push,
      intervalMs: config.pushIntervalMs,
      connected: (key) => this.router.sessions.has(key),
    });
    const router = (this.router = new Router({
      metrics,
      tracer: this.tracer,
      log,
      cluster,
      push: this.push,
      carryPerDevice: config.deliveryWindow,
    }));
    const ring = (devices: DeviceAddress[]) => router.ring(devices);
    this.typing = new Typing({
      store,
      clock,
      log,
      clientLog: this.clientLog,
      limits: this.limits,
      cluster,
      sessionsOf: (user) => router.userSessions.get(user),
    });
    this.commits = new Committer({
      store,
      clock,
      config,
      metrics,
      tracer: this.tracer,
      fanout: this.fanout,
      groupCaps: new GroupCaps(config, store),
      health: this.health,
      router,
      groupChanged: (group) => this.typing.forgetGroup(group),
      storeFailed,
    });
    this.presence = new Presence({
      store,
      clock,
      log,
      config,
      policy: presencePolicy(options.presence),
      cluster,
      clusterOp,
      connected: (addr) => router.session(addr) !== undefined,
      announced: (user, online, lastSeen) => this.emit('presence', user, online, lastSeen),
    });
    this.linking = new Linking({
      store,
      clock,
      log,
      config,
      cluster,
      clusterOp,
      ring,
      linked: (device, by) => this.emit('linked', device, by),
      unlinkDevice: (user, device) => this.unlinkDevice(user, device),
      storeFailed,
    });
    this.keys = new KeyDirectory({
      store,
      clock,
      log,
      clientLog: this.clientLog,
      limits: this.limits,
      keyLowWater: config.keyLowWater,
      session: (key) => router.sessions.get(key),
    });
    if (cluster) this.joinCluster(cluster);
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
    return [...this.router.sessions.values()].map((s) => s.addr!);
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
    this.router.ring(res.notify);
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
    for (const a of addrs) this.router.session(a)?.close(CLOSE_CODES.unlinked, 'device unlinked');
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
      this.commits.enqueue({
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
    return this.presence.isOnline(user);
  }

  /** Runs expiry now (it also runs every `expiryIntervalMs`). */
  async expireNow(): Promise<NotifyResult> {
    const now = this.clock.now();
    const result = await this.store.expire(now - this.opts.retentionMs, now);
    this.router.ring(result.notify);
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
    this.presence.stopTimers();
    if (this.cluster) {
      // Unregister every device, then announce now the users who left with this node (their
      // clients reconnect elsewhere and are announced online again there). A backend that does
      // not answer holds the shutdown for a few seconds at most: the TTL cleans up after it.
      const deadline = this.clock.now() + CLUSTER_CLOSE_WAIT_MS;
      while (this.clusterOps.size > 0 && this.clock.now() < deadline)
        await this.settledBy(deadline, [...this.clusterOps]);
      const checks = this.presence.takeOfflineChecks();
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
    return this.commits.idle();
  }

  // ------------------------------------------------------------ what a session may ask

  /** The one object through which sessions reach the server (see session-host.ts). */
  private sessionHost(): SessionHost<Session> {
    // eslint-disable-next-line @typescript-eslint/no-this-alias -- `closing` is read live
    const server = this;
    const { router, commits, keys, linking, presence } = this;
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
      needsApproval: (addr) => linking.needsApproval(addr),
      startLink: (session) => linking.start(session),
      registerInCluster: (addr) => (this.cluster ? presence.registerInCluster(addr) : undefined),
      unregisterInCluster: (addr) => presence.unregisterInCluster(addr),
      bind: (session) => this.bind(session),
      unbind: (session, code) => this.unbind(session, code),
      frameAllowed: (addr, now) => this.limits.frame(addr.user, addr.device, now),
      afford: (session, frame, now) => this.afford(session, frame, now),
      affordBytes: (session, data, now) => this.affordBytes(session, data, now),
      commit: (session, r, input) => commits.enqueue({ session, input, r, consent: input.kind === 'group' }),
      serve: (session, frame, now) => this.serve(session, frame, now),
      deliverWritten: (res) => router.deliverWritten(res),
      ring: (devices) => router.ring(devices),
      checkKeySupply: (addr) => keys.checkSupply(addr),
      storeFailed: (error, session) => this.reportStoreFailure(error, [session]),
    };
  }

  /** A frame a session hands over as it comes: to the part of the server that serves it. */
  private serve(session: Session, frame: ServiceFrame, now: number): void {
    switch (frame.t) {
      case 'keys':
        void this.keys.put(session, frame);
        return;
      case 'ptok':
        void this.push.setToken(session, frame);
        return;
      case 'kget':
        void this.keys.claim(session, frame);
        return;
      case 'lnk':
        void this.linking.approve(session, frame.r, frame.code);
        return;
      case 'unl':
        void this.linking.unlink(session, frame.r, frame.d);
        return;
      case 'sub':
        void this.presence.subscribe(session, frame.r, frame.u);
        return;
      case 'unsub':
        this.presence.unsubscribe(session, frame.u);
        return;
      case 'typ':
        this.typing.onFrame(session, frame, now);
        return;
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

  /** A session opened: the device's session from now on, replacing an older one here. */
  private bind(session: Session): void {
    const { sessions, userSessions } = this.router;
    const addr = session.addr!;
    const key = deviceKey(addr);
    const old = sessions.get(key);
    if (old && old !== session) old.close(CLOSE_CODES.replaced, 'replaced by a newer connection');
    sessions.set(key, session);
    let mine = userSessions.get(addr.user);
    if (!mine) userSessions.set(addr.user, (mine = new Set()));
    mine.add(session);
    this.emit('online', addr);
    // With a cluster, presence follows the cluster's registry (see registerInCluster).
    if (!this.cluster) this.presence.up(addr.user);
  }

  /** A session closed: forgotten everywhere it was known. */
  private unbind(session: Session, code: number): void {
    if (this.connections.delete(session)) this.metrics.connection(-1);
    this.commits.drop(session);
    this.linking.forget(session);
    this.presence.dropSession(session);
    const addr = session.addr;
    if (!addr) return;
    const { sessions, userSessions } = this.router;
    const key = deviceKey(addr);
    if (sessions.get(key) === session) {
      sessions.delete(key);
      const mine = userSessions.get(addr.user);
      mine?.delete(session);
      if (mine?.size === 0) userSessions.delete(addr.user);
      this.emit('offline', addr, code);
      if (this.cluster) this.presence.unregisterInCluster(addr);
      else this.presence.down(addr.user);
    }
  }

  /**
   * Charges a frame of an open session to its device's and user's budgets (see costs.ts): false
   * when it must not run (refused with `rate_limited`, or the session closed).
   */
  private afford(session: Session, frame: ClientFrame, now: number): boolean {
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
   * Charges a frame's size to the budgets before it is decoded (costs.ts): false when it must not
   * be decoded at all (a device in debt, or one that cannot pay for the bytes). Its request id is
   * read from the bytes so that the refusal is still answered.
   */
  private affordBytes(session: Session, data: Uint8Array, now: number): boolean {
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
   * A store call failed: the store counts as failing (logged once per outage), and the sessions
   * it concerned are closed with 1013 (try again later), unanswered: their clients back off,
   * reconnect (to another gateway of their list) and resend everything unacked in order.
   */
  private reportStoreFailure(error: unknown, sessions: Iterable<Session>): void {
    this.health.failed(error);
    if (this.listenerCount('error') > 0) this.emit('error', error);
    for (const s of sessions) s.close(CLOSE_CODES.tryAgainLater, 'store unavailable');
  }

  // ------------------------------------------------------------ cluster

  /** Hooks this node's sessions to the cluster's doorbells, take-overs, presence and typing. */
  private joinCluster(c: ClusterAdapter): void {
    const router = this.router;
    this.clusterHandlers.push(
      c.onDoorbell((devices, entries) => router.doorbell(devices, entries)),
      c.onReplaced((devices) => {
        for (const d of devices)
          router.session(d)?.close(CLOSE_CODES.replaced, 'replaced by a newer connection');
      }),
      c.onPresence((e) => this.presence.onClusterEvent(e)),
      c.onTyping((users, notice) => this.typing.deliver(users, notice)),
      c.onClose((devices, code) => {
        for (const d of devices) router.session(d)?.close(code, 'closed by the cluster');
      }),
      c.onLinkApproved((code) => this.linking.approvedElsewhere(code)),
    );
  }

  /** Runs a cluster call that {@link close} must wait for; its failure is logged, not thrown. */
  private clusterOp(what: string, op: () => Promise<void>): Promise<void> {
    const p = op().catch((e) => this.log.warn(`cluster ${what} failed`, e));
    this.clusterOps.add(p);
    void p.finally(() => this.clusterOps.delete(p));
    return p;
  }

  // ------------------------------------------------------------ timers

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
