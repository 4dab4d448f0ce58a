/**
 * The commit path: sends, receipts and group changes queue per sender, are taken in fair batches
 * (see commit-batch.ts) and appended to the store in one call per batch; each is then answered
 * (`ok`, or `err` with the refusal), and what it wrote is routed to its recipients. A failed
 * append answers nobody: the sessions concerned are closed so their clients resend in order.
 * Internal to the engine: not exported from `postbox/server`.
 * @packageDocumentation
 */
import { performance } from 'node:perf_hooks';
import type { ErrorCode } from '../protocol/index.js';
import type { Clock } from '../util/clock.js';
import {
  CONTENDED_MS,
  FairCommitQueue,
  type FanoutEstimate,
  rowBounds,
  type RowBounds,
  SERVER_SIDE,
  yieldToEventLoop,
} from './commit-batch.js';
import { applyConsent, type GroupCaps } from './group-consent.js';
import type { StoreHealthMonitor } from './health.js';
import type { ServerMetrics } from './metrics.js';
import type { EngineConfig } from './options.js';
import type { Router } from './routing.js';
import type { Session } from './session.js';
import { capable } from './capabilities.js';
import type { AppendInput, AppendOptions, AppendOutcome, DeviceAddress, ServerStore } from './store.js';
import type { Tracer } from './trace.js';
import { REFUSAL_TEXT, wireDifference } from './wire.js';

/** The outcome of a client's group change refused by a group cap. */
const CAPPED: AppendOutcome = { ok: false, code: 'quota_exceeded' };

/** One queued commit. */
export interface PendingCommit {
  /** The connection that asked, answered with `ok`/`err`; absent for server-side changes. */
  session?: Session;
  input: AppendInput;
  r: number;
  /** Called with the refusal code, or undefined when committed. */
  done?: (code: ErrorCode | undefined) => void;
  /**
   * A client's group change: its creator's or joiner's cap is counted, and for a create or add who
   * joins and who is invited is decided, just before it commits (in queue order).
   */
  consent?: boolean;
  /** Why it was refused before reaching the store (a group cap), set by the committer. */
  capped?: string;
}

/** What the commit path needs of the engine. */
export interface CommitterDeps {
  store: ServerStore;
  clock: Clock;
  config: Pick<EngineConfig, 'maxCommitBatch' | 'maxCommitRows' | 'groupConsent'>;
  metrics: ServerMetrics;
  tracer: Tracer;
  fanout: FanoutEstimate;
  groupCaps: GroupCaps;
  health: StoreHealthMonitor;
  router: Router;
  /** A group's membership changed: caches of its members are stale. */
  groupChanged(group: string): void;
  /** A store call failed: the store counts as failing, the sessions are closed with 1013. */
  storeFailed(error: unknown, sessions: Iterable<Session>): void;
}

/** The commit queue and its batches. */
export class Committer {
  private readonly queue: FairCommitQueue<PendingCommit>;
  private readonly bounds: RowBounds;
  /** When a small item was last queued (large batches are short for {@link CONTENDED_MS} after). */
  private smallAt = -Infinity;
  private committing = false;
  private flushScheduled = false;
  /** Whether the store commits large batches in slices beside small ones (`slicedAppend`). */
  private readonly sliced: boolean;
  /** The large batch committing beside small ones, with a store that slices. */
  private large: LargeBatch | undefined;
  /** Wakes the flush loop waiting beside a large batch when an item is queued. */
  private wake: (() => void) | undefined;
  private idleWaiters: Array<() => void> = [];

  constructor(private readonly d: CommitterDeps) {
    this.bounds = rowBounds(d.config.maxCommitRows);
    this.queue = new FairCommitQueue(this.bounds.large);
    this.sliced = capable(d.store, 'slicedAppend');
  }

  /** Resolves when no commit is queued or running. */
  idle(): Promise<void> {
    if (!this.committing && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** A session closed: its queued commits are dropped unanswered (its client resends them). */
  drop(session: Session): void {
    this.queue.drop(session);
  }

  /**
   * Why a client's group change is refused before it reaches the store (over the creator's
   * creations per hour, or an accept over the joiner's joins per day), or undefined. Counted
   * through the store when it can (see `GroupCaps`), so a cluster counts once.
   */
  private async groupCapRefusal(input: AppendInput): Promise<string | undefined> {
    if (input.kind !== 'group') return undefined;
    const now = this.d.clock.now();
    const op = input.change.op;
    if (op === 'create' && !(await this.d.groupCaps.create(input.from.user, now)))
      return 'too many groups created';
    if (op === 'accept' && !(await this.d.groupCaps.join([input.from.user], now))[0])
      return 'too many groups joined';
    return undefined;
  }

  /** Queues a commit; the batch it joins runs after the current I/O turn. */
  enqueue(p: PendingCommit): void {
    const rows = this.d.fanout.rows(p.input);
    if (rows <= this.bounds.large) this.smallAt = this.d.clock.now();
    this.queue.push(p.session ?? SERVER_SIDE, p, rows);
    this.wake?.();
    if (!this.flushScheduled && !this.committing) {
      this.flushScheduled = true;
      // A microtask lets every frame of the current I/O turn join the batch.
      queueMicrotask(() => {
        this.flushScheduled = false;
        void this.flush();
      });
    }
  }

  /** Splits a client's create or add into users who join and users who are invited (group-consent.ts). */
  private async decideConsent(input: AppendInput): Promise<void> {
    if (input.kind !== 'group') return;
    const { config, store, groupCaps, clock } = this.d;
    await applyConsent(input, config.groupConsent, store, groupCaps, clock.now());
  }

  private async flush(): Promise<void> {
    if (this.committing) return;
    this.committing = true;
    const { clock, config } = this.d;
    try {
      for (let first = true; this.queue.length > 0 || this.large; first = false) {
        // Between batches, other connections' frames, acks and reads run (see maxCommitRows).
        if (!first) await yieldToEventLoop();
        const contended = clock.now() - this.smallAt < CONTENDED_MS;
        const large = this.large;
        const batch = this.queue.take(
          config.maxCommitBatch,
          config.maxCommitRows,
          contended ? this.bounds.contended : config.maxCommitRows,
          large && { blocked: (sender, p) => large.blocks(sender, p.input) },
        );
        if (batch.length === 0) {
          // Nothing may commit beside the large batch: wait for it, or for a new item.
          if (large) await Promise.race([large.done, new Promise<void>((r) => (this.wake = r))]);
          this.wake = undefined;
          continue;
        }
        if (!large && this.sliced && this.queue.lastWasLarge) {
          // A store that slices commits this batch while small batches go on beside it.
          this.large = new LargeBatch(batch, (options) => this.commit(batch, options), {
            sliceRows: contended ? this.bounds.slice : undefined,
          });
          const clear = (): void => {
            this.large = undefined;
          };
          this.large.done.then(clear, clear);
          continue;
        }
        await this.commit(batch);
      }
    } finally {
      this.committing = false;
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
  }

  /** Commits one batch and answers it; a failing store closes the sessions concerned. */
  private async commit(batch: PendingCommit[], options?: AppendOptions): Promise<void> {
    const { store, clock, metrics, health } = this.d;
    let outcomes;
    const started = performance.now();
    try {
      // In queue order, so a message after a create still commits after it.
      for (const p of batch) {
        if (!p.consent) continue;
        p.capped = await this.groupCapRefusal(p.input);
        if (!p.capped) await this.decideConsent(p.input);
      }
      const going = batch.filter((p) => !p.capped);
      const stored =
        going.length > 0
          ? await store.append(
              going.map((p) => p.input),
              clock.now(),
              options,
            )
          : [];
      let k = 0;
      // Not rate_limited: that is retried at once, and these windows last hours.
      outcomes = batch.map((p): AppendOutcome => (p.capped ? CAPPED : stored[k++]!));
      metrics.commit(performance.now() - started, batch.length, true);
      health.succeeded();
    } catch (error) {
      metrics.commit(performance.now() - started, batch.length, false);
      // Answering an error here while later sends of the same connection commit would
      // break per-sender order; closing makes the client resend everything in order.
      const sessions = new Set<Session>();
      for (const p of batch) {
        if (p.session) sessions.add(p.session);
        else p.done?.('unavailable');
      }
      this.d.storeFailed(error, sessions);
      return;
    }
    this.settle(batch, outcomes);
  }

  /** Answers each commit of a batch and routes what it wrote. */
  private settle(batch: PendingCommit[], outcomes: AppendOutcome[]): void {
    const { metrics, tracer, router } = this.d;
    const notify: DeviceAddress[] = [];
    const carried = router.carrying();
    for (let i = 0; i < batch.length; i++) {
      const p = batch[i]!;
      const out = outcomes[i]!;
      this.d.fanout.learn(p.input, out);
      metrics.sent(p.input.kind, out.ok ? undefined : out.code);
      if (out.ok && p.input.kind === 'group') this.d.groupChanged(p.input.group);
      p.done?.(out.ok ? undefined : out.code);
      if (tracer.on) tracer.committed(p.input, out);
      if (p.session) p.session.pendingSends--;
      if (out.ok) {
        p.session?.send({ t: 'ok', r: p.r });
        if (out.offsets && p.input.kind === 'msg' && !out.duplicate) {
          router.deliverNew(p.input, out.ts, out.notify, out.offsets, notify, carried);
        } else {
          for (const n of out.notify) {
            notify.push(n);
            // What this item wrote is not known here: no later entry of the device may ride.
            carried?.skip(n);
          }
        }
      } else if (p.session) {
        p.session.sendError(
          out.code,
          p.capped ?? REFUSAL_TEXT[out.code] ?? out.code,
          p.r,
          out.devices && wireDifference(out.devices),
        );
      }
    }
    router.ring(notify, carried?.entries());
  }
}

/**
 * A batch of large items committing while small batches go on beside it (with a store that
 * declares `slicedAppend`). Per-sender order: a sender with an item in it sends nothing else until
 * it is answered; nor does a change to a group one of its messages goes to (whoever sends it), so
 * that a member removed meanwhile is not told of the removal before the message it was sent.
 */
class LargeBatch {
  readonly done: Promise<void>;
  private readonly senders = new Set<unknown>();
  private readonly groups = new Set<string>();

  constructor(
    batch: PendingCommit[],
    commit: (options: AppendOptions) => Promise<void>,
    options: AppendOptions,
  ) {
    for (const p of batch) {
      this.senders.add(p.session ?? SERVER_SIDE);
      const i = p.input;
      if (i.kind === 'group') this.groups.add(i.group);
      else if (i.kind === 'msg' && i.group) this.groups.add(i.to);
    }
    this.done = commit(options);
  }

  /** Whether `input` from `sender` must wait for this batch. */
  blocks(sender: unknown, input: AppendInput): boolean {
    if (this.senders.has(sender)) return true;
    return input.kind === 'group' && this.groups.has(input.group);
  }
}
