/**
 * Counts every socket an HTTP server accepts (raw TCP that never speaks, slow headers, plain HTTP
 * and WebSockets alike) per peer address and in all, and gives each a deadline to finish its
 * request headers. A socket over a cap is reset as soon as it is accepted, before Node reads a
 * byte of it, so one address cannot hold the server's file descriptors, and the process keeps
 * descriptors for its store, logs and outgoing connections below its open-files limit.
 *
 * A refusal must also be cheap, since a flooding peer reconnects as fast as it is reset: the guard
 * checks the caps on the accepted handle itself, before Node wraps it in a `net.Socket` and the
 * HTTP server gives it a parser (about a third of the CPU per refused socket; see
 * docs/security.md). Where the listening handle is not a plain TCP one (a cluster worker's shared
 * handle, a pipe), the same check runs on the `connection` event instead.
 * @packageDocumentation
 */
import { readFileSync } from 'node:fs';
import type { IncomingMessage, Server as HttpServer } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import { addressResolver, normalizeAddress, type TrustProxy } from './trust-proxy.js';

/** Default {@link SocketGuardOptions.maxSocketsPerAddress}. */
export const DEFAULT_MAX_SOCKETS_PER_ADDRESS = 256;
/** Default {@link SocketGuardOptions.headersTimeoutMs}. */
export const DEFAULT_HEADERS_TIMEOUT_MS = 10_000;
/** {@link SocketGuardOptions.maxSockets} when the open-files limit cannot be read. */
export const FALLBACK_MAX_SOCKETS = 4096;

/** Options of {@link guardSockets}. */
export interface SocketGuardOptions {
  /**
   * Most open sockets from one peer address. Sockets from a trusted proxy (see `trustProxy`) are
   * not counted here (they carry many clients): the WebSocket transport's per-client count, on
   * the address the proxy names, applies to them instead.
   * @default 256
   */
  maxSocketsPerAddress?: number;
  /**
   * Most open sockets in all. @default the open-files soft limit less a tenth (at least 64 kept)
   * for the store, logs and outgoing connections, read from /proc/self/limits; 4096 where that
   * cannot be read
   */
  maxSockets?: number;
  /**
   * A new socket must complete its first request's headers (a plain request or a WebSocket
   * upgrade) within this, or it is reset. Later requests on a kept-alive socket are Node's
   * `headersTimeout`, which {@link guardSockets} sets to the same value.
   * @default 10000
   */
  headersTimeoutMs?: number;
  /** Which peers are proxies (see {@link TrustProxy}). @default false */
  trustProxy?: TrustProxy;
  /** Called for each refused or timed-out socket (for metrics); must not throw. */
  onRefused?(reason: SocketRefusal, address: string): void;
}

/** Why a socket was reset: over the global cap, over its address's cap, or too slow to speak. */
export type SocketRefusal = 'global' | 'address' | 'timeout';

/** A running guard. */
export interface SocketGuard {
  /** Sockets open now. */
  readonly open: number;
  /** Sockets reset since the start, by reason. */
  readonly refused: Readonly<Record<SocketRefusal, number>>;
  /** The caps in force. */
  readonly limits: { maxSockets: number; maxSocketsPerAddress: number; headersTimeoutMs: number };
  /** Open sockets from one address. */
  openFrom(address: string): number;
  /** Stops guarding (sockets already counted stay counted until they close). */
  detach(): void;
}

/** The open-files soft limit of this process, when the platform says (Linux: /proc). */
export function openFilesLimit(): number | undefined {
  try {
    const m = /^Max open files\s+(\d+)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** The default global socket cap for an open-files limit (see {@link SocketGuardOptions.maxSockets}). */
export function defaultMaxSockets(fileLimit = openFilesLimit()): number {
  if (fileLimit === undefined) return FALLBACK_MAX_SOCKETS;
  return Math.max(16, fileLimit - Math.max(64, Math.ceil(fileLimit / 10)));
}

/** A connection's key shared by its TCP socket and, under HTTPS, the TLS socket over it. */
const keyOf = (s: Socket) => `${s.remoteAddress}|${s.remotePort}`;

/**
 * Guards an HTTP(S) server's sockets. `postbox serve` and the WebSocket transport's own-port mode
 * call it; an app that attaches the transport to its own server should call it on that server.
 * @example
 * const http = app.listen(8080);
 * guardSockets(http, { trustProxy: { proxies: ['10.0.0.0/8'] } });
 * await server.listen(websocketServerTransport({ server: http }));
 */
export function guardSockets(
  server: HttpServer | HttpsServer,
  options: SocketGuardOptions = {},
): SocketGuard {
  const maxPerAddress = positiveInt(
    options.maxSocketsPerAddress,
    DEFAULT_MAX_SOCKETS_PER_ADDRESS,
    'maxSocketsPerAddress',
  );
  const maxSockets = positiveInt(options.maxSockets, defaultMaxSockets(), 'maxSockets');
  const headersTimeoutMs = positiveInt(
    options.headersTimeoutMs,
    DEFAULT_HEADERS_TIMEOUT_MS,
    'headersTimeoutMs',
  );
  const resolver = addressResolver(options.trustProxy);
  const perAddress = new Map<string, number>();
  /** Sockets whose first request headers are still due, with their deadline. */
  const due = new Map<string, ReturnType<typeof setTimeout>>();
  const refused = { global: 0, address: 0, timeout: 0 };
  let open = 0;

  const count = (reason: SocketRefusal, address: string) => {
    refused[reason]++;
    options.onRefused?.(reason, address);
  };
  const refuse = (socket: Socket, reason: SocketRefusal, address: string) => {
    count(reason, address);
    // A reset frees the descriptor now; a FIN would leave it to the peer's goodwill.
    socket.on('error', () => {});
    if (typeof socket.resetAndDestroy === 'function') socket.resetAndDestroy();
    else socket.destroy();
  };
  /** The one admission rule: why a new socket from `address` is refused, if it is. */
  const refusal = (address: string): SocketRefusal | undefined => {
    if (open >= maxSockets) return 'global';
    if (resolver.isProxy(address)) return undefined;
    return (perAddress.get(address) ?? 0) >= maxPerAddress ? 'address' : undefined;
  };

  const onConnection = (socket: Socket) => {
    const address = normalizeAddress(socket.remoteAddress ?? 'unknown');
    const no = refusal(address);
    if (no !== undefined) return refuse(socket, no, address);
    const counted = !resolver.isProxy(address);
    const mine = counted ? (perAddress.get(address) ?? 0) : 0;
    open++;
    if (counted) perAddress.set(address, mine + 1);
    const deadline = setTimeout(() => {
      if (!socket.destroyed) refuse(socket, 'timeout', address);
    }, headersTimeoutMs);
    deadline.unref();
    const key = keyOf(socket);
    due.set(key, deadline);
    socket.once('close', () => {
      clearTimeout(deadline);
      if (due.get(key) === deadline) due.delete(key);
      open--;
      if (!counted) return;
      const left = (perAddress.get(address) ?? 1) - 1;
      if (left > 0) perAddress.set(address, left);
      else perAddress.delete(address);
    });
  };
  // The headers are in: the deadline is met.
  const onHeaders = (req: IncomingMessage) => {
    const key = keyOf(req.socket);
    const deadline = due.get(key);
    if (deadline !== undefined) {
      clearTimeout(deadline);
      due.delete(key);
    }
  };

  server.on('connection', onConnection);
  const early = refuseOnAccept(server, (peer) => {
    const address = normalizeAddress(peer);
    const no = refusal(address);
    if (no !== undefined) count(no, address);
    return no !== undefined;
  });
  // `prependListener`: met before any handler that may hold the request for long.
  server.prependListener('request', onHeaders);
  server.prependListener('upgrade', onHeaders);
  server.headersTimeout = headersTimeoutMs;

  return {
    get open() {
      return open;
    },
    refused,
    limits: { maxSockets, maxSocketsPerAddress: maxPerAddress, headersTimeoutMs },
    openFrom: (address) => perAddress.get(normalizeAddress(address)) ?? 0,
    detach() {
      server.off('connection', onConnection);
      early.detach();
      server.off('request', onHeaders);
      server.off('upgrade', onHeaders);
    },
  };
}

/** The parts of Node's TCP handle (`process.binding('tcp_wrap').TCP`) the early refusal uses. */
interface AcceptedHandle {
  getpeername?(out: { address?: string }): number;
  reset?(callback: () => void): number;
  close(callback?: () => void): void;
}
/** A listening handle: Node calls `onconnection` with each accepted handle. */
interface ListeningHandle {
  onconnection?: (this: unknown, error: number, handle?: AcceptedHandle) => unknown;
}

/**
 * Refuses a connection on its accepted handle, before Node builds a socket for it, whenever
 * `refused(peerAddress)` says so: the handle is reset (RST) and closed. Installs on every
 * `listening` of `server` (and now, if it listens already); a handle without a peer name is left
 * to the `connection` event. This hooks Node's undocumented `server._handle.onconnection`, the
 * same on Node 18 to 24; if the shape differs, nothing is hooked and the `connection` path alone
 * refuses, as before.
 */
function refuseOnAccept(
  server: HttpServer | HttpsServer,
  refused: (peer: string) => boolean,
): { detach(): void } {
  const hooked: Array<[ListeningHandle, NonNullable<ListeningHandle['onconnection']>]> = [];
  const peer: { address?: string } = {};
  const install = () => {
    const handle = (server as unknown as { _handle?: ListeningHandle | null })._handle;
    const original = handle?.onconnection;
    if (!handle || typeof original !== 'function' || hooked.some(([h]) => h === handle)) return;
    handle.onconnection = function (this: unknown, error: number, accepted?: AcceptedHandle) {
      if (error === 0 && accepted && typeof accepted.getpeername === 'function') {
        peer.address = undefined;
        if (accepted.getpeername(peer) === 0 && peer.address !== undefined && refused(peer.address)) {
          // A reset that cannot be set up leaves the handle open: close it then.
          if (typeof accepted.reset !== 'function' || accepted.reset(() => {}) !== 0) accepted.close();
          return;
        }
      }
      return original.call(this, error, accepted);
    };
    hooked.push([handle, original]);
  };
  server.on('listening', install);
  if (server.listening) install();
  return {
    detach() {
      server.off('listening', install);
      for (const [handle, original] of hooked.splice(0)) handle.onconnection = original;
    },
  };
}

function positiveInt(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!(Number.isInteger(value) && value > 0)) {
    throw new RangeError(`guardSockets: ${name} must be a positive integer, got ${value}`);
  }
  return value;
}
