/**
 * Why a sender's sequence has a hole, and what the client knows about holes it cannot see yet:
 * the numbers the server said it dropped (gap notices, see docs/protocol.md) ahead of a stream's
 * next expected one, and the holes a group stream skipped without a word (a group never waits
 * for a hole) that a later notice may explain. Both are kept per stream in the client store, so
 * a restart between a notice and the messages it lets through changes nothing.
 */
import type { ClientStore, InboundMessage } from './store.js';

/**
 * Why messages of a sender are missing:
 * - `expired`: the server said it dropped them, unfetched, at the end of its retention period;
 *   reported as soon as that notice arrives.
 * - `inbox_full`: the server said it never stored them for this device because its inbox was at
 *   its quota (the other recipients got them; see docs/security.md); reported as soon as that
 *   notice arrives.
 * - `undecryptable`: with end-to-end encryption, a message this device could not decrypt and
 *   asked the sender for again; the new copy did not come within `gapTimeoutMs`.
 * - `overflow`: more than `maxHeldPerStream` later messages were waiting for the hole.
 * - `timeout`: the hole stayed open for `gapTimeoutMs` and nobody said why (a message the
 *   server refused, or lost by a faulty store).
 */
export type GapReason = (typeof GAP_REASONS)[number];

/** Every {@link GapReason}. */
export const GAP_REASONS = ['expired', 'inbox_full', 'timeout', 'undecryptable', 'overflow'] as const;

/** A hole in a sender's sequence that the client gave up on; the held messages after it were released. */
export interface GapEvent {
  conv: string;
  from: string;
  fromDevice: string;
  /** First missing sequence number. */
  fromSeq: number;
  /** Last missing sequence number. */
  toSeq: number;
  /** Why (see {@link GapReason}). */
  reason: GapReason;
}

/** An inclusive range of sequence numbers. */
export type Range = [number, number];

const NS_GAPS = 'gaps';
/** Most ranges kept per stream of each kind: the oldest skipped holes, the farthest dropped numbers go first. */
const MAX_RANGES = 256;

const has = (ranges: readonly Range[], s: number): boolean => ranges.some(([a, b]) => s >= a && s <= b);

/** Ranges sorted and merged where they overlap or touch. */
export function merge(ranges: readonly Range[]): Range[] {
  const out: Range[] = [];
  for (const [a, b] of [...ranges].sort((x, y) => x[0] - y[0])) {
    const last = out[out.length - 1];
    if (last && a <= last[1] + 1) last[1] = Math.max(last[1], b);
    else out.push([a, b]);
  }
  return out;
}

/** The numbers in both lists, as merged ranges. */
export function intersect(x: readonly Range[], y: readonly Range[]): Range[] {
  const out: Range[] = [];
  for (const [a, b] of x) {
    for (const [c, d] of y) if (Math.max(a, c) <= Math.min(b, d)) out.push([Math.max(a, c), Math.min(b, d)]);
  }
  return merge(out);
}

/** The numbers of `x` not in `y`, as merged ranges. */
export function subtract(x: readonly Range[], y: readonly Range[]): Range[] {
  let out = merge(x);
  for (const [c, d] of y) {
    out = out.flatMap(([a, b]): Range[] => {
      if (d < a || c > b) return [[a, b]];
      const parts: Range[] = [];
      if (a < c) parts.push([a, c - 1]);
      if (d < b) parts.push([d + 1, b]);
      return parts;
    });
  }
  return out;
}

/** One step of a stream moving forward: a held message released, or a dropped range passed. */
export type Step = { msg: InboundMessage; gap?: undefined } | { gap: Range; msg?: undefined };

/**
 * Walks a stream forward from `next` over held messages and numbers the server dropped, as far
 * as they reach; pure. Returns the new next expected number and the steps in sequence order.
 */
export function walk(
  next: number,
  held: ReadonlyMap<number, InboundMessage> | undefined,
  dropped: readonly Range[],
): { next: number; steps: Step[] } {
  const steps: Step[] = [];
  let n = next;
  for (;;) {
    const m = held?.get(n);
    if (m) {
      steps.push({ msg: m });
      n++;
      continue;
    }
    const r = dropped.find(([a, b]) => n >= a && n <= b);
    if (!r) break;
    steps.push({ gap: [n, r[1]] });
    n = r[1] + 1;
  }
  return { next: n, steps };
}

/** A missing range and why. */
export interface ReasonedRange {
  from: number;
  to: number;
  reason: GapReason;
}

/**
 * The missing range `[from, to]` split by reason: numbers pinned (asked for again) are
 * `undecryptable`, numbers the server dropped `inbox_full` when in `full`, else `expired`, the
 * rest `fallback`.
 */
export function reasonsOf(
  from: number,
  to: number,
  pinned: ReadonlySet<number> | undefined,
  dropped: readonly Range[],
  fallback: GapReason,
  full: readonly Range[] = [],
): ReasonedRange[] {
  const out: ReasonedRange[] = [];
  for (let s = from; s <= to; s++) {
    const reason = pinned?.has(s)
      ? 'undecryptable'
      : has(dropped, s)
        ? has(full, s)
          ? 'inbox_full'
          : 'expired'
        : fallback;
    const last = out[out.length - 1];
    if (last && last.reason === reason && last.to === s - 1) last.to = s;
    else out.push({ from: s, to: s, reason });
  }
  return out;
}

interface StreamGaps {
  /** Numbers at or past the stream's next expected one that the server said it dropped. */
  dropped: Range[];
  /** Those of `dropped` it dropped because this device's inbox was full (the others expired). */
  full?: Range[];
  /** Group holes skipped without a reason, which a later notice may explain. */
  skipped: Range[];
}

/** No ranges: one shared frozen list (asked on every received message), not a new one per call. */
const NONE: readonly Range[] = Object.freeze([]);

/** The per-stream gap knowledge, cached over the client store's `gaps` namespace. */
export class GapBook {
  private readonly streams = new Map<string, StreamGaps>();

  constructor(private readonly store: ClientStore) {}

  /** Reads every stream's record (at start). */
  async load(): Promise<void> {
    this.streams.clear();
    for (const { key, value } of await this.store.listState(NS_GAPS)) {
      this.streams.set(key, JSON.parse(new TextDecoder().decode(value)) as StreamGaps);
    }
  }

  /** The numbers the server dropped at or past the stream's next expected one. */
  dropped(key: string): readonly Range[] {
    return this.streams.get(key)?.dropped ?? NONE;
  }

  /** Of {@link GapBook.dropped}, the numbers dropped because this device's inbox was full. */
  full(key: string): readonly Range[] {
    return this.streams.get(key)?.full ?? NONE;
  }

  /**
   * Records numbers the server dropped at or past the stream's next expected one; `full`: because
   * this device's inbox was full.
   */
  async addDropped(key: string, ranges: readonly Range[], full = false): Promise<void> {
    const g = this.of(key);
    g.dropped = merge([...g.dropped, ...ranges]).slice(0, MAX_RANGES);
    if (full) g.full = merge([...(g.full ?? []), ...ranges]).slice(0, MAX_RANGES);
    await this.save(key, g);
  }

  /** The stream moved to `next`: dropped numbers before it are history. */
  async passed(key: string, next: number): Promise<void> {
    const g = this.streams.get(key);
    if (!g || !g.dropped.some(([a]) => a < next)) return;
    const from = (ranges: Range[]): Range[] =>
      ranges.flatMap(([a, b]): Range[] => (b < next ? [] : [[Math.max(a, next), b]]));
    g.dropped = from(g.dropped);
    if (g.full) g.full = from(g.full);
    await this.save(key, g);
  }

  /** A group stream skipped `[from, to]` without knowing why. */
  async skipped(key: string, from: number, to: number): Promise<void> {
    const g = this.of(key);
    g.skipped = [...g.skipped, [from, to] as Range].slice(-MAX_RANGES);
    await this.save(key, g);
  }

  /**
   * Numbers the server says it dropped behind the stream's next expected one: those inside a
   * skipped group hole are explained now (returned as ranges, and forgotten as skipped); the
   * others were shown or already reported.
   */
  async explain(key: string, ranges: readonly Range[]): Promise<Range[]> {
    const g = this.streams.get(key);
    if (!g || g.skipped.length === 0) return [];
    const hit = intersect(g.skipped, ranges);
    if (hit.length === 0) return [];
    g.skipped = subtract(g.skipped, hit);
    await this.save(key, g);
    return hit;
  }

  private of(key: string): StreamGaps {
    let g = this.streams.get(key);
    if (!g) this.streams.set(key, (g = { dropped: [], skipped: [] }));
    return g;
  }

  private async save(key: string, g: StreamGaps): Promise<void> {
    const empty = g.dropped.length === 0 && g.skipped.length === 0;
    const value = empty ? undefined : new TextEncoder().encode(JSON.stringify(g));
    await this.store.putState([{ ns: NS_GAPS, key, value }]);
    if (empty) this.streams.delete(key);
  }
}
