/**
 * The server side of one `ws` socket for the WebSocket server transport (`websocket.ts`): sends
 * with backpressure and corking, read pausing, shedding, and the read confirmations that count
 * what the peer has not read. One class with listeners shared by every socket.
 * @internal
 * @packageDocumentation
 */
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { WebSocket as WsSocket } from 'ws';
import { CLOSE_CODES } from '../protocol/errors.js';
import { systemClock } from '../util/clock.js';
import type { Connection, ConnectionHandlers } from './types.js';
import { DrainGate, HandlerSlot, errorCloseCode, truncateReason } from './ws-common.js';
import { ReadConfirmations } from './read-confirm.js';
import type { BudgetEntry, OutboundBudget } from './outbound-budget.js';

/** RFC 6455 "unsupported data": what a text frame on a binary-only protocol earns. */
const UNSUPPORTED_DATA = 1003;
const SEND_OPTIONS = { binary: true } as const;

/** Where a `ws` socket keeps its connection, so its listeners can be shared functions. */
const CONNECTION = Symbol('postbox.connection');
type TaggedWs = WsSocket & { [CONNECTION]: WsServerConnection };

// One set of listeners for every socket (`this` is the socket): no closures per connection.
function onWsMessage(this: WsSocket, data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean): void {
  (this as TaggedWs)[CONNECTION].message(data, isBinary);
}
function onWsError(this: WsSocket, error: Error): void {
  (this as TaggedWs)[CONNECTION].error(error);
}
function onWsClose(this: WsSocket, code: number, reason: Buffer): void {
  (this as TaggedWs)[CONNECTION].remoteClose(code, reason);
}
function onWsPong(this: WsSocket, data: Buffer): void {
  (this as TaggedWs)[CONNECTION].pong(data);
}
function uncorkConnection(connection: WsServerConnection): void {
  connection.uncork();
}

/**
 * The server side of one `ws` socket. A class, with listeners shared by every socket: thousands
 * of idle connections should cost their sockets and little else.
 */
export class WsServerConnection implements Connection, BudgetEntry {
  private open = true;
  /** @internal this connection's bytes in the transport's {@link OutboundBudget}. */
  queued = 0;
  private corked = false;
  /** Reading is paused: more than `readPause` bytes queued for a peer that is not taking them. */
  private readPaused = false;
  private errorClose: { code: number; reason: string } | undefined;
  private readonly gate: DrainGate;
  private readonly slot: HandlerSlot;
  /** One callback for every send: when a write completes, bytes have left the buffer. */
  private readonly written: (error?: Error) => void;
  /** What the peer has shown it read (pings), and the drain owed when that catches up. */
  private readonly reads: ReadConfirmations;
  private readonly readGate: DrainGate;

  constructor(
    private readonly ws: WsSocket,
    private readonly socket: Duplex,
    readonly id: string,
    readonly remoteAddress: string,
    private readonly maxBuffered: number,
    lowWater: number,
    private readonly budget: OutboundBudget,
    private readonly shedGraceMs: number,
    private readonly readPause: number,
  ) {
    this.gate = new DrainGate(lowWater);
    this.reads = new ReadConfirmations(lowWater);
    this.readGate = new DrainGate(lowWater);
    this.slot = new HandlerSlot(systemClock, this);
    budget.add(this);
    this.written = (error?: Error) => {
      if (!this.open) return;
      const queued = this.ws.bufferedAmount;
      this.budget.update(this, queued);
      if (this.readPaused && queued <= lowWater) this.resumeReading();
      if (!error && this.gate.settle(queued)) this.slot.drain();
    };
    (ws as TaggedWs)[CONNECTION] = this;
    ws.on('message', onWsMessage);
    // Without a listener `ws` would rethrow its errors and crash the process.
    ws.on('error', onWsError);
    ws.on('close', onWsClose);
    ws.on('pong', onWsPong);
  }

  get bufferedAmount(): number {
    return this.ws.bufferedAmount;
  }

  get unreadBytes(): number {
    return this.reads.unread;
  }

  pong(data: Buffer): void {
    if (!this.open) return;
    this.ping(this.reads.pong(data));
    if (this.readGate.settle(this.reads.unread)) this.slot.drain();
  }

  private ping(payload: Buffer | undefined): void {
    if (payload && this.ws.readyState === this.ws.OPEN) this.ws.ping(payload);
  }

  get isOpen(): boolean {
    return this.open;
  }

  message(data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean): void {
    if (!this.open) return;
    if (!isBinary) {
      // The client broke the protocol: the owner still gets the frames that came before it.
      this.open = false;
      this.ws.close(UNSUPPORTED_DATA, 'binary frames only');
      return this.slot.closeRemote(UNSUPPORTED_DATA, 'binary frames only');
    }
    this.slot.frame(ownedBytes(data));
  }

  error(error: Error): void {
    this.errorClose ??= errorCloseCode(error);
  }

  remoteClose(code: number, reason: Buffer): void {
    this.budget.release(this);
    if (!this.open) return;
    this.open = false;
    this.slot.closeRemote(this.errorClose?.code ?? code, this.errorClose?.reason ?? reason.toString());
  }

  uncork(): void {
    this.corked = false;
    (this.socket as Partial<Socket>).uncork?.();
  }

  send(data: Uint8Array): void {
    const ws = this.ws;
    if (!this.open || ws.readyState !== ws.OPEN) return;
    if (ws.bufferedAmount + data.byteLength > this.maxBuffered) {
      // The peer is not reading. A close frame would queue behind what it is not reading, so
      // reset the socket: the memory it pinned is released now, not after a close timeout.
      this.open = false;
      this.budget.release(this);
      this.slot.closeLocal(CLOSE_CODES.rateLimited, 'send buffer full: the peer is not reading');
      this.reset();
      return;
    }
    // Frames sent in one tick leave in one write (one syscall) rather than one each: the socket
    // is corked at the first send of a tick and uncorked when the tick's synchronous work is done.
    const tcp = this.socket as Partial<Socket>;
    if (!this.corked && tcp.cork) {
      this.corked = true;
      tcp.cork();
      process.nextTick(uncorkConnection, this);
    }
    ws.send(data, SEND_OPTIONS, this.written);
    this.ping(this.reads.sentBytes(data.byteLength));
    this.readGate.sent(this.reads.unread);
    const queued = ws.bufferedAmount;
    this.gate.sent(queued);
    // Before the budget's update, which may shed this connection (and then reads it again).
    if (queued > this.readPause && !this.readPaused) {
      this.readPaused = true;
      ws.pause();
    }
    this.budget.update(this, queued);
  }

  private resumeReading(): void {
    this.readPaused = false;
    this.ws.resume();
  }

  /**
   * The transport's queues are over their bound and this connection has the most queued: a close
   * frame (4008) that it reads if it still reads, then a reset that frees what it pinned.
   */
  shed(): void {
    if (!this.open) return;
    this.open = false;
    try {
      this.ws.close(CLOSE_CODES.slowReader, 'slow reader: reconnect later');
    } catch {
      // already closing
    }
    this.slot.closeLocal(CLOSE_CODES.slowReader, 'slow reader: the send queues are over their bound');
    // Read again, so that a peer that takes its close frame can finish the closing handshake.
    if (this.readPaused) this.resumeReading();
    setTimeout(() => this.reset(), this.shedGraceMs).unref();
  }

  /** Resets the socket: everything queued on it is dropped and its memory freed now. */
  private reset(): void {
    if (this.socket.destroyed) return; // it read its close frame and closed meanwhile
    const reset = (this.socket as Partial<Socket>).resetAndDestroy;
    if (typeof reset === 'function') reset.call(this.socket);
    else this.ws.terminate();
  }

  close(code: number = CLOSE_CODES.normal, reason = ''): void {
    if (!this.open) return;
    this.open = false;
    this.budget.release(this);
    try {
      this.ws.close(code, truncateReason(reason));
    } catch {
      // A code no close frame may carry (1005, 1006, 1015, …): end without a handshake.
      this.ws.terminate();
    }
    this.slot.closeLocal(code, reason);
  }

  setHandlers(handlers: ConnectionHandlers): void {
    this.slot.set(handlers, this.id);
  }
}

/**
 * The frame as a plain `Uint8Array`. A small frame is often a view into the larger chunk the
 * socket read; it is copied, so a message kept for long (say, in a memory store) does not pin
 * the whole chunk.
 */
function ownedBytes(data: Buffer | ArrayBuffer | Buffer[]): Uint8Array {
  if (Array.isArray(data)) return new Uint8Array(Buffer.concat(data));
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (data.byteOffset === 0 && data.byteLength === data.buffer.byteLength) {
    return new Uint8Array(data.buffer, 0, data.byteLength);
  }
  return new Uint8Array(data);
}
