/**
 * How the server engine forms its group commits: batches bounded by the inbox rows they write
 * (not by item count), filled round-robin across senders, so that one sender's queue of large
 * group messages cannot make a transaction long nor keep another sender's message waiting for
 * more than one batch. Small items and large fan-outs never share a batch (a 1:1 message is not
 * acked only once a 1,023-row fan-out has committed with it), when both wait the two kinds take
 * turns, and while small items are around a batch of large ones is short (one full-group
 * message). The engine yields to the event loop between batches.
 * @internal
 * @packageDocumentation
 */
import type { ClientFrame } from '../protocol/index.js';
import type { AppendInput, AppendOutcome } from './store.js';
import { BoundedMap } from './limits.js';

/** Most groups and recipients whose fan-out the estimate remembers. */
const MAX_REMEMBERED = 50_000;

/**
 * Rows an item writes besides its inbox entries (the body or event, the dedupe record): what an
 * item to nobody still costs.
 */
export const ITEM_OVERHEAD_ROWS = 2;

/**
 * Estimates how many inbox rows an append item will write, from what earlier commits of the same
 * group or recipient wrote (learned from their outcomes), before the store is asked. A group
 * never seen yet is assumed to be as large as the member cap, so the first message of a group
 * never sneaks a large fan-out into a batch sized for small ones.
 */
export class FanoutEstimate {
  private readonly seen = new BoundedMap<string, number>(MAX_REMEMBERED);

  constructor(
    private readonly maxGroupRows: number,
    /** Rows assumed for a 1:1 item to a user not seen yet (its devices and the sender's). */
    private readonly directRows = 8,
  ) {}

  /** Rows `item` is expected to write. */
  rows(item: AppendInput): number {
    if (item.kind === 'msg' && item.envelopes) return item.envelopes.length + ITEM_OVERHEAD_ROWS;
    const isGroup = item.kind === 'group' || (item.kind === 'msg' && item.group === true);
    return this.known(keyOf(item), isGroup) + ITEM_OVERHEAD_ROWS;
  }

  /** Rows a `send` or `grp` frame is expected to write (0 for other frames). */
  rowsOf(f: ClientFrame): number {
    if (f.t === 'send') {
      if (f.e) return f.e.length;
      return this.known(f.g ? `g:${f.to}` : `u:${f.to}`, f.g === true);
    }
    if (f.t === 'grp') return this.known(f.g, true);
    return 0;
  }

  private known(key: string, group: boolean): number {
    return this.seen.get(key) ?? (group ? this.maxGroupRows : this.directRows);
  }

  /** Learns from a committed item how many rows its conversation fans out to. */
  learn(item: AppendInput, out: AppendOutcome): void {
    if (!out.ok || out.duplicate) return;
    if (item.kind === 'receipt' && out.notify.length === 0) return;
    this.seen.set(keyOf(item), out.notify.length);
  }
}

const keyOf = (item: AppendInput): string =>
  item.kind === 'group' ? item.group : `${item.kind === 'msg' && item.group ? 'g' : 'u'}:${item.to}`;

/** How the row budget of a batch (`maxCommitRows`) is split; see {@link rowBounds}. */
export interface RowBounds {
  /**
   * Most inbox entries one transaction writes for one group message while small items are around,
   * with a store that slices (`slicedAppend`): 128 at the default, an eighth of a full group. With
   * SQLite on a loaded 2-core machine a 1:1 append beside full-group messages waited p50/p99
   * 14/39 ms with whole transactions, 8/40 with slices of 256, 4.3/21 with 128
   * (bench/tools/fanout-slices.mjs): what it waits for is a slice and the WAL flush after it.
   */
  slice: number;
  /** Items expected to write more rows than this are large: they never share a batch with small ones. */
  large: number;
  /** Most rows of a batch of large items while small items are around ({@link CONTENDED_MS}). */
  contended: number;
}

/**
 * The split of `maxCommitRows`: items expected to write more than a 128th of it are large (64 rows
 * at the default 8,192: a message to a group of more than about 30 two-device members); while
 * small items are around, a batch of large ones holds at most a quarter of it (2,048: one message
 * to a full 1,024-member group, not two). With SQLite such a message is one synchronous
 * transaction of 6–9 ms on a quiet core (bench/tools/fanout-stall.mjs); seven in one batch (what
 * the whole budget holds) hold the event loop, and every other sender, seven times as long, but
 * serve a busy group with half the server CPU per delivery (the fan-out bench).
 */
export function rowBounds(maxCommitRows: number): RowBounds {
  return {
    slice: Math.max(1, Math.floor(maxCommitRows / 64)),
    large: Math.max(1, Math.floor(maxCommitRows / 128)),
    contended: Math.max(1, Math.floor(maxCommitRows / 4)),
  };
}

/**
 * How long after a small item was queued batches of large ones stay at the contended bound: a
 * server where only large fan-outs are committing (one busy group, nobody else sending) batches
 * them up to the whole budget, for throughput; one where other senders are active keeps each
 * large transaction short, for their latency.
 */
export const CONTENDED_MS = 1000;

/** One queued item with the rows it is expected to write. */
interface Queued<T> {
  value: T;
  rows: number;
}

/**
 * A commit queue: FIFO per sender, batches taken round-robin across senders up to a row budget.
 * Each sender's items leave in the order they came (per-sender order), and a batch holds at least
 * one item (an item larger than the budget goes alone). A batch holds either small items only or
 * large ones only ({@link RowBounds.large}); when senders wait with both at the head of their
 * queues, small and large batches alternate, so a small item waits for at most the batch that is
 * running and one large batch, and a large one is not starved by a stream of small ones.
 */
export class FairCommitQueue<T> {
  private readonly queues = new Map<unknown, Array<Queued<T>>>();
  private count = 0;
  /** The kind of the last batch taken (true: large). */
  private lastLarge = false;

  /** @param largeRows Items expected to write more rows than this are large. */
  constructor(private readonly largeRows: number) {}

  /** Items waiting. */
  get length(): number {
    return this.count;
  }

  /** Whether the last batch taken held large items. */
  get lastWasLarge(): boolean {
    return this.lastLarge;
  }

  /** Forgets every item queued by `sender` (its connection closed; it resends them). */
  drop(sender: unknown): void {
    const q = this.queues.get(sender);
    if (!q) return;
    this.count -= q.length;
    this.queues.delete(sender);
  }

  /** Queues `value` from `sender` (any key: a session, or a symbol for server-side changes). */
  push(sender: unknown, value: T, rows: number): void {
    let q = this.queues.get(sender);
    if (!q) this.queues.set(sender, (q = []));
    q.push({ value, rows });
    this.count++;
  }

  /** Whether the next batch takes large items: the kind waiting, or when both wait, the other kind. */
  private nextIsLarge(): boolean {
    let small = false;
    let large = false;
    for (const q of this.queues.values()) {
      if (q[0]!.rows > this.largeRows) large = true;
      else small = true;
      if (small && large) return !this.lastLarge;
    }
    return large;
  }

  /**
   * The next batch: senders in turn (each gives its oldest item), round after round, until the
   * next item would pass the row bound (`maxRows`, or `maxLargeRows` for a batch of large items)
   * or the batch has `maxItems`. A sender whose next item does not fit, or is not of the batch's
   * kind (small or large), sits out the rest of this batch, so its order is kept. Senders that
   * gave an item move to the back of the line, so the next batch starts with those that did not.
   * With `smallOnly` (a large batch is still committing) the batch takes small items only, and a
   * sender whose next item is `blocked` sits out, as does its whole queue.
   */
  take(
    maxItems: number,
    maxRows: number,
    maxLargeRows = maxRows,
    smallOnly?: { blocked(sender: unknown, value: T): boolean },
  ): T[] {
    const out: T[] = [];
    if (this.count === 0) return out;
    const large = smallOnly ? false : this.nextIsLarge();
    if (!smallOnly) this.lastLarge = large;
    const bound = large ? maxLargeRows : maxRows;
    let rows = 0;
    const skipped = new Set<unknown>();
    const served = new Set<unknown>();
    while (out.length < maxItems) {
      let progressed = false;
      for (const [sender, q] of this.queues) {
        if (out.length >= maxItems) break;
        if (skipped.has(sender)) continue;
        const next = q[0]!;
        if (
          next.rows > this.largeRows !== large ||
          (out.length > 0 && rows + next.rows > bound) ||
          smallOnly?.blocked(sender, next.value)
        ) {
          skipped.add(sender);
          continue;
        }
        q.shift();
        this.count--;
        out.push(next.value);
        rows += next.rows;
        progressed = true;
        served.add(sender);
        if (q.length === 0) this.queues.delete(sender);
      }
      if (!progressed) break;
    }
    // Round-robin across batches: who was served goes to the back.
    for (const sender of served) {
      const q = this.queues.get(sender);
      if (!q) continue;
      this.queues.delete(sender);
      this.queues.set(sender, q);
    }
    return out;
  }
}

/** The commit queue's sender key for changes the server makes itself (`changeGroup`, …). */
export const SERVER_SIDE: unique symbol = Symbol('server-side');

/**
 * Lets every callback waiting in the event loop (I/O of other connections, timers) run before
 * going on: a macrotask, unlike a resolved promise.
 */
export const yieldToEventLoop = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));
