/**
 * The in-memory transport: the reference transport and the test double. One
 * {@link memoryNetwork} holds a server side and any number of named clients, and can delay,
 * throttle, cut and half-open links from a seed, so whole scenarios replay exactly on a
 * virtual clock.
 *
 * Browser-safe: no Node built-ins.
 * @packageDocumentation
 */
import { seededRandom, systemClock, type Clock, type Random, type TimerHandle } from '../util/clock.js';
import type { ClientTransport, Connection, ConnectionHandlers, ServerTransport } from './types.js';

/**
 * Fault settings of a {@link MemoryNetwork}. They are read when each frame is sent or carried,
 * so {@link MemoryNetwork.setFaults} affects traffic from then on.
 */
export interface LinkFaults {
  /**
   * Per-frame one-way delay in ms, uniform in `[min, max]`, drawn from the network's seeded
   * random. Frames on one direction of one link are never reordered: a frame's delivery time is
   * `max(previous delivery time on that direction, now + latency)`.
   * @default { min: 0, max: 0 }
   */
  latency?: { min: number; max: number };
  /**
   * Slow link: bandwidth in bytes per ms, per direction. Frames queue behind each other, and the
   * sending connection's `bufferedAmount` counts the bytes queued and not yet on the wire; its
   * `drain` handler is called when that queue empties.
   * @default undefined (infinite bandwidth: frames go on the wire at once, `bufferedAmount` is 0)
   */
  bytesPerMs?: number;
  /**
   * Probability, per frame carried (either direction), that the link is cut instead of carrying
   * that frame: the frame and everything queued or in flight behind it are lost, and both sides
   * get close code 1006. This is how a cut "at any point" happens, e.g. between the server's
   * commit and its ack, or between a delivery and the device's ack.
   * @default 0
   */
  cutProbability?: number;
  /** Probability, per frame carried, that the link goes half-open instead (see {@link MemoryLink.halfOpen}). @default 0 */
  halfOpenProbability?: number;
  /** Probability that a `connect()` attempt is refused. @default 0 */
  connectFailProbability?: number;
}

/** Which way a frame crosses a link. */
export type FrameDirection = 'toServer' | 'toClient';

/**
 * Decides the fate of one frame just before it is carried, so a test can cut exactly "after the
 * server committed, before the ack arrives". Return `'pass'` to carry it (random faults then
 * still apply), `'drop'` to lose only this frame (the link stays open: a transport bug to test
 * against, not a real-world fault), `'cut'` or `'halfOpen'` to break the link instead of
 * carrying it. Do not mutate `frame`: it is the copy the receiver gets.
 */
export type FrameInterceptor = (
  frame: Uint8Array,
  direction: FrameDirection,
  link: MemoryLink,
) => 'pass' | 'drop' | 'cut' | 'halfOpen';

/** Frame and byte counters of one direction of a link. */
export interface LinkCounters {
  /** Frames carried (put on the wire past every fault). */
  frames: number;
  /** Bytes in those frames. */
  bytes: number;
}

/** One client–server link of a {@link MemoryNetwork}, as tests see and break it. */
export interface MemoryLink {
  /** Unique within the network and deterministic: `${name}#${n}`, `n` counting links from 1. */
  readonly id: string;
  /** The name given to {@link MemoryNetwork.client}. */
  readonly name: string;
  /** False once either side closed it or it was cut. A half-open link still reports true: nobody knows yet. */
  readonly isOpen: boolean;
  /** True once the link went half-open (and was not cut since). */
  readonly isHalfOpen: boolean;
  /**
   * Kills the link now: queued and in-flight frames are lost, and each side that has not closed
   * yet gets close code 1006, reason `'cut'`, after a latency draw. The close always arrives,
   * even on a half-open link. No-op on a link already cut.
   */
  cut(): void;
  /**
   * The link silently stops carrying frames in both directions (frames in flight are lost too);
   * neither side is told and sends still "succeed". Only heartbeats can detect it. If a side then
   * calls `close()`, only that side gets its close event. No-op unless the link is open.
   */
  halfOpen(): void;
  /** Frames and bytes carried each way (for tests and byte counting). */
  readonly stats: { readonly toServer: LinkCounters; readonly toClient: LinkCounters };
}

/** Options of {@link memoryNetwork}. */
export interface MemoryNetworkOptions {
  /** Every timer of the network goes through this clock. @default systemClock */
  clock?: Clock;
  /** Seeded randomness for latency and faults; the network uses nothing else. @default seededRandom(1) */
  random?: Random;
  /** Initial fault settings. @default {} (no latency, no faults) */
  faults?: LinkFaults;
}

/** An in-process network: one server transport and any number of named client transports. */
export interface MemoryNetwork {
  /**
   * The server side; one listener at a time (a second `listen()` rejects). After `close()`,
   * `connect()` attempts are refused until `listen()` is called again (a restarted server).
   * Open links are left alone by `close()`: use {@link MemoryNetwork.cutAll} to crash.
   */
  readonly server: ServerTransport;
  /** A client transport whose links are named `name` (for logs, tests and stats). */
  client(name: string): ClientTransport;
  /** Links not yet closed or cut (half-open ones included), in creation order. */
  connections(): MemoryLink[];
  /** Cuts every link in {@link MemoryNetwork.connections} (a server crash or a network partition). */
  cutAll(): void;
  /** Replaces the fault settings for frames sent and carried from now on. Throws a RangeError on nonsense values. */
  setFaults(faults: LinkFaults): void;
  /** Installs (or removes, with `undefined`) the frame interceptor. */
  intercept(fn: FrameInterceptor | undefined): void;
}

// WebSocket close codes, the vocabulary every postbox transport speaks.
const NORMAL_CLOSE = 1000;
const ABNORMAL_CLOSE = 1006;

type Item = { kind: 'frame'; data: Uint8Array } | { kind: 'close'; code: number; reason: string };

/** One direction of a link. */
interface Pipe {
  readonly direction: FrameDirection;
  /** Bytes waiting for the wire: the sender's `bufferedAmount`. */
  queued: number;
  /** When the wire is free for the next frame (slow links only). */
  wireFreeAt: number;
  /** Delivery time of the last item carried; later items never overtake it. */
  lastDeliveryAt: number;
  seq: number;
  /** Items waiting for the wire, in send order. */
  waiting: { seq: number; item: Item; bytes: number }[];
  /** Items on the wire, in delivery order. */
  inFlight: { seq: number; item: Item }[];
}

/** One side of a link. */
interface End {
  readonly link: Link;
  readonly out: Pipe;
  peer: End;
  conn: Connection;
  handlers: ConnectionHandlers | undefined;
  /** Frames that arrived before the handlers were set, or while they are being handed over. */
  inbox: Uint8Array[];
  pendingClose: { code: number; reason: string } | undefined;
  flushing: boolean;
  /** `Connection.isOpen`: false once this side closed or was told the connection closed. */
  open: boolean;
  localClosed: boolean;
  closeFired: boolean;
}

interface Link {
  readonly view: MemoryLink;
  readonly client: End;
  readonly server: End;
  closed: boolean;
  halfOpen: boolean;
  cut: boolean;
  /** Wire timers, cancelled by a cut. Close notices are not in here: they must arrive. */
  readonly timers: Set<TimerHandle>;
  readonly stats: { toServer: LinkCounters; toClient: LinkCounters };
}

const PROBABILITIES = ['cutProbability', 'halfOpenProbability', 'connectFailProbability'] as const;

/** Validates at the edge, so a typo in a test fails loudly instead of silently meaning "no faults". */
function checkFaults(faults: LinkFaults): LinkFaults {
  const { latency, bytesPerMs } = faults;
  if (latency && !(latency.min >= 0 && latency.max >= latency.min)) {
    throw new RangeError(
      `memoryNetwork: latency must satisfy 0 <= min <= max, got ${JSON.stringify(latency)}`,
    );
  }
  if (bytesPerMs !== undefined && !(bytesPerMs > 0)) {
    throw new RangeError(`memoryNetwork: bytesPerMs must be > 0 (omit it for no limit), got ${bytesPerMs}`);
  }
  for (const key of PROBABILITIES) {
    const p = faults[key];
    if (p !== undefined && !(p >= 0 && p <= 1)) {
      throw new RangeError(`memoryNetwork: ${key} must be in [0, 1], got ${p}`);
    }
  }
  return { ...faults, ...(latency ? { latency: { ...latency } } : {}) };
}

/**
 * Creates an in-memory network with seeded latency and fault injection. Every timer goes through
 * `clock` and every random draw through `random`, so on a virtual clock the same seed replays the
 * same run.
 *
 * @example
 * ```ts
 * const clock = new VirtualClock();
 * const net = memoryNetwork({ clock, random: seededRandom(42), faults: { latency: { min: 1, max: 40 } } });
 * await server.listen(net.server);
 * const client = createClient({ transport: net.client('alice/phone'), clock, ... });
 * net.intercept((frame, dir) => (dir === 'toClient' && isAck(frame) ? 'cut' : 'pass'));
 * ```
 */
export function memoryNetwork(options: MemoryNetworkOptions = {}): MemoryNetwork {
  const clock = options.clock ?? systemClock;
  const random = options.random ?? seededRandom(1);
  let faults = checkFaults(options.faults ?? {});
  let interceptor: FrameInterceptor | undefined;
  let listener: ((connection: Connection) => void) | undefined;
  let linkCount = 0;
  /** Links not closed or cut, in creation order. */
  let live: Link[] = [];

  // Draw only when a fault is configured, so switching one fault on does not shift every other
  // random draw of a run more than it must.
  const latency = (): number => {
    const l = faults.latency;
    if (!l) return 0;
    return l.max > l.min ? l.min + random() * (l.max - l.min) : l.min;
  };
  const chance = (p: number | undefined): boolean => p !== undefined && p > 0 && random() < p;

  const later = (link: Link, ms: number, fn: () => void): void => {
    const handle: TimerHandle = clock.setTimeout(() => {
      link.timers.delete(handle);
      fn();
    }, ms);
    link.timers.add(handle);
  };

  const retire = (link: Link): void => {
    live = live.filter((l) => l !== link);
  };

  const fireClose = (end: End, code: number, reason: string): void => {
    if (end.closeFired) return;
    end.closeFired = true;
    end.open = false;
    if (end.handlers && !end.flushing) end.handlers.close(code, reason);
    else end.pendingClose = { code, reason };
  };

  /** The peer closed, or the link died: tell this side, once, unless it closed first. */
  const remoteClose = (end: End, code: number, reason: string): void => {
    if (!end.open) return;
    // Whatever this side still had queued can no longer go anywhere.
    end.out.waiting = [];
    end.out.queued = 0;
    fireClose(end, code, reason);
  };

  const receive = (end: End, data: Uint8Array): void => {
    if (!end.open) return;
    if (end.handlers && !end.flushing) end.handlers.frame(data);
    else end.inbox.push(data);
  };

  const flush = (end: End): void => {
    const handlers = end.handlers!;
    try {
      while (end.inbox.length > 0 && !end.localClosed) handlers.frame(end.inbox.shift()!);
    } finally {
      if (end.inbox.length > 0 && !end.localClosed) {
        // A handler threw: keep the rest in order for another turn rather than reorder them.
        clock.setTimeout(() => flush(end), 0);
      } else {
        end.inbox = [];
        end.flushing = false;
        const pending = end.pendingClose;
        end.pendingClose = undefined;
        if (pending) handlers.close(pending.code, pending.reason);
      }
    }
  };

  const cutLink = (link: Link): void => {
    if (link.cut) return;
    link.cut = true;
    if (!link.closed) retire(link);
    for (const handle of link.timers) clock.clearTimeout(handle);
    link.timers.clear();
    for (const end of [link.client, link.server]) {
      end.out.waiting = [];
      end.out.inFlight = [];
      end.out.queued = 0;
    }
    for (const end of [link.client, link.server]) {
      if (end.open) clock.setTimeout(() => remoteClose(end, ABNORMAL_CLOSE, 'cut'), latency());
    }
  };

  const halfOpenLink = (link: Link): void => {
    if (link.cut || link.closed || link.halfOpen) return;
    link.halfOpen = true;
    // The frames already on the wire die with it; the send queues keep draining into the void.
    link.client.out.inFlight = [];
    link.server.out.inFlight = [];
  };

  /** Delivers, in order, every item of `pipe` up to `seq` (robust to timers firing out of order). */
  const arrive = (to: End, pipe: Pipe, seq: number): void => {
    while (pipe.inFlight.length > 0 && pipe.inFlight[0]!.seq <= seq) {
      const { item } = pipe.inFlight.shift()!;
      if (item.kind === 'frame') receive(to, item.data);
      else remoteClose(to, item.code, item.reason);
    }
  };

  /** Puts one item on the wire: faults first, then a latency draw that never overtakes. */
  const carry = (from: End, item: Item): void => {
    const link = from.link;
    const pipe = from.out;
    if (link.cut || link.halfOpen) return;
    if (item.kind === 'frame') {
      let fate = interceptor ? interceptor(item.data, pipe.direction, link.view) : 'pass';
      if (link.cut || link.halfOpen) return; // the interceptor broke the link itself
      if (fate === 'pass') {
        if (chance(faults.cutProbability)) fate = 'cut';
        else if (chance(faults.halfOpenProbability)) fate = 'halfOpen';
      }
      if (fate === 'drop') return;
      if (fate === 'cut') return cutLink(link);
      if (fate === 'halfOpen') return halfOpenLink(link);
      const counters = link.stats[pipe.direction];
      counters.frames++;
      counters.bytes += item.data.byteLength;
    }
    const now = clock.now();
    const at = Math.max(pipe.lastDeliveryAt, now + latency());
    pipe.lastDeliveryAt = at;
    const seq = ++pipe.seq;
    pipe.inFlight.push({ seq, item });
    later(link, at - now, () => arrive(from.peer, pipe, seq));
  };

  /** Moves, in order, every item of `from`'s send queue up to `seq` onto the wire. */
  const leaveQueue = (from: End, seq: number): void => {
    const pipe = from.out;
    let moved = false;
    while (pipe.waiting.length > 0 && pipe.waiting[0]!.seq <= seq) {
      const { item, bytes } = pipe.waiting.shift()!;
      pipe.queued -= bytes;
      moved = true;
      carry(from, item);
    }
    if (moved && pipe.queued === 0 && from.open && !from.link.cut) from.handlers?.drain?.();
  };

  const enqueue = (from: End, item: Item): void => {
    const pipe = from.out;
    const bytes = item.kind === 'frame' ? item.data.byteLength : 0;
    const rate = faults.bytesPerMs;
    if (rate === undefined && pipe.waiting.length === 0) return carry(from, item);
    const now = clock.now();
    const onWireAt = Math.max(now, pipe.wireFreeAt) + (rate === undefined ? 0 : bytes / rate);
    pipe.wireFreeAt = onWireAt;
    if (onWireAt <= now && pipe.waiting.length === 0) return carry(from, item);
    const seq = ++pipe.seq;
    pipe.waiting.push({ seq, item, bytes });
    pipe.queued += bytes;
    later(from.link, onWireAt - now, () => leaveQueue(from, seq));
  };

  const closeEnd = (end: End, code: number, reason: string): void => {
    if (!end.open) return;
    end.open = false;
    end.localClosed = true;
    end.inbox = [];
    const link = end.link;
    if (!link.closed && !link.cut) {
      link.closed = true;
      retire(link);
    }
    // Asynchronous like a real socket, and outside the link's timers: a cut must not swallow it.
    clock.setTimeout(() => fireClose(end, code, reason), 0);
    // The close travels behind the frames already sent, like a WebSocket close frame.
    if (!link.cut && !link.halfOpen) enqueue(end, { kind: 'close', code, reason });
  };

  const makeEnd = (link: Link, direction: FrameDirection, id: string, remoteAddress?: string): End => {
    const end: End = {
      link,
      out: { direction, queued: 0, wireFreeAt: 0, lastDeliveryAt: 0, seq: 0, waiting: [], inFlight: [] },
      peer: undefined as unknown as End, // tied right after both ends exist
      conn: undefined as unknown as Connection,
      handlers: undefined,
      inbox: [],
      pendingClose: undefined,
      flushing: false,
      open: true,
      localClosed: false,
      closeFired: false,
    };
    end.conn = {
      id,
      ...(remoteAddress !== undefined ? { remoteAddress } : {}),
      get bufferedAmount() {
        return end.out.queued;
      },
      get isOpen() {
        return end.open;
      },
      send(data: Uint8Array) {
        if (!end.open || end.link.cut) return;
        // Copied now: the sender may reuse its buffer as soon as send() returns.
        enqueue(end, { kind: 'frame', data: new Uint8Array(data) });
      },
      close(code = NORMAL_CLOSE, reason = '') {
        closeEnd(end, code, reason);
      },
      setHandlers(handlers: ConnectionHandlers) {
        if (end.handlers) throw new Error(`memory transport: setHandlers called twice on ${id}`);
        end.handlers = handlers;
        if (end.inbox.length > 0 || end.pendingClose) {
          // Hand buffered frames over on the next turn, not inside setHandlers, whose caller may
          // still be wiring itself up; later arrivals queue behind them.
          end.flushing = true;
          clock.setTimeout(() => flush(end), 0);
        }
      },
    };
    return end;
  };

  const makeLink = (name: string): Link => {
    const id = `${name}#${++linkCount}`;
    const link = {
      closed: false,
      halfOpen: false,
      cut: false,
      timers: new Set<TimerHandle>(),
      stats: { toServer: { frames: 0, bytes: 0 }, toClient: { frames: 0, bytes: 0 } },
    } as Omit<Link, 'view' | 'client' | 'server'> as Link;
    const view: MemoryLink = {
      id,
      name,
      get isOpen() {
        return !link.closed && !link.cut;
      },
      get isHalfOpen() {
        return link.halfOpen && !link.cut;
      },
      cut: () => cutLink(link),
      halfOpen: () => halfOpenLink(link),
      stats: link.stats,
    };
    const client = makeEnd(link, 'toServer', id);
    const server = makeEnd(link, 'toClient', id, name);
    client.peer = server;
    server.peer = client;
    Object.assign(link, { view, client, server });
    live.push(link);
    return link;
  };

  const server: ServerTransport = {
    name: 'memory',
    listen(onConnection) {
      if (listener) return Promise.reject(new Error('memory transport: the server is already listening'));
      listener = onConnection;
      return Promise.resolve();
    },
    close() {
      listener = undefined;
      return Promise.resolve();
    },
  };

  return {
    server,
    client(name: string): ClientTransport {
      return {
        name,
        connect() {
          return new Promise<Connection>((resolve, reject) => {
            const delay = latency();
            const refused = chance(faults.connectFailProbability);
            clock.setTimeout(() => {
              const accept = listener;
              if (!accept) return reject(new Error(`memory transport: nothing listening (client ${name})`));
              if (refused) return reject(new Error(`memory transport: connection refused (client ${name})`));
              const link = makeLink(name);
              try {
                accept(link.server.conn);
              } catch (e) {
                cutLink(link);
                return reject(new Error('memory transport: the server listener threw', { cause: e }));
              }
              resolve(link.client.conn);
            }, delay);
          });
        },
      };
    },
    connections: () => live.map((l) => l.view),
    cutAll() {
      for (const link of [...live]) cutLink(link);
    },
    setFaults(next) {
      faults = checkFaults(next);
    },
    intercept(fn) {
      interceptor = fn;
    },
  };
}
