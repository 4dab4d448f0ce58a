/**
 * The media server's limits: sizes, rates and lifetimes, with per-user accounting.
 * @packageDocumentation
 */
import type { ErrorCode } from '../../protocol/errors.js';

/** Limits of the media server; every one is per user unless it says otherwise. */
export interface MediaLimits {
  /** Largest upload (ciphertext bytes). @default 2 GiB + format overhead */
  maxUploadBytes: number;
  /** Bytes a user may have stored at once (uploads not yet deleted). @default 10 GiB */
  maxStoredBytes: number;
  /** Uploads a user may have created and not yet attached. @default 16 */
  maxOpenUploads: number;
  /** Uploads a user may create per minute. @default 60 */
  uploadsPerMinute: number;
  /** An upload not attached to a conversation within this is deleted. @default 24 h */
  unattachedMs: number;
  /** An attached blob is deleted after this, acked or not (the message retention). @default 30 days */
  retentionMs: number;
  /** Lifetime of a download grant. @default 5 min */
  grantTtlMs: number;
}

/** The defaults of {@link MediaLimits}. */
export const DEFAULT_MEDIA_LIMITS: MediaLimits = {
  maxUploadBytes: 2 * 1024 ** 3 + 2 * 1024 ** 2,
  maxStoredBytes: 10 * 1024 ** 3,
  maxOpenUploads: 16,
  uploadsPerMinute: 60,
  unattachedMs: 24 * 3600_000,
  retentionMs: 30 * 24 * 3600_000,
  grantTtlMs: 5 * 60_000,
};

/** The limits with defaults filled in. */
export function resolveLimits(given: Partial<MediaLimits> = {}): MediaLimits {
  return { ...DEFAULT_MEDIA_LIMITS, ...given };
}

/** A limit refusal, turned into an HTTP answer by the handler. */
export class LimitError extends Error {
  constructor(
    readonly status: number,
    readonly code: ErrorCode,
    message: string,
    readonly retryAfterS?: number,
  ) {
    super(message);
  }
}

/** Per-user upload creation rate (a one-minute sliding window) and the stored/open bounds. */
export class MediaRate {
  private readonly recent = new Map<string, number[]>();
  constructor(private readonly limits: MediaLimits) {}

  /** Throws a {@link LimitError} when `user` may not create an upload of `length` bytes now. */
  admit(user: string, now: number, usage: { open: number; bytes: number }, length: number): void {
    const l = this.limits;
    if (usage.open >= l.maxOpenUploads)
      throw new LimitError(
        429,
        'rate_limited',
        `${usage.open} uploads not yet sent: finish or abandon one first`,
        60,
      );
    if (usage.bytes + length > l.maxStoredBytes)
      throw new LimitError(
        413,
        'too_large',
        `stored media would pass ${l.maxStoredBytes} bytes for this user`,
      );
    const times = (this.recent.get(user) ?? []).filter((t) => t > now - 60_000);
    if (times.length >= l.uploadsPerMinute) {
      const wait = Math.ceil((times[0]! + 60_000 - now) / 1000);
      throw new LimitError(429, 'rate_limited', `more than ${l.uploadsPerMinute} uploads a minute`, wait);
    }
    times.push(now);
    this.recent.set(user, times);
    // Bounded: users with no upload in the last minute are forgotten.
    if (this.recent.size > 10_000)
      for (const [u, t] of this.recent) if (t.at(-1)! <= now - 60_000) this.recent.delete(u);
  }
}
