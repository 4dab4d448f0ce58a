/**
 * The cost model: what each frame type costs the server (rows written, fsync'd writes, lookups),
 * and the budgets an authenticated device and its user spend it from. A budget is a token bucket
 * keyed on the device or user (never the connection), so reconnecting resets nothing; it refills
 * continuously at its rate up to its burst.
 *
 * Every frame also costs its size on the wire ({@link CostBudgetOptions.bytesPerUnit}), charged
 * from its length before it is decoded: so a 64 KB message costs what its bytes cost the store and
 * the disk, not what a 100-byte one does, and a device in debt has its frames refused unread.
 *
 * Over budget, a frame is refused with a typed `rate_limited` error (the request is not run; a
 * client retries after a backoff); a device that keeps sending while refused runs into debt, and
 * at a whole burst of debt its connection is closed with 4003.
 * @packageDocumentation
 */
import type { ClientFrame } from '../protocol/index.js';
import { MAX_LIMIT_KEYS } from './limits.js';

/**
 * Cost units per frame type, roughly one per row read or written, with a durable write that is
 * not batched with messages (a push token, a key upload) weighted as the fsync it costs.
 */
export const FRAME_COSTS = {
  /** Plus one per inbox row it is expected to write (its fan-out). */
  send: 2,
  /** Plus one per 8 ids it names (each is a lookup). */
  rcpt: 2,
  /** Plus one per 8 offsets (each is a lookup and a delete, riding in the next commit). */
  ack: 1,
  /** Plus one per member it names; the fan-out of its event is learned like a message's. */
  grp: 16,
  /** A standalone durable write, plus one per one-time key. */
  keys: 64,
  /** A standalone durable write. */
  ptok: 64,
  /** Per user asked for (each a claim transaction). */
  kget: 8,
  lnk: 16,
  unl: 16,
  sub: 4,
  unsub: 1,
  typ: 2,
  ping: 0,
  pong: 0,
  hello: 0,
} as const satisfies Record<ClientFrame['t'], number>;

/** What a frame costs; `fanout` is the expected inbox rows of a send (see FanoutEstimate). */
export function frameCost(f: ClientFrame, fanout: () => number): number {
  switch (f.t) {
    case 'send':
      return FRAME_COSTS.send + fanout();
    case 'rcpt':
      return FRAME_COSTS.rcpt + Math.ceil(f.ids.length / 8);
    case 'ack':
      return FRAME_COSTS.ack + Math.ceil(f.o.length / 8);
    case 'grp':
      return FRAME_COSTS.grp + (f.m?.length ?? 0) + fanout();
    case 'keys':
      return FRAME_COSTS.keys + (f.pk?.length ?? 0) + (f.kpk?.length ?? 0);
    case 'kget':
      return FRAME_COSTS.kget * f.u.length;
    default:
      return FRAME_COSTS[f.t];
  }
}

/** A budget: `perSecond` units refilled each second, up to `burst`. */
export interface Budget {
  perSecond: number;
  burst: number;
}

/** The budgets of {@link CostBudgets}. */
export interface CostBudgetOptions {
  /** Per authenticated device. */
  device: Budget;
  /** Per user, all its devices together. */
  user: Budget;
  /**
   * Wire bytes per cost unit, charged for every frame from its length before it is decoded (a
   * frame shorter than this costs nothing for its bytes, so pings and acks stay cheap).
   * @default 64 (a 64 KiB message: 1,024 units, about 10 a second at the default device budget)
   */
  bytesPerUnit?: number;
}

/** Default of {@link CostBudgetOptions.bytesPerUnit}. */
export const DEFAULT_BYTES_PER_COST_UNIT = 64;

/** Defaults: a device may write ~10,000 inbox rows a second (5 messages a second to a full 1,024-member group). */
export const DEFAULT_COST_BUDGETS: Readonly<CostBudgetOptions> = Object.freeze({
  device: { perSecond: 10_000, burst: 20_000 },
  user: { perSecond: 20_000, burst: 40_000 },
});

/** What a charged frame may do: run, be refused, or be refused and its connection closed. */
export type CostVerdict = 'ok' | 'over' | 'close';

interface Bucket {
  level: number;
  at: number;
  /** When the bucket last moved to the back of the map (see {@link MOVE_EVERY_MS}). */
  moved: number;
}

/**
 * How stale a bucket's place in the forgetting order may get. Moving a bucket to the back of its
 * map on every charge (a delete and an insert, four per frame) churned the maps' tables at every
 * frame (2.6 % of the server's CPU at saturation); a bucket used within this long is at most this
 * much out of place, which changes nothing a bound of 100,000 keys decides.
 */
const MOVE_EVERY_MS = 1000;

/** Token buckets keyed by device or user, at most `maxKeys` (the longest unused forgotten first). */
class Buckets {
  private readonly buckets = new Map<string, Bucket>();

  constructor(
    private readonly budget: Budget,
    private readonly maxKeys: number,
  ) {}

  /** The bucket of `key`, refilled up to now (and, used, moved to the back: see {@link MOVE_EVERY_MS}). */
  at(key: string, now: number): Bucket {
    let b = this.buckets.get(key);
    if (b) {
      b.level = Math.min(this.budget.burst, b.level + ((now - b.at) * this.budget.perSecond) / 1000);
      b.at = now;
      // Not `now - b.moved < MOVE_EVERY_MS`: a clock that went back moves the bucket too.
      if (!(now - b.moved >= 0 && now - b.moved < MOVE_EVERY_MS)) {
        b.moved = now;
        this.buckets.delete(key);
        this.buckets.set(key, b);
      }
      return b;
    }
    b = { level: this.budget.burst, at: now, moved: now };
    this.buckets.set(key, b);
    if (this.buckets.size > this.maxKeys) this.buckets.delete(this.buckets.keys().next().value as string);
    return b;
  }

  /** The level of `key`'s bucket refilled up to now, without touching it (a full burst if unknown). */
  peek(key: string, now: number): number {
    const b = this.buckets.get(key);
    if (!b) return this.budget.burst;
    return Math.min(this.budget.burst, b.level + ((now - b.at) * this.budget.perSecond) / 1000);
  }

  get size(): number {
    return this.buckets.size;
  }

  get burst(): number {
    return this.budget.burst;
  }
}

/**
 * The device and user budgets of one server. A frame is charged to both; it runs only when both
 * can pay. A refused frame still adds its cost as debt (down to one burst below zero), so a
 * client that ignores refusals reaches the close threshold instead of being refused forever.
 */
export class CostBudgets {
  private readonly devices: Buckets;
  private readonly users: Buckets;
  private readonly bytesPerUnit: number;

  constructor(opts: CostBudgetOptions = DEFAULT_COST_BUDGETS, maxKeys = MAX_LIMIT_KEYS) {
    this.devices = new Buckets(opts.device, maxKeys);
    this.users = new Buckets(opts.user, maxKeys);
    this.bytesPerUnit = opts.bytesPerUnit ?? DEFAULT_BYTES_PER_COST_UNIT;
  }

  /** What a frame of `bytes` bytes costs for its size (whole units: a short frame costs 0). */
  byteCost(bytes: number): number {
    return Math.floor(bytes / this.bytesPerUnit);
  }

  /** Charges `cost` to `user`'s device `device` and to `user`. */
  charge(user: string, device: string, cost: number, now: number): CostVerdict {
    if (cost <= 0) return 'ok';
    const d = this.devices.at(`${user.length}:${user}${device}`, now);
    const u = this.users.at(user, now);
    if (d.level >= cost && u.level >= cost) {
      d.level -= cost;
      u.level -= cost;
      return 'ok';
    }
    d.level = Math.max(-this.devices.burst, d.level - cost);
    return d.level <= -this.devices.burst ? 'close' : 'over';
  }

  /**
   * Whether `user`'s device `device` is in debt (refused frames cost more than it refilled since).
   * Read at `hello`, so that a device closed for debt does not come back at once to be closed again
   * (each session costs a store write and an inbox read before its first frame).
   */
  inDebt(user: string, device: string, now: number): boolean {
    return this.devices.peek(`${user.length}:${user}${device}`, now) < 0;
  }

  /** Keys remembered (for tests of the bound). */
  get size(): number {
    return this.devices.size + this.users.size;
  }
}
