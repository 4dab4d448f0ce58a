/**
 * The client's side of the media endpoints: requests with credentials, typed errors from the
 * server's JSON answers, and the backoff between retries. Browser-safe (`fetch` only).
 * @packageDocumentation
 */
import { PostboxError, ERROR_CODES, type ErrorCode } from '../protocol/errors.js';
import { iterate } from './format.js';

/** Where and as whom a device talks to the media server. */
export interface MediaEndpoint {
  /** The media server's base URL, e.g. `http://127.0.0.1:8080/media`. */
  url: string;
  /** The device's credentials (the same the client connects with). */
  credentials: () => string | Promise<string>;
  /**
   * The HTTP client of every request, blob transfers included. Without one, requests use the
   * global `fetch`, but blob downloads and upload `PATCH`es under Node's entry point use
   * `node:http` (cheaper per byte).
   * @default globalThis.fetch
   */
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
  throw refusal(res.status, await res.text().catch(() => ''), res.headers.get('retry-after'));
}

/**
 * The error of a non-2xx answer with body `body`: a {@link Transient} when retryable (5xx, 423,
 * 429; `Retry-After` honoured), else a `PostboxError` with the server's code and the status.
 */
export function refusal(status: number, body: string, retryAfterHeader: string | null | undefined): Error {
  let code: ErrorCode = 'internal';
  let message = `HTTP ${status}`;
  try {
    const j = JSON.parse(body) as { code?: string; message?: string };
    if (j.code && j.code in ERROR_CODES) code = j.code as ErrorCode;
    if (j.message) message = j.message;
  } catch {
    /* not JSON */
  }
  const retryAfter = Number(retryAfterHeader);
  if (status >= 500 || status === 423 || status === 429)
    return new Transient(
      message,
      Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter * 1000 : undefined,
    );
  return Object.assign(new PostboxError(code, message), { status });
}

/** A blob's bytes from an offset on: the blob's whole size and the bytes, as they arrive. */
export interface RangeBody {
  /** Bytes of the whole blob (from `Content-Range`, else `Content-Length`). */
  total: number;
  /** The bytes from the requested offset to the end. */
  pieces: AsyncIterable<Uint8Array>;
}

/**
 * A `GET` of a granted blob URL from byte `offset` (`Range: bytes=N-`, no credentials: the URL
 * carries the grant). Throws like {@link mediaFetch}: a {@link Transient} for network faults and
 * retryable answers, a `PostboxError` with `status` for refusals.
 */
export type RangeGet = (url: string, offset: number, signal?: AbortSignal) => Promise<RangeBody>;

/** The blob's size from a ranged answer's headers. */
export const totalOf = (contentRange: string | null | undefined, contentLength: string | null | undefined) =>
  Number(/\/(\d+)$/.exec(contentRange ?? '')?.[1] ?? contentLength);

/** {@link RangeGet} over the endpoint's `fetch`. */
export function fetchRange(ep: MediaEndpoint): RangeGet {
  return async (url, offset, signal) => {
    const res = await mediaFetch(
      ep,
      url,
      { headers: { Range: `bytes=${offset}-` }, ...(signal ? { signal } : {}) },
      false,
    );
    return {
      total: totalOf(res.headers.get('content-range'), res.headers.get('content-length')),
      pieces: iterate(res.body!),
    };
  };
}

/** The tus protocol version header of every upload request. */
export const TUS = { 'Tus-Resumable': '1.0.0' } as const;

/** The headers of a tus `PATCH` at `offset` (credentials aside). */
export const patchHeaders = (offset: number): Record<string, string> => ({
  ...TUS,
  'Upload-Offset': String(offset),
  'Content-Type': 'application/offset+octet-stream',
});

/**
 * A tus `PATCH` of `body` at `offset` to the upload `url`, with the device's credentials; resolves
 * with the server's `Upload-Offset` after it. Throws like {@link mediaFetch}: a {@link Transient}
 * for network faults and retryable answers, a `PostboxError` with `status` for refusals. The body
 * is pulled only as fast as the connection takes it.
 */
export type PatchSend = (
  ep: MediaEndpoint,
  url: string,
  offset: number,
  body: AsyncIterable<Uint8Array>,
  signal?: AbortSignal,
) => Promise<number>;

/**
 * {@link PatchSend} over the endpoint's `fetch`. The request's bytes are gathered first and sent
 * as one `Blob`: browsers stream a request body only over HTTP/2 (Chromium; over HTTP/1.1 the
 * request fails) or not at all (Firefox, Safari), and a PATCH is a few MiB at most (8 MiB by
 * default), so memory stays bounded by it.
 */
export const fetchPatch: PatchSend = async (ep, url, offset, body, signal) => {
  const parts: Uint8Array[] = [];
  for await (const piece of body) parts.push(piece);
  const res = await mediaFetch(ep, url, {
    method: 'PATCH',
    headers: patchHeaders(offset),
    body: new Blob(parts as Uint8Array<ArrayBuffer>[]),
    ...(signal ? { signal } : {}),
  });
  return Number(res.headers.get('upload-offset'));
};

let nodeRange: RangeGet | undefined;
let nodePatch: PatchSend | undefined;

/**
 * How uploads send their bytes to `ep`: its own `fetch` when it has one, else what the runtime's
 * entry point installed (Node: `node:http`), else the global `fetch`.
 */
export function patchOf(ep: MediaEndpoint): PatchSend {
  return ep.fetch || !nodePatch ? fetchPatch : nodePatch;
}

/**
 * Installs the runtime's upload sender (the Node entry point of `postbox/media` installs
 * `node:http`'s), used when an endpoint brings no `fetch`.
 * @internal
 */
export function setDefaultPatch(send: PatchSend | undefined): void {
  nodePatch = send;
}

/**
 * How downloads get a blob's bytes from `ep`: its own `fetch` when it has one, else what the
 * runtime's entry point installed (Node: `node:http`), else the global `fetch`.
 */
export function rangeGetOf(ep: MediaEndpoint): RangeGet {
  return ep.fetch || !nodeRange ? fetchRange(ep) : nodeRange;
}

/**
 * Installs the runtime's blob getter (the Node entry point of `postbox/media` installs
 * `node:http`'s), used when an endpoint brings no `fetch`.
 * @internal
 */
export function setDefaultRangeGet(get: RangeGet | undefined): void {
  nodeRange = get;
}

/** The HTTP status of a {@link mediaFetch} refusal. */
export const statusOf = (e: unknown): number | undefined => (e as { status?: number }).status;
