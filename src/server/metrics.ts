/**
 * What the server engine counts, for an app's monitoring. The engine calls these hooks; an
 * adapter turns them into Prometheus metrics (`postbox serve` does, with `prom-client`), StatsD,
 * logs, or nothing (the default).
 * @packageDocumentation
 */
import type { ErrorCode } from '../protocol/index.js';

/** Hooks the engine calls; every one must be cheap and must not throw. */
export interface ServerMetrics {
  /** A connection opened (`+1`, before its hello) or closed (`-1`). */
  connection(delta: 1 | -1): void;
  /** One store append (a group commit) took `ms` for `items` items; `ok` false when it failed. */
  commit(ms: number, items: number, ok: boolean): void;
  /** One appended item: committed (`refused` undefined) or refused with a code. */
  sent(kind: 'msg' | 'receipt' | 'group', refused: ErrorCode | undefined): void;
  /** Inbox entries pushed to connected devices. */
  delivered(n: number): void;
  /** Inbox entries acknowledged by devices (and so deleted). */
  acked(n: number): void;
  /** Doorbells: devices told that their inbox has new entries. */
  doorbell(n: number): void;
  /** A push wake-up was attempted; `ok` false when the provider failed. */
  push(ok: boolean): void;
  /** An error frame went to a client. */
  error(code: ErrorCode): void;
}

/** Counts nothing. */
export const noMetrics: ServerMetrics = {
  connection() {},
  commit() {},
  sent() {},
  delivered() {},
  acked() {},
  doorbell() {},
  push() {},
  error() {},
};
