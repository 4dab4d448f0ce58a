/**
 * When the client connects again, in one place: the full-jitter waits between attempts after a
 * connection is lost, the app's "reconnect now" (the network is back, the app is in the
 * foreground again) with the limits that keep it from hammering a server that is down, and
 * waiting for the connection to be open. See docs/engines.md, "Reconnecting".
 * @packageDocumentation
 */
import { PostboxError } from '../protocol/index.js';
import { backoff, type Clock, type Random, type TimerHandle } from '../util/clock.js';
import type { ConnectionState } from './types.js';

/** Ceiling of the first wait, ms; each failed attempt doubles it, up to {@link DEFAULT_BACKOFF_MAX_MS}. */
export const DEFAULT_BACKOFF_BASE_MS = 500;

/**
 * Largest ceiling of a wait, ms. Once the waits have grown to it, a client comes back at most
 * this long (half of it on average) after the server is reachable again; 30 s left interactive
 * apps away for up to half a minute after a short outage. What protects the server from a herd
 * is full jitter (the clients of a dead gateway spread evenly over the ceiling) and its own
 * handshake cap (a bare 1013 to the excess, cheap to answer, and a wait {@link Reconnector.hurry}
 * never skips), not a long ceiling: N waiting clients make about 2N/8 attempts per second.
 */
export const DEFAULT_BACKOFF_MAX_MS = 8000;

/**
 * The waits between connection attempts, as a small machine: *idle* (no wait pending) →
 * *waiting* (a timer; *busy* when the server asked for the wait) → *idle*, when the timer fires
 * or {@link hurry} ends it early; either way `fire` runs (it makes the next attempt).
 *
 * - Each wait is uniform in `[0, min(maxMs, baseMs·2^n))` (full jitter), `n` counting the waits
 *   since the connection last opened (or since the app started the client afresh).
 * - {@link hurry} ends a wait at once: at most once per `maxMs` however often it is called,
 *   never a busy wait (1013 try again later: the server is shedding load), and the first hurry
 *   after a connection was lost also starts `n` again at 0. A hurry usually means the network
 *   changed, which makes the failures before it say little (if that attempt fails because the
 *   network is not quite up yet, the next comes within `baseMs`); later hurries of the same
 *   outage keep the grown waits, so an app that calls it in a loop costs the server at most one
 *   attempt per `maxMs` more than a patient client, after one climb from the shortest wait.
 */
export class Reconnector {
  private n = 0;
  private timer: TimerHandle | undefined;
  private busy = false;
  private lastHurryAt = -Infinity;
  private hurriedThisOutage = false;

  constructor(
    private readonly clock: Clock,
    private readonly random: Random,
    private readonly baseMs: number,
    private readonly maxMs: number,
    private readonly fire: () => void,
  ) {}

  /** A connection opened: the next outage starts from the shortest wait. */
  opened(): void {
    this.n = 0;
    this.hurriedThisOutage = false;
  }

  /** The app starts the client afresh (`start()` after `close()`): no stale wait, the shortest first. */
  restart(): void {
    this.cancel();
    this.opened();
  }

  /** Waits before the next attempt; `busy` when the server asked for it (never hurried). */
  wait(busy: boolean): void {
    this.cancel();
    this.busy = busy;
    const ms = backoff(this.n++, this.baseMs, this.maxMs, this.random);
    this.timer = this.clock.setTimeout(() => {
      this.timer = undefined;
      this.fire();
    }, ms);
  }

  /** Ends the pending wait now if the rules above allow it; true when it did (and fired). */
  hurry(): boolean {
    if (this.timer === undefined || this.busy) return false;
    const now = this.clock.now();
    if (now - this.lastHurryAt < this.maxMs) return false;
    this.lastHurryAt = now;
    if (!this.hurriedThisOutage) {
      this.hurriedThisOutage = true;
      this.n = 0;
    }
    this.cancel();
    this.fire();
    return true;
  }

  /** Drops the pending wait, if any (the client is closing). */
  cancel(): void {
    this.clock.clearTimeout(this.timer);
    this.timer = undefined;
  }
}

/** Options of {@link PostboxClient.connected}. */
export interface ConnectedOptions {
  /** Stop waiting when it aborts: the promise rejects with the signal's `reason`. @default none */
  signal?: AbortSignal;
  /**
   * Stop waiting after this many ms: the promise rejects with `disconnected`, whose `cause` is
   * the error of the last failed attempt, when there was one.
   * @default no limit
   */
  timeoutMs?: number;
}

/** What {@link untilOpen} reads of a client. */
export interface ConnectionWatch {
  /** The client's connection state now. */
  state(): ConnectionState;
  /** The error of the last failed attempt or close, cleared when the connection opens. */
  lastError(): PostboxError | undefined;
  /** Calls `fn` on every state change until the returned function is called. */
  subscribe(fn: (state: ConnectionState, error?: PostboxError) => void): () => void;
}

/** Resolves when the watched client is `open` (see {@link PostboxClient.connected} for the rules). */
export function untilOpen(
  watch: ConnectionWatch,
  clock: Clock,
  options: ConnectedOptions = {},
): Promise<void> {
  const { signal, timeoutMs } = options;
  if (timeoutMs !== undefined && !(timeoutMs >= 0)) {
    return Promise.reject(new PostboxError('invalid_frame', 'timeoutMs: a number of ms, 0 or more'));
  }
  const state = watch.state();
  if (state === 'open') return Promise.resolve();
  if (state === 'closed') return Promise.reject(closedError(watch.lastError()));
  if (signal?.aborted) return Promise.reject(signal.reason);
  return new Promise<void>((resolve, reject) => {
    let timer: TimerHandle | undefined;
    const end = (settle: () => void): void => {
      unsubscribe();
      clock.clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      settle();
    };
    const onAbort = (): void => end(() => reject(signal!.reason));
    const unsubscribe = watch.subscribe((s, error) => {
      if (s === 'open') end(resolve);
      else if (s === 'closed') end(() => reject(closedError(error)));
    });
    signal?.addEventListener('abort', onAbort, { once: true });
    if (timeoutMs !== undefined) {
      timer = clock.setTimeout(() => {
        const cause = watch.lastError();
        const e = new PostboxError('disconnected', `not connected within ${timeoutMs} ms`, { cause });
        end(() => reject(e));
      }, timeoutMs);
    }
  });
}

/** `closed`, with what closed the client (refused credentials, say) as its cause when known. */
function closedError(cause: PostboxError | undefined): PostboxError {
  const why = cause ? `: ${cause.message}` : '';
  return new PostboxError('closed', `the client is closed${why}`, { cause });
}
