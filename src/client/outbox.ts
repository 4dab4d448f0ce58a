/**
 * The outbox: its durability point, in one place (an item the app hands the client is either
 * committed in the client store, and then sent, resent until acked, or refused with an error,
 * and a refused item was never stored and will never be sent), and the queue that sends the
 * committed items in order within the server's window.
 * @packageDocumentation
 */
import { PostboxError, isPostboxError, isRetryable, type WelcomeFrame } from '../protocol/index.js';
import type { ClientContext } from './context.js';
import type { RequestTable } from './requests.js';
import {
  applyEntryStatus,
  type MessageStatus,
  type OutboxDraft,
  type OutboxEntry,
  type SendFailure,
} from './store.js';

/**
 * The error a send (or a group request) rejects with when the client store did not take it:
 * `unavailable` (retryable: the app may try again), with the store's error as `cause`.
 */
export function storeRefused(what: 'message' | 'request', cause: unknown): PostboxError {
  if (isPostboxError(cause)) return cause;
  return new PostboxError(
    'unavailable',
    `the client store did not take the ${what}: it was not stored and will not be sent; try again`,
    { cause },
  );
}

/** What a caller-given message id may be (see `SendOptions.id`): within the wire's 64 characters. */
const MESSAGE_ID = /^[0-9A-Za-z_-]{1,64}$/;

/** Throws `invalid_frame` unless `id` may be a caller-given message id. */
export function assertMessageId(id: unknown): asserts id is string {
  if (typeof id !== 'string' || !MESSAGE_ID.test(id)) {
    throw new PostboxError('invalid_frame', 'message id: 1-64 of A-Z a-z 0-9 _ - (a ULID is best)');
  }
}

/** Statuses after which nothing more is expected often enough to keep an entry in memory for. */
const SETTLED: ReadonlySet<MessageStatus> = new Set(['delivered', 'read', 'failed', 'expired']);

/**
 * The outgoing entries whose next status is expected soon (queued, or sent and awaiting ✓✓),
 * kept in memory so that an `ok` or a receipt moves them without reading the store again. The
 * engine is the only writer of statuses, and an entry here changes only after the store took the
 * change, so it never disagrees with the store; one the store may have taken partly (a write
 * that failed) is forgotten, as are the oldest past `limit`: those are read from the store again.
 */
export class LiveEntries {
  private readonly map = new Map<string, OutboxEntry>();

  constructor(private readonly limit = 1024) {}

  /** The entry of `id`, if in memory. */
  get(id: string): OutboxEntry | undefined {
    return this.map.get(id);
  }

  /** Keeps `entry` (as the store returned it) until it settles. */
  remember(entry: OutboxEntry): void {
    this.map.set(entry.id, entry);
    if (this.map.size > this.limit) this.map.delete(this.map.keys().next().value as string);
  }

  /** The store took `status` (and `failure`) for `entry`: moves the copy in memory. */
  moved(entry: OutboxEntry, status: MessageStatus, failure: SendFailure | undefined): void {
    applyEntryStatus(entry, status, failure);
    // Receipts and membership changes settle with their `ok`; messages once delivered.
    if (entry.kind !== 'msg' || SETTLED.has(status)) this.map.delete(entry.id);
  }

  /** Forgets `id` (its store write failed: the store is the truth again). */
  forget(id: string): void {
    this.map.delete(id);
  }
}

/** What the outbox asks of the rest of the engine. */
export interface OutboxHooks {
  /** Writes an item's frame under request `r`, in outbox order (the plain or the sealing stage). */
  send(entry: OutboxEntry, r: number): void;
  /** A refusal the sealing stage handles itself (device-list corrections): true when it did. */
  refused(id: string, r: number, error: PostboxError): boolean;
  /** Moves an item's status forward in the store and tells the app (receipts.ts). */
  applyStatus(id: string, status: MessageStatus, by?: string, error?: PostboxError): Promise<void>;
}

/**
 * The outbox in memory: the store's pending items in order, a send pointer, a window of items
 * in flight (rows of the request table), and the promises of group requests waiting for their
 * item to settle.
 */
export class Outbox {
  private queue: OutboxEntry[] = [];
  private pointer = 0;
  private window = 128;
  private readonly waiters = new Map<string, { resolve(): void; reject(e: PostboxError): void }>();

  constructor(
    private readonly ctx: ClientContext,
    private readonly requests: RequestTable,
    private readonly live: LiveEntries,
    private readonly hooks: OutboxHooks,
  ) {}

  /** Outgoing items not yet acked by the server. */
  get unsent(): number {
    return this.queue.length;
  }

  /** Reloads the pending items from the store (every connection starts from it). */
  async load(): Promise<void> {
    this.queue = await this.ctx.store.pending();
    this.pointer = 0;
    for (const e of this.queue) this.live.remember(e);
  }

  /** Reads the server's send window. */
  welcome(w: WelcomeFrame): void {
    this.window = Math.max(1, Math.min(this.ctx.opts.maxInflight, w.lim.window));
  }

  /** The link ended: everything unacked goes out again, in order, on the next connection. */
  rewind(): void {
    this.pointer = 0;
  }

  /** Queues a stored item (call {@link pump} to send). */
  push(entry: OutboxEntry): void {
    this.queue.push(entry);
    this.live.remember(entry);
  }

  /** Stores a draft and queues it, sending what the window allows; rejects as the store did. */
  async add(draft: OutboxDraft, sequenced = false): Promise<OutboxEntry> {
    const entry = await this.ctx.store.enqueue(draft, sequenced);
    this.push(entry);
    this.pump();
    return entry;
  }

  /** Sends queued items while the window has room. */
  pump(): void {
    if (!this.ctx.open) return;
    while (this.requests.inflight < this.window && this.pointer < this.queue.length) {
      const e = this.queue[this.pointer++]!;
      this.hooks.send(e, this.requests.add({ kind: 'item', id: e.id }));
    }
  }

  /** Removes an item from the queue, keeping the send pointer on the same next item. */
  unqueue(id: string): void {
    const idx = this.queue.findIndex((e) => e.id === id);
    if (idx < 0) return;
    this.queue.splice(idx, 1);
    if (idx < this.pointer) this.pointer--;
  }

  /**
   * Item `id` (request `r`) is held for its recipient's keys (key-wait.ts): it leaves the send
   * window and the queue, and stays pending in the store.
   */
  hold(id: string, r: number): void {
    this.requests.remove(r);
    this.unqueue(id);
    this.pump();
  }

  /** Puts held items back, in their order, ahead of everything not yet sent. */
  requeue(entries: OutboxEntry[]): void {
    // The later items of their conversation are behind them.
    this.queue.splice(this.pointer, 0, ...entries);
    this.pump();
  }

  /** The server committed item `id` (request `r`). */
  ok(r: number, id: string): void {
    this.requests.remove(r);
    this.settle(id, 'sent');
  }

  /** The server refused item `id` (request `r`). */
  refused(r: number, id: string, error: PostboxError): void {
    // A full inbox is the recipient's state, not the connection's: resending at once would only
    // hammer it. The send fails with that reason (retryable: the app may send it again later).
    if (isRetryable(error.code) && error.code !== 'inbox_full') {
      // Later sends may already be in flight; resending everything in order on a fresh
      // connection is what keeps per-sender order.
      this.ctx.drop(`server error ${error.code}`);
      return;
    }
    if (this.hooks.refused(id, r, error)) return;
    this.requests.remove(r);
    this.settle(id, 'failed', error);
  }

  /** Takes an item out of the queue and records its new status. */
  settle(id: string, status: MessageStatus, error?: PostboxError, by?: string): void {
    this.unqueue(id);
    this.settleWaiter(
      id,
      status === 'failed' ? (error ?? new PostboxError('internal', 'failed')) : undefined,
    );
    // A refusal is the item's own outcome (its status, with the reason), not an `error`. A store
    // failure is: the store still says pending, and reconnecting reloads the outbox and resends it.
    this.ctx.then(this.applyStatus, { id, status, error, by }, undefined, this.faulted);
    this.pump();
  }

  private readonly applyStatus = (s: {
    id: string;
    status: MessageStatus;
    error: PostboxError | undefined;
    by: string | undefined;
  }): Promise<void> => this.hooks.applyStatus(s.id, s.status, s.by, s.error);

  private readonly faulted = (error: unknown, gen: number): void => this.ctx.fault(gen, error);

  /** A promise that settles with item `id` (group requests resolve when the server commits them). */
  waiter(id: string): Promise<void> {
    return new Promise<void>((resolve, reject) => this.waiters.set(id, { resolve, reject }));
  }

  /** Settles the promise of item `id`, if one waits. */
  settleWaiter(id: string, error?: PostboxError): void {
    const w = this.waiters.get(id);
    if (!w) return;
    this.waiters.delete(id);
    if (error) w.reject(error);
    else w.resolve();
  }

  /** The client closed: this run's promises end (the items stay in the store for the next start). */
  close(): void {
    for (const id of [...this.waiters.keys()]) {
      this.settleWaiter(id, new PostboxError('closed', 'client closed before the server answered'));
    }
  }
}
