/**
 * A follower tab's side of the tabs: its calls to the leader (sent again until one answers, to
 * whichever tab leads by then), and the leader's events (each message once).
 * @packageDocumentation
 */
import { PostboxError } from '../../protocol/errors.js';
import type { Clock, TimerHandle } from '../../util/clock.js';
import type { CallName, EventName, TabFrame } from './wire.js';

/** How many message ids a follower remembers to pass each `message` event on once. */
const RECENT_IDS = 4096;

interface PendingCall {
  m: CallName;
  a: unknown[];
  resolve(v: unknown): void;
  reject(e: PostboxError): void;
  deadline: number;
}

/** A follower tab's calls and events (the tab's own client is closed while it follows). */
export class Follower {
  /** Users this tab watches (asked of every new leader). */
  readonly watched = new Set<string>();
  /** The leader's connection state, as last heard. */
  state = 'connecting';
  /** Whether some tab has led since this one started (a new one then means a switch). */
  hadLeader = false;
  private leader: string | undefined;
  private readonly calls = new Map<string, PendingCall>();
  private readonly seen = new Set<string>();
  private next = 0;
  private timer: TimerHandle | undefined;

  constructor(
    private readonly tab: string,
    private readonly post: (f: TabFrame) => void,
    private readonly clock: Clock,
    private readonly timing: { retryMs: number; callTimeoutMs: number },
    private readonly emit: (name: EventName | 'resync', args: unknown[]) => void,
  ) {}

  /** Calls the leader; resolves with its answer, or rejects with its error or `unavailable`. */
  call(m: CallName, a: unknown[]): Promise<unknown> {
    const rid = `${this.tab}:${++this.next}`;
    return new Promise((resolve, reject) => {
      this.calls.set(rid, { m, a, resolve, reject, deadline: this.clock.now() + this.timing.callTimeoutMs });
      this.post({ k: 'call', tab: this.tab, rid, m, a });
      this.arm();
    });
  }

  /** Sends a call once, answered or not. */
  tell(m: CallName, a: unknown[]): void {
    this.post({ k: 'call', tab: this.tab, rid: `${this.tab}:${++this.next}`, m, a });
  }

  /** This tab leads now: its own calls go to its client, and a later leader is a switch. */
  leaderIs(tab: string): void {
    this.leader = tab;
    this.hadLeader = true;
  }

  onFrame(f: TabFrame): void {
    if (f.k === 'ret') {
      const c = this.calls.get(f.rid);
      if (!c) return; // answered already (a retry answered twice), or another tab's
      this.calls.delete(f.rid);
      if (f.e) c.reject(new PostboxError(f.e.code, f.e.message));
      else c.resolve(f.v);
    } else if (f.k === 'ev') {
      if (f.n === 'connection') this.state = String(f.a[0]);
      if (f.n === 'message' && !this.firstTime((f.a[0] as { id?: unknown } | undefined)?.id)) return;
      this.emit(f.n, f.a);
    } else if (f.k === 'lead') {
      if (f.state !== this.state) this.emit('connection', [f.state]);
      this.state = f.state;
      if (f.tab === this.leader) return;
      const switched = this.hadLeader;
      this.leaderIs(f.tab);
      // A new leader: what was in flight to the old one goes again (sends are idempotent by id).
      for (const [rid, c] of this.calls) this.post({ k: 'call', tab: this.tab, rid, m: c.m, a: c.a });
      for (const user of this.watched) this.call('watchPresence', [user]).catch(() => {});
      if (switched) this.emit('resync', []);
    }
  }

  /** This tab became the leader: runs the calls still waiting for an answer with `run`. */
  takeOver(run: (m: CallName, a: unknown[]) => Promise<unknown>): void {
    const waiting = [...this.calls.values()];
    this.calls.clear();
    for (const c of waiting) run(c.m, c.a).then(c.resolve, c.reject);
  }

  /** Rejects every call in flight: the tab is closing. */
  close(): void {
    this.clock.clearTimeout(this.timer);
    for (const c of this.calls.values()) c.reject(new PostboxError('closed', 'the tab client is closed'));
    this.calls.clear();
  }

  private firstTime(id: unknown): boolean {
    if (typeof id !== 'string') return true;
    if (this.seen.has(id)) return false;
    this.seen.add(id);
    if (this.seen.size > RECENT_IDS) this.seen.delete(this.seen.values().next().value!);
    return true;
  }

  /** While calls wait: send them again every `retryMs`, and give up on those past their deadline. */
  private arm(): void {
    if (this.timer !== undefined || this.calls.size === 0) return;
    this.timer = this.clock.setTimeout(() => {
      this.timer = undefined;
      const now = this.clock.now();
      for (const [rid, c] of this.calls) {
        if (now >= c.deadline) {
          this.calls.delete(rid);
          c.reject(new PostboxError('unavailable', 'no tab of this device answered (is one leading?)'));
        } else this.post({ k: 'call', tab: this.tab, rid, m: c.m, a: c.a });
      }
      this.arm();
    }, this.timing.retryMs);
  }
}
