/**
 * The acks of received inbox entries: collected as each entry is stored (or reported and
 * dropped), and sent in batches paced by ack-pacing.ts: at once on a quiet connection, else
 * `ackDelayMs` after the previous ack frame, and at once when half the server's delivery window
 * is waiting.
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

  constructor(private readonly ctx: ClientContext) {
    ctx.onIdle = () => this.idle();
  }

  /** Reads the server's delivery window: delaying acks needs it, or a drain could stall on it. */
  welcome(w: WelcomeFrame): void {
    this.batch = w.lim.dw === undefined ? 512 : Math.max(1, Math.min(512, Math.floor(w.lim.dw / 2)));
    this.delay = w.lim.dw === undefined ? 0 : this.ctx.opts.ackDelayMs;
  }

  /** The entry at `offset` is done with (stored, or reported and dropped): ack it. */
  later(offset: number): void {
    this.pending.push(offset);
    if (this.pending.length >= this.batch) this.flush();
  }

  /**
   * The store work ran dry: the acks go out now when the connection has been quiet, else
   * `ackDelayMs` after the last ack frame, with whatever follows.
   */
  private idle(): void {
    if (this.pending.length === 0 || this.timer !== undefined) return;
    const wait = ackWait(this.ctx.clock.now(), this.lastAckAt, this.delay);
    if (wait <= 0) return this.flush();
    this.timer = this.ctx.clock.setTimeout(() => {
      this.timer = undefined;
      this.flush();
    }, wait);
  }

  /** Sends every pending ack now (when open; else they wait for the next connection). */
  flush(): void {
    if (this.pending.length === 0 || !this.ctx.open) return;
    this.stop();
    const all = this.pending;
    if (all.length <= ACK_FRAME_MAX) this.ctx.write({ t: 'ack', o: all });
    else
      for (let k = 0; k < all.length; k += ACK_FRAME_MAX)
        this.ctx.write({ t: 'ack', o: all.slice(k, k + ACK_FRAME_MAX) });
    this.pending = [];
    this.lastAckAt = this.ctx.clock.now();
  }

  /** Cancels a paced flush (the connection ended). */
  stop(): void {
    this.ctx.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }
}
