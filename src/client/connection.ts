/**
 * The connection lifecycle as an explicit state machine: the transition table below, one
 * `setState` that enforces it and emits `connection` (with the previous state), the handshake,
 * heartbeats, and the waits between attempts (reconnect.ts). A link's generation starts and ends
 * here; every other part checks it through `ClientContext.live`.
 * @packageDocumentation
 */
import {
  CLOSE_CODES,
  DEFAULT_MAX_FRAME_BYTES,
  MIN_PROTOCOL_VERSION,
  PROTOCOL_VERSION,
  PostboxError,
  decodeServerFrame,
  isPostboxError,
  type ClientFrame,
  type ServerFrame,
  type WelcomeFrame,
} from '../protocol/index.js';
import type { ClientTransport, Connection as Link } from '../transport/types.js';
import type { TimerHandle } from '../util/clock.js';
import type { ClientContext } from './context.js';
import { saveIdentity } from './history.js';
import { Reconnector } from './reconnect.js';
import type { ClientOptions, ConnectionState } from './types.js';

/**
 * Every allowed transition; `setState` ignores any other (as it always ignored a repeat of the
 * current state). `closed` is left only by the app's `start()`.
 *
 * | from        | to                                                              |
 * |-------------|-----------------------------------------------------------------|
 * | idle        | connecting (start), closed (close)                              |
 * | connecting  | handshaking (transport connected), backoff (failed), closed     |
 * | handshaking | linking (`lcode`), open (`welcome`), backoff, closed            |
 * | linking     | open (approved: `welcome`), backoff, closed                     |
 * | open        | backoff (lost, dropped), closed (close, or refused for good)    |
 * | backoff     | connecting (wait over, or reconnectNow), closed                 |
 * | closed      | connecting (start)                                              |
 */
export const TRANSITIONS: Readonly<Record<ConnectionState, readonly ConnectionState[]>> = {
  idle: ['connecting', 'closed'],
  connecting: ['handshaking', 'backoff', 'closed'],
  handshaking: ['linking', 'open', 'backoff', 'closed'],
  linking: ['open', 'backoff', 'closed'],
  open: ['backoff', 'closed'],
  backoff: ['connecting', 'closed'],
  closed: ['connecting'],
};

/** What the connection part asks of the rest of the engine. */
export interface ConnectionHooks {
  /** Reloads what the store holds (outbox, held messages, pins, group views) before connecting. */
  load(): Promise<void>;
  /** A decoded frame that is not about the connection itself. */
  frame(frame: ServerFrame): void;
  /** The transport can take more. */
  drain(): void;
  /** The server accepted the session: parts read its limits (before `open` is emitted). */
  welcome(w: WelcomeFrame): void;
  /** The connection is open (after `open` was emitted). */
  opened(): void;
  /** The link was lost or dropped (not closed by the app): parts end what was bound to it. */
  lost(): void;
  /** The app closed the client: parts stop their timers and end this run's promises. */
  closed(): void;
}

/** The connection part of one client. */
export class ConnectionPart {
  /** The error of the last failed attempt or close, until the connection opens (see `connected`). */
  lastError: PostboxError | undefined;
  /** The waits between connection attempts, and the app's hurrying of them. */
  readonly reconnects: Reconnector;
  private heartbeatTimer: TimerHandle | undefined;
  private handshakeTimer: TimerHandle | undefined;
  private heartbeatMs = 25_000;
  private lastReceivedAt = 0;

  constructor(
    private readonly ctx: ClientContext,
    private readonly transport: ClientTransport,
    private readonly credentials: ClientOptions['credentials'],
    private readonly deviceHint: string | undefined,
    backoff: { baseMs: number; maxMs: number },
    private readonly hooks: ConnectionHooks,
  ) {
    this.reconnects = new Reconnector(ctx.clock, ctx.random, backoff.baseMs, backoff.maxMs, () => {
      if (ctx.state !== 'backoff') return;
      this.setState('connecting');
      void this.connect();
    });
    ctx.drop = (reason) => this.drop(reason);
  }

  /**
   * The one writer of the state: applies a transition of {@link TRANSITIONS} (others are
   * ignored) and emits `connection` with the error that caused it and the previous state.
   */
  setState(state: ConnectionState, error?: PostboxError): void {
    const previous = this.ctx.state;
    if (!TRANSITIONS[previous].includes(state)) return;
    this.ctx.state = state;
    // Kept for `connected()`: why the client is not open (an app's close has no error).
    if (state === 'open' || state === 'closed') this.lastError = error;
    else if (error) this.lastError = error;
    this.ctx.emit('connection', state, error, previous);
  }

  /** Starts connecting (from idle or closed: the waits start again from the shortest). */
  start(): void {
    this.reconnects.restart();
    this.setState('connecting');
    void this.connect();
  }

  /** Closes the link for good (until `start`). */
  close(): void {
    this.setState('closed');
    this.reconnects.cancel();
    this.stopTimers();
    this.hooks.closed();
    const conn = this.ctx.conn;
    this.ctx.conn = undefined;
    this.ctx.generation++;
    conn?.close(CLOSE_CODES.normal, 'client closed');
  }

  private async connect(): Promise<void> {
    const ctx = this.ctx;
    const gen = ++ctx.generation;
    let conn: Link;
    try {
      // The store is the truth: every connection starts from what it holds, which also heals
      // the in-memory queue after a store failure.
      await ctx.serial(() => this.hooks.load());
      if (!ctx.live(gen)) return;
      conn = await this.transport.connect();
    } catch (e) {
      if (!ctx.live(gen)) return;
      // A setup that cannot work (no WebSocket at all) stops here rather than retrying forever.
      if (isPostboxError(e) && e.code === 'misconfigured') return this.setState('closed', e);
      // The transport's own words, not only in `cause`: "ECONNREFUSED", "no connection within…".
      const why = `connect failed: ${e instanceof Error ? e.message : String(e)}`;
      this.scheduleReconnect(new PostboxError('disconnected', why, { cause: e }));
      return;
    }
    if (!ctx.live(gen) || ctx.state === 'closed') {
      conn.close(CLOSE_CODES.normal, 'stale');
      return;
    }
    ctx.conn = conn;
    conn.setHandlers({
      frame: (data) => {
        if (ctx.live(gen)) this.onFrame(data);
      },
      close: (code, reason) => {
        if (ctx.live(gen)) this.onClose(code, reason);
      },
      drain: () => {
        if (ctx.live(gen)) this.hooks.drain();
      },
    });
    this.setState('handshaking');
    this.lastReceivedAt = ctx.clock.now();
    this.handshakeTimer = ctx.clock.setTimeout(() => {
      if (ctx.live(gen) && ctx.state === 'handshaking') this.drop('handshake timeout');
    }, ctx.opts.handshakeTimeoutMs);
    let cred: unknown;
    try {
      cred =
        typeof this.credentials === 'function'
          ? await (this.credentials as () => unknown)()
          : this.credentials;
    } catch (e) {
      ctx.emit('error', e);
      this.drop('credentials failed');
      return;
    }
    if (!ctx.live(gen)) return;
    const hello: ClientFrame = { t: 'hello', v: [MIN_PROTOCOL_VERSION, PROTOCOL_VERSION], cred };
    if (this.deviceHint !== undefined) hello.dev = this.deviceHint;
    ctx.write(hello);
  }

  /** Drops the current connection (e.g. found dead) and reconnects after a backoff. */
  drop(reason: string): void {
    const conn = this.ctx.conn;
    this.onClose(CLOSE_CODES.abnormal, reason);
    conn?.close(CLOSE_CODES.normal, reason);
  }

  private onClose(code: number, reason: string): void {
    this.ctx.generation++;
    this.ctx.conn = undefined;
    this.stopTimers();
    this.hooks.lost();
    if (this.ctx.state === 'closed') return;
    const fatal = fatalClose(code, typeof this.credentials === 'function');
    if (fatal) {
      this.setState('closed', new PostboxError(fatal, `connection closed: ${reason || code}`));
      return;
    }
    // 1013: the server cannot serve now (overloaded, or its store is away); 4008: this client read
    // too slowly for the server's queues. Still retried, but after a wait the app cannot cut short.
    const busy = code === CLOSE_CODES.tryAgainLater || code === CLOSE_CODES.slowReader;
    const why = busy ? 'unavailable' : 'disconnected';
    this.scheduleReconnect(new PostboxError(why, `connection closed: ${reason || code}`), busy);
  }

  private scheduleReconnect(error: PostboxError, busy = false): void {
    if (this.ctx.state === 'closed') return;
    this.setState('backoff', error);
    this.reconnects.wait(busy);
  }

  private stopTimers(): void {
    this.ctx.clock.clearTimeout(this.heartbeatTimer);
    this.ctx.clock.clearTimeout(this.handshakeTimer);
    this.heartbeatTimer = this.handshakeTimer = undefined;
  }

  private scheduleHeartbeat(): void {
    const ctx = this.ctx;
    const gen = ctx.generation;
    this.heartbeatTimer = ctx.clock.setTimeout(
      () => {
        if (!ctx.live(gen) || ctx.state !== 'open') return;
        const now = ctx.clock.now();
        if (now - this.lastReceivedAt > this.heartbeatMs * 2) {
          this.drop('heartbeat timeout');
          return;
        }
        const half = this.heartbeatMs / 2;
        if (now - ctx.lastSentAt >= half || now - this.lastReceivedAt >= half) ctx.write({ t: 'ping' });
        this.scheduleHeartbeat();
      },
      Math.max(10, Math.floor(this.heartbeatMs / 2)),
    );
  }

  private onFrame(data: Uint8Array): void {
    const ctx = this.ctx;
    this.lastReceivedAt = ctx.clock.now();
    let frame: ServerFrame;
    try {
      frame = decodeServerFrame(data, Math.max(DEFAULT_MAX_FRAME_BYTES, ctx.opts.maxBodyBytes * 2));
    } catch (e) {
      ctx.emit('error', e);
      this.drop('invalid frame from server');
      return;
    }
    switch (frame.t) {
      case 'welcome':
        return this.onWelcome(frame);
      case 'lcode':
        if (ctx.state !== 'handshaking' && ctx.state !== 'linking') return;
        // Approval can take a while: the handshake timeout no longer applies.
        ctx.clock.clearTimeout(this.handshakeTimer);
        this.setState('linking');
        ctx.emit('linkCode', { code: frame.code, expiresAt: frame.exp });
        return;
      case 'ping':
        return ctx.write({ t: 'pong' });
      case 'pong':
        return;
      default:
        return this.hooks.frame(frame);
    }
  }

  private onWelcome(w: WelcomeFrame): void {
    const ctx = this.ctx;
    if (ctx.state !== 'handshaking' && ctx.state !== 'linking') return;
    ctx.clock.clearTimeout(this.handshakeTimer);
    const me = (ctx.me = { user: w.u, device: w.d });
    // Saved so that history names this device's messages while offline, after a restart.
    ctx.later(() => saveIdentity(ctx.store, me));
    this.heartbeatMs = w.hb;
    ctx.opts.maxBodyBytes = w.lim.body;
    this.reconnects.opened();
    this.hooks.welcome(w);
    this.setState('open');
    this.scheduleHeartbeat();
    this.hooks.opened();
  }
}

/**
 * The closes that end the client for good: retrying cannot help with static credentials the
 * server refused or found expired, with no common version, or with this device unlinked.
 * Everything else reconnects, `replaced` included: a stale connection of this same device (say,
 * from before a restart) can reach the server after the new one and replace it. Expired
 * credentials reconnect with fresh ones from a credentials function; if it keeps handing out
 * stale ones, the server refuses the hello (1008) and the backoff grows.
 */
function fatalClose(
  code: number,
  refreshable: boolean,
): 'unauthorized' | 'unsupported_version' | 'forbidden' | undefined {
  const refused = code === CLOSE_CODES.unauthorized || code === CLOSE_CODES.reauthenticate;
  if (refused && !refreshable) return 'unauthorized';
  if (code === CLOSE_CODES.unsupportedVersion) return 'unsupported_version';
  if (code === CLOSE_CODES.unlinked) return 'forbidden';
  return undefined;
}
