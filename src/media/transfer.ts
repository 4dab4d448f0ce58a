/**
 * Resumable transfer of `pbm1` blobs: a tus 1.0 upload that resumes from the server's offset
 * (never re-sending a stored byte) and a download that resumes with HTTP `Range`. Browser-safe.
 *
 * An upload is a series of PATCH requests ending on chunk boundaries: 4 MiB at first, doubled (up
 * to 8 MiB) after each one that took less than a second, unless `patchBytes` fixes the size.
 * After each one the server's offset and the encryption checkpoint at that offset are saved (the
 * `onSaved` hook: the media client writes them to the client store), so after a cut connection or
 * an app restart the upload re-encrypts from the last confirmed request's start, skips what the
 * server already has, and sends only the rest.
 * @packageDocumentation
 */
import { chunkOffset, cipherSize, iterate, MEDIA_CHUNK_BYTES } from './format.js';
import {
  aborted,
  mediaBackoff,
  mediaFetch,
  patchOf,
  rangeGetOf,
  sleep,
  statusOf,
  Transient,
  TUS,
  type MediaEndpoint,
  type RangeBody,
} from './http.js';
import {
  decryptPieces,
  encryptPieces,
  type EncryptCheckpoint,
  type EncryptSummary,
  type MediaSecret,
} from './stream.js';
import type { MediaRef } from './ref.js';
import type { MediaCipher } from './cipher.js';

/** A file to upload: its size and a way to read it from any byte (re-opened on resume). */
export interface MediaSource {
  /** Plaintext bytes. */
  size: number;
  /**
   * The file's bytes from `start` to the end: a Web stream, or any async iterable (a Node
   * `fs.ReadStream` is read directly, without a Web-stream adapter). A chunk belongs to the reader
   * once handed over: the source must not write to it again.
   */
  open(start: number): ReadableStream<Uint8Array> | AsyncIterable<Uint8Array>;
}

/** A source over bytes in memory. */
export function bytesSource(bytes: Uint8Array): MediaSource {
  return {
    size: bytes.length,
    open: (start) =>
      new ReadableStream({
        start(c) {
          for (let o = start; o < bytes.length; o += MEDIA_CHUNK_BYTES)
            c.enqueue(bytes.slice(o, o + MEDIA_CHUNK_BYTES));
          c.close();
        },
      }),
  };
}

/** A source over a `Blob` or `File` (browsers): slices are read lazily. */
export function blobSource(blob: Blob): MediaSource {
  return { size: blob.size, open: (start) => blob.slice(start).stream() as ReadableStream<Uint8Array> };
}

/** What an upload keeps between attempts and across restarts. */
export interface UploadProgress {
  /** The tus upload URL, once created. */
  url?: string;
  /** The server offset confirmed by the last successful PATCH, and the checkpoint there. */
  confirmed: { offset: number; cp?: EncryptCheckpoint };
  /** Set once the whole file was encrypted. */
  summary?: EncryptSummary;
}

/** Options of {@link uploadMedia}. */
export interface UploadOptions {
  /** Saves the progress (called after every confirmed PATCH); awaited. */
  onSaved?: (p: UploadProgress) => Promise<void> | void;
  /**
   * Ciphertext bytes sent so far, of the total: the server's offset when a pass starts (what it
   * stored), then each piece as it is handed to the request (under Node as the socket takes it;
   * in a browser, where a PATCH goes as one `Blob`, a PATCH's worth at a time before it is sent).
   */
  onProgress?: (stored: number, total: number) => void;
  /** Stops the upload (it can be resumed later from the saved progress). */
  signal?: AbortSignal;
  /**
   * Target size of every PATCH request. By default the first is 4 MiB and the size doubles after
   * each PATCH that took under a second, up to 8 MiB: fewer requests on a fast link (each one
   * costs a round trip with the pipeline idle), a checkpoint every few seconds on a slow one. (A
   * 64 MiB cap raised the 200 MB round trip's RSS peak from +69 to +120 MiB, 16 MiB to +86-98.)
   */
  patchBytes?: number;
  /** The cryptography. @default defaultMediaCipher() (node:crypto under Node, else WebCrypto) */
  cipher?: MediaCipher;
}

const PATCH_FIRST = 4 * 1024 * 1024;
const PATCH_MAX = 8 * 1024 * 1024;

/** True at a blob offset where a sealed chunk starts (the header's end included). */
const FIRST_CHUNK = chunkOffset(0);
const SEALED_CHUNK = chunkOffset(1) - FIRST_CHUNK;
const onBoundary = (offset: number) => (offset - FIRST_CHUNK) % SEALED_CHUNK === 0;

/** The blob id of a tus upload URL. */
export const blobIdOf = (url: string): string => url.slice(url.lastIndexOf('/') + 1);

/**
 * Uploads (or resumes uploading) `source` encrypted under `secret`; resolves with the summary
 * once the server has every byte. Network faults, 5xx, 423 and 429 are retried with backoff for
 * ever (until `signal` aborts); a refusal (too large, unauthorized, …) rejects with its code.
 */
export async function uploadMedia(
  ep: MediaEndpoint,
  source: MediaSource,
  secret: MediaSecret,
  progress: UploadProgress,
  options: UploadOptions = {},
): Promise<{ blob: string; summary: EncryptSummary }> {
  const total = cipherSize(source.size);
  const patch = { bytes: options.patchBytes ?? PATCH_FIRST, grow: options.patchBytes === undefined };
  const signal = options.signal;
  const save = async () => options.onSaved?.(progress);
  for (let attempt = 0; ; attempt++) {
    if (signal?.aborted) throw aborted();
    try {
      if (!progress.url) {
        const res = await mediaFetch(ep, new URL(ep.url).pathname + '/uploads', {
          method: 'POST',
          headers: { ...TUS, 'Upload-Length': String(total) },
          ...(signal ? { signal } : {}),
        });
        progress.url = res.headers.get('location') ?? '';
        progress.confirmed = { offset: 0 };
        await save();
      }
      let offset: number;
      try {
        const head = await mediaFetch(ep, progress.url, {
          method: 'HEAD',
          headers: TUS,
          ...(signal ? { signal } : {}),
        });
        offset = Number(head.headers.get('upload-offset'));
      } catch (e) {
        if (statusOf(e) !== 404) throw e;
        // The upload is gone (expired unattached, or the server lost it): start a new one.
        progress.url = undefined;
        progress.summary = undefined;
        progress.confirmed = { offset: 0 };
        await save();
        continue;
      }
      if (offset < progress.confirmed.offset) progress.confirmed = { offset: 0 };
      if (offset === total && progress.summary)
        return { blob: blobIdOf(progress.url), summary: progress.summary };
      options.onProgress?.(offset, total);
      await sendFrom(ep, source, secret, progress, offset, total, patch, options, save);
      attempt = -1;
    } catch (e) {
      if (!(e instanceof Transient)) throw e;
      await sleep(e.waitMs ?? (ep.backoff ?? mediaBackoff)(attempt), signal);
    }
  }
}

/** One pass: re-encrypts from the confirmed checkpoint and PATCHes everything at or past `offset`. */
async function sendFrom(
  ep: MediaEndpoint,
  source: MediaSource,
  secret: MediaSecret,
  progress: UploadProgress,
  offset: number,
  total: number,
  patch: { bytes: number; grow: boolean },
  options: UploadOptions,
  save: () => Promise<void>,
): Promise<void> {
  const from = progress.confirmed.cp;
  let latest: EncryptCheckpoint | undefined = from;
  const input = source.open(from ? from.chunk * MEDIA_CHUNK_BYTES : 0);
  const pieces = encryptPieces('getReader' in input ? iterate(input) : input, secret, {
    ...(from ? { from } : {}),
    onChunk: (c) => (latest = c),
    onDone: (s) => (progress.summary = s),
    ...(options.cipher ? { cipher: options.cipher } : {}),
  })[Symbol.asyncIterator]();
  const send = patchOf(ep);
  let at = offset; // the server's offset: where the next PATCH starts
  let carry: Uint8Array | undefined; // bytes past `at` of a piece already pulled
  let ended = false;
  // Skip what the server has; a piece straddling `offset` is cut.
  while (!carry && !ended) {
    const r = await pieces.next();
    if (r.done) ended = true;
    else if (r.value.offset + r.value.bytes.length > offset)
      carry = r.value.bytes.subarray(Math.max(0, offset - r.value.offset));
  }
  while (at < total) {
    const start = at;
    let sent = 0;
    let cpAtEnd: EncryptCheckpoint | undefined;
    // The pieces of this request: what a cut left over, then up to `patch.bytes`, ending on a
    // chunk boundary (a chunk may come as two pieces, ciphertext and tag) unless the file ends.
    async function* body(): AsyncGenerator<Uint8Array> {
      if (carry) {
        const c = carry;
        carry = undefined;
        sent += c.length;
        options.onProgress?.(start + sent, total);
        yield c;
      }
      while ((sent < patch.bytes || !onBoundary(start + sent)) && !ended) {
        const r = await pieces.next();
        if (r.done) {
          ended = true;
          break;
        }
        sent += r.value.bytes.length;
        options.onProgress?.(start + sent, total);
        yield r.value.bytes;
      }
      cpAtEnd = latest;
    }
    const began = Date.now();
    at = await send(ep, progress.url!, start, body(), options.signal).catch((e: unknown) => {
      if (statusOf(e) === 409) throw new Transient('offset moved'); // HEAD again
      throw e;
    });
    if (at !== start + sent) throw new Transient(`server stored ${at - start} of ${sent} bytes`);
    if (patch.grow && Date.now() - began < 1000) patch.bytes = Math.min(2 * patch.bytes, PATCH_MAX);
    // Confirmed on a chunk boundary: the checkpoint there is where a later resume starts.
    if (cpAtEnd && chunkOffset(cpAtEnd.chunk) === at) progress.confirmed = { offset: at, cp: cpAtEnd };
    await save();
  }
  // Resumed after the last byte was stored: finish the encryption to get the hashes.
  while (!ended) if ((await pieces.next()).done) ended = true;
}

/** Options of {@link downloadMedia}. */
export interface DownloadOptions {
  /** Stops the download. */
  signal?: AbortSignal;
  /** Ciphertext bytes received so far, of the total. */
  onProgress?: (received: number, total: number) => void;
  /** The cryptography (for {@link downloadPlain}). @default defaultMediaCipher() */
  cipher?: MediaCipher;
}

/**
 * The ciphertext of a blob as pieces, resuming with `Range` after a cut (and asking for a fresh
 * grant when one expired). Retries network faults with backoff; refusals reject with their code.
 */
export async function* downloadCipher(
  ep: MediaEndpoint,
  blob: string,
  options: DownloadOptions = {},
): AsyncGenerator<Uint8Array> {
  const base = new URL(ep.url).pathname;
  let grant: { url: string } | undefined;
  let offset = 0;
  let total: number | undefined;
  const signal = options.signal;
  const get = rangeGetOf(ep);
  for (let attempt = 0; ; attempt++) {
    try {
      grant ??= (await (
        await mediaFetch(ep, `${base}/blobs/${blob}/grant`, { method: 'POST', ...(signal ? { signal } : {}) })
      ).json()) as { url: string };
      let res: RangeBody;
      try {
        res = await get(new URL(grant.url, ep.url).toString(), offset, signal);
      } catch (e) {
        if (statusOf(e) === 403) {
          grant = undefined; // expired: ask again (the grant route decides if we still may)
          if (attempt < 3) continue;
        }
        throw e;
      }
      total ??= res.total;
      try {
        for await (const piece of res.pieces) {
          offset += piece.length;
          attempt = 0;
          options.onProgress?.(offset, total);
          yield piece;
        }
      } catch (e) {
        if (signal?.aborted) throw aborted();
        throw new Transient(`download cut: ${(e as Error).message}`);
      }
      if (offset >= total) return;
      throw new Transient('download ended early');
    } catch (e) {
      if (!(e instanceof Transient)) throw e;
      await sleep(e.waitMs ?? (ep.backoff ?? mediaBackoff)(attempt), signal);
    }
  }
}

/** Fetches, verifies and decrypts the blob `ref` points to, as a plaintext stream (see `decryptPieces`). */
export function downloadPlain(
  ep: MediaEndpoint,
  ref: MediaRef,
  options: DownloadOptions = {},
): AsyncGenerator<Uint8Array> {
  return decryptPieces(
    downloadCipher(ep, ref.id, options),
    options.cipher ? { ...ref, cipher: options.cipher } : ref,
  );
}

/** Tells the server this device is done with a blob (it is deleted once every device said so). */
export async function ackMedia(ep: MediaEndpoint, blob: string): Promise<void> {
  await mediaFetch(ep, `${new URL(ep.url).pathname}/blobs/${blob}/ack`, { method: 'POST' });
}

/** Attaches an uploaded blob to a conversation: its audience may then download it. */
export async function attachMedia(ep: MediaEndpoint, blob: string, to: string): Promise<void> {
  await mediaFetch(ep, `${new URL(ep.url).pathname}/blobs/${blob}/attach`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ to }),
  });
}
