/**
 * Warnings a client causes (a refused key upload, a dropped typing notice) are worth a log line
 * the first few times and a disk-filling flood after that: one connection refused 1,500 key
 * uploads a second, a line each (about 28 GB a day, issue 22). This logger keeps at most a few
 * lines per key (the device or user) per minute and a ceiling for all keys together, says once
 * per window that it is dropping more, and counts what it dropped.
 * @packageDocumentation
 */
import type { Logger } from './options.js';
import { WindowCounters } from './limits.js';

/** Options of {@link RateLimitedLog}. */
export interface RateLimitedLogOptions {
  /** Lines per key per window. @default 5 */
  perKey?: number;
  /** Lines per window for all keys together (many accounts, one attacker). @default 100 */
  total?: number;
  /** @default 60000 */
  windowMs?: number;
  /** Keys remembered at most (the oldest windows forgotten first). @default 10000 */
  maxKeys?: number;
}

const ALL = '\u0000all';

/** Client-caused warnings, rate limited per key and in total. */
export class RateLimitedLog {
  private readonly counts: WindowCounters;
  private readonly perKey: number;
  private readonly total: number;
  /** Lines dropped since the start (for metrics). */
  dropped = 0;

  constructor(
    private readonly log: Logger,
    private readonly now: () => number,
    options: RateLimitedLogOptions = {},
  ) {
    this.perKey = options.perKey ?? 5;
    this.total = options.total ?? 100;
    this.counts = new WindowCounters(options.windowMs ?? 60_000, options.maxKeys ?? 10_000);
  }

  /** Logs `msg` at warn for `key` (a device or user) unless it or everyone logged too much lately. */
  warn(key: string, msg: string, data?: unknown): void {
    const now = this.now();
    const mine = this.counts.add(key, 1, now);
    if (mine > this.perKey + 1) {
      this.dropped++;
      return;
    }
    const all = this.counts.add(ALL, 1, now);
    if (all > this.total + 1) {
      this.dropped++;
      return;
    }
    if (all === this.total + 1) {
      this.log.warn('client warnings: more than the limit this window, the rest are dropped', {
        perWindow: this.total,
      });
    } else if (mine === this.perKey + 1) {
      this.log.warn(`${msg} (${key}; more from it this window are not logged)`, data);
    } else {
      this.log.warn(`${msg} (${key})`, data);
    }
  }
}
