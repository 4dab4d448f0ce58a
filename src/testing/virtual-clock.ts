import type { Clock, TimerHandle } from '../util/clock.js';

interface Timer {
  at: number;
  order: number;
  fn: () => void;
}

const macrotask: (fn: () => void) => void =
  typeof setImmediate === 'function' ? (fn) => setImmediate(fn) : (fn) => setTimeout(fn, 0);

/** Lets every pending promise continuation run (one macrotask turn drains the microtask queue). */
const flushMicrotasks = (): Promise<void> => new Promise((resolve) => macrotask(resolve));

/**
 * A clock whose time moves only when a test says so. Timers fire in (time, creation) order,
 * and the microtask queue is drained after each one, so promise chains started by a timer
 * (store writes, handler callbacks) finish before the next timer fires. A run driven only by
 * this clock is deterministic: the same calls produce the same interleaving.
 */
export class VirtualClock implements Clock {
  private time: number;
  private order = 0;
  /** Min-heap on (at, order); cancelled timers are skipped lazily. */
  private heap: Timer[] = [];
  private readonly live = new Set<number>();

  /** @param start - initial time in ms since the epoch. @default 1_700_000_000_000 */
  constructor(start = 1_700_000_000_000) {
    this.time = start;
  }

  /** Current virtual time. */
  now(): number {
    return this.time;
  }

  /** Schedules `fn` at `now() + ms` (negative delays count as 0). */
  setTimeout(fn: () => void, ms: number): TimerHandle {
    const id = ++this.order;
    this.push({ at: this.time + Math.max(0, ms), order: id, fn });
    this.live.add(id);
    return id;
  }

  /** Cancels a timer; unknown or fired handles are ignored. */
  clearTimeout(handle: TimerHandle): void {
    if (typeof handle === 'number') this.live.delete(handle);
  }

  /** Number of timers not yet fired. */
  get pendingTimers(): number {
    return this.live.size;
  }

  /**
   * Moves time forward by `ms`, firing every timer that falls due on the way (including ones
   * scheduled by other timers), each followed by a microtask flush.
   */
  async advance(ms: number): Promise<void> {
    const end = this.time + Math.max(0, ms);
    await flushMicrotasks();
    for (;;) {
      const next = this.popDue(end);
      if (!next) break;
      this.time = Math.max(this.time, next.at);
      next.fn();
      await flushMicrotasks();
    }
    this.time = end;
    await flushMicrotasks();
  }

  /** Fires everything due now without moving time. */
  async tick(): Promise<void> {
    await this.advance(0);
  }

  private popDue(end: number): Timer | undefined {
    for (;;) {
      const top = this.heap[0];
      if (!top || top.at > end) return undefined;
      this.pop();
      if (this.live.delete(top.order)) return top;
    }
  }

  private static before(a: Timer, b: Timer): boolean {
    return a.at < b.at || (a.at === b.at && a.order < b.order);
  }

  private push(t: Timer): void {
    const h = this.heap;
    h.push(t);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!VirtualClock.before(h[i]!, h[p]!)) break;
      [h[i], h[p]] = [h[p]!, h[i]!];
      i = p;
    }
  }

  private pop(): void {
    const h = this.heap;
    const last = h.pop()!;
    if (h.length === 0) return;
    h[0] = last;
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < h.length && VirtualClock.before(h[l]!, h[m]!)) m = l;
      if (r < h.length && VirtualClock.before(h[r]!, h[m]!)) m = r;
      if (m === i) return;
      [h[i], h[m]] = [h[m]!, h[i]!];
      i = m;
    }
  }
}
