/**
 * Streaming encryption and decryption of the `pbm1` format (see `format.ts`): a plaintext stream
 * in, ciphertext pieces out, one chunk in memory at a time; and back, with every chunk
 * authenticated and the hashes and size checked before the last chunk is released.
 * @packageDocumentation
 */
import { PostboxError } from '../protocol/errors.js';
import {
  ChunkedHash,
  chunkOffset,
  corrupt,
  exactPieces,
  importMediaKey,
  iterate,
  makeHeader,
  MEDIA_CHUNK_BYTES,
  MEDIA_HEADER_BYTES,
  MEDIA_TAG_BYTES,
  openChunk,
  parseHeader,
  sealChunk,
  toStream,
  cipherSize,
} from './format.js';
import type { Sha256State } from './sha256.js';

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

/** A fresh random key and base nonce (WebCrypto's CSPRNG). */
export function freshSecret(): MediaSecret {
  return {
    key: crypto.getRandomValues(new Uint8Array(32)),
    baseNonce: crypto.getRandomValues(new Uint8Array(12)),
  };
}

/**
 * Seals a plaintext, yielding ciphertext pieces with their offsets in the blob. `plain` must start
 * at chunk `from.chunk` of the file (byte `from.chunk * 65536`) when resuming from a checkpoint.
 * `onChunk` sees the checkpoint after every sealed chunk; `onDone` the summary at the end.
 */
export async function* encryptPieces(
  plain: AsyncIterable<Uint8Array>,
  secret: MediaSecret,
  hooks: {
    from?: EncryptCheckpoint;
    onChunk?: (c: EncryptCheckpoint) => void;
    onDone?: (s: EncryptSummary) => void;
  } = {},
): AsyncGenerator<{ offset: number; bytes: Uint8Array }> {
  const key = await importMediaKey(secret.key);
  const header = makeHeader(secret.baseNonce);
  const plainHash = new ChunkedHash(hooks.from?.plain);
  const cipherHash = new ChunkedHash(hooks.from?.cipher);
  let index = hooks.from?.chunk ?? 0;
  let size = index * MEDIA_CHUNK_BYTES;
  if (!hooks.from) {
    await cipherHash.add(header);
    yield { offset: 0, bytes: header };
  }
  for await (const { bytes, final } of exactPieces(plain, MEDIA_CHUNK_BYTES)) {
    const [sealed] = await Promise.all([sealChunk(key, header, index, final, bytes), plainHash.add(bytes)]);
    await cipherHash.add(sealed);
    const offset = chunkOffset(index);
    size += bytes.length;
    index++;
    hooks.onChunk?.({ chunk: index, plain: plainHash.save(), cipher: cipherHash.save() });
    if (final) {
      hooks.onDone?.({
        size,
        cipherSize: cipherSize(size),
        plainHash: plainHash.digest(),
        cipherHash: cipherHash.digest(),
      });
    }
    yield { offset, bytes: sealed };
  }
}

/** What a decryption checks the blob against (the fields of a media reference). */
export interface DecryptExpect {
  /** The file's key. */
  key: Uint8Array;
  /** Plaintext bytes. */
  size: number;
  /** Chunked SHA-256 of the plaintext. */
  plainHash: Uint8Array;
  /** Chunked SHA-256 of the ciphertext. */
  cipherHash: Uint8Array;
}

const equal = (a: Uint8Array, b: Uint8Array) => a.length === b.length && a.every((x, i) => x === b[i]);

/**
 * Opens a `pbm1` blob as a stream of plaintext chunks. Every chunk is authenticated before it is
 * yielded; the last one only after the size and both hashes matched, so a consumer that reads to
 * the end without an error has exactly the file the reference describes. Anything else throws
 * `corrupt_media`.
 */
export async function* decryptPieces(
  cipher: AsyncIterable<Uint8Array>,
  expect: DecryptExpect,
): AsyncGenerator<Uint8Array> {
  const key = await importMediaKey(expect.key);
  const cipherHash = new ChunkedHash();
  const plainHash = new ChunkedHash();
  let header: Uint8Array | undefined;
  let index = 0;
  let size = 0;
  const limit = cipherSize(expect.size);
  let seen = 0;
  const pieces = exactPieces(cipher, (h) => parseHeader(h).chunk + MEDIA_TAG_BYTES, MEDIA_HEADER_BYTES);
  for await (const { bytes, final, first } of pieces) {
    seen += bytes.length;
    if (seen > limit) throw corrupt('the blob is longer than the reference says');
    await cipherHash.add(bytes);
    if (first) {
      if (final) throw corrupt('the blob ends inside its header');
      header = bytes;
      continue;
    }
    if (bytes.length < MEDIA_TAG_BYTES) throw corrupt('the blob ends inside a chunk tag');
    const plain = await openChunk(key, header!, index, final, bytes);
    await plainHash.add(plain);
    size += plain.length;
    index++;
    if (final) {
      if (size !== expect.size) throw corrupt(`the file is ${size} bytes, the reference says ${expect.size}`);
      if (!equal(cipherHash.digest(), expect.cipherHash)) throw corrupt('the ciphertext hash does not match');
      if (!equal(plainHash.digest(), expect.plainHash)) throw corrupt('the plaintext hash does not match');
    }
    if (plain.length > 0) yield plain;
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
