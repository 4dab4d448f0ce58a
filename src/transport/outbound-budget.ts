/**
 * One bound on the bytes queued for sending across every connection of a transport. Each
 * connection's own cap (`maxBufferedBytes`) bounds one peer that stops reading; this bounds all
 * of them together, so 40 peers that stop reading cannot take 40 times that. Past the bound the
 * connections with the most bytes queued (the slowest readers) are shed first, until the total is
 * back under the low mark, and each one shed hears close code 4008 (`CLOSE_CODES.slowReader`)
 * if it still reads, else a reset.
 * @packageDocumentation
 */

/** Default {@link OutboundBudget} bound: 128 MiB. */
export const DEFAULT_MAX_QUEUED_BYTES = 128 * 1024 * 1024;

/** Connections below this many queued bytes are never scanned for shedding while others exist. */
const BACKLOG_BYTES = 64 * 1024;

/** What the budget needs of a connection. */
export interface BudgetEntry {
  /** Bytes this connection has queued, as last reported. @internal */
  queued: number;
  /** Ends the connection for being the slowest reader; it then calls {@link OutboundBudget.release}. */
  shed(): void;
}

/**
 * The shared account. Connections report their queued bytes with {@link update} after every send
 * and write completion; an update that takes the total over the bound sheds the largest queues.
 */
export class OutboundBudget {
  private total = 0;
  /** Entries with at least {@link BACKLOG_BYTES} queued: the only ones scanned, normally. */
  private readonly backlogged = new Set<BudgetEntry>();
  private readonly entries = new Set<BudgetEntry>();
  private shedding = false;
  /** Connections shed since the start. */
  shedCount = 0;

  /**
   * @param max the bound on the total, in bytes
   * @param low after shedding, the total is at most this (default 3/4 of `max`), so that one more
   *   send does not shed again at once
   */
  constructor(
    readonly max: number = DEFAULT_MAX_QUEUED_BYTES,
    readonly low: number = Math.floor(max * 0.75),
  ) {
    if (!(max > 0)) throw new RangeError(`maxQueuedBytes must be positive, got ${max}`);
  }

  /** Bytes queued across every connection. */
  get queuedBytes(): number {
    return this.total;
  }

  /** Starts accounting for a connection (with nothing queued). */
  add(entry: BudgetEntry): void {
    entry.queued = 0;
    this.entries.add(entry);
  }

  /** A connection's queued bytes are now `queued`; sheds the slowest readers when over the bound. */
  update(entry: BudgetEntry, queued: number): void {
    if (!this.entries.has(entry)) return;
    this.total += queued - entry.queued;
    entry.queued = queued;
    if (queued >= BACKLOG_BYTES) this.backlogged.add(entry);
    else this.backlogged.delete(entry);
    if (this.total > this.max && !this.shedding) this.shed();
  }

  /** The connection is gone: its bytes no longer count. */
  release(entry: BudgetEntry): void {
    if (!this.entries.delete(entry)) return;
    this.total -= entry.queued;
    entry.queued = 0;
    this.backlogged.delete(entry);
  }

  private shed(): void {
    this.shedding = true;
    try {
      while (this.total > this.low) {
        const victim = largest(this.backlogged.size > 0 ? this.backlogged : this.entries);
        if (!victim || victim.queued === 0) break;
        // Released first: its bytes are on their way out whatever the connection does next.
        this.release(victim);
        this.shedCount++;
        victim.shed();
      }
    } finally {
      this.shedding = false;
    }
  }
}

function largest(set: Set<BudgetEntry>): BudgetEntry | undefined {
  let best: BudgetEntry | undefined;
  for (const e of set) if (!best || e.queued > best.queued) best = e;
  return best;
}
