/**
 * The acks of received inbox entries: collected as each entry is stored (or reported and
 * dropped), and sent in batches paced by ack-pacing.ts: at once on a quiet connection, else
 * `ackDelayMs` after the previous ack frame, and at once when half the server's delivery window
 * is waiting. Acks nobody waits for (quiet: statuses) wait longer, and leave with the next
 * frame this device writes once the pacing allows one.
 * @packageDocumentation
 */
import type { WelcomeFrame } from '../protocol/index.js';
import type { TimerHandle } from '../util/clock.js';
import { ackWait } from './ack-pacing.js';
import type { ClientContext } from './context.js';

/** Most offsets one ack frame carries. */
const ACK_FRAME_MAX = 1024;

/** The ack batcher of one client. */
export class Acks {
  private pending: number[] = [];
  private timer: TimerHandle | undefined;
  /** Unsent acks that go out at once: half the server's delivery window. */
  private batch = 512;
  /** `ackDelayMs`, or 0 with a server that does not say its delivery window. */
  private delay = 0;
  /** When the last ack frame left (see ack-pacing.ts). */
  private lastAckAt: number | undefined;
  /** Whether every pending ack is quiet (nobody waits for it: ack-pacing.ts). */
  private quiet = true;
  /** When the paced flush's timer fires. */
  private due = 0;

  constructor(private readonly ctx: ClientContext) {
    ctx.onIdle = () => this.idle();
    ctx.onWrite = () => this.carry();
  }

  /** Reads the server's delivery window: delaying acks needs it, or a drain could stall on it. */
  welcome(w: WelcomeFrame): void {
    this.batch = w.lim.dw === undefined ? 512 : Math.max(1, Math.min(512, Math.floor(w.lim.dw / 2)));
    this.delay = w.lim.dw === undefined ? 0 : this.ctx.opts.ackDelayMs;
  }

  /**
   * The entry at `offset` is done with (stored, or reported and dropped): ack it. `quiet`: its
   * ack makes nothing happen for anyone (not a message), so it may wait longer.
   */
  later(offset: number, quiet = false): void {
    this.pending.push(offset);
    if (!quiet) this.quiet = false;
    if (this.pending.length >= this.batch) this.flush();
  }

  /**
   * The store work ran dry: the acks go out now when the connection has been quiet, else
   * `ackDelayMs` after the last ack frame, with whatever follows; quiet ones alone wait longer.
   */
  private idle(): void {
    // Not open: they wait for the next connection (its `opened` flushes them), with no timer.
    if (this.pending.length === 0 || !this.ctx.open) return;
    const now = this.ctx.clock.now();
    const wait = ackWait(now, this.lastAckAt, this.delay, this.quiet);
    if (wait <= 0) return this.flush();
    // A flush already due no later stays; a quiet wait becomes a message's shorter one.
    if (this.timer !== undefined && this.due <= now + wait) return;
    this.stop();
    this.due = now + wait;
    this.timer = this.ctx.clock.setTimeout(() => {
      this.timer = undefined;
      this.flush();
    }, wait);
  }

  /**
   * Another frame is being written: pending acks the pacing would let leave now go with it (in
   * the same write, as the transport batches one run's frames), rather than in a frame of their
   * own later.
   */
  private carry(): void {
    if (this.pending.length === 0 || !this.ctx.open) return;
    if (ackWait(this.ctx.clock.now(), this.lastAckAt, this.delay) <= 0) this.flush();
  }

  /** Sends every pending ack now (when open; else they wait for the next connection). */
  flush(): void {
    if (this.pending.length === 0 || !this.ctx.open) return;
    this.stop();
    // Taken before the writes: the write hook (`carry`) then finds nothing pending.
    const all = this.pending;
    this.pending = [];
    this.quiet = true;
    this.lastAckAt = this.ctx.clock.now();
    if (all.length <= ACK_FRAME_MAX) this.ctx.write({ t: 'ack', o: all });
    else
      for (let k = 0; k < all.length; k += ACK_FRAME_MAX)
        this.ctx.write({ t: 'ack', o: all.slice(k, k + ACK_FRAME_MAX) });
  }

  /** Cancels a paced flush (the connection ended). */
  stop(): void {
    this.ctx.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }
}
