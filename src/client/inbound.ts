/**
 * The inbound path: one accept template for every inbox entry (persist, then ack; or report and
 * drop, unacked, so the server delivers it again), per-sender order with a bounded reorder
 * buffer, gaps (given up after `gapTimeoutMs` or `maxHeldPerStream`, or passed at once on the
 * server's gap notice, each with its reason: gaps.ts), and pins (streams waiting for a message
 * asked for again).
 *
 * A little over 400 lines: the received message's common path and the general one sit side by
 * side on purpose (the common one is not async, see `receive`), and they share the order rules.
 * @packageDocumentation
 */
import { isGroupId, type GapFrame } from '../protocol/index.js';
import type { TimerHandle } from '../util/clock.js';
import type { Acks } from './acks.js';
import type { ClientContext, Me } from './context.js';
import {
  GapBook,
  reasonsOf,
  walk,
  type GapReason,
  type Range,
  type ReasonedRange,
  type Step,
} from './gaps.js';
import { NS_PINS, decodeSeqs, encodeSeqs, streamKey, streamOf } from './namespaces.js';
import type { InboundMessage } from './store.js';
import { conversationOf } from './wire.js';

/** One sender device's stream in one conversation, as a `gap` event names it. */
interface Stream {
  conv: string;
  from: string;
  fromDevice: string;
}

/** Returned by an accepted entry's work to leave it unacked (it waits on the server). */
export const KEEP_UNACKED = false;

const runWork = (e: { work: () => Promise<boolean | void> }): Promise<boolean | void> => e.work();

/** The inbound part of one client. */
export class Inbound {
  /** Next expected sequence number per stream (conversation, sender, device). */
  private readonly streams = new Map<string, number>();
  private readonly heldByKey = new Map<string, Map<number, InboundMessage>>();
  private readonly gapTimers = new Map<string, TimerHandle>();
  /** Streams waiting for messages asked for again (stream key → their sequence numbers). */
  private readonly pins = new Map<string, Set<number>>();
  /** What the server said it dropped, and group holes skipped without a reason (gaps.ts). */
  private readonly gapBook: GapBook;

  constructor(
    private readonly ctx: ClientContext,
    private readonly acks: Acks,
    /** A message from a device that was typing ends its typing notice (presence.ts). */
    private readonly endTyping: (conv: string, user: string, device: string) => void,
  ) {
    this.gapBook = new GapBook(ctx.store);
  }

  /**
   * The one accept template of an inbox entry at `offset`: `work` runs as a serial store task;
   * when it resolves the entry is acked (unless it returned {@link KEEP_UNACKED}); when it throws
   * (a local fault) the entry is not acked, the fault is reported and the link dropped, so the
   * server delivers the entry again after the reconnect. `quiet`: a status's ack may wait
   * (ack-pacing.ts).
   */
  accept(offset: number, work: () => Promise<boolean | void>, quiet = false): void {
    this.ctx.then(runWork, { work, offset, quiet }, this.accepted, this.faulted);
  }

  /** {@link accept} of a delivered message: `receive(m)`, with no closure made for it. */
  acceptMessage(offset: number, m: InboundMessage): void {
    this.ctx.then(this.receiveEntry, { m, offset, quiet: false }, this.accepted, this.faulted);
  }

  private readonly receiveEntry = (e: { m: InboundMessage }): Promise<void> => this.receive(e.m);

  private readonly accepted = (kept: boolean | void, e: { offset: number; quiet: boolean }): void => {
    if (kept !== KEEP_UNACKED) this.acks.later(e.offset, e.quiet);
  };

  private readonly faulted = (error: unknown, gen: number): void => this.ctx.fault(gen, error);

  /** Reloads pins and held messages from the store (every connection starts from it). */
  async load(): Promise<void> {
    const store = this.ctx.store;
    this.pins.clear();
    for (const { key, value } of await store.listState(NS_PINS)) {
      this.pins.set(key, decodeSeqs(value));
      this.armGapTimer(key);
    }
    await this.gapBook.load();
    this.heldByKey.clear();
    for (const m of await store.held()) {
      const key = streamKey(m.conv, m.from, m.fromDevice);
      let held = this.heldByKey.get(key);
      if (!held) this.heldByKey.set(key, (held = new Map()));
      held.set(m.seq, m);
      this.armGapTimer(key);
    }
  }

  /** The client closed: no gap is given up while it is. */
  close(): void {
    for (const t of this.gapTimers.values()) this.ctx.clock.clearTimeout(t);
    this.gapTimers.clear();
  }

  /** The next expected sequence number of a stream. */
  private async nextFor(key: string): Promise<number> {
    return this.streams.get(key) ?? (await this.loadNext(key));
  }

  /** Reads a stream's next expected number from the store (once per stream and run). */
  private async loadNext(key: string): Promise<number> {
    const next = (await this.ctx.store.streamNext(key)) ?? 1;
    this.streams.set(key, next);
    return next;
  }

  /**
   * Stores a received message in per-sender order: the next one is shown with the held ones it
   * releases, an old one (after its gap was given up) is shown as late, a future one is held.
   * A duplicate changes nothing.
   */
  receive(m: InboundMessage): Promise<void> {
    const key = streamKey(m.conv, m.from, m.fromDevice);
    // Nearly every message: the stream's next one, nothing held, pinned or dropped around it. A
    // small function of its own: an async function's frame is as big as its largest path.
    if (
      this.streams.get(key) === m.seq &&
      !this.heldByKey.has(key) &&
      !this.pins.has(key) &&
      this.gapBook.dropped(key).length === 0
    ) {
      return this.receiveNext(m, key);
    }
    return this.receiveAny(m, key);
  }

  /**
   * {@link receive} of the stream's next message with nothing held, pinned or dropped; not async
   * (every received message takes it).
   */
  private receiveNext(m: InboundMessage, key: string): Promise<void> {
    const next = m.seq + 1;
    // No guard for a store that throws: a store task and an async function, the callers, make
    // the throw a rejection already.
    return this.ctx.store.applyInbound({ insert: m, streams: [{ key, next }] }).then(({ inserted }) => {
      if (!inserted) return;
      this.streams.set(key, next);
      this.emitMessage(m, false);
    });
  }

  /** {@link receive}, every case. */
  private async receiveAny(m: InboundMessage, key: string): Promise<void> {
    const store = this.ctx.store;
    // The stream's number is in memory after its first message: no await for it then.
    let next = this.streams.get(key) ?? (await this.loadNext(key));
    // In a group a hole in a sender's sequence is never waited for: it is a message the server
    // refused (the sender was no longer a member) or one sent while this user was not in the
    // group, and the inbox already delivers a sender's messages in commit order. A gap notice
    // that comes later may still explain it (gaps.ts).
    let passed: ReasonedRange[] = [];
    if (m.seq > next && isGroupId(m.conv)) {
      // Skip the hole, but not past a message asked for again.
      let first = m.seq;
      for (const s of this.pins.get(key) ?? []) if (s >= next && s < first) first = s;
      if (first > next) passed = await this.skipHole(key, next, first - 1);
      next = first;
    }
    if (m.seq === next) {
      const pinned = this.pins.get(key);
      if (pinned?.has(m.seq)) {
        const rest = new Set(pinned);
        rest.delete(m.seq);
        await this.savePins(key, rest);
      }
      const held = this.heldByKey.get(key);
      const dropped = this.gapBook.dropped(key);
      if (!held && dropped.length === 0 && passed.length === 0) {
        // The common case, nothing held or dropped behind it: no steps to walk.
        const { inserted } = await store.applyInbound({ insert: m, streams: [{ key, next: m.seq + 1 }] });
        if (!inserted) return;
        this.streams.set(key, m.seq + 1);
        this.emitMessage(m, false);
        return;
      }
      const { next: n, steps } = walk(m.seq + 1, held, dropped);
      const released = steps.flatMap((st) => (st.msg ? [st.msg] : []));
      const { inserted } = await store.applyInbound({
        insert: m,
        release: released.map((r) => r.id),
        streams: [{ key, next: n }],
      });
      if (!inserted) return;
      this.streams.set(key, n);
      for (const r of released) held!.delete(r.seq);
      if ((held?.size ?? 0) === 0 && !this.pins.has(key)) this.clearGap(key);
      const full = this.gapBook.full(key); // before `passed` forgets it
      await this.gapBook.passed(key, n);
      for (const r of passed) this.emitGap(m, r.from, r.to, r.reason);
      this.emitMessage(m, false);
      this.emitSteps(m, steps, full);
    } else if (m.seq < next) {
      const { inserted } = await store.applyInbound({ insert: m });
      if (inserted) this.emitMessage(m, true);
    } else {
      const { inserted } = await store.applyInbound({ insert: { ...m, held: true } });
      if (!inserted) return;
      let held = this.heldByKey.get(key);
      if (!held) this.heldByKey.set(key, (held = new Map()));
      held.set(m.seq, m);
      if (held.size > this.ctx.opts.maxHeldPerStream) {
        this.clearGap(key);
        await this.giveUpGap(key, 'overflow');
      } else this.armGapTimer(key);
    }
  }

  /**
   * A group stream passes the hole `[from, to]` without waiting: the numbers the server already
   * said it dropped are returned with why (to report), the others are kept as skipped.
   */
  private async skipHole(key: string, from: number, to: number): Promise<ReasonedRange[]> {
    const book = this.gapBook;
    const known = reasonsOf(from, to, undefined, book.dropped(key), 'timeout', book.full(key));
    const said = (r: ReasonedRange) => r.reason === 'expired' || r.reason === 'inbox_full';
    for (const r of known) if (!said(r)) await book.skipped(key, r.from, r.to);
    return known.filter(said);
  }

  /**
   * A gap notice (the work of its accept): the server dropped these messages of each stream
   * before this device acked them. Numbers behind a stream's next expected one explain a group
   * hole skipped before (or were shown, or reported, already); the others let the stream move on
   * at once, past them and over the messages held behind them.
   */
  async dropped(f: GapFrame, me: Me): Promise<void> {
    const reason = f.why === 'f' ? 'inbox_full' : 'expired';
    for (const [from, fromDevice, to, ...flat] of f.s) {
      const conv = conversationOf(from, to, isGroupId(to), me.user);
      const ranges: Range[] = [];
      for (let i = 0; i + 1 < flat.length; i += 2) ranges.push([flat[i]!, flat[i + 1]!]);
      await this.applyDropped(streamKey(conv, from, fromDevice), { conv, from, fromDevice }, ranges, reason);
    }
  }

  private async applyDropped(
    key: string,
    stream: Stream,
    ranges: Range[],
    reason: 'expired' | 'inbox_full',
  ): Promise<void> {
    const start = await this.nextFor(key);
    const behind = ranges.flatMap(([a, b]): Range[] => (a < start ? [[a, Math.min(b, start - 1)]] : []));
    const ahead = ranges.flatMap(([a, b]): Range[] => (b >= start ? [[Math.max(a, start), b]] : []));
    const inGroup = isGroupId(stream.conv);
    if (behind.length > 0 && inGroup) {
      for (const [a, b] of await this.gapBook.explain(key, behind)) this.emitGap(stream, a, b, reason);
    }
    if (ahead.length === 0) return;
    // A group stream never waits for a hole (see `receive`): numbers before the first dropped one
    // that nobody explained (sent before this user joined, or refused) are passed as skipped, so
    // the dropped ones are reported at once, however the stream began on this device.
    let next = start;
    let passed: ReasonedRange[] = [];
    if (inGroup) {
      let first = Math.min(...ahead.map(([a]) => a));
      for (const s of this.pins.get(key) ?? []) if (s >= next && s < first) first = s;
      if (first > next) passed = await this.skipHole(key, next, first - 1);
      next = Math.max(next, first);
    }
    await this.gapBook.addDropped(key, ahead, reason === 'inbox_full');
    const held = this.heldByKey.get(key);
    const { next: n, steps } = walk(next, held, this.gapBook.dropped(key));
    if (n === start) return; // a 1:1 hole nobody explained comes first: the timeout still runs for it
    const released = steps.flatMap((st) => (st.msg ? [st.msg] : []));
    await this.ctx.store.applyInbound({ release: released.map((r) => r.id), streams: [{ key, next: n }] });
    this.streams.set(key, n);
    for (const r of released) held!.delete(r.seq);
    if (!held || held.size === 0) {
      if (!this.pins.has(key)) this.clearGap(key);
      this.heldByKey.delete(key);
    }
    const full = this.gapBook.full(key); // before `passed` forgets it
    await this.gapBook.passed(key, n);
    for (const r of passed) this.emitGap(stream, r.from, r.to, r.reason);
    this.emitSteps(stream, steps, full);
  }

  /**
   * Emits a stream's steps in sequence order: released messages, and dropped ranges as gaps,
   * `inbox_full` for the numbers in `full`, else `expired`.
   */
  private emitSteps(stream: Stream, steps: Step[], full: readonly Range[]): void {
    for (const st of steps) {
      if (st.msg) this.emitMessage(st.msg, false);
      else {
        for (const r of reasonsOf(st.gap[0], st.gap[1], undefined, [st.gap], 'expired', full)) {
          this.emitGap(stream, r.from, r.to, r.reason);
        }
      }
    }
  }

  private emitGap(s: Stream, fromSeq: number, toSeq: number, reason: GapReason): void {
    this.ctx.emit('gap', { conv: s.conv, from: s.from, fromDevice: s.fromDevice, fromSeq, toSeq, reason });
  }

  /**
   * A stream waits for a message asked for again: in a group, later ones from that sender device
   * are held until it arrives (or `gapTimeoutMs` gives up), instead of skipping it as a group
   * hole; in any stream, a hole given up over it says `undecryptable`.
   */
  async pin(conv: string, from: string, fromDevice: string, seq: number): Promise<void> {
    const key = streamKey(conv, from, fromDevice);
    if (seq < (await this.nextFor(key))) return;
    const set = new Set(this.pins.get(key));
    set.add(seq);
    await this.savePins(key, set);
    // Should the new copy never come, the hole ends as `undecryptable` even with nothing after it.
    this.armGapTimer(key);
  }

  /** Pins survive restarts (a restarted app would otherwise skip the hole). */
  private async savePins(key: string, set: Set<number> | undefined): Promise<void> {
    const value = encodeSeqs(set);
    await this.ctx.store.putState([{ ns: NS_PINS, key, value }]);
    if (value) this.pins.set(key, set!);
    else this.pins.delete(key);
  }

  /** Whether a delivered message is already in the client store. */
  async have(conv: string, id: string, from: string, fromDevice: string): Promise<boolean> {
    return (await this.ctx.store.inbound(conv)).some(
      (m) => m.id === id && m.from === from && m.fromDevice === fromDevice,
    );
  }

  private emitMessage(m: InboundMessage, late: boolean): void {
    this.endTyping(m.conv, m.from, m.fromDevice);
    this.ctx.emit('message', {
      id: m.id,
      conv: m.conv,
      from: m.from,
      fromDevice: m.fromDevice,
      seq: m.seq,
      ts: m.ts,
      body: m.body,
      self: this.ctx.me !== undefined && m.from === this.ctx.me.user,
      late,
      group: isGroupId(m.conv),
    });
  }

  private armGapTimer(key: string): void {
    if (this.gapTimers.has(key)) return;
    this.gapTimers.set(
      key,
      this.ctx.clock.setTimeout(() => {
        this.gapTimers.delete(key);
        this.ctx.later(() => this.giveUpGap(key, 'timeout'));
      }, this.ctx.opts.gapTimeoutMs),
    );
  }

  private clearGap(key: string): void {
    this.ctx.clock.clearTimeout(this.gapTimers.get(key));
    this.gapTimers.delete(key);
  }

  /**
   * Gives up the holes of a stream: every held message is released, each hole reported first
   * with why — numbers asked for again are `undecryptable`, numbers the server dropped `expired`,
   * the rest `fallback` (the timeout, or the held-message bound). A message asked for again with
   * nothing held after it is given up too: its hole is the stream's last.
   */
  private async giveUpGap(key: string, fallback: GapReason): Promise<void> {
    const pinned = this.pins.get(key);
    if (pinned) await this.savePins(key, undefined);
    const held = this.heldByKey.get(key);
    const ordered = [...(held?.values() ?? [])].sort((a, b) => a.seq - b.seq);
    let expect = await this.nextFor(key);
    const end = Math.max(ordered[ordered.length - 1]?.seq ?? 0, ...(pinned ?? []));
    if (end < expect) return;
    const dropped = this.gapBook.dropped(key);
    const full = this.gapBook.full(key);
    await this.ctx.store.applyInbound({
      release: ordered.map((m) => m.id),
      streams: [{ key, next: end + 1 }],
    });
    this.streams.set(key, end + 1);
    this.heldByKey.delete(key);
    await this.gapBook.passed(key, end + 1);
    for (const m of ordered) {
      if (m.seq > expect) {
        for (const r of reasonsOf(expect, m.seq - 1, pinned, dropped, fallback, full)) {
          this.emitGap(m, r.from, r.to, r.reason);
        }
      }
      this.emitMessage(m, false);
      expect = m.seq + 1;
    }
    if (expect <= end) {
      const stream = streamOf(key);
      for (const r of reasonsOf(expect, end, pinned, dropped, fallback, full))
        this.emitGap(stream, r.from, r.to, r.reason);
    }
  }
}
