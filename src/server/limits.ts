/**
 * The server's rate limits, held per authenticated user or device and never per connection: a
 * client that reconnects (or opens six connections at once) finds its counts where it left them.
 * Every map here is bounded, so the limits cannot themselves be used to exhaust memory.
 *
 * With a cluster each node counts on its own: a client that reconnects to another node starts
 * that node's counts, so N nodes allow at most N times each limit.
 * @internal
 * @packageDocumentation
 */
import { deviceKeyOf } from './address.js';

/** Most keys (users or devices) a counter map remembers; past it the oldest windows are forgotten. */
export const MAX_LIMIT_KEYS = 100_000;

/**
 * Most distinct devices one user may take one-time keys of in one budget window; claims for
 * further devices get last-resort bundles. Bounds the budget's memory per claimer, and keeps one
 * claimer from pushing others' (or its own) budget records out of the map: it cannot make more
 * records than this.
 */
export const MAX_ONE_TIME_TARGETS = 4096;

/** Most (claimer, device) records the one-time key budget keeps across all claimers. */
export const MAX_ONE_TIME_RECORDS = 200_000;

/**
 * A map that keeps at most `max` keys: setting a key moves it to the back, and past `max` the key
 * set longest ago is forgotten. For caches and hints keyed by what clients name (groups, devices),
 * which must not grow with an attacker's creativity.
 */
export class BoundedMap<K, V> extends Map<K, V> {
  constructor(private readonly max: number) {
    super();
  }

  override set(key: K, value: V): this {
    super.delete(key);
    super.set(key, value);
    if (this.size > this.max) super.delete(this.keys().next().value as K);
    return this;
  }
}

interface Window {
  start: number;
  count: number;
}

/**
 * Fixed-window counters keyed by user or device. The map keeps windows in the order they started
 * (a new window is re-inserted at the back), so the expired ones, and past `maxKeys` the oldest,
 * are dropped from the front in amortised constant time.
 */
export class WindowCounters {
  private readonly windows = new Map<string, Window>();

  constructor(
    private readonly windowMs: number,
    private readonly maxKeys = MAX_LIMIT_KEYS,
  ) {}

  /** Adds `n` to `key`'s count in its current window (a new one once the last ended); returns the count. */
  add(key: string, n: number, now: number): number {
    let w = this.windows.get(key);
    if (!w || now - w.start >= this.windowMs) {
      if (w) this.windows.delete(key);
      this.windows.set(key, (w = { start: now, count: 0 }));
      this.prune(now);
    }
    w.count += n;
    return w.count;
  }

  /** Number of keys remembered (for tests of the bound). */
  get size(): number {
    return this.windows.size;
  }

  private prune(now: number): void {
    for (const [key, w] of this.windows) {
      if (this.windows.size <= this.maxKeys && now - w.start < this.windowMs) return;
      this.windows.delete(key);
    }
  }
}

/**
 * A token bucket for one node: `perSecond` tokens a second, holding at most `burst`. Unlike the
 * per-user counters it is keyed on nothing, so it bounds what all clients together may do.
 */
export class TokenBucket {
  private level: number;
  private at: number | undefined;

  constructor(
    private readonly perSecond: number,
    private readonly burst: number,
  ) {
    this.level = burst;
  }

  /** Takes `n` tokens when there are that many (refilled up to `now`); false, taking none, when not. */
  take(n: number, now: number): boolean {
    if (this.at !== undefined) {
      this.level = Math.min(this.burst, this.level + (Math.max(0, now - this.at) * this.perSecond) / 1000);
    }
    this.at = now;
    if (this.level < n) return false;
    this.level -= n;
    return true;
  }
}

interface Claimer {
  start: number;
  /** Target device → one-time keys taken in this window. */
  targets: Map<string, number>;
}

/**
 * Signal's defence against draining a device's one-time prekeys: each claiming user may take at
 * most `perPair` one-time keys of each device per window. Past that the claim is still answered,
 * from the device's signed prekey and last-resort Kyber key (which make a session just as well,
 * without the one-time key's extra forward secrecy), so a claimer can neither exhaust a victim's
 * supply nor be refused a session.
 *
 * Windows are per claimer: its records all start over when its window ends. A claimer has at most
 * {@link MAX_ONE_TIME_TARGETS} records (further devices get last-resort bundles) and the map at
 * most {@link MAX_ONE_TIME_RECORDS}, the claimers with the oldest windows forgotten first; so
 * forgetting a claimer's records early takes many other claimers' worth of claims.
 */
export class OneTimeKeyBudget {
  private readonly claimers = new Map<string, Claimer>();
  private records = 0;

  constructor(
    private readonly perPair: number,
    private readonly windowMs: number,
    private readonly perClaimer = MAX_ONE_TIME_TARGETS,
    private readonly maxRecords = MAX_ONE_TIME_RECORDS,
  ) {}

  /** Whether `claimer` may take a one-time key of device `target` now; counted when it may. */
  take(claimer: string, target: string, now: number): boolean {
    let c = this.claimers.get(claimer);
    if (c && now - c.start >= this.windowMs) {
      this.forget(claimer, c);
      c = undefined;
    }
    if (!c) this.claimers.set(claimer, (c = { start: now, targets: new Map() }));
    const taken = c.targets.get(target) ?? 0;
    if (taken >= this.perPair) return false;
    if (taken === 0) {
      if (c.targets.size >= this.perClaimer) return false;
      this.records++;
    }
    c.targets.set(target, taken + 1);
    this.prune(now, claimer);
    return true;
  }

  /** Number of (claimer, device) records kept (for tests of the bound). */
  get size(): number {
    return this.records;
  }

  private forget(claimer: string, c: Claimer): void {
    this.claimers.delete(claimer);
    this.records -= c.targets.size;
  }

  private prune(now: number, current: string): void {
    for (const [claimer, c] of this.claimers) {
      if (claimer === current) continue;
      if (this.records <= this.maxRecords && now - c.start < this.windowMs) return;
      this.forget(claimer, c);
    }
  }
}

/** The limits of {@link Limits}, as the server's options set them. */
export interface LimitOptions {
  maxFramesPerSecond: number;
  maxTypingPer10s: number;
  maxKeyClaimsPer10s: number;
  /** 0: no node-wide bound. */
  maxNodeKeyClaimsPerSecond: number;
  maxOneTimeKeyClaimsPerDay: number;
}

const DAY_MS = 24 * 3600_000;

/** What a limited request may do: go ahead, or not (and whether this is the first refusal of its window). */
export type LimitVerdict = 'ok' | 'over' | 'first-over';

/** Every per-user and per-device limit of one server, in one place. */
export class Limits {
  /** Frames per second, per device. */
  private readonly frames = new WindowCounters(1000);
  /** Typing notices per 10 s, per user (all its devices together). */
  private readonly typingNotices = new WindowCounters(10_000);
  /** Key bundles per 10 s, per user. */
  private readonly bundles = new WindowCounters(10_000);
  /** One-time keys per day, per (claiming user, target device). */
  private readonly oneTimeKeys: OneTimeKeyBudget;
  /** Users named in key claims per second, all claimers of this node together. */
  private readonly nodeClaims: TokenBucket | undefined;

  constructor(private readonly opts: LimitOptions) {
    this.oneTimeKeys = new OneTimeKeyBudget(opts.maxOneTimeKeyClaimsPerDay, DAY_MS);
    const perSecond = opts.maxNodeKeyClaimsPerSecond;
    if (perSecond > 0) this.nodeClaims = new TokenBucket(perSecond, 2 * perSecond);
  }

  /** One more frame from an authenticated device: false once it is over its frames per second. */
  frame(user: string, device: string, now: number): boolean {
    return this.frames.add(deviceKeyOf(user, device), 1, now) <= this.opts.maxFramesPerSecond;
  }

  /** One more typing notice from `user`. */
  typing(user: string, now: number): LimitVerdict {
    return verdict(this.typingNotices.add(user, 1, now), this.opts.maxTypingPer10s);
  }

  /**
   * A key claim by `user` for `n` users (counted again per bundle by {@link claimed}): false
   * when the user is over its bundles per 10 s.
   */
  claim(user: string, n: number, now: number): boolean {
    return this.bundles.add(user, n, now) <= this.opts.maxKeyClaimsPer10s;
  }

  /**
   * A key claim for `n` users against this node's bound (all claimers together): false, counting
   * nothing, when the node is over it. Asked after {@link claim}, so a claimer over its own
   * budget takes nothing from the others'.
   */
  nodeClaim(n: number, now: number): boolean {
    return this.nodeClaims?.take(n, now) ?? true;
  }

  /** Counts the bundles a claim by `user` got. */
  claimed(user: string, n: number, now: number): void {
    this.bundles.add(user, n, now);
  }

  /** Whether `claimer` may take a one-time key of `target`'s device `device` now (counted when so). */
  oneTimeKey(claimer: string, target: string, device: string, now: number): boolean {
    return this.oneTimeKeys.take(claimer, deviceKeyOf(target, device), now);
  }
}

function verdict(count: number, max: number): LimitVerdict {
  return count <= max ? 'ok' : count === max + 1 ? 'first-over' : 'over';
}
