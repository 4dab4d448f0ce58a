/**
 * Entries pushed to a session ahead of an offset it has not sent yet. A store's calls settle in
 * whatever order their promises run: two commits that share one WAL flush (an ack that wrote a
 * status at offset 7 and an append that wrote a message at offset 8 for the same device) can
 * reach the session 8 first. Without a hold the session would give up its direct push for a
 * store read of its inbox on every such inversion (at saturation on SQLite, one push in four).
 * Held entries wait until the end of the current turn (a zero timer of the injected clock): the
 * missing offset normally arrives in the same turn and everything goes out in offset order; if
 * it has not arrived by then, the hold is dropped and the session reads its inbox, which holds
 * every committed entry (the store is the truth, so nothing held is ever the only copy).
 * @packageDocumentation
 */
import type { Clock, TimerHandle } from '../util/clock.js';

/** Encoded frames by offset, held for one turn; see the module header. @internal */
export class HeldEntries {
  private readonly held = new Map<number, Uint8Array>();
  private timer: TimerHandle | undefined;

  /** `expired` runs when entries were still held at the end of the turn they were held in. */
  constructor(
    private readonly clock: Clock,
    private readonly expired: () => void,
  ) {}

  /** How many frames are held. */
  get size(): number {
    return this.held.size;
  }

  /** Holds the frame of `offset` until the offsets before it have gone out (or the turn ends). */
  hold(offset: number, data: Uint8Array): void {
    this.held.set(offset, data);
    this.timer ??= this.clock.setTimeout(() => {
      this.timer = undefined;
      if (this.held.size > 0) this.expired();
    }, 0);
  }

  /** The held frame of `offset`, removed from the hold; undefined when it is not held. */
  take(offset: number): Uint8Array | undefined {
    const data = this.held.get(offset);
    if (data !== undefined) this.held.delete(offset);
    return data;
  }

  /** Forgets every held frame (a read of the inbox is about to deliver them). */
  clear(): void {
    this.held.clear();
    if (this.timer !== undefined) this.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }
}
