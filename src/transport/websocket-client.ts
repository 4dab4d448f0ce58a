/**
 * The WebSocket client transport. Browser-safe: it uses the platform `WebSocket` (browsers,
 * Node ≥ 22, Deno, Bun, React Native), a constructor you pass in, or — on Node 20, which has no
 * global `WebSocket` — the optional peer `ws`, loaded lazily through a dynamic import that
 * bundlers do not follow. No Node built-in is imported, statically or otherwise.
 *
 * Node users can import the same function from `postbox/transport/websocket`, next to the server
 * transport; browser bundles import `postbox/transport/websocket-client`.
 * @packageDocumentation
 */
import { CLOSE_CODES, PostboxError } from '../protocol/errors.js';
import { systemClock, type Clock, type TimerHandle } from '../util/clock.js';
import type { ClientTransport, Connection } from './types.js';
import { DrainGate, HandlerSlot, errorCloseCode, errorMessage, truncateReason } from './ws-common.js';

/**
 * Kept on this subpath, where they were before ws-common.ts: the exports map does not shrink.
 * @internal
 */
export { DrainGate, HandlerSlot, errorCloseCode, truncateReason } from './ws-common.js';

/** `readyState` of an open socket: the same number in every WebSocket implementation. */
const OPEN = 1;
/** RFC 6455 "unsupported data": what a text frame on a binary-only protocol earns. */
const UNSUPPORTED_DATA = 1003;
/** Matches the protocol's default frame limit (`DEFAULT_MAX_FRAME_BYTES`, without importing the codec). */
const DEFAULT_MAX_FRAME_BYTES = 256 * 1024;
/** `drain` fires when the send buffer falls back to this many bytes (and again when it empties). */
const DRAIN_LOW_WATER_BYTES = 64 * 1024;
/** How often a client with bytes above the low-water mark looks at `bufferedAmount` (no event exists). */
const DRAIN_POLL_MS = 25;

/**
 * The part of a WebSocket that postbox uses: the intersection of the WHATWG `WebSocket`
 * (browsers, Node ≥ 22, Deno, Bun) and `ws`. Declared here so the core needs no peer types.
 * Event handlers are the `on…` properties, which every implementation has.
 */
export interface WebSocketLike {
  /** Set to `'arraybuffer'` so binary frames arrive as `ArrayBuffer`, not `Blob`. */
  binaryType: string;
  /** 0 connecting, 1 open, 2 closing, 3 closed. */
  readonly readyState: number;
  /** Bytes queued by `send()` and not yet handed to the network. */
  readonly bufferedAmount: number;
  /** Receives the open event. */
  onopen: ((event: any) => void) | null;
  /** Receives message events; `event.data` is a `string` for text frames, an `ArrayBuffer` for binary ones. */
  onmessage: ((event: any) => void) | null;
  /** Receives the close event, with `code` and `reason`. */
  onclose: ((event: any) => void) | null;
  /** Receives error events (followed by a close event). */
  onerror: ((event: any) => void) | null;
  /** Queues one binary frame. */
  send(data: Uint8Array): void;
  /** Starts the closing handshake. */
  close(code?: number, reason?: string): void;
}

/**
 * Options the client transport passes as the constructor's third argument. `ws` reads them (it
 * then enforces the frame limit before buffering a frame, and never offers compression); the
 * WHATWG `WebSocket` constructor takes two arguments and ignores a third.
 */
export interface WebSocketConstructorOptions {
  /** Largest incoming frame, in bytes. */
  maxPayload?: number;
  /** Always `false`: compression costs CPU and opens compression oracles (CRIME/BREACH-style). */
  perMessageDeflate?: boolean;
}

/** A WebSocket constructor: `globalThis.WebSocket`, `ws`'s `WebSocket`, or anything shaped like them. */
export type WebSocketConstructor = new (
  url: string,
  protocols?: string | string[],
  options?: WebSocketConstructorOptions,
) => WebSocketLike;

/** Options of {@link websocketClientTransport}. */
export interface WebSocketClientOptions {
  /**
   * Where to connect, e.g. `wss://chat.example.com/postbox`.
   *
   * - A **string**: every connect goes there.
   * - A **list** of gateway URLs (several nodes behind distinct hosts or ports; copied at creation,
   *   must not be empty): the first connect goes to a random entry (see `random`), so clients
   *   spread over the gateways. The transport then stays on the URL that worked for as long as it
   *   keeps working, and moves to another entry, drawn at random among the others (so the clients
   *   of a dead node spread over the survivors instead of all landing on its neighbour), when
   *   - a connect to it fails: an error, no open within `connectTimeoutMs`, or closed before
   *     opening; or
   *   - a connection to it ends with a code that says the node failed: 1006 (died without a close
   *     handshake), 1001 (going away: the node shuts down), 1011 (server fault), 1012 (service
   *     restart) or 1013 (try again later: shedding load).
   *
   *   Any other close keeps the URL: a clean 1000, one of postbox's application codes
   *   (4000–4999: heartbeat timeout, replaced, rate limited, …) or a protocol or policy close
   *   (1002, 1008, 1009, …): those are about this client, and another node would answer the
   *   same. The code that decides is the one the connection's `close` handler gets, whichever
   *   side closed: an owner that finds a link dead on its own can close it with 1006 to move on
   *   (the wire then carries 1000). The transport only picks the URL; retry timing (backoff with
   *   jitter) stays with the client engine, which calls `connect()` once per attempt.
   * - A **function**: called on every connect, so each reconnect can pick a gateway itself or
   *   carry a fresh query token.
   */
  url: string | readonly string[] | (() => string);
  /**
   * Randomness for the position in a `url` list: a number in `[0, 1)`, read at the first connect
   * and at each move to another gateway. Pass a seeded generator for deterministic tests and
   * simulations. Unused when `url` is a string or a function.
   * @default Math.random
   */
  random?: () => number;
  /**
   * The WebSocket implementation.
   * @default `globalThis.WebSocket` when it exists (browsers, Node ≥ 22); otherwise the optional
   * peer `ws`, imported lazily on first connect (Node 20). Install `ws` or pass this option there.
   */
  WebSocket?: WebSocketConstructor;
  /**
   * Largest frame accepted from the server; a bigger one closes the connection with 1009. With
   * `ws` the limit is enforced before the frame is buffered; a platform `WebSocket` has no such
   * knob, so there it is checked on arrival.
   * @default 262144 (256 KiB, the protocol's default)
   */
  maxFrameBytes?: number;
  /** A connect that has not opened within this many ms is abandoned: it rejects and the socket is closed. @default 10000 */
  connectTimeoutMs?: number;
  /** Timers (connect timeout, drain polling, handler hand-over). @default systemClock */
  clock?: Clock;
}

/**
 * Creates a WebSocket client transport. Frames are binary only: a text frame from the server is a
 * protocol violation and closes the connection with 1003. Heartbeats, reconnect and backoff are
 * the engine's job, not the transport's.
 *
 * `bufferedAmount` is the socket's own. There is no "drain" event on a WebSocket, so while more
 * than 64 KiB are buffered the transport looks every 25 ms and calls the `drain` handler when the
 * buffer falls back to 64 KiB, and once more when it is empty.
 *
 * TCP_NODELAY: browsers set it on WebSocket connections, and so does `ws`.
 *
 * With a list of gateway URLs the transport spreads first connects over them at random and fails
 * over to another gateway, at random, when a node dies, restarts or sheds load (see {@link WebSocketClientOptions.url}).
 *
 * @throws TypeError when `url` is an empty list or holds something other than non-empty strings.
 *
 * @example
 * ```ts
 * const client = createClient({
 *   transport: websocketClientTransport({ url: 'wss://chat.example.com/postbox' }),
 *   store: memoryClientStore(),
 *   credentials: () => fetchToken(),
 * });
 * // Several gateway nodes: clients spread over them and move on when theirs dies.
 * websocketClientTransport({
 *   url: ['wss://gw1.example.com/postbox', 'wss://gw2.example.com/postbox', 'wss://gw3.example.com/postbox'],
 * });
 * ```
 */
export function websocketClientTransport(options: WebSocketClientOptions): ClientTransport {
  const maxFrameBytes = positive(options.maxFrameBytes, DEFAULT_MAX_FRAME_BYTES, 'maxFrameBytes');
  const connectTimeoutMs = positive(options.connectTimeoutMs, 10_000, 'connectTimeoutMs');
  const clock = options.clock ?? systemClock;
  const gateways = gatewayPicker(options.url, options.random ?? Math.random);

  const open = (Ctor: WebSocketConstructor): Promise<Connection> =>
    new Promise<Connection>((resolve, reject) => {
      const { url, at } = gateways.pick();
      let socket: WebSocketLike;
      try {
        socket = new Ctor(url, undefined, { maxPayload: maxFrameBytes, perMessageDeflate: false });
      } catch (e) {
        gateways.failed(at);
        reject(new Error(`websocket transport: cannot open ${url}`, { cause: e }));
        return;
      }
      // `ws` (Node 20) hands out its own Buffers with 'nodebuffer': no copy into an ArrayBuffer.
      socket.binaryType = isWs(socket) ? 'nodebuffer' : 'arraybuffer';
      const id = `ws-client-${++connectionCount}`;
      let settled = false;
      let opened = false;

      const fail = (message: string, cause?: unknown): void => {
        if (settled) return;
        settled = true;
        clock.clearTimeout(timer);
        gateways.failed(at);
        socket.onopen = socket.onmessage = socket.onclose = null;
        // Keep a no-op error listener: an EventEmitter-based socket (ws) throws on unheard errors.
        socket.onerror = () => {};
        try {
          socket.close();
        } catch {
          // Closing a socket that is already failing may throw; it is going away either way.
        }
        reject(new Error(`websocket transport: ${message} (${url})`, cause ? { cause } : undefined));
      };
      const timer = clock.setTimeout(
        () => fail(`no connection within ${connectTimeoutMs} ms`),
        connectTimeoutMs,
      );

      const conn = socketConnection(socket, id, clock, maxFrameBytes, (code) => {
        if (NODE_FAILURE_CODES.has(code)) gateways.failed(at);
      });
      socket.onopen = () => {
        if (settled) return;
        settled = opened = true;
        clock.clearTimeout(timer);
        resolve(conn.connection);
      };
      socket.onmessage = (event: { data: unknown }) => conn.message(event.data);
      socket.onerror = (event: unknown) => {
        if (!opened) fail(`connection failed: ${errorMessage(event)}`, event);
        else conn.error(event);
      };
      socket.onclose = (event: { code?: number; reason?: string }) => {
        if (!opened) fail(`closed before opening (code ${event.code ?? '?'})`);
        else conn.remoteClose(event.code ?? CLOSE_CODES.abnormal, event.reason ?? '');
      };
    });

  return {
    name: 'websocket',
    async connect() {
      return open(await webSocketConstructor(options.WebSocket));
    },
  };
}

/**
 * Close codes that say the node failed rather than this client or its session, so the next
 * connect goes to another gateway of a `url` list: died without a close handshake (1006), going
 * away (1001), server fault (1011), service restart (1012), try again later (1013).
 */
const NODE_FAILURE_CODES: ReadonlySet<number> = new Set([
  CLOSE_CODES.abnormal,
  CLOSE_CODES.goingAway,
  CLOSE_CODES.internal,
  1012,
  1013,
]);

/** Which URL each connect of a transport uses. */
interface GatewayPicker {
  /** The URL for the next connect, and its position in the list (-1 when `url` is not a list). */
  pick(): { url: string; at: number };
  /**
   * The gateway at `at` failed: the next connect goes to another one, at random. Ignored when the
   * transport has already moved off `at`, so several connects failing on one dead node (or a
   * late close from a node left long ago) do not skip the healthy ones.
   */
  failed(at: number): void;
}

/** Validates `url` (at creation, so a bad list fails where it is written) and picks from it. */
function gatewayPicker(url: WebSocketClientOptions['url'], random: () => number): GatewayPicker {
  if (typeof url === 'string') return { pick: () => ({ url, at: -1 }), failed: () => {} };
  if (typeof url === 'function') return { pick: () => ({ url: url(), at: -1 }), failed: () => {} };
  if (!Array.isArray(url)) {
    throw new TypeError('websocket transport: `url` must be a string, a list of strings or a function');
  }
  if (url.length === 0) {
    throw new TypeError('websocket transport: `url` is an empty list; pass at least one gateway URL');
  }
  const urls: string[] = [...(url as readonly unknown[])].map((u, i) => {
    if (typeof u !== 'string' || u === '') {
      throw new TypeError(`websocket transport: url[${i}] must be a non-empty string, got ${String(u)}`);
    }
    return u;
  });
  /** An index below `n` from one draw; guards a generator that strays outside [0, 1). */
  const draw = (n: number): number => {
    const r = random();
    return r > 0 && r < 1 ? Math.floor(r * n) : 0;
  };
  /** Where connects go; chosen at the first connect. */
  let current: number | undefined;
  return {
    pick() {
      current ??= draw(urls.length);
      return { url: urls[current]!, at: current };
    },
    failed(at) {
      // Any other gateway, uniformly: the clients of one dead node spread over all the others.
      if (at === current && urls.length > 1) current = (at + 1 + draw(urls.length - 1)) % urls.length;
    },
  };
}

/** Numbers client connections: ids stay unique across every transport of the process. */
let connectionCount = 0;

/** A settled promise of `ws`'s constructor, shared by every transport of the process. */
let wsConstructor: Promise<WebSocketConstructor> | undefined;

/** The explicit constructor, else the platform's, else `ws` (loaded once, lazily). */
function webSocketConstructor(explicit: WebSocketConstructor | undefined): Promise<WebSocketConstructor> {
  if (explicit) return Promise.resolve(explicit);
  const platform = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (typeof platform === 'function') return Promise.resolve(platform);
  wsConstructor ??= loadWs().catch((e: unknown) => {
    wsConstructor = undefined; // let a later connect try again (say, after `npm i ws`)
    throw e;
  });
  return wsConstructor;
}

async function loadWs(): Promise<WebSocketConstructor> {
  // A specifier in a variable: bundlers leave this import alone, so browser bundles never pull
  // `ws` (or the Node built-ins it needs) in. Only Node 20 ever gets here.
  const specifier = 'ws';
  let mod: { WebSocket?: WebSocketConstructor; default?: WebSocketConstructor };
  try {
    mod = (await import(/* webpackIgnore: true */ /* @vite-ignore */ specifier)) as typeof mod;
  } catch (e) {
    throw new PostboxError(
      'misconfigured',
      'websocket transport: this runtime has no global WebSocket (Node < 22) and the optional peer `ws` ' +
        'could not be loaded; install it (`npm i ws`) or pass the `WebSocket` option',
      { cause: e },
    );
  }
  const Ctor = mod.WebSocket ?? mod.default;
  if (typeof Ctor !== 'function')
    throw new PostboxError('misconfigured', 'websocket transport: `ws` exports no WebSocket');
  return Ctor;
}

/**
 * The client side of one socket, as {@link websocketClientTransport} wires it. `ended` gets the
 * code the owner's `close` handler gets, once, when the connection ends (from either side).
 */
function socketConnection(
  socket: WebSocketLike,
  id: string,
  clock: Clock,
  maxFrameBytes: number,
  ended: (code: number) => void,
) {
  let open = true;
  let errorClose: { code: number; reason: string } | undefined;
  let poll: TimerHandle | undefined;
  const gate = new DrainGate(DRAIN_LOW_WATER_BYTES);
  const slot = new HandlerSlot(clock, { close: (code, reason) => connection.close(code, reason) });

  const buffered = (): number => {
    const n = socket.bufferedAmount;
    return typeof n === 'number' && Number.isFinite(n) && n > 0 ? n : 0;
  };
  const watch = (): void => {
    if (poll !== undefined || !gate.pending) return;
    poll = clock.setTimeout(() => {
      poll = undefined;
      if (!open) return;
      if (gate.settle(buffered())) slot.drain();
      watch();
    }, DRAIN_POLL_MS);
  };
  // With `ws`, the frames of one synchronous run leave in one write (one syscall) rather than one
  // each: the TCP socket is corked at the first send and uncorked once that run is over.
  // Browsers batch on their own; they have no such knob.
  const ws = isWs(socket);
  let corked: CorkableSocket | undefined;
  const uncork = (): void => {
    const tcp = corked;
    corked = undefined;
    tcp?.uncork();
  };
  const cork = (): void => {
    if (corked || !ws) return;
    // Read at send time: `ws` sets it only once the connection is open.
    const tcp = (socket as { _socket?: CorkableSocket | null })._socket;
    if (!tcp || typeof tcp.cork !== 'function' || typeof tcp.uncork !== 'function') return;
    corked = tcp;
    tcp.cork();
    // Node's nextTick runs once the current microtasks (promise continuations) are done, so the
    // frames an engine sends across several awaits in one turn still leave together.
    if (nodeNextTick) nodeNextTick(uncork);
    else queueMicrotask(uncork);
  };
  const stop = (): void => {
    open = false;
    clock.clearTimeout(poll);
    poll = undefined;
  };

  /**
   * The server broke the protocol: close the socket, and tell the owner after the frames that
   * arrived before the offending one (unlike an owner's own close, which drops them).
   */
  const violation = (code: number, reason: string): void => {
    stop();
    closeSocket(socket, code, truncateReason(reason));
    ended(code);
    slot.closeRemote(code, reason);
  };

  const connection: Connection = {
    id,
    get bufferedAmount() {
      return buffered();
    },
    get isOpen() {
      return open;
    },
    send(data) {
      if (!open || socket.readyState !== OPEN) return;
      cork();
      try {
        socket.send(data);
      } catch {
        return; // the socket is failing; its close event follows
      }
      gate.sent(buffered());
      watch();
    },
    close(code = CLOSE_CODES.normal, reason = '') {
      if (!open) return;
      stop();
      closeSocket(socket, code, truncateReason(reason));
      ended(code);
      slot.closeLocal(code, reason);
    },
    setHandlers(handlers) {
      slot.set(handlers, id);
    },
  };

  return {
    connection,
    message(data: unknown): void {
      if (!open) return;
      const bytes = binaryData(data);
      if (!bytes) return violation(UNSUPPORTED_DATA, 'binary frames only');
      if (bytes.byteLength > maxFrameBytes) return violation(CLOSE_CODES.tooLarge, 'frame too large');
      slot.frame(bytes);
    },
    error(event: unknown): void {
      // `ws` reports why it is failing the connection (say, a frame over `maxPayload`); the close
      // event that follows carries only what the peer echoed, or 1006.
      errorClose ??= errorCloseCode(event);
    },
    remoteClose(code: number, reason: string): void {
      if (!open) return;
      stop();
      const final = errorClose?.code ?? code;
      // Before the owner hears of it: an owner that reconnects at once must get the next URL.
      ended(final);
      slot.closeRemote(final, errorClose?.reason ?? reason);
    },
  };
}

/** `process.nextTick` on Node (the only place `ws` runs); looked up without naming a Node module. */
const nodeNextTick = (globalThis as { process?: { nextTick?: (fn: () => void) => void } }).process?.nextTick;

/** The part of `ws`'s underlying TCP socket used to batch writes. */
interface CorkableSocket {
  cork(): void;
  uncork(): void;
}

/** True for a socket of the `ws` package (it keeps its TCP socket in `_socket`); false for platform WebSockets. */
function isWs(socket: WebSocketLike): boolean {
  return '_socket' in socket && typeof (socket as { terminate?: unknown }).terminate === 'function';
}

/** Closes with `code`, or with 1000 where the implementation refuses that code. */
function closeSocket(socket: WebSocketLike, code: number, reason: string): void {
  try {
    socket.close(code, reason);
  } catch {
    // Platform WebSockets accept only 1000 and 3000–4999 from scripts (no 1003, 1009, 1011):
    // the local owner still gets `code`, the server gets a normal close with the reason.
    try {
      socket.close(CLOSE_CODES.normal, reason);
    } catch {
      // Already closed.
    }
  }
}

/** The frame's bytes, or `undefined` for a text frame (or a `Blob` from a socket that ignored `binaryType`). */
function binaryData(data: unknown): Uint8Array | undefined {
  if (Object.prototype.toString.call(data) === '[object ArrayBuffer]')
    return new Uint8Array(data as ArrayBuffer);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  return undefined;
}

function positive(value: number | undefined, fallback: number, name: string): number {
  if (value === undefined) return fallback;
  if (!(value > 0) || !Number.isFinite(value)) {
    throw new RangeError(`websocket transport: ${name} must be a positive number, got ${value}`);
  }
  return value;
}
