/**
 * One session's delivery window: which inbox entries went down its connection (the cursor, the
 * offsets in flight until the device acks them), when to read the inbox again, and the pushes
 * held until the offsets before them go out (held-entries.ts). The store is the truth: a push
 * is only a shortcut for a read, and every path that cannot push rings for one.
 * Internal to the engine: a part of the session (session.ts), not exported.
 * @packageDocumentation
 */
import {
  GAP_FRAME_VERSION,
  INBOX_FULL_GAP_VERSION,
  encodeFrame,
  type ServerFrame,
} from '../protocol/index.js';
import type { Connection } from '../transport/types.js';
import { HeldEntries } from './held-entries.js';
import type { SessionHost } from './session-host.js';
import type { DeviceAddress, InboxEntry } from './store.js';
import { entryFrame } from './wire.js';

/** What a delivery window needs of its session. @internal */
export interface WindowOwner {
  readonly conn: Connection;
  /** The device, once the session opened. */
  readonly addr: DeviceAddress | undefined;
  /** Open: frames may go down the connection. */
  isOpen(): boolean;
  /** The connection buffers more than `sendHighWaterBytes`: deliveries pause. */
  backlogged(): boolean;
  /** The protocol version the session speaks (which entries it has frames for). */
  protocolVersion(): number;
  send(frame: ServerFrame): void;
}

/** See the module header. @internal */
export class DeliveryWindow<S extends WindowOwner> {
  private cursor = 0;
  /** Offsets delivered and not yet acked; made on the first delivery (idle sessions never need one). */
  private inflight: Set<number> | undefined;
  private reading = false;
  private dirty = false;
  /**
   * The last read reached the end of the inbox and nothing was appended since (every append
   * rings): an ack or a drain then frees room without a pointless read of an empty tail.
   */
  private drained = false;
  /** When the inbox was last read (for {@link ServerOptions.inboxPollMs}). */
  lastReadAt = 0;
  /** Pushes that overtook an earlier offset's, held until it goes out (see held-entries.ts). */
  private readonly held: HeldEntries;

  constructor(
    private readonly host: SessionHost<S>,
    private readonly owner: S,
  ) {
    this.held = new HeldEntries(host.clock, () => this.notify());
  }

  /** The device acked these offsets: they leave the window. */
  acked(offsets: number[]): void {
    if (this.inflight) for (const o of offsets) this.inflight.delete(o);
  }

  /** The session closed: nothing stays held. */
  closed(): void {
    this.held.clear();
  }

  /**
   * Whether the entry at `offset` may go out without a store read: the inbox was drained (every
   * entry up to the cursor went out), `offset` is past the cursor, and the window has room for
   * it and for the entries before it that have not come yet. When it may not, the caller rings.
   */
  canTake(offset: number): boolean {
    if (!this.owner.isOpen() || !this.drained || this.reading || offset <= this.cursor) return false;
    const ahead = offset - this.cursor; // this entry, and the ones before it still to come
    if ((this.inflight?.size ?? 0) + ahead > this.host.config.deliveryWindow) return false;
    return !this.owner.backlogged();
  }

  /**
   * Sends the entry at `offset`, already encoded, that {@link canTake} let through; one that
   * overtook an earlier offset's push is held until that one goes out.
   */
  take(offset: number, data: Uint8Array): void {
    if (offset !== this.cursor + 1) return this.held.hold(offset, data);
    this.sendAt(offset, data);
    let next: Uint8Array | undefined;
    while (this.held.size > 0 && (next = this.held.take(offset + 1)) !== undefined)
      this.sendAt(++offset, next);
  }

  private sendAt(offset: number, data: Uint8Array): void {
    this.cursor = offset;
    (this.inflight ??= new Set()).add(offset);
    this.owner.conn.send(data);
    this.host.metrics.delivered(1);
  }

  /** Delivers an entry the store just wrote when {@link canTake} lets it through; false otherwise. */
  offer(e: InboxEntry): boolean {
    if (!this.canTake(e.offset)) return false;
    const addr = this.owner.addr!;
    this.take(e.offset, encodeFrame(entryFrame(e, addr.user)));
    if (this.host.tracer.on) this.host.tracer.pushed(addr, e);
    return true;
  }

  /** New entries landed in this device's inbox. */
  notify(): void {
    this.drained = false;
    this.pump();
  }

  /** Pulls the next entries of the inbox into the window. Store is the truth; this is idempotent. */
  pump(): void {
    if (!this.owner.isOpen() || this.drained) return;
    if (this.reading) {
      this.dirty = true;
      return;
    }
    const room = this.host.config.deliveryWindow - (this.inflight?.size ?? 0);
    if (room <= 0 || this.owner.backlogged()) return;
    this.held.clear(); // the read delivers them, in order
    this.reading = true;
    this.dirty = false;
    this.lastReadAt = this.host.clock.now();
    const addr = this.owner.addr!;
    this.host.store.readInbox(addr, this.cursor, room).then(
      (entries) => {
        this.reading = false;
        if (!this.owner.isOpen()) return;
        const version = this.owner.protocolVersion();
        let unsendable: number[] | undefined;
        for (const e of entries) {
          this.cursor = e.offset;
          if (
            e.kind === 'gap' &&
            version < (e.reason === 'inbox_full' ? INBOX_FULL_GAP_VERSION : GAP_FRAME_VERSION)
          ) {
            (unsendable ??= []).push(e.offset);
            continue;
          }
          (this.inflight ??= new Set()).add(e.offset);
          this.owner.send(entryFrame(e, addr.user));
          if (this.host.tracer.on) this.host.tracer.pushed(addr, e);
        }
        if (entries.length > 0) this.host.metrics.delivered(entries.length - (unsendable?.length ?? 0));
        if (unsendable) void this.ackUnsendable(unsendable);
        if (this.dirty || entries.length === room) this.pump();
        else this.drained = true;
      },
      (e) => {
        this.reading = false;
        this.host.storeFailed(e, this.owner);
      },
    );
  }

  /**
   * Deletes entries this session's protocol version has no frame for (gap notices before version
   * 2, `inbox_full` ones before 3), as the device's ack would; the next read goes past them anyway.
   */
  private async ackUnsendable(offsets: number[]): Promise<void> {
    try {
      const res = await this.host.store.ack(this.owner.addr!, offsets, this.host.clock.now());
      this.host.ring(res.notify);
    } catch (e) {
      this.host.storeFailed(e, this.owner);
    }
  }
}
