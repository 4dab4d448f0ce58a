/**
 * The delivery trace: per message, what the server did with it and when — committed, pushed to
 * a device, acked by it, a status sent back to the sender — as metadata only (ids, device
 * addresses, times, error codes; never a body). It answers "Bob says he never got it" (see
 * docs/operations.md). Events go to a bounded {@link TraceStore} and, at debug level, to the log.
 * @packageDocumentation
 */
import type { Clock } from '../util/clock.js';
import type { AppendInput, AppendOutcome, DeviceAddress, InboxEntry } from './store.js';

/** What happened to a message at one moment. */
export type TraceEventKind =
  /** The store committed it (`detail`: how many inbox entries it made). */
  | 'committed'
  /** The store refused it (`detail`: the error code the sender got). */
  | 'refused'
  /** A resend of a message already committed; nothing was written. */
  | 'duplicate'
  /** Sent to `device` over its connection (`detail`: the inbox offset). */
  | 'pushed'
  /** `device` acked it: its inbox entry is released. */
  | 'acked'
  /** A status about it was sent to the sender's `device` (`detail`: delivered, read or expired). */
  | 'status';

/** One metadata-only event in a message's life. There is no field for content, by design. */
export interface TraceEvent {
  /** The message id. */
  id: string;
  /** Server time of the event (ms since the epoch). */
  at: number;
  kind: TraceEventKind;
  /** The device concerned, as `user/device` (the sender for committed/refused/duplicate). */
  device?: string;
  /** A short fact about the event; see {@link TraceEventKind}. */
  detail?: string;
  /** The gateway node that recorded it, in a cluster. */
  node?: string;
}

/**
 * Where trace events are kept. Bounded by construction (a ring buffer, or a table with its own
 * retention); recording never throws and never waits: a trace store that fails loses trace
 * events, never messages.
 */
export interface TraceStore {
  /** Keeps `events` (a store may buffer them and write in batches). */
  record(events: TraceEvent[]): void;
  /** Every kept event of message `id`, oldest first. */
  query(id: string): Promise<TraceEvent[]>;
  /** Writes what is buffered and releases the store's resources. */
  close(): Promise<void>;
}

/** Options of {@link memoryTraceStore}. */
export interface MemoryTraceOptions {
  /** Most events kept; the oldest are overwritten. @default 50000 */
  capacity?: number;
}

/**
 * A ring buffer of the last `capacity` events: the default trace of a server engine. A query
 * scans the buffer (queries are for operators, not for the message path).
 */
export function memoryTraceStore(options: MemoryTraceOptions = {}): TraceStore {
  const capacity = options.capacity ?? 50_000;
  if (!Number.isInteger(capacity) || capacity < 1) {
    throw new RangeError(`memory trace: capacity must be a positive integer, got ${capacity}`);
  }
  const ring: Array<TraceEvent | undefined> = [];
  let next = 0;
  return {
    record(events) {
      for (const e of events) {
        ring[next] = e;
        next = (next + 1) % capacity;
      }
    },
    query(id) {
      const found: TraceEvent[] = [];
      // Oldest first: from the write position round to just before it.
      for (let i = 0; i < ring.length; i++) {
        const e = ring[(next + i) % ring.length];
        if (e?.id === id) found.push(e);
      }
      return Promise.resolve(found);
    },
    close: () => Promise.resolve(),
  };
}

const STATUS_WORD = { delivered: 'delivered', read: 'read', expired: 'expired' } as const;
/** Most (device, offset) → id pairs remembered between a push and its ack. */
const MAX_UNACKED = 100_000;

const addressOf = (d: DeviceAddress): string => `${d.user}/${d.device}`;

/**
 * The engine's side of the trace: turns what the engine does into {@link TraceEvent}s. It
 * remembers which message each pushed inbox offset holds, so an ack (which names offsets only)
 * is traced by message id (a push its connection never acked is forgotten once the map is full,
 * oldest first; its redelivery is traced again). @internal
 */
export class Tracer {
  private readonly unacked = new Map<string, string>();

  constructor(
    private readonly store: TraceStore | undefined,
    private readonly clock: Clock,
    private readonly debug: ((msg: string, data: TraceEvent) => void) | undefined,
    private readonly node: () => string | undefined = () => undefined,
  ) {}

  /** Whether anything listens: when not, the engine's calls cost one branch. */
  get on(): boolean {
    return this.store !== undefined || this.debug !== undefined;
  }

  /** Every kept event of message `id`, oldest first (none without a store). */
  query(id: string): Promise<TraceEvent[]> {
    return this.store ? this.store.query(id) : Promise.resolve([]);
  }

  /** The outcome of one append item from a sender device. */
  committed(input: AppendInput, out: AppendOutcome): void {
    if (input.kind !== 'msg') return;
    const device = addressOf(input.from);
    if (!out.ok) this.emit(input.id, 'refused', device, out.code);
    else if (out.duplicate) this.emit(input.id, 'duplicate', device);
    else this.emit(input.id, 'committed', device, `${out.notify.length} devices`);
  }

  /** An inbox entry sent to `device` over its connection. */
  pushed(device: DeviceAddress, e: InboxEntry): void {
    if (e.kind === 'msg') this.pushedMessage(device, e.id, e.offset);
    else if (e.kind === 'status') {
      const addr = addressOf(device);
      for (const id of e.ids) this.emit(id, 'status', addr, STATUS_WORD[e.status]);
    }
  }

  /** Message `id`, at inbox offset `offset`, sent to `device` over its connection. */
  pushedMessage(device: DeviceAddress, id: string, offset: number): void {
    const addr = addressOf(device);
    if (this.unacked.size >= MAX_UNACKED) this.unacked.delete(this.unacked.keys().next().value!);
    this.unacked.set(`${addr}|${offset}`, id);
    this.emit(id, 'pushed', addr, String(offset));
  }

  /** `device` acked these offsets of its inbox. */
  acked(device: DeviceAddress, offsets: number[]): void {
    const addr = addressOf(device);
    for (const o of offsets) {
      const key = `${addr}|${o}`;
      const id = this.unacked.get(key);
      if (id === undefined) continue;
      this.unacked.delete(key);
      this.emit(id, 'acked', addr);
    }
  }

  private emit(id: string, kind: TraceEventKind, device: string, detail?: string): void {
    const e: TraceEvent = { id, at: this.clock.now(), kind, device };
    if (detail !== undefined) e.detail = detail;
    const node = this.node();
    if (node !== undefined) e.node = node;
    this.store?.record([e]);
    this.debug?.('trace', e);
  }
}

/** What a table-backed trace store does; {@link bufferedTraceStore} adds the buffering. */
export interface TraceTable {
  /** Writes a batch in one transaction. */
  write(events: TraceEvent[]): Promise<void> | void;
  /** Deletes events older than `cutoff` (ms since the epoch). */
  prune(cutoff: number): Promise<void> | void;
  /** The events of `id`, oldest first. */
  query(id: string): Promise<TraceEvent[]> | TraceEvent[];
  /** Releases the table's connection. */
  close(): Promise<void> | void;
}

/** Options of the table-backed trace stores (SQLite, PostgreSQL). */
export interface TraceTableOptions {
  /** Events older than this are deleted. @default 7 days */
  retentionMs?: number;
  /** Buffered events are written at least this often. @default 1000 */
  flushMs?: number;
  /** Most events buffered while the table is slow or down; the oldest are dropped. @default 20000 */
  maxBuffered?: number;
}

/**
 * Buffers events and writes them to `table` in batches (one transaction a second, or sooner when
 * the buffer fills), prunes past the retention once a minute, and never lets a failing table
 * reach the message path: a failed write keeps the batch for the next try, within `maxBuffered`.
 * A crash loses at most the last `flushMs` of events. @internal
 */
export function bufferedTraceStore(table: TraceTable, options: TraceTableOptions = {}): TraceStore {
  const retentionMs = options.retentionMs ?? 7 * 24 * 3600_000;
  const flushMs = options.flushMs ?? 1000;
  const maxBuffered = options.maxBuffered ?? 20_000;
  let buffer: TraceEvent[] = [];
  let timer: ReturnType<typeof setTimeout> | undefined;
  let writing: Promise<void> = Promise.resolve();
  let lastPrune = 0;
  const flush = (): Promise<void> => {
    timer = undefined;
    const batch = buffer;
    if (batch.length === 0) return writing;
    buffer = [];
    writing = writing.then(async () => {
      try {
        await table.write(batch);
        const now = Date.now();
        if (now - lastPrune >= 60_000) {
          lastPrune = now;
          await table.prune(now - retentionMs);
        }
      } catch {
        // Kept for the next flush, newest first out when over the bound.
        buffer = batch.concat(buffer).slice(-maxBuffered);
        schedule();
      }
    });
    return writing;
  };
  const schedule = (): void => {
    if (timer === undefined) {
      timer = setTimeout(() => void flush(), flushMs);
      timer.unref?.();
    }
  };
  return {
    record(events) {
      for (const e of events) buffer.push(e);
      if (buffer.length > maxBuffered) buffer.splice(0, buffer.length - maxBuffered);
      if (buffer.length >= 512) void flush();
      else schedule();
    },
    async query(id) {
      await flush();
      return table.query(id);
    },
    async close() {
      if (timer !== undefined) clearTimeout(timer);
      await flush();
      await table.close();
    },
  };
}

/** A trace event as a table row (`at` may come back from a driver as a string). @internal */
export interface TraceRow {
  id: string;
  at: number | string;
  kind: TraceEventKind;
  device: string | null;
  detail: string | null;
  node: string | null;
}

/** A row as a {@link TraceEvent}, without the columns it left empty. @internal */
export function fromTraceRow(r: TraceRow): TraceEvent {
  const e: TraceEvent = { id: r.id, at: Number(r.at), kind: r.kind };
  if (r.device !== null) e.device = r.device;
  if (r.detail !== null) e.detail = r.detail;
  if (r.node !== null) e.node = r.node;
  return e;
}
