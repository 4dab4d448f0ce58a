/**
 * Streaming encryption and decryption of the `pbm1` format (see `format.ts`): a plaintext stream
 * in, ciphertext pieces out, one chunk in memory at a time; and back, with every chunk
 * authenticated and the size and the ciphertext hash checked before the last chunk is released.
 * @packageDocumentation
 */
import { PostboxError } from '../protocol/errors.js';
import { defaultMediaCipher, type MediaCipher } from './cipher.js';
import {
  type BlobExpect,
  ChunkedHash,
  checkMediaKey,
  checkWhole,
  chunkAad,
  chunkIv,
  chunkOffset,
  corrupt,
  exactPieces,
  iterate,
  makeHeader,
  MEDIA_CHUNK_BYTES,
  MEDIA_HEADER_BYTES,
  MEDIA_TAG_BYTES,
  parseHeader,
  toStream,
  cipherSize,
} from './format.js';
import { openIncrementally } from './open-stream.js';
import { Sha256, type Sha256State } from './sha256.js';

/** Where an interrupted encryption picks up: the hash states before chunk `chunk`. */
export interface EncryptCheckpoint {
  /** The next chunk to seal. */
  chunk: number;
  /** Chunked-hash state of the plaintext so far. */
  plain: Sha256State;
  /** Chunked-hash state of the ciphertext so far (the header included). */
  cipher: Sha256State;
}

/** The secret and layout of one encrypted file. */
export interface MediaSecret {
  /** 32-byte AES-256 key, fresh and random per file. */
  key: Uint8Array;
  /** 12-byte base nonce, fresh and random per file. */
  baseNonce: Uint8Array;
}

/** What the encryption learned, once the whole plaintext went through. */
export interface EncryptSummary {
  /** Plaintext bytes. */
  size: number;
  /** Ciphertext bytes. */
  cipherSize: number;
  /** Chunked SHA-256 of the plaintext. */
  plainHash: Uint8Array;
  /** Chunked SHA-256 of the ciphertext. */
  cipherHash: Uint8Array;
}

/**
 * Chunks sealed or opened at once. WebCrypto does the work off the main thread (Node's thread
 * pool), so with one chunk at a time the stream waited on every hop; a few in flight keep the
 * cipher and the I/O busy together. Memory: this many chunks beyond the stream's own.
 */
const IN_FLIGHT = 4;

/** Starts `work` for each item of `src` in order, up to `window` ahead, and yields the results in order. */
async function* ahead<T, R>(
  src: AsyncIterable<T>,
  work: (item: T) => Promise<R>,
  window = IN_FLIGHT,
): AsyncGenerator<R> {
  const queue: Promise<R>[] = [];
  for await (const item of src) {
    const p = work(item);
    p.catch(() => undefined); // awaited below, in order: not an unhandled rejection meanwhile
    queue.push(p);
    if (queue.length >= window) yield await queue.shift()!;
  }
  while (queue.length > 0) yield await queue.shift()!;
}

/** A fresh random key and base nonce (WebCrypto's CSPRNG). */
export function freshSecret(): MediaSecret {
  return {
    key: crypto.getRandomValues(new Uint8Array(32)),
    baseNonce: crypto.getRandomValues(new Uint8Array(12)),
  };
}

/**
 * Seals a plaintext, yielding ciphertext pieces with their offsets in the blob. `plain` must start
 * at chunk `from.chunk` of the file (byte `from.chunk * MEDIA_CHUNK_BYTES`) when resuming from a checkpoint.
 * `onChunk` sees the checkpoint after every sealed chunk; `onDone` the summary at the end.
 */
export async function* encryptPieces(
  plain: AsyncIterable<Uint8Array>,
  secret: MediaSecret,
  hooks: {
    from?: EncryptCheckpoint;
    onChunk?: (c: EncryptCheckpoint) => void;
    onDone?: (s: EncryptSummary) => void;
    /** Plaintext bytes per chunk (written in the header). @default MEDIA_CHUNK_BYTES */
    chunk?: number;
    /** The cryptography. @default defaultMediaCipher() */
    cipher?: MediaCipher;
  } = {},
): AsyncGenerator<{ offset: number; bytes: Uint8Array }> {
  const chunk = hooks.chunk ?? MEDIA_CHUNK_BYTES;
  const key = await (hooks.cipher ?? defaultMediaCipher()).forKey(checkMediaKey(secret.key));
  const header = makeHeader(secret.baseNonce, chunk);
  const plainHash = new ChunkedHash(hooks.from?.plain);
  const cipherHash = new ChunkedHash(hooks.from?.cipher);
  let index = hooks.from?.chunk ?? 0;
  let size = index * chunk;
  if (!hooks.from) {
    cipherHash.add(header);
    yield { offset: 0, bytes: header };
  }
  const sealed = ahead(exactPieces(plain, chunk), ({ bytes, final }) => {
    const i = index++;
    return key.seal(chunkIv(header, i), chunkAad(header, i, final), bytes).then((s) => ({
      i,
      final,
      plainBytes: bytes.length,
      out: s.sealed,
      tag: s.tag,
      plainD: s.plainDigest,
      cipherD: s.cipherDigest,
    }));
  });
  for await (const w of sealed) {
    plainHash.addDigest(w.plainD);
    cipherHash.addDigest(w.cipherD);
    size += w.plainBytes;
    hooks.onChunk?.({ chunk: w.i + 1, plain: plainHash.save(), cipher: cipherHash.save() });
    if (w.final) {
      hooks.onDone?.({
        size,
        cipherSize: cipherSize(size, chunk),
        plainHash: plainHash.digest(),
        cipherHash: cipherHash.digest(),
      });
    }
    const at = chunkOffset(w.i, chunk);
    yield { offset: at, bytes: w.out };
    if (w.tag) yield { offset: at + w.out.length, bytes: w.tag };
  }
}

/** What a decryption checks the blob against (the fields of a media reference). */
export interface DecryptExpect extends BlobExpect {
  /** The file's key. */
  key: Uint8Array;
  /** The cryptography. @default defaultMediaCipher() */
  cipher?: MediaCipher;
}

/**
 * Opens a `pbm1` blob as a stream of plaintext chunks. Every chunk is authenticated before it is
 * yielded; the last one only after the size and the ciphertext hash matched, so a consumer that
 * reads to the end without an error has exactly the file the reference's sender uploaded (the
 * plaintext hash is not checked: see `BlobExpect`). Anything else throws
 * `corrupt_media`. With a cipher that opens chunks incrementally (`node:crypto`'s) the pieces are
 * decrypted where they lie, under the same rules (see `open-stream.ts`).
 */
export async function* decryptPieces(
  cipher: AsyncIterable<Uint8Array>,
  expect: DecryptExpect,
): AsyncGenerator<Uint8Array> {
  const key = await (expect.cipher ?? defaultMediaCipher()).forKey(checkMediaKey(expect.key));
  if (key.opening) return yield* openIncrementally(cipher, expect, { opening: key.opening.bind(key) });
  const cipherHash = new ChunkedHash();
  let header: Uint8Array | undefined;
  let index = 0;
  let size = 0;
  // Until the header says the chunk size, only the header may arrive; then the exact blob size.
  let limit = MEDIA_HEADER_BYTES;
  let seen = 0;
  const pieces = exactPieces(cipher, (h) => parseHeader(h).chunk + MEDIA_TAG_BYTES, MEDIA_HEADER_BYTES);
  // Runs in stream order as pieces arrive (so `header` is set before any chunk is opened); the
  // results are taken in the same order below, where the hashes are chained.
  type Opened = { cipherD: Uint8Array; final: boolean; plain?: Uint8Array };
  const opened = ahead(pieces, ({ bytes, final, first }): Promise<Opened> => {
    seen += bytes.length;
    if (seen > limit) throw corrupt('the blob is longer than the reference says');
    if (first) {
      if (final) throw corrupt('the blob ends inside its header');
      header = bytes;
      limit = cipherSize(expect.size, parseHeader(bytes).chunk);
      return Promise.resolve({ cipherD: new Sha256().update(bytes).digest(), final });
    }
    if (bytes.length < MEDIA_TAG_BYTES) throw corrupt('the blob ends inside a chunk tag');
    const i = index++;
    return key.open(chunkIv(header!, i), chunkAad(header!, i, final), bytes).then(
      (o) => ({ cipherD: o.cipherDigest, final, plain: o.plain }),
      (e: unknown) => {
        throw corrupt(
          final
            ? `chunk ${i} (as the last one) fails authentication: tampered or truncated`
            : `chunk ${i} fails authentication`,
          e,
        );
      },
    );
  });
  for await (const w of opened) {
    cipherHash.addDigest(w.cipherD);
    if (!w.plain) continue; // the header
    size += w.plain.length;
    if (w.final) checkWhole(size, cipherHash, expect);
    if (w.plain.length > 0) yield w.plain;
  }
}

/**
 * Encrypts a plaintext stream with a fresh key: the ciphertext as a stream, and the key, hashes and
 * size once the stream was read to its end.
 * @example
 * ```ts
 * const { stream, done } = encryptMedia(file.stream());
 * await upload(stream); // any sink
 * const { key, plainHash, cipherHash, size } = await done;
 * ```
 */
export function encryptMedia(plain: ReadableStream<Uint8Array>): {
  stream: ReadableStream<Uint8Array>;
  done: Promise<EncryptSummary & { key: Uint8Array }>;
} {
  const secret = freshSecret();
  let resolve!: (s: EncryptSummary & { key: Uint8Array }) => void;
  let reject!: (e: unknown) => void;
  const done = new Promise<EncryptSummary & { key: Uint8Array }>((a, b) => {
    resolve = a;
    reject = b;
  });
  done.catch(() => undefined);
  async function* run() {
    try {
      for await (const p of encryptPieces(iterate(plain), secret, {
        onDone: (s) => resolve({ ...s, key: secret.key }),
      }))
        yield p.bytes;
    } catch (e) {
      reject(e);
      throw e;
    }
  }
  return { stream: toStream(run(), () => reject(new PostboxError('closed', 'encryption cancelled'))), done };
}

/**
 * Decrypts a `pbm1` ciphertext stream against what the reference promises; the returned stream
 * errors with `corrupt_media` on any tampering, truncation or mismatch (see {@link decryptPieces}).
 */
export function decryptMedia(
  cipher: ReadableStream<Uint8Array>,
  expect: DecryptExpect,
): ReadableStream<Uint8Array> {
  return toStream(decryptPieces(iterate(cipher), expect));
}
