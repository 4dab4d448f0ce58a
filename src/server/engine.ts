import { EventEmitter } from 'eventemitter3';
import {
  CLOSE_CODES,
  DEFAULT_MAX_FRAME_BYTES,
  MIN_PROTOCOL_VERSION,
  PROTOCOL_VERSION,
  PostboxError,
  decodeClientFrame,
  encodeFrame,
  isPostboxError,
  negotiateVersion,
  type ClientFrame,
  type ErrorCode,
  type HelloFrame,
  type MsgFrame,
  type ServerFrame,
} from '../protocol/index.js';
import type { Connection, ConnectionHandlers, ServerTransport } from '../transport/types.js';
import { systemClock, type Clock, type TimerHandle } from '../util/clock.js';
import type { AppendInput, DeviceAddress, InboxEntry, NotifyResult, ServerStore } from './store.js';

/** Who a connection is, as decided by the app's {@link Authenticate} hook. */
export interface AuthResult {
  user: string;
  device: string;
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
  /** A connection must complete `hello` within this. @default 10000 */
  helloTimeoutMs?: number;
  /** Undelivered entries older than this expire. @default 30 days */
  retentionMs?: number;
  /** How often expiry runs. @default 1 hour */
  expiryIntervalMs?: number;
  /** Largest frame accepted, checked before decoding. @default 262144 */
  maxFrameBytes?: number;
  /** Largest message body. @default 65536 */
  maxBodyBytes?: number;
  /** Unacked deliveries in flight per connection (flow control for slow links). @default 64 */
  deliveryWindow?: number;
  /** Sends waiting for commit per connection; more closes the connection with `rate_limited`. @default 256 */
  maxPendingSends?: number;
  /** Most items in one store append (one group commit). @default 512 */
  maxCommitBatch?: number;
  /** Frames per second a connection may send before it is closed with `rate_limited`. @default 2000 */
  maxFramesPerSecond?: number;
  /** Invalid frames a connection may send before it is closed. @default 8 */
  maxInvalidFrames?: number;
  /** Pause deliveries while the connection buffers more than this many bytes. @default 1 MiB */
  sendHighWaterBytes?: number;
  /** @default silent */
  logger?: Logger;
}

/** Events of {@link PostboxServer}. */
export interface ServerEvents {
  /** A device completed `hello`. */
  online: (device: DeviceAddress) => void;
  /** A device's session ended. */
  offline: (device: DeviceAddress, code: number) => void;
  /** A store failure; affected connections were closed so clients retry. */
  error: (error: unknown) => void;
}

interface PendingCommit {
  session: Session;
  input: AppendInput;
  r: number;
}

const keyOf = (a: DeviceAddress): string => `${a.user}\u0000${a.device}`;

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
    Omit<ServerOptions, 'store' | 'authenticate' | 'clock' | 'logger'>
  >;
  /** @internal */ readonly log: Logger;
  private readonly sessions = new Map<string, Session>();
  private readonly connections = new Set<Session>();
  private readonly transports: ServerTransport[] = [];
  private commitQueue: PendingCommit[] = [];
  private committing = false;
  private flushScheduled = false;
  private idleWaiters: Array<() => void> = [];
  private sweepTimer: TimerHandle | undefined;
  private expiryTimer: TimerHandle | undefined;
  private closing = false;

  constructor(options: ServerOptions) {
    super();
    this.store = options.store;
    this.authenticate = options.authenticate;
    this.clock = options.clock ?? systemClock;
    this.log = options.logger ?? silentLogger;
    this.opts = {
      heartbeatMs: options.heartbeatMs ?? 25_000,
      helloTimeoutMs: options.helloTimeoutMs ?? 10_000,
      retentionMs: options.retentionMs ?? 30 * 24 * 3600_000,
      expiryIntervalMs: options.expiryIntervalMs ?? 3600_000,
      maxFrameBytes: options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES,
      maxBodyBytes: options.maxBodyBytes ?? 64 * 1024,
      deliveryWindow: options.deliveryWindow ?? 64,
      maxPendingSends: options.maxPendingSends ?? 256,
      maxCommitBatch: options.maxCommitBatch ?? 512,
      maxFramesPerSecond: options.maxFramesPerSecond ?? 2000,
      maxInvalidFrames: options.maxInvalidFrames ?? 8,
      sendHighWaterBytes: options.sendHighWaterBytes ?? 1024 * 1024,
    };
    this.scheduleSweep();
    this.scheduleExpiry();
  }

  /** Number of open connections (authenticated or not). */
  get connectionCount(): number {
    return this.connections.size;
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
  }

  /**
   * Registers a device ahead of its first connection, so messages sent to its user before it
   * connects wait in its inbox. (A device is also registered when it first says `hello`.)
   */
  async registerDevice(user: string, device: string): Promise<void> {
    await this.store.registerDevice({ user, device }, this.clock.now());
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
   * connection with "going away" so clients reconnect. The store is left open for its owner.
   */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    this.clock.clearTimeout(this.sweepTimer);
    this.clock.clearTimeout(this.expiryTimer);
    await Promise.all(this.transports.map((t) => t.close()));
    await this.idle();
    for (const s of [...this.connections]) s.close(CLOSE_CODES.goingAway, 'server shutting down');
  }

  /** Resolves when no commit is queued or running. */
  idle(): Promise<void> {
    if (!this.committing && this.commitQueue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  // ------------------------------------------------------------ internals used by Session

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
    this.emit('online', session.addr!);
  }

  /** @internal */
  unbind(session: Session, code: number): void {
    this.connections.delete(session);
    this.commitQueue = this.commitQueue.filter((p) => p.session !== session);
    if (!session.addr) return;
    const key = keyOf(session.addr);
    if (this.sessions.get(key) === session) {
      this.sessions.delete(key);
      this.emit('offline', session.addr, code);
    }
  }

  /** @internal */
  enqueueCommit(p: PendingCommit): void {
    this.commitQueue.push(p);
    if (!this.flushScheduled && !this.committing) {
      this.flushScheduled = true;
      // A microtask lets every frame of the current I/O turn join the batch.
      queueMicrotask(() => {
        this.flushScheduled = false;
        void this.flush();
      });
    }
  }

  /** @internal */
  ring(devices: DeviceAddress[]): void {
    for (const d of devices) this.sessions.get(keyOf(d))?.notify();
  }

  /** @internal */
  reportStoreFailure(error: unknown, sessions: Iterable<Session>): void {
    this.log.error('store failure', error);
    if (this.listenerCount('error') > 0) this.emit('error', error);
    for (const s of sessions) s.close(CLOSE_CODES.internal, 'store unavailable');
  }

  private async flush(): Promise<void> {
    if (this.committing) return;
    this.committing = true;
    try {
      while (this.commitQueue.length > 0) {
        const batch = this.commitQueue.splice(0, this.opts.maxCommitBatch);
        let outcomes;
        try {
          outcomes = await this.store.append(
            batch.map((p) => p.input),
            this.clock.now(),
          );
        } catch (error) {
          // Answering an error here while later sends of the same connection commit would
          // break per-sender order; closing makes the client resend everything in order.
          this.reportStoreFailure(error, new Set(batch.map((p) => p.session)));
          continue;
        }
        const notify: DeviceAddress[] = [];
        for (let i = 0; i < batch.length; i++) {
          const p = batch[i]!;
          const out = outcomes[i]!;
          p.session.pendingSends--;
          if (out.ok) {
            p.session.send({ t: 'ok', r: p.r });
            for (const n of out.notify) notify.push(n);
          } else {
            p.session.sendError(out.code, 'recipient has no registered device', p.r);
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
  private state: 'hello' | 'authenticating' | 'open' | 'closed' = 'hello';
  pendingSends = 0;
  private lastFrameAt: number;
  private readonly openedAt: number;
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

  constructor(
    private readonly server: PostboxServer,
    readonly conn: Connection,
  ) {
    this.openedAt = this.lastFrameAt = this.rateWindowStart = server.clock.now();
    conn.setHandlers(new SessionHandlers(this));
  }

  send(frame: ServerFrame): void {
    if (this.state !== 'closed') this.conn.send(encodeFrame(frame));
  }

  sendError(code: ErrorCode, message: string, r?: number): void {
    const frame: ServerFrame = { t: 'err', c: code, m: message };
    if (r !== undefined) frame.r = r;
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
    if (this.state !== 'open') {
      // Not `unauthorized`: a slow link is no reason for the client to give up for good.
      if (now - this.openedAt > this.server.opts.helloTimeoutMs)
        this.close(CLOSE_CODES.heartbeatTimeout, 'no hello in time');
      return;
    }
    if (now - this.lastFrameAt > this.server.opts.heartbeatMs * 2) {
      this.close(CLOSE_CODES.heartbeatTimeout, 'heartbeat timeout');
    }
  }

  /** @internal the connection closed. */
  onClosed(code: number): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
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
    if (++this.rateCount > this.server.opts.maxFramesPerSecond) {
      this.sendError('rate_limited', 'too many frames per second');
      this.close(CLOSE_CODES.rateLimited, 'rate limited');
      return;
    }
    let frame: ClientFrame;
    try {
      frame = decodeClientFrame(data, this.server.opts.maxFrameBytes);
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
      else {
        this.sendError('unauthorized', 'say hello first');
        this.close(CLOSE_CODES.unauthorized, 'no hello');
      }
      return;
    }
    switch (frame.t) {
      case 'send': {
        if (frame.b.byteLength > this.server.opts.maxBodyBytes) {
          this.sendError('too_large', `body over ${this.server.opts.maxBodyBytes} bytes`, frame.r);
          return;
        }
        this.commit(frame.r, {
          kind: 'msg',
          from: this.addr!,
          id: frame.id,
          to: frame.to,
          seq: frame.seq,
          body: frame.b,
        });
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
    if (
      !auth ||
      typeof auth.user !== 'string' ||
      typeof auth.device !== 'string' ||
      !auth.user ||
      !auth.device
    ) {
      this.sendError('unauthorized', 'credentials rejected');
      this.close(CLOSE_CODES.unauthorized, 'unauthorized');
      return;
    }
    const addr = { user: auth.user, device: auth.device };
    try {
      await this.server.store.registerDevice(addr, this.server.clock.now());
    } catch (e) {
      this.server.reportStoreFailure(e, [this]);
      return;
    }
    if (this.isClosed()) return;
    this.addr = addr;
    this.state = 'open';
    this.server.bind(this);
    const o = this.server.opts;
    this.send({
      t: 'welcome',
      v: version,
      u: addr.user,
      d: addr.device,
      hb: o.heartbeatMs,
      lim: { frame: o.maxFrameBytes, body: o.maxBodyBytes, window: o.maxPendingSends },
    });
    this.pump();
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
    this.server.enqueueCommit({ session: this, input, r });
  }

  private async onAck(offsets: number[]): Promise<void> {
    if (this.inflight) for (const o of offsets) this.inflight.delete(o);
    try {
      const res = await this.server.store.ack(this.addr!, offsets, this.server.clock.now());
      this.server.ring(res.notify);
    } catch (e) {
      this.server.reportStoreFailure(e, [this]);
      return;
    }
    this.pump();
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
    this.server.store.readInbox(this.addr!, this.cursor, room).then(
      (entries) => {
        this.reading = false;
        if (this.state !== 'open') return;
        for (const e of entries) {
          this.cursor = e.offset;
          (this.inflight ??= new Set()).add(e.offset);
          this.send(this.entryFrame(e));
        }
        if (this.dirty || entries.length === room) this.pump();
        else this.drained = true;
      },
      (e) => {
        this.reading = false;
        this.server.reportStoreFailure(e, [this]);
      },
    );
  }

  private entryFrame(e: InboxEntry): ServerFrame {
    if (e.kind === 'status') {
      return { t: 'st', o: e.offset, s: WIRE_STATUS[e.status], ids: e.ids, by: e.by, ts: e.ts };
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
    if (e.to !== this.addr!.user) f.to = e.to;
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
