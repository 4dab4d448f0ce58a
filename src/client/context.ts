/**
 * What every part of the client engine shares, and nothing more: the store, the clock, ids, the
 * options, `emit`, the serial store queue and the current link (connection, its generation,
 * state, identity). Parts depend on this context, never on each other's classes: the façade
 * (`engine.ts`) hands each part the few functions of another that it needs.
 * @packageDocumentation
 */
import { encodeFrame, type ClientFrame } from '../protocol/index.js';
import type { Connection } from '../transport/types.js';
import type { Clock, Random } from '../util/clock.js';
import { ulidFactory } from '../util/ulid.js';
import { loadIdentity } from './history.js';
import type { ClientStore } from './store.js';
import type { ClientEvents, ClientOptions, ConnectionState } from './types.js';

/** A queued store task. */
interface Task {
  fn: (arg: unknown) => Promise<unknown>;
  /** Handed to `fn` and, with the value, to `resolve` (see {@link ClientContext.then}). */
  arg: unknown;
  resolve: ((value: unknown, arg: unknown) => void) | undefined;
  /** Gets the failure and the link generation the task was queued on. */
  reject: ((error: unknown, gen: number) => void) | undefined;
  /** The link generation when the task was queued. */
  gen: number;
  /** `reject` reports the failure itself (else it is also emitted as `error`). */
  reports: boolean;
}

const settledNow = async (): Promise<void> => {};

/** The options every part reads, with their defaults applied. */
export interface ResolvedOptions {
  gapTimeoutMs: number;
  maxHeldPerStream: number;
  handshakeTimeoutMs: number;
  maxInflight: number;
  /** Starts at the option; the server's `welcome` sets it to the server's limit. */
  maxBodyBytes: number;
  typingTimeoutMs: number;
  typingRefreshMs: number;
  ackDelayMs: number;
  resendWindowMs: number;
}

/** Resolves the options' defaults (see {@link ClientOptions} for each). */
export function resolveOptions(o: ClientOptions): ResolvedOptions {
  return {
    gapTimeoutMs: o.gapTimeoutMs ?? 10_000,
    maxHeldPerStream: o.maxHeldPerStream ?? 1024,
    handshakeTimeoutMs: o.handshakeTimeoutMs ?? 10_000,
    maxInflight: o.maxInflight ?? 128,
    maxBodyBytes: o.maxBodyBytes ?? 64 * 1024,
    typingTimeoutMs: o.typingTimeoutMs ?? 6000,
    typingRefreshMs: o.typingRefreshMs ?? 3000,
    ackDelayMs: o.ackDelayMs ?? 25,
    resendWindowMs: o.resendWindowMs ?? 24 * 3600_000,
  };
}

/** The façade's typed `emit`. */
export type Emit = <K extends keyof ClientEvents>(event: K, ...args: Parameters<ClientEvents[K]>) => void;

/** This device as the server named it. */
export interface Me {
  user: string;
  device: string;
}

/**
 * The shared context. The link fields (`conn`, `generation`, `state`) are written by the
 * connection part only; everyone else reads them, and checks a link with {@link live}.
 */
export class ClientContext {
  readonly ulid: () => string;
  /** Who the server says this device is (after the first `welcome`). */
  me: Me | undefined;
  /** The current connection, set from `handshaking` until it closes. */
  conn: Connection | undefined;
  /**
   * Bumped whenever a link starts or ends: work begun for one link (a timer, a store task, an
   * encryption) checks {@link live} before it touches the next one.
   */
  generation = 0;
  /** The connection state; the connection part's `setState` is its only writer. */
  state: ConnectionState = 'idle';
  /** When a frame last left (the heartbeat reads it). */
  lastSentAt = 0;
  /** Drops the current link and reconnects after a backoff; the connection part installs it. */
  drop: (reason: string) => void = () => {};
  /** Runs when the serial queue runs dry (the ack pacing listens). */
  onIdle: () => void = () => {};
  /** Runs before a frame is written (pending acks may ride with it: acks.ts). */
  onWrite: () => void = () => {};

  /** Store work waiting to run, oldest first (`head` is the next one). */
  private tasks: Array<Task | undefined> = [];
  private head = 0;
  private running = false;

  constructor(
    readonly store: ClientStore,
    readonly clock: Clock,
    readonly random: Random,
    readonly opts: ResolvedOptions,
    readonly emit: Emit,
  ) {
    this.ulid = ulidFactory(clock, random);
  }

  /** Whether `gen` is still the current link: the one generation check of the engine. */
  live(gen: number): boolean {
    return gen === this.generation;
  }

  /** Whether frames can be written now (open, with a connection). */
  get open(): boolean {
    return this.state === 'open' && this.conn !== undefined;
  }

  /** Encodes and writes a frame on the current connection; nothing without one. */
  write(frame: ClientFrame): void {
    if (!this.conn) return;
    this.onWrite();
    this.lastSentAt = this.clock.now();
    this.conn.send(encodeFrame(frame));
  }

  /**
   * A local fault (the store or the crypto adapter failed) in work begun for link `gen`:
   * reported as `error`, and that link dropped if it is still current, so what was not acked is
   * delivered again after the reconnect.
   */
  fault(gen: number, error: unknown, reason = 'client store failed'): void {
    this.emit('error', error);
    if (this.live(gen)) this.drop(reason);
  }

  /**
   * Runs store work one task at a time, in the order given; resolves with what `fn` resolves
   * to. A task that fails rejects its promise and is also reported as `error`.
   */
  serial<T>(fn: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.push(fn, undefined, resolve as (v: unknown) => void, reject, false);
    });
  }

  /**
   * {@link serial} for work whose outcome no caller waits for (it handles its own failures; any
   * it lets through is reported as `error`): no promise is made for it.
   */
  later(fn: () => Promise<unknown>): void {
    this.push(fn, undefined, undefined, undefined, false);
  }

  /**
   * {@link later} with its outcome handled in place: `fn(arg)` runs as the task, `done` gets what
   * it resolved to and `arg`, `failed` its failure and the link generation the task was queued
   * on (it reports the failure itself: it is not emitted as `error` again). The hot paths (an
   * inbox entry, an `ok`) queue their work this way: with `done` and `failed` made once per part
   * and the per-task value in `arg`, a task costs no wrapping async function, promise or closure.
   */
  then<T, A>(
    fn: (arg: A) => Promise<T>,
    arg: A,
    done: ((value: T, arg: A) => void) | undefined,
    failed: (error: unknown, gen: number) => void,
  ): void {
    this.push(
      fn as (arg: unknown) => Promise<unknown>,
      arg,
      done as ((value: unknown, arg: unknown) => void) | undefined,
      failed,
      true,
    );
  }

  /** Resolves when every store task queued so far has run (failed ones included). */
  drained(): Promise<void> {
    return new Promise<void>((resolve) =>
      this.push(settledNow, undefined, () => resolve(), undefined, false),
    );
  }

  private push(
    fn: Task['fn'],
    arg: unknown,
    resolve: Task['resolve'],
    reject: Task['reject'],
    reports: boolean,
  ): void {
    this.tasks.push({ fn, arg, resolve, reject, gen: this.generation, reports });
    if (this.running) return;
    this.running = true;
    // Never inside the caller's own turn: store work starts once the caller's code has run.
    queueMicrotask(this.runner);
  }

  /** The task running now (between {@link next} and its outcome). */
  private current: Task | undefined;

  private readonly runner = (): void => this.next();

  /**
   * The one loop over the queue: a task starts once the one before it has settled. Written with
   * `then` and two handlers made once, not as an async loop: an `await` costs a message life
   * about a hundred bytes more per store task than a `then`, and this runs four times per life.
   */
  private next(): void {
    if (this.head < this.tasks.length) {
      const task = (this.current = this.tasks[this.head]!);
      this.tasks[this.head++] = undefined;
      let work: Promise<unknown>;
      try {
        work = task.fn(task.arg);
      } catch (e) {
        work = Promise.reject(e);
      }
      work.then(this.succeeded, this.failed);
      return;
    }
    this.current = undefined;
    // Kept for the next run (its slots are all empty), unless a burst grew it large.
    if (this.tasks.length > 1024) this.tasks = [];
    else this.tasks.length = 0;
    this.head = 0;
    this.running = false;
    this.onIdle();
  }

  private readonly succeeded = (value: unknown): void => {
    const task = this.current!;
    this.settle(task.resolve, value, task.arg, false);
    this.step();
  };

  private readonly failed = (error: unknown): void => {
    const task = this.current!;
    this.settle(task.reject as Task['resolve'], error, task.gen, !task.reports);
    this.step();
  };

  private step(): void {
    // Drop the run's finished slots now and then, not on every task.
    if (this.head >= 1024) {
      this.tasks = this.tasks.slice(this.head);
      this.head = 0;
    }
    this.next();
  }

  /** Hands a task's outcome to its callback; a callback that throws is reported as `error`. */
  private settle(
    fn: ((v: unknown, x: unknown) => void) | undefined,
    v: unknown,
    x: unknown,
    report: boolean,
  ): void {
    try {
      fn?.(v, x);
    } catch (e) {
      this.emit('error', e);
    }
    if (report) this.emit('error', v);
  }

  /** This device's identity: from the live session, else as saved on an earlier connection. */
  async self(): Promise<Me | undefined> {
    return this.me ?? (await loadIdentity(this.store));
  }
}
