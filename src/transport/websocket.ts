/**
 * The WebSocket server transport for Node, on the optional peer `ws` (this subpath,
 * `postbox/transport/websocket`, is the only module that imports it). It also re-exports the
 * client transport, so Node apps need one import.
 *
 * Binary frames only, no compression, a frame limit enforced before a frame is buffered, a
 * per-address connection limit, and a hard cap on the bytes one connection can keep queued.
 * @packageDocumentation
 */
import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type WebSocket as WsSocket } from 'ws';
import { CLOSE_CODES } from '../protocol/errors.js';
import { systemClock } from '../util/clock.js';
import type { Connection, ConnectionHandlers, ServerTransport } from './types.js';
import { DrainGate, HandlerSlot, errorCloseCode, truncateReason } from './ws-common.js';
import { ReadConfirmations } from './read-confirm.js';
import { DEFAULT_MAX_QUEUED_BYTES, OutboundBudget, type BudgetEntry } from './outbound-budget.js';
import { guardSockets, type SocketGuard } from './socket-guard.js';
import { addressResolver, type TrustProxy } from './trust-proxy.js';

export {
  guardSockets,
  type SocketGuard,
  type SocketGuardOptions,
  type SocketRefusal,
} from './socket-guard.js';
export type { TrustProxy, TrustProxyOptions } from './trust-proxy.js';

export {
  websocketClientTransport,
  type WebSocketClientOptions,
  type WebSocketConstructor,
  type WebSocketConstructorOptions,
  type WebSocketLike,
} from './websocket-client.js';

/** RFC 6455 "unsupported data": what a text frame on a binary-only protocol earns. */
const UNSUPPORTED_DATA = 1003;
const DEFAULT_PATH = '/postbox';
const DEFAULT_MAX_FRAME_BYTES = 256 * 1024;
const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS = 256;
const DEFAULT_MAX_BUFFERED_BYTES = 8 * 1024 * 1024;
const DEFAULT_READ_PAUSE_BYTES = 2 * 1024 * 1024;
const DEFAULT_DRAIN_LOW_WATER_BYTES = 64 * 1024;
/** How long a refused upgrade may take to flush its tiny HTTP response before the socket is destroyed. */
const REFUSE_FLUSH_MS = 1_000;
/** Default `shedGraceMs`. */
const DEFAULT_SHED_GRACE_MS = 1_000;
const SEND_OPTIONS = { binary: true } as const;

/** Options shared by both ways of running {@link websocketServerTransport}. */
export interface WebSocketServerCommonOptions {
  /**
   * The URL path clients connect to (the query string is ignored). Upgrades for other paths are
   * left alone for other handlers on the same HTTP server; when no other `upgrade` handler exists
   * (always so in own-port mode) they are refused with 404.
   * @default '/postbox'
   */
  path?: string;
  /**
   * Largest frame accepted, in bytes. Enforced by `ws` (`maxPayload`) from the frame header,
   * before the payload is buffered or decoded: a bigger frame closes the connection with 1009.
   * Keep it equal to the server engine's `maxFrameBytes`.
   * @default 262144 (256 KiB)
   */
  maxFrameBytes?: number;
  /**
   * Most open connections (and handshakes in progress) from one remote address. One more is
   * refused with HTTP 429 before the WebSocket handshake; other addresses are unaffected.
   * @default 256
   */
  maxConnectionsPerAddress?: number;
  /**
   * Hard cap on the bytes one connection may have queued for sending. A send that would go over it
   * closes the connection at once: the owner's `close` handler gets 4003 (`CLOSE_CODES.rateLimited`)
   * and the socket is reset, releasing everything it held. So a peer that never reads pins at most
   * this much server memory. The engine's `sendHighWaterBytes` (pause deliveries) should sit well
   * below it.
   * @default 8388608 (8 MiB)
   */
  maxBufferedBytes?: number;
  /**
   * A connection with more than this queued for sending stops being read until its queue falls
   * back to `drainLowWaterBytes`: a peer that asks for answers and does not read them (key claims,
   * history) gets no more work done for it, rather than the server building answers nobody takes.
   * TCP flow control then holds the peer's further frames in its own buffers. Keep it above the
   * engine's `sendHighWaterBytes`, where deliveries pause, so a slow but honest reader's own acks
   * and requests are read while it catches up.
   * @default 2097152 (2 MiB)
   */
  readPauseBytes?: number;
  /**
   * The `drain` handler fires when a connection's buffered bytes fall back to this many after a
   * send left them above it, and once more when the buffer empties.
   * @default 65536 (64 KiB)
   */
  drainLowWaterBytes?: number;
  /**
   * Where the client's address (for `remoteAddress` and the per-address limit) comes from. `false`:
   * the TCP peer. `{ proxies, header }`: from `header` (default `X-Forwarded-For`) when the peer is
   * one of `proxies` (addresses, CIDR ranges, `'loopback'`, `'private'`), read from the right past
   * the trusted proxies; any other peer's header is ignored. `true` / a number `n`: trust `n` hops
   * of `X-Forwarded-For` from any peer, only for a server nothing can reach but through the proxy.
   * See {@link TrustProxy}.
   * @default false
   */
  trustProxy?: TrustProxy;
  /**
   * Bound on the bytes queued for sending across all connections together. Past it the
   * connections with the most queued (the slowest readers) are shed until the total is back to
   * three quarters of it: each gets close code 4008 (`CLOSE_CODES.slowReader`) if it reads it
   * within `shedGraceMs`, else a reset. The owner's `close` handler gets 4008.
   * @default 134217728 (128 MiB)
   */
  maxQueuedBytes?: number;
  /**
   * How long a connection shed for `maxQueuedBytes` keeps its socket so that it can read its close
   * frame (4008), which is queued behind everything it has not read yet (a WebSocket cannot send
   * a frame out of order, and queued bytes cannot be recalled). A peer that reads nothing in
   * that time is reset and sees 1006. Its queued bytes stay in memory meanwhile, outside
   * `maxQueuedBytes`: a longer grace lets slower readers hear 4008 at that price.
   * @default 1000
   */
  shedGraceMs?: number;
  /**
   * Own-port mode only: most open sockets in all (raw TCP, HTTP and WebSocket), see
   * {@link guardSockets}. With `server`, call `guardSockets(server, …)` yourself.
   * @default the open-files soft limit less a tenth
   */
  maxSockets?: number;
  /**
   * Own-port mode only: a new socket must finish its HTTP request headers within this.
   * @default 10000
   */
  headersTimeoutMs?: number;
}

/** Attaches to an HTTP(S) server the app owns (Express's `app.listen()`, `fastify.server`, …). */
export interface WebSocketAttachOptions extends WebSocketServerCommonOptions {
  /** The app's server. The transport adds an `upgrade` listener for its path and never closes the server. */
  server: HttpServer | HttpsServer;
  port?: never;
  host?: never;
}

/** Listens on a port of its own, with its own HTTP server (which answers plain requests with 426). */
export interface WebSocketOwnPortOptions extends WebSocketServerCommonOptions {
  /** TCP port; 0 picks a free one (read it from `address` after `listen()`). */
  port: number;
  /** Interface to bind. @default '127.0.0.1' (loopback: pass '0.0.0.0' or '::' to accept remote clients) */
  host?: string;
  server?: never;
}

/** Options of {@link websocketServerTransport}: attach to a server (`server`) or listen on a `port`. */
export type WebSocketServerOptions = WebSocketAttachOptions | WebSocketOwnPortOptions;

/** The server transport, with where it listens. */
export interface WebSocketServerTransport extends ServerTransport {
  /** Where the HTTP server listens, once it does; `undefined` before `listen()` and after `close()`. */
  readonly address: { port: number; host: string } | undefined;
  /**
   * The URL for clients on this machine (`ws://127.0.0.1:PORT/postbox`; an unspecified bind
   * address is reported as loopback), or `undefined` while not listening.
   */
  readonly url: string | undefined;
  /** Bytes queued for sending across all connections now. */
  readonly queuedBytes: number;
  /** Connections shed as slowest readers since the start (see `maxQueuedBytes`). */
  readonly shedCount: number;
  /** The socket guard of own-port mode (undefined when attached to an app's server). */
  readonly guard: SocketGuard | undefined;
}

/**
 * Creates the WebSocket server transport. Hand it to `server.listen(transport)`.
 *
 * - **Binary frames only**: a text frame closes its connection with 1003. Frames over
 *   `maxFrameBytes` close with 1009 before they are buffered. `perMessageDeflate` is off (CPU, and
 *   compression oracles).
 * - **Backpressure**: `bufferedAmount` is `ws`'s (bytes queued in the socket and not yet handed to
 *   the kernel). `ws` has no drain event, so every send carries a write callback; when one finds
 *   the buffer back at `drainLowWaterBytes` (and again when it is empty) the `drain` handler fires.
 *   `unreadBytes` counts what the peer has not shown it read: a ping goes out once
 *   `drainLowWaterBytes` were sent unconfirmed, and its pong confirms everything before it (see
 *   `read-confirm.ts`); `drain` fires too when a pong brings it back to `drainLowWaterBytes`.
 *   The engine pauses deliveries above its `sendHighWaterBytes` and resumes on `drain`; above
 *   `readPauseBytes` the transport stops reading the peer until its queue drains; the
 *   transport's `maxBufferedBytes` is the hard cap behind it.
 * - **Limits**: `maxConnectionsPerAddress` refuses upgrades with HTTP 429.
 * - `close()` stops accepting (and closes the transport's own HTTP server, if it made one) but
 *   leaves open connections to their owner: the engine closes them with 1001 on shutdown.
 * - TCP_NODELAY is set on every accepted socket (small frames must not wait for Nagle).
 * - A sent frame is handed to the socket without a copy: do not change its bytes after `send()`.
 *
 * @example
 * ```ts
 * // Own port:
 * await server.listen(websocketServerTransport({ port: 8080, host: '0.0.0.0' }));
 * // On the app's HTTP server (Express, Fastify, plain node:http):
 * const http = app.listen(8080);
 * await server.listen(websocketServerTransport({ server: http, path: '/postbox' }));
 * ```
 */
export function websocketServerTransport(options: WebSocketServerOptions): WebSocketServerTransport {
  const attached = options.server;
  if (attached !== undefined && options.port !== undefined) {
    throw new TypeError('websocketServerTransport: pass either `server` or `port`, not both');
  }
  if (attached === undefined && !(Number.isInteger(options.port) && options.port! >= 0)) {
    throw new TypeError(
      'websocketServerTransport: pass `server` (an http/https server) or a `port` (0 for any)',
    );
  }
  const path = options.path ?? DEFAULT_PATH;
  if (!path.startsWith('/'))
    throw new TypeError(`websocketServerTransport: path must start with '/', got ${path}`);
  const maxFrameBytes = positive(options.maxFrameBytes, DEFAULT_MAX_FRAME_BYTES, 'maxFrameBytes');
  const maxPerAddress = positive(
    options.maxConnectionsPerAddress,
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
    'maxConnectionsPerAddress',
  );
  const maxBuffered = positive(options.maxBufferedBytes, DEFAULT_MAX_BUFFERED_BYTES, 'maxBufferedBytes');
  const lowWater = Math.min(
    positive(options.drainLowWaterBytes, DEFAULT_DRAIN_LOW_WATER_BYTES, 'drainLowWaterBytes'),
    maxBuffered,
  );
  const readPause = Math.max(
    positive(options.readPauseBytes, DEFAULT_READ_PAUSE_BYTES, 'readPauseBytes'),
    lowWater,
  );
  const resolver = addressResolver(options.trustProxy);
  const budget = new OutboundBudget(
    positive(options.maxQueuedBytes, DEFAULT_MAX_QUEUED_BYTES, 'maxQueuedBytes'),
  );
  const shedGraceMs = options.shedGraceMs ?? DEFAULT_SHED_GRACE_MS;
  if (!(shedGraceMs >= 0)) throw new RangeError(`shedGraceMs must be 0 or more, got ${shedGraceMs}`);
  let guard: SocketGuard | undefined;

  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: maxFrameBytes,
    perMessageDeflate: false,
    clientTracking: false,
  });
  let listener: ((connection: Connection) => void) | undefined;
  /** The HTTP server upgrades come from while listening: the app's, or our own. */
  let http: HttpServer | HttpsServer | undefined;
  let ownServer = false;
  let count = 0;
  const perAddress = new Map<string, number>();

  const onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer): void => {
    // Another handler (e.g. `ws` in `server` + `path` mode) may already have refused it.
    if (socket.destroyed || socket.writableEnded) return;
    if (pathOf(req.url) !== path) {
      // Left to the app's other upgrade handlers; if there is none, nobody will answer: refuse.
      if (http && http.listenerCount('upgrade') <= 1) refuse(socket, 404, 'Not Found');
      return;
    }
    if (!listener) return refuse(socket, 503, 'Service Unavailable');
    const address = resolver.clientOf(req);
    const open = perAddress.get(address) ?? 0;
    if (open >= maxPerAddress) return refuse(socket, 429, 'Too Many Requests');
    perAddress.set(address, open + 1);
    socket.once('close', () => {
      const left = (perAddress.get(address) ?? 1) - 1;
      if (left > 0) perAddress.set(address, left);
      else perAddress.delete(address);
    });
    (socket as Partial<Socket>).setNoDelay?.(true);
    wss.handleUpgrade(req, socket, head, (ws) => {
      const accept = listener;
      if (!accept) {
        ws.terminate(); // closed during the handshake
        return;
      }
      const connection = new WsServerConnection(
        ws,
        socket,
        `ws-${++count}`,
        address,
        maxBuffered,
        lowWater,
        budget,
        shedGraceMs,
        readPause,
      );
      try {
        accept(connection);
      } catch {
        connection.close(CLOSE_CODES.internal, 'server listener threw');
      }
    });
  };

  return {
    name: 'websocket',
    get address() {
      const a = http?.address();
      if (!a || typeof a === 'string') return undefined;
      return { port: a.port, host: a.address };
    },
    get url() {
      const a = this.address;
      if (!a) return undefined;
      const host = a.host === '0.0.0.0' ? '127.0.0.1' : a.host === '::' ? '::1' : a.host;
      const secure = http !== undefined && 'setSecureContext' in http;
      return `${secure ? 'wss' : 'ws'}://${host.includes(':') ? `[${host}]` : host}:${a.port}${path}`;
    },
    get queuedBytes() {
      return budget.queuedBytes;
    },
    get shedCount() {
      return budget.shedCount;
    },
    get guard() {
      return guard;
    },
    async listen(onConnection) {
      if (listener) throw new Error('websocket transport: already listening');
      if (attached) {
        attached.on('upgrade', onUpgrade);
        http = attached;
        ownServer = false;
        listener = onConnection;
        return;
      }
      const server = createHttpServer((_req, res) => {
        res.writeHead(426, { 'content-type': 'text/plain', upgrade: 'websocket', connection: 'Upgrade' });
        res.end(`postbox: connect with a WebSocket at ${path}\n`);
      });
      server.on('upgrade', onUpgrade);
      guard = guardSockets(server, {
        maxSocketsPerAddress: maxPerAddress,
        trustProxy: options.trustProxy,
        ...(options.maxSockets !== undefined ? { maxSockets: options.maxSockets } : {}),
        ...(options.headersTimeoutMs !== undefined ? { headersTimeoutMs: options.headersTimeoutMs } : {}),
      });
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(options.port, options.host ?? '127.0.0.1', () => {
          server.off('error', reject);
          resolve();
        });
      });
      http = server;
      ownServer = true;
      listener = onConnection;
    },
    async close() {
      listener = undefined;
      const server = http;
      http = undefined;
      if (!server) return;
      if (ownServer) {
        // Stop listening now; open WebSockets stay with their owner, so do not wait for the
        // server's 'close' event (it comes when the last of them is gone).
        server.close();
        server.closeIdleConnections();
      } else {
        server.off('upgrade', onUpgrade);
      }
    },
  };
}

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
class WsServerConnection implements Connection, BudgetEntry {
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

function pathOf(url: string | undefined): string {
  if (!url) return '';
  const q = url.indexOf('?');
  return q < 0 ? url : url.slice(0, q);
}

/** Answers an upgrade with a plain HTTP status and closes the socket. */
function refuse(socket: Duplex, status: number, message: string): void {
  socket.on('error', () => {});
  const timer = setTimeout(() => socket.destroy(), REFUSE_FLUSH_MS);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
  socket.once('finish', () => socket.destroy());
  socket.end(
    `HTTP/1.1 ${status} ${message}\r\nConnection: close\r\nContent-Type: text/plain\r\n` +
      `Content-Length: ${Buffer.byteLength(message)}\r\n\r\n${message}`,
  );
}

function positive(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!(value > 0) || !Number.isFinite(value)) {
    throw new RangeError(`websocketServerTransport: ${name} must be a positive number, got ${value}`);
  }
  return value;
}
