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
import { WebSocketServer } from 'ws';
import { CLOSE_CODES } from '../protocol/errors.js';
import type { Connection, ServerTransport } from './types.js';
import { DEFAULT_MAX_QUEUED_BYTES, OutboundBudget } from './outbound-budget.js';
import { WsServerConnection } from './ws-server-connection.js';
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
