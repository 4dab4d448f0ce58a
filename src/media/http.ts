/**
 * The client's side of the media endpoints: requests with credentials, typed errors from the
 * server's JSON answers, and the backoff between retries. Browser-safe (`fetch` only).
 * @packageDocumentation
 */
import { PostboxError, ERROR_CODES, type ErrorCode } from '../protocol/errors.js';

/** Where and as whom a device talks to the media server. */
export interface MediaEndpoint {
  /** The media server's base URL, e.g. `http://127.0.0.1:8080/media`. */
  url: string;
  /** The device's credentials (the same the client connects with). */
  credentials: () => string | Promise<string>;
  /** @default globalThis.fetch */
  fetch?: typeof fetch;
  /** Waits between retries: attempt number → ms. @default full jitter, 250 ms doubling to 8 s */
  backoff?: (attempt: number) => number;
}

/** Full-jitter exponential backoff. */
export function mediaBackoff(attempt: number): number {
  return Math.random() * Math.min(8000, 250 * 2 ** Math.min(attempt, 10));
}

/** Resolves after `ms`, or rejects when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(aborted());
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(aborted());
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

/** The error of an aborted transfer. */
export function aborted(): PostboxError {
  return new PostboxError('closed', 'media transfer aborted');
}

/** A fetch failure that may pass on retry (network, 5xx, 423, 429). */
export class Transient extends Error {
  constructor(
    message: string,
    readonly waitMs?: number,
  ) {
    super(message);
  }
}

/** Makes an authenticated request; a non-2xx answer throws (a {@link Transient} when retryable). */
export async function mediaFetch(
  ep: MediaEndpoint,
  path: string,
  init: RequestInit & { duplex?: 'half' },
  auth = true,
): Promise<Response> {
  const headers = new Headers(init.headers);
  if (auth) headers.set('Authorization', `Bearer ${await ep.credentials()}`);
  let res: Response;
  try {
    res = await (ep.fetch ?? fetch)(new URL(path, ep.url).toString(), {
      ...init,
      headers,
    });
  } catch (e) {
    if (init.signal?.aborted) throw aborted();
    throw new Transient(`network: ${(e as Error).message}`);
  }
  if (res.ok) return res;
  let code: ErrorCode = 'internal';
  let message = `HTTP ${res.status}`;
  try {
    const j = (await res.json()) as { code?: string; message?: string };
    if (j.code && j.code in ERROR_CODES) code = j.code as ErrorCode;
    if (j.message) message = j.message;
  } catch {
    /* not JSON */
  }
  const retryAfter = Number(res.headers.get('retry-after'));
  if (res.status >= 500 || res.status === 423 || res.status === 429)
    throw new Transient(
      message,
      Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter * 1000 : undefined,
    );
  throw Object.assign(new PostboxError(code, message), { status: res.status });
}

/** The HTTP status of a {@link mediaFetch} refusal. */
export const statusOf = (e: unknown): number | undefined => (e as { status?: number }).status;
