/**
 * The `pbm1` media format: a file encrypted on the device with AES-256-GCM in fixed-size chunks,
 * so that it can be encrypted, uploaded, downloaded and decrypted as a stream (a 2 GB video never
 * sits in memory) and every chunk is authenticated before a byte of it is handed on.
 *
 * ```
 * header  = "pbm1" | chunkSize (u32 BE) | baseNonce (12 bytes)            20 bytes
 * chunk i = AES-256-GCM(key, nonce_i, plaintext[i*C .. (i+1)*C), aad_i)  ≤ C + 16 bytes
 * nonce_i = baseNonce XOR (i as a 96-bit big-endian integer)
 * aad_i   = header | i (u64 BE) | final (1 byte: 1 on the last chunk, else 0)
 * ```
 *
 * The final flag in the AAD is what catches truncation: a blob cut at a chunk boundary ends on a
 * chunk sealed with `final = 0`, which fails to open as the last one. The index in the nonce and
 * the AAD catches reordered or repeated chunks; the header in the AAD binds the chunk size. An
 * empty file is one empty final chunk (16 bytes of tag).
 *
 * Hashes: the reference carries a *chunked* SHA-256 of the ciphertext and of the plaintext:
 * SHA-256 over the concatenated SHA-256 digests of the pieces (for the ciphertext: the header,
 * then each sealed chunk; for the plaintext: each plaintext chunk). Each piece is hashed
 * natively (by the `MediaCipher`, see `cipher.ts`); a whole-stream SHA-256 would need a JavaScript
 * hash over every byte in browsers, about four times slower than the encryption itself. A
 * download checks the ciphertext hash only (see {@link BlobExpect}).
 * @packageDocumentation
 */
import { PostboxError } from '../protocol/errors.js';
import { Sha256, type Sha256State } from './sha256.js';

/** Plaintext bytes per chunk. */
export const MEDIA_CHUNK_BYTES = 262144;
/** Bytes of the GCM tag after every chunk. */
export const MEDIA_TAG_BYTES = 16;
/** Bytes of the `pbm1` header. */
export const MEDIA_HEADER_BYTES = 20;
const MAGIC = [0x70, 0x62, 0x6d, 0x31]; // "pbm1"
const MAX_CHUNK = 1 << 20;

/** Chunks of a plaintext of `size` bytes (an empty file still has one). */
export function chunkCount(size: number, chunk = MEDIA_CHUNK_BYTES): number {
  return Math.max(1, Math.ceil(size / chunk));
}

/** Bytes of the `pbm1` blob of a plaintext of `size` bytes. */
export function cipherSize(size: number, chunk = MEDIA_CHUNK_BYTES): number {
  return MEDIA_HEADER_BYTES + size + chunkCount(size, chunk) * MEDIA_TAG_BYTES;
}

/** Offset in the blob where chunk `index` starts. */
export function chunkOffset(index: number, chunk = MEDIA_CHUNK_BYTES): number {
  return MEDIA_HEADER_BYTES + index * (chunk + MEDIA_TAG_BYTES);
}

/** Builds a header for a fresh random base nonce (or the given one). */
export function makeHeader(baseNonce: Uint8Array, chunk = MEDIA_CHUNK_BYTES): Uint8Array {
  const h = new Uint8Array(MEDIA_HEADER_BYTES);
  h.set(MAGIC, 0);
  new DataView(h.buffer).setUint32(4, chunk);
  h.set(baseNonce.subarray(0, 12), 8);
  return h;
}

/** Reads a header: its chunk size, or a `corrupt_media` error. */
export function parseHeader(h: Uint8Array): { chunk: number } {
  if (h.length !== MEDIA_HEADER_BYTES || MAGIC.some((b, i) => h[i] !== b)) throw corrupt('not a pbm1 blob');
  const chunk = new DataView(h.buffer, h.byteOffset, h.byteLength).getUint32(4);
  if (chunk < 1024 || chunk > MAX_CHUNK) throw corrupt(`chunk size ${chunk} out of range`);
  return { chunk };
}

/** A `corrupt_media` error. */
export function corrupt(what: string, cause?: unknown): PostboxError {
  return new PostboxError(
    'corrupt_media',
    `media rejected: ${what}`,
    cause === undefined ? undefined : { cause },
  );
}

/** Checks a media key's length (32 bytes, AES-256). */
export function checkMediaKey(raw: Uint8Array): Uint8Array {
  if (raw.length !== 32) throw new PostboxError('invalid_frame', 'a media key is 32 bytes');
  return raw;
}

/** The nonce of chunk `index`: the header's base nonce XOR the index. */
export function chunkIv(header: Uint8Array, index: number): Uint8Array {
  // A copy of its own (a Node Buffer's `slice` would be a view, and the header may be a view into
  // a larger input piece).
  const iv = new Uint8Array(12);
  iv.set(header.subarray(8, 20));
  const ivv = new DataView(iv.buffer);
  ivv.setUint32(4, ivv.getUint32(4) ^ Math.floor(index / 0x100000000));
  ivv.setUint32(8, ivv.getUint32(8) ^ (index >>> 0));
  return iv;
}

/** The additional data of chunk `index`: the header, the index and the final flag. */
export function chunkAad(header: Uint8Array, index: number, final: boolean): Uint8Array {
  const aad = new Uint8Array(MEDIA_HEADER_BYTES + 9);
  aad.set(header, 0);
  const dv = new DataView(aad.buffer);
  dv.setUint32(MEDIA_HEADER_BYTES, Math.floor(index / 0x100000000));
  dv.setUint32(MEDIA_HEADER_BYTES + 4, index >>> 0);
  aad[MEDIA_HEADER_BYTES + 8] = final ? 1 : 0;
  return aad;
}

/** The chunked SHA-256 of the format (see the module doc), resumable from a saved state. */
export class ChunkedHash {
  private readonly outer: Sha256;
  /** Continues from a saved state, or starts fresh. */
  constructor(state?: Sha256State) {
    this.outer = new Sha256(state);
  }
  /** Adds the next piece, hashing it here (for small pieces: the header). */
  add(piece: Uint8Array): void {
    this.addDigest(new Sha256().update(piece).digest());
  }
  /** Adds the next piece by its SHA-256 (computed ahead by a cipher, possibly concurrently). */
  addDigest(digest: Uint8Array): void {
    this.outer.update(digest);
  }
  /** The state after the pieces added so far. */
  save(): Sha256State {
    return this.outer.save();
  }
  /** The 32-byte hash. */
  digest(): Uint8Array {
    return this.outer.digest();
  }
}

/**
 * Regroups a byte stream into pieces of exactly `size` bytes (the last may be shorter, and is
 * flagged `final`; an empty input yields one empty final piece), after an optional first piece of
 * `first` bytes (yielded with `first: true` and never final; `sizeOf` may then be a function of
 * that first piece, as a header that says the chunk size). One piece of lookahead is held so
 * the final flag is known when a piece is yielded.
 */
export async function* exactPieces(
  src: AsyncIterable<Uint8Array>,
  sizeOf: number | ((first: Uint8Array) => number),
  first?: number,
): AsyncGenerator<{ bytes: Uint8Array; final: boolean; first?: boolean }> {
  let size = typeof sizeOf === 'number' ? sizeOf : 0;
  let want = first ?? size;
  let isFirst = first !== undefined;
  let buf: Uint8Array | undefined; // allocated when bytes must be gathered from several inputs
  let fill = 0;
  let pending: Uint8Array | undefined;
  for await (const piece of src) {
    let o = 0;
    while (o < piece.length) {
      let done: Uint8Array;
      if (fill === 0 && piece.length - o >= want) {
        // A whole piece inside the input: handed on as a view, not copied (a stream's chunks
        // belong to the reader once read, so the source does not write to them again).
        done = piece.subarray(o, o + want);
        o += want;
      } else {
        buf ??= new Uint8Array(want);
        const n = Math.min(want - fill, piece.length - o);
        buf.set(piece.subarray(o, o + n), fill);
        fill += n;
        o += n;
        if (fill < want) continue;
        done = buf;
        buf = undefined;
        fill = 0;
      }
      if (isFirst) {
        if (typeof sizeOf === 'function') size = sizeOf(done);
        yield { bytes: done, final: false, first: true };
        isFirst = false;
      } else {
        if (pending) yield { bytes: pending, final: false };
        pending = done;
      }
      want = size;
    }
  }
  if (isFirst) {
    yield { bytes: buf?.subarray(0, fill) ?? new Uint8Array(0), final: true, first: true };
    return;
  }
  if (buf && fill > 0) {
    if (pending) yield { bytes: pending, final: false };
    yield { bytes: buf.subarray(0, fill), final: true };
  } else yield { bytes: pending ?? new Uint8Array(0), final: true };
}

/** Iterates a Web stream (not every runtime makes `ReadableStream` async-iterable). */
export async function* iterate<T>(stream: ReadableStream<T>): AsyncGenerator<T> {
  const reader = stream.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      yield value;
    }
  } finally {
    reader.releaseLock();
  }
}

/** A Web stream over an async iterable, pulled on demand (so backpressure reaches the source). */
export function toStream<T>(it: AsyncIterable<T>, onCancel?: () => void): ReadableStream<T> {
  const iter = it[Symbol.asyncIterator]();
  return new ReadableStream<T>(
    {
      async pull(controller) {
        try {
          const r = await iter.next();
          if (r.done) controller.close();
          else controller.enqueue(r.value);
        } catch (e) {
          controller.error(e);
        }
      },
      async cancel() {
        onCancel?.();
        await iter.return?.(undefined);
      },
    },
    { highWaterMark: 0 },
  );
}

/**
 * What a blob is checked against once read to its end: the reference's size and ciphertext hash.
 * The plaintext hash is not checked on download: the chunks' tags authenticate each plaintext
 * chunk and its place under the key, and the plaintext is a function of the key and the
 * ciphertext, so a ciphertext that matches the ciphertext hash has the sender's plaintext (see
 * "Verification" in docs/media.md).
 */
export interface BlobExpect {
  /** Plaintext bytes. */
  size: number;
  /** Chunked SHA-256 of the ciphertext. */
  cipherHash: Uint8Array;
  /** Chunked SHA-256 of the plaintext: carried by the reference, not checked on download. */
  plainHash?: Uint8Array;
}

const equal = (a: Uint8Array, b: Uint8Array) => a.length === b.length && a.every((x, i) => x === b[i]);

/**
 * The check both readers make before they release a blob's last chunk: the plaintext's size and
 * the ciphertext's chunked hash match the reference; else `corrupt_media`.
 */
export function checkWhole(size: number, cipher: ChunkedHash, expect: BlobExpect): void {
  if (size !== expect.size) throw corrupt(`the file is ${size} bytes, the reference says ${expect.size}`);
  if (!equal(cipher.digest(), expect.cipherHash)) throw corrupt('the ciphertext hash does not match');
}
