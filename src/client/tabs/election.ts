/**
 * Which tab of a device leads (owns the one client, its connection and its store): the Web Locks
 * API where the browser has it, a lease over a BroadcastChannel where it does not.
 * @packageDocumentation
 */
import type { Clock, TimerHandle } from '../../util/clock.js';

/** The part of `navigator.locks` the election uses. */
export interface LockManagerLike {
  request(name: string, options: { signal?: AbortSignal }, fn: () => Promise<void>): Promise<unknown>;
}

/** The part of a `BroadcastChannel` the tabs use (a test may pass its own). */
export interface ChannelLike {
  postMessage(message: unknown): void;
  addEventListener(type: 'message', fn: (ev: { data: unknown }) => void): void;
  close(): void;
}

/** What an election tells its tab. */
export interface ElectionHooks {
  /** This tab leads now (called once per term). */
  lead(): void;
  /** This tab no longer leads (the fallback's split brain resolved against it). */
  follow(): void;
}

/** A running election; `stop` gives leadership up (or the wait for it) at once. */
export interface Election {
  stop(): void;
}

/**
 * Web Locks: the tab holding the lock leads; the browser hands it to the next waiting tab the
 * moment the holder's tab closes or crashes, so takeover waits on nothing but the new leader's
 * start.
 */
export function lockElection(locks: LockManagerLike, name: string, hooks: ElectionHooks): Election {
  const abort = new AbortController();
  let release!: () => void;
  const held = new Promise<void>((resolve) => (release = resolve));
  locks
    .request(name, { signal: abort.signal }, async () => {
      hooks.lead();
      await held;
    })
    .catch(() => {}); // AbortError: stopped while waiting
  return {
    stop() {
      abort.abort();
      release();
    },
  };
}

/** Timing of the BroadcastChannel fallback. */
export interface LeaseTiming {
  /** The leader says it is alive this often. */
  heartbeatMs: number;
  /** A silence this long means the leader is gone. */
  leaseMs: number;
  /** A candidate waits this long for an earlier claim (or a leader's answer) before it leads. */
  claimMs: number;
}

/** The fallback's frames (inside the tabs' envelope, see tabs.ts). */
export type LeaseFrame =
  | { k: 'beat'; tab: string; since: number }
  | { k: 'claim'; tab: string; at: number }
  | { k: 'bye'; tab: string };

type LeaseState = 'follower' | 'candidate' | 'leader';

/** What can happen to a tab in the lease election. */
type LeaseEvent =
  /** The leader said `bye`, or was silent for `leaseMs`. */
  | 'leaderGone'
  /** A leader's beat (for a leader: of one that started its term before this one). */
  | 'leaderSeen'
  /** A claim earlier than this tab's own. */
  | 'earlierClaim'
  /** `claimMs` passed since this tab claimed, with no earlier claim nor a beat. */
  | 'claimHeld';

/** The lease election, as a table: a state's events that move it, and where. */
const LEASE: Record<LeaseState, Partial<Record<LeaseEvent, LeaseState>>> = {
  follower: { leaderGone: 'candidate' },
  candidate: { leaderSeen: 'follower', earlierClaim: 'follower', claimHeld: 'leader' },
  leader: { leaderSeen: 'follower' },
};

/** Who wins between two claims (or two leaders): the earlier, then the smaller tab id. */
const before = (a: [number, string], b: [number, string]) => a[0] < b[0] || (a[0] === b[0] && a[1] < b[1]);

/**
 * A lease over the channel: the leader beats every `heartbeatMs`; a tab that hears none for
 * `leaseMs` (or hears the leader's `bye` as its tab closes) claims, and leads unless an earlier
 * claim or a beat arrives within `claimMs`. Two leaders (a partition healed, a stalled tab) meet
 * in each other's beats and the later one steps down. Takeover after a `bye` takes `claimMs`;
 * after a crash at most `leaseMs + heartbeatMs + claimMs`.
 */
export class LeaseElection implements Election {
  private state: LeaseState = 'follower';
  private heardAt: number;
  /** This tab's claim, or its term's start while leading. */
  private mine = 0;
  private timer: TimerHandle | undefined;
  private stopped = false;

  constructor(
    private readonly tab: string,
    private readonly post: (f: LeaseFrame) => void,
    private readonly clock: Clock,
    private readonly timing: LeaseTiming,
    private readonly hooks: ElectionHooks,
  ) {
    this.heardAt = clock.now();
    // A new tab claims at once: a living leader answers with a beat, and it follows.
    this.on('leaderGone');
  }

  /** A frame from another tab. */
  onFrame(f: LeaseFrame): void {
    if (this.stopped || f.tab === this.tab) return;
    if (f.k === 'bye') return this.on('leaderGone');
    if (f.k === 'beat') {
      this.heardAt = this.clock.now();
      // A leader yields only to a leader whose term started first.
      if (this.state !== 'leader' || before([f.since, f.tab], [this.mine, this.tab])) this.on('leaderSeen');
      return;
    }
    if (this.state === 'leader') return this.beat(); // answer a claim: there is a leader
    this.heardAt = this.clock.now();
    if (before([f.at, f.tab], [this.mine, this.tab])) this.on('earlierClaim');
  }

  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.clock.clearTimeout(this.timer);
    if (this.state === 'leader') this.post({ k: 'bye', tab: this.tab });
  }

  /** Applies `event` by the table, then the new state's entry action. */
  private on(event: LeaseEvent): void {
    const next = LEASE[this.state][event];
    if (!next || this.stopped) return;
    const was = this.state;
    this.state = next;
    this.mine = this.clock.now();
    if (next === 'candidate') {
      this.post({ k: 'claim', tab: this.tab, at: this.mine });
      this.schedule(this.timing.claimMs);
    } else if (next === 'leader') {
      this.beat();
      this.schedule(this.timing.heartbeatMs);
      this.hooks.lead();
    } else {
      this.schedule(this.timing.heartbeatMs);
      if (was === 'leader') this.hooks.follow();
    }
  }

  private beat(): void {
    this.post({ k: 'beat', tab: this.tab, since: this.mine });
  }

  /** The one timer: a leader's next beat, a candidate's deadline, a follower's lease check. */
  private tick(): void {
    if (this.stopped) return;
    if (this.state === 'candidate') return this.on('claimHeld');
    if (this.state === 'leader') this.beat();
    else if (this.clock.now() - this.heardAt >= this.timing.leaseMs) return this.on('leaderGone');
    this.schedule(this.timing.heartbeatMs);
  }

  private schedule(ms: number): void {
    this.clock.clearTimeout(this.timer);
    this.timer = this.clock.setTimeout(() => this.tick(), ms);
  }
}
