/**
 * Request correlation in one table: every frame that expects an `ok`/`err` (or a `kb`) takes a
 * request number here, with what to do when the answer comes. Outbox items in flight are rows of
 * the same table, so "how many sends are in flight" and "what does `ok` 17 settle" have one
 * answer each.
 * @packageDocumentation
 */
import { PostboxError, type ClientFrame } from '../protocol/index.js';
import type { KeyBundle } from '../crypto/types.js';
import type { ClientContext } from './context.js';

/** What a request number stands for. */
export type PendingRequest =
  /** An outbox item in flight (its id). */
  | { kind: 'item'; id: string }
  /** A call of the app that resolves on `ok` (approve, unlink, subscribe, key upload). */
  | { kind: 'call'; resolve(): void; reject(error: PostboxError): void }
  /** A key directory query, answered by `kb`. */
  | { kind: 'keys'; resolve(bundles: KeyBundle[]): void; reject(error: PostboxError): void }
  /** A sender-key distribution of the encryption layer (not an outbox item). */
  | { kind: 'ctl'; ok(): void; err(error: PostboxError): void };

/** The request table of one client. */
export class RequestTable {
  private next = 1;
  private readonly rows = new Map<number, PendingRequest>();
  private items = 0;

  constructor(private readonly ctx: ClientContext) {}

  /** Outbox items in flight (the send window counts them). */
  get inflight(): number {
    return this.items;
  }

  /** A fresh request number (wraps at 2^32 − 1, skipping 0). */
  take(): number {
    const r = this.next++;
    if (this.next > 0xffffffff) this.next = 1;
    return r;
  }

  /** Records `row` under a fresh number and returns it. */
  add(row: PendingRequest): number {
    const r = this.take();
    this.rows.set(r, row);
    if (row.kind === 'item') this.items++;
    return r;
  }

  /**
   * Sends the frame `build` makes under a fresh number; resolves on its `ok`, rejects with its
   * `err`, with `disconnected` when there is no live connection (or it closes first), and with
   * `closed` after `close()`.
   */
  call(build: (r: number) => ClientFrame): Promise<void> {
    const closed = this.notOpen();
    if (closed) return Promise.reject(closed);
    return new Promise<void>((resolve, reject) => {
      this.ctx.write(build(this.add({ kind: 'call', resolve, reject })));
    });
  }

  /** Asks the key directory (`kget`); resolves with the bundles of its `kb` answer. */
  keys(build: (r: number) => ClientFrame): Promise<KeyBundle[]> {
    if (!this.ctx.open) return Promise.reject(new PostboxError('disconnected', 'needs a live connection'));
    return new Promise<KeyBundle[]>((resolve, reject) => {
      this.ctx.write(build(this.add({ kind: 'keys', resolve, reject })));
    });
  }

  private notOpen(): PostboxError | undefined {
    if (this.ctx.state === 'closed') return new PostboxError('closed', 'client is closed');
    if (!this.ctx.open) return new PostboxError('disconnected', 'needs a live connection');
    return undefined;
  }

  /** The row of `r`, left in the table. */
  peek(r: number | undefined): PendingRequest | undefined {
    return r === undefined ? undefined : this.rows.get(r);
  }

  /** Takes the row of `r` out of the table. */
  remove(r: number): void {
    const row = this.rows.get(r);
    if (!row) return;
    this.rows.delete(r);
    if (row.kind === 'item') this.items--;
  }

  /**
   * The connection closed: every row ends. Calls and key queries reject with `disconnected`;
   * items go out again from the outbox on the next connection; distributions are redone.
   */
  fail(): void {
    const rows = [...this.rows.values()];
    this.rows.clear();
    this.items = 0;
    const error = new PostboxError('disconnected', 'connection closed');
    // Calls first, then key queries: the order the app's promises and the crypto layer's settle in.
    for (const row of rows) if (row.kind === 'call') row.reject(error);
    for (const row of rows) if (row.kind === 'keys') row.reject(error);
  }
}
