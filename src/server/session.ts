/**
 * One connection's session: its handshake (hello, authentication, link approval), the checks
 * every frame passes (frame rate, size, validity, cost budget), and its delivery window (read the
 * inbox after a cursor, push, take acks). Everything shared between sessions it asks of the
 * server through {@link SessionHost}.
 * Internal to the engine: not exported from `postbox/server`.
 * The delivery window (cursor, in-flight offsets, reads, held pushes) is its own part: delivery.ts.
 * @packageDocumentation
 */
import {
  CLOSE_CODES,
  MIN_PROTOCOL_VERSION,
  PROTOCOL_VERSION,
  PostboxError,
  decodeClientFrame,
  encodeFrame,
  isPostboxError,
  negotiateVersion,
  type ClientFrame,
  type ErrFrame,
  type ErrorCode,
  type GroupFrame,
  type HelloFrame,
  type KeyGetFrame,
  type ServerFrame,
} from '../protocol/index.js';
import type { Connection, ConnectionHandlers } from '../transport/types.js';
import type { TimerHandle } from '../util/clock.js';
import { DeliveryWindow } from './delivery.js';
import { acceptAuth } from './identity.js';
import type { AuthResult } from './options.js';
import type { SessionHost } from './session-host.js';
import type { AppendInput, DeviceAddress, InboxEntry, NotifyResult } from './store.js';
import { groupInput, messageInput, receiptInput } from './wire.js';

/** What a ciphertext may add to `maxBodyBytes` (a PreKey message carries ~1.9 KB of keys). */
const CIPHERTEXT_OVERHEAD = 4096;

/** Most key claims a backlogged session holds until it drains (see {@link Session.holdClaim}). */
export const MAX_HELD_CLAIMS = 4;

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
    this.session.drained();
  }
}

/** One connection's state: handshake, rate limits, commit pipeline and delivery window. */
export class Session {
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
  /** A frame of this session was refused over budget since the last one that ran. */
  overBudget = false;
  private lastFrameAt: number;
  /** Closes the connection if it has not opened (or started linking) by the `hello` deadline. */
  private helloTimer: TimerHandle | undefined;
  private invalidFrames = 0;
  private rateWindowStart: number;
  private rateCount = 0;
  /** What went down the connection and what waits for the device's ack (delivery.ts). */
  private readonly window: DeliveryWindow<Session>;
  /** Key claims that came while the connection was backlogged, served when it drains. */
  private heldClaims: KeyGetFrame[] | undefined;

  constructor(
    private readonly host: SessionHost<Session>,
    readonly conn: Connection,
  ) {
    this.lastFrameAt = this.rateWindowStart = host.clock.now();
    this.window = new DeliveryWindow(host, this);
    conn.setHandlers(new SessionHandlers(this));
    // A timer per handshake rather than a check in the liveness sweep, which runs every half
    // heartbeat (12.5 s): with it a silent socket was held 10-22 s. Node keeps timers of one
    // duration in one list, so this is O(1) to arm and to clear, and it lives only until hello.
    this.helloTimer = host.clock.setTimeout(() => this.helloExpired(), host.config.helloTimeoutMs);
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
    this.host.clock.clearTimeout(this.helloTimer);
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
    this.host.metrics.error(code);
    const frame: ErrFrame = { t: 'err', c: code, m: message };
    if (r !== undefined) frame.r = r;
    if (devices) frame.d = devices;
    this.send(frame);
  }

  /**
   * The peer has more than `sendHighWaterBytes` it has not read (or, where the transport cannot
   * tell, not yet sent): its reader is behind. Deliveries pause, and key claims wait for the
   * queue to drain ({@link holdClaim}).
   */
  backlogged(): boolean {
    const conn = this.conn;
    return (conn.unreadBytes ?? conn.bufferedAmount) > this.host.config.sendHighWaterBytes;
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
      if (now - this.linkStartedAt > this.host.config.linkCodeTtlMs)
        this.close(CLOSE_CODES.linkExpired, 'link code expired');
      return;
    }
    // Before the session opens, its own timer keeps the hello deadline (helloExpired).
    if (this.state !== 'open') return;
    if (now - this.lastFrameAt > this.host.config.heartbeatMs * 2) {
      this.close(CLOSE_CODES.heartbeatTimeout, 'heartbeat timeout');
      return;
    }
    const poll = this.host.config.inboxPollMs;
    // A doorbell may have been lost: look at the inbox anyway now and then.
    if (poll > 0 && now - this.window.lastReadAt >= poll) this.notify();
  }

  /** The connection closed. */
  onClosed(code: number): void {
    if (this.state === 'closed') return;
    this.state = 'closed';
    this.window.closed();
    this.endHandshake();
    this.host.unbind(this, code);
  }

  /** One frame arrived. */
  onFrame(data: Uint8Array): void {
    if (this.state === 'closed') return;
    const now = this.host.clock.now();
    this.lastFrameAt = now;
    if (now - this.rateWindowStart >= 1000) {
      this.rateWindowStart = now;
      this.rateCount = 0;
    }
    // Counted per device once it is known, so that reconnecting does not reset the count.
    const addr = this.addr;
    const over = addr
      ? !this.host.frameAllowed(addr, now)
      : ++this.rateCount > this.host.config.maxFramesPerSecond;
    if (over) {
      this.sendError('rate_limited', 'too many frames per second');
      this.close(CLOSE_CODES.rateLimited, 'rate limited');
      return;
    }
    // A device in debt, or one that cannot pay for the frame's bytes, is refused before decoding.
    if (this.state === 'open' && !this.host.affordBytes(this, data, now)) return;
    let frame: ClientFrame;
    try {
      // Before authentication only a hello-sized frame is decoded at all (issue 22).
      const max =
        this.state === 'open' ? this.host.config.maxFrameBytes : this.host.config.maxPreHelloFrameBytes;
      frame = decodeClientFrame(data, max);
    } catch (e) {
      const err = isPostboxError(e)
        ? e
        : new PostboxError('invalid_frame', 'undecodable frame', { cause: e });
      this.sendError(err.code, err.message, this.state === 'open' ? err.requestId : undefined);
      if (err.code === 'too_large') this.close(CLOSE_CODES.tooLarge, 'frame too large');
      else if (this.state !== 'open' || ++this.invalidFrames > this.host.config.maxInvalidFrames) {
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
    if (!this.host.afford(this, frame, now)) return;
    this.overBudget = false;
    switch (frame.t) {
      case 'send': {
        const max = this.host.config.maxBodyBytes;
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
        this.commit(frame.r, messageInput(frame, this.addr!));
        return;
      }
      case 'grp':
        return this.onGroup(frame);
      case 'keys':
      case 'ptok':
      case 'kget':
      case 'lnk':
      case 'unl':
      case 'sub':
      case 'unsub':
      case 'typ':
        this.host.serve(this, frame, now);
        return;
      case 'rcpt':
        this.commit(frame.r, receiptInput(frame, this.addr!));
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
    if (!this.host.enterHandshake()) {
      // Shed load before it reaches the authenticator and the store; the client backs off. A bare
      // 1013, no `err` first: a client that read an error would close its side normally and
      // come back to this same busy gateway instead of moving on to another of its list.
      this.host.metrics.error('unavailable');
      this.close(CLOSE_CODES.tryAgainLater, 'server busy');
      return;
    }
    try {
      await this.handshake(hello);
    } finally {
      this.host.leaveHandshake();
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
      auth = await this.host.authenticate(hello, this.conn.remoteAddress);
    } catch (e) {
      this.host.log.debug('authenticate threw', e);
      auth = null;
    }
    if (this.isClosed()) return;
    const accepted = acceptAuth(auth, this.host.clock.now());
    if ('refused' in accepted) {
      // An app whose hook passes on ids it never checked wants to hear about it.
      if (auth && accepted.refused !== 'credentials expired')
        this.host.log.warn(`authenticate hook's answer refused: ${accepted.refused}`);
      this.sendError('unauthorized', accepted.refused);
      this.close(CLOSE_CODES.unauthorized, 'unauthorized');
      return;
    }
    const addr = accepted.addr;
    if (this.host.inDebt(addr, this.host.clock.now())) {
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
      approval = await this.host.needsApproval(addr);
    } catch (e) {
      this.host.storeFailed(e, this);
      return;
    }
    if (this.isClosed()) return;
    if (approval) {
      this.state = 'linking';
      this.endHandshake();
      this.linkStartedAt = this.host.clock.now();
      const { code, exp } = this.host.startLink(this);
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
      registered = await this.host.store.registerDevice(addr, this.host.clock.now());
    } catch (e) {
      this.host.storeFailed(e, this);
      return false;
    }
    if (this.isClosed()) return false;
    const joining = this.host.registerInCluster(addr);
    if (joining) {
      await joining;
      if (this.isClosed()) {
        this.host.unregisterInCluster(addr);
        return false;
      }
    }
    this.addr = addr;
    this.pendingAddr = undefined;
    this.state = 'open';
    this.endHandshake();
    // Heartbeats count from here: a slow handshake (authentication, store, cluster) is not silence.
    this.lastFrameAt = this.host.clock.now();
    this.host.bind(this);
    const o = this.host.config;
    this.send({
      t: 'welcome',
      v: this.version,
      u: addr.user,
      d: addr.device,
      hb: o.heartbeatMs,
      lim: { frame: o.maxFrameBytes, body: o.maxBodyBytes, window: o.maxPendingSends, dw: o.deliveryWindow },
    });
    this.host.ring(registered.notify);
    this.pump();
    void this.host.checkKeySupply(addr);
    return true;
  }

  private onGroup(f: GroupFrame): void {
    const input = groupInput(f, this.addr!, this.host.config.maxGroupMembers);
    if ('invalid' in input) return this.sendError('invalid_frame', input.invalid, f.r);
    // Group caps are counted by the committer, in queue order (they may ask the store).
    this.commit(f.r, input);
  }

  private commit(r: number, input: AppendInput): void {
    if (this.host.closing) {
      // Not committing means not acking; the client resends to the next server.
      this.close(CLOSE_CODES.goingAway, 'server shutting down');
      return;
    }
    if (this.pendingSends >= this.host.config.maxPendingSends) {
      this.sendError('rate_limited', 'too many sends awaiting commit', r);
      this.close(CLOSE_CODES.rateLimited, 'too many pending sends');
      return;
    }
    this.pendingSends++;
    this.host.commit(this, r, input);
  }

  private async onAck(offsets: number[]): Promise<void> {
    this.window.acked(offsets);
    if (this.host.tracer.on) this.host.tracer.acked(this.addr!, offsets);
    try {
      const res = await this.host.store.ack(this.addr!, offsets, this.host.clock.now());
      this.host.metrics.acked(res.count);
      this.host.deliverWritten(res);
    } catch (e) {
      this.host.storeFailed(e, this);
      return;
    }
    this.pump();
  }

  /** Whether the entry at `offset` may go out without a store read (see {@link DeliveryWindow.canTake}). */
  canTake(offset: number): boolean {
    return this.window.canTake(offset);
  }

  /** Sends the entry at `offset`, already encoded, that {@link canTake} let through. */
  take(offset: number, data: Uint8Array): void {
    this.window.take(offset, data);
  }

  /** Delivers an entry the store just wrote when {@link canTake} lets it through; false otherwise. */
  offer(e: InboxEntry): boolean {
    return this.window.offer(e);
  }

  /** New entries landed in this device's inbox. */
  notify(): void {
    this.window.notify();
  }

  /** Pulls the next entries of the inbox into the delivery window. */
  pump(): void {
    this.window.pump();
  }

  /**
   * The connection's queue fell back to the transport's low-water mark: the claims held meanwhile
   * are served (their answers go out before the deliveries that resume after them).
   */
  drained(): void {
    const held = this.heldClaims;
    this.heldClaims = undefined;
    if (held && this.state === 'open') {
      const now = this.host.clock.now();
      for (const f of held) this.host.serve(this, f, now);
    }
    this.pump();
  }

  /**
   * Holds a key claim until the connection drains, instead of claiming and queueing an answer
   * behind bytes its reader has not taken (it would arrive no sooner); false when
   * {@link MAX_HELD_CLAIMS} are held already.
   */
  holdClaim(f: KeyGetFrame): boolean {
    const held = (this.heldClaims ??= []);
    if (held.length >= MAX_HELD_CLAIMS) return false;
    held.push(f);
    return true;
  }

  /** Open: frames may go down the connection (for the delivery window). */
  isOpen(): boolean {
    return this.state === 'open';
  }

  /** The protocol version this session speaks. */
  protocolVersion(): number {
    return this.version;
  }
}
