/**
 * The cryptographic steps of the `pbm1` format behind one small interface, so that a runtime can
 * bring a faster implementation than WebCrypto: sealing one chunk together with the SHA-256
 * digests of its plaintext and ciphertext (the pieces of the chunked hashes, see `format.ts`), and
 * opening one with the digest of its ciphertext (the hash a download checks). Every
 * implementation produces the same bytes and digests; only the speed differs.
 *
 * - {@link webCryptoCipher}: WebCrypto, any runtime (browsers, Node, Deno, workers). The default.
 * - `nodeMediaCipher` in `postbox/media/node`: `node:crypto` on the calling thread, without the
 *   input copies WebCrypto makes in Node. `postbox/media` makes it the default when it is loaded
 *   by Node (the package's `node` export condition), so browser bundles never see `node:crypto`.
 * @packageDocumentation
 */

/** One sealed chunk (`ciphertext | tag`) with the digests of both sides. */
export interface SealedChunk {
  /** The sealed chunk: ciphertext then the 16-byte GCM tag; the ciphertext alone when `tag` is set. */
  sealed: Uint8Array;
  /**
   * The 16-byte GCM tag, when the cipher hands it apart from the ciphertext (it follows `sealed`
   * in the blob). Saves joining the two into a new chunk-sized buffer: `node:crypto` gives them
   * apart, WebCrypto joined.
   */
  tag?: Uint8Array;
  /** SHA-256 of the plaintext chunk. */
  plainDigest: Uint8Array;
  /** SHA-256 of the sealed chunk (`sealed`, then `tag` when set). */
  cipherDigest: Uint8Array;
}

/**
 * One opened (authenticated) chunk with the digest of its ciphertext. A download checks the
 * ciphertext hash only, so opening hashes one side (see `BlobExpect` in `format.ts`).
 */
export interface OpenedChunk {
  /** The plaintext, authenticated. */
  plain: Uint8Array;
  /** SHA-256 of the sealed chunk. */
  cipherDigest: Uint8Array;
}

/**
 * One chunk opened as its bytes arrive (see {@link ChunkCipher.opening}). What `update` returns is
 * **not authenticated**: the caller keeps it until `final` returned, and drops it when `final`
 * throws.
 */
export interface ChunkOpening {
  /** Decrypts the next bytes of the chunk's ciphertext (the tag excluded); the plaintext of them. */
  update(cipher: Uint8Array): Uint8Array;
  /**
   * Checks the 16-byte tag; throws (any error) when the chunk does not authenticate. Returns the
   * SHA-256 of the sealed chunk (its ciphertext, then the tag).
   */
  final(tag: Uint8Array): { cipherDigest: Uint8Array };
}

/** AES-256-GCM (128-bit tag) and SHA-256 under one file key. */
export interface ChunkCipher {
  /** Seals `plain` with nonce `iv` (12 bytes) and additional data `aad`. */
  seal(iv: Uint8Array, aad: Uint8Array, plain: Uint8Array): Promise<SealedChunk>;
  /** Opens `sealed`; rejects (with any error) when it does not authenticate, and releases no byte then. */
  open(iv: Uint8Array, aad: Uint8Array, sealed: Uint8Array): Promise<OpenedChunk>;
  /**
   * Optional, for a cipher that can decrypt incrementally (`node:crypto`; WebCrypto cannot): opens
   * a chunk piece by piece as the download delivers it, so the reader neither gathers each chunk
   * into a buffer of its own nor waits for a whole chunk to start. Same bytes and digest as `open`.
   */
  opening?(iv: Uint8Array, aad: Uint8Array): ChunkOpening;
}

/** A source of {@link ChunkCipher}s: an implementation of the format's cryptography. */
export interface MediaCipher {
  /** A short name, for diagnostics (`'webcrypto'`, `'node'`). */
  readonly name: string;
  /** Prepares the cipher of one file's 32-byte key. */
  forKey(key: Uint8Array): Promise<ChunkCipher>;
}

const digest = async (b: Uint8Array) =>
  new Uint8Array(await crypto.subtle.digest('SHA-256', b as Uint8Array<ArrayBuffer>));

/**
 * WebCrypto's AES-GCM and SHA-256. In Node each call copies its input into a job for the thread
 * pool, so the three steps of a chunk run off the main thread but cost a copy each.
 */
export const webCryptoCipher: MediaCipher = {
  name: 'webcrypto',
  async forKey(raw) {
    const key = await crypto.subtle.importKey('raw', raw as Uint8Array<ArrayBuffer>, 'AES-GCM', false, [
      'encrypt',
      'decrypt',
    ]);
    const params = (iv: Uint8Array, aad: Uint8Array): AesGcmParams => ({
      name: 'AES-GCM',
      iv: iv as Uint8Array<ArrayBuffer>,
      additionalData: aad as Uint8Array<ArrayBuffer>,
      tagLength: 128,
    });
    return {
      async seal(iv, aad, plain) {
        const sealing = crypto.subtle.encrypt(params(iv, aad), key, plain as Uint8Array<ArrayBuffer>);
        const [sealed, plainDigest] = await Promise.all([
          sealing.then((b) => new Uint8Array(b)),
          digest(plain),
        ]);
        return { sealed, plainDigest, cipherDigest: await digest(sealed) };
      },
      async open(iv, aad, sealed) {
        const opening = crypto.subtle.decrypt(params(iv, aad), key, sealed as Uint8Array<ArrayBuffer>);
        const cipherDigesting = digest(sealed);
        cipherDigesting.catch(() => undefined); // awaited below unless the open fails first
        const plain = new Uint8Array(await opening);
        return { plain, cipherDigest: await cipherDigesting };
      },
    };
  },
};

let fallback: MediaCipher = webCryptoCipher;

/** The cipher used when none is given: WebCrypto, or what the runtime's entry point installed. */
export function defaultMediaCipher(): MediaCipher {
  return fallback;
}

/**
 * Installs the default cipher (the Node entry point of `postbox/media` installs `node:crypto`'s).
 * @internal
 */
export function setDefaultMediaCipher(cipher: MediaCipher): void {
  fallback = cipher;
}
