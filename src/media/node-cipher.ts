/**
 * The `pbm1` cryptography on `node:crypto` (Node only): same bytes and digests as WebCrypto's,
 * computed on the calling thread without copying inputs into thread-pool jobs.
 * @packageDocumentation
 */
import { createCipheriv, createDecipheriv, createHash } from 'node:crypto';
import type { MediaCipher } from './cipher.js';

/** GCM tags are 16 bytes in `pbm1`; a shorter one is refused, not checked on fewer bits. */
const TAG = { authTagLength: 16 } as const;

const sha256 = (...parts: Uint8Array[]): Uint8Array => {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest();
};

/**
 * AES-256-GCM and SHA-256 from `node:crypto`. In the media bench it made the client's side of
 * a transfer cheaper than WebCrypto's (see docs/media.md, Bench). `postbox/media` uses it by
 * default under Node; pass it explicitly (`cipher` option) where the default is not wanted.
 */
export const nodeMediaCipher: MediaCipher = {
  name: 'node',
  forKey(raw) {
    const key = Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength);
    if (key.length !== 32) return Promise.reject(new RangeError('a media key is 32 bytes'));
    return Promise.resolve({
      seal(iv, aad, plain) {
        const c = createCipheriv('aes-256-gcm', key, iv);
        c.setAAD(aad);
        const sealed = c.update(plain);
        c.final();
        const tag = c.getAuthTag();
        // Apart, not joined: a chunk-sized buffer and copy less per chunk (fewer collections).
        return Promise.resolve({
          sealed,
          tag,
          plainDigest: sha256(plain),
          cipherDigest: sha256(sealed, tag),
        });
      },
      open(iv, aad, sealed) {
        try {
          const n = sealed.length - 16;
          const d = createDecipheriv('aes-256-gcm', key, iv, TAG);
          d.setAAD(aad);
          d.setAuthTag(sealed.subarray(n));
          const plain = d.update(sealed.subarray(0, n));
          d.final(); // throws unless the tag verifies; `plain` is dropped then
          return Promise.resolve({ plain, cipherDigest: sha256(sealed) });
        } catch (e) {
          return Promise.reject(e as Error);
        }
      },
      opening(iv, aad) {
        // The ciphertext's digest is taken piece by piece beside the decryption: a download's
        // pieces (about 64 KiB from fetch) go through without being gathered into a chunk-sized
        // buffer.
        const d = createDecipheriv('aes-256-gcm', key, iv, TAG);
        d.setAAD(aad);
        const cipherHash = createHash('sha256');
        return {
          update(cipher) {
            cipherHash.update(cipher);
            return d.update(cipher);
          },
          final(tag) {
            d.setAuthTag(tag);
            d.final(); // throws unless the tag verifies
            return { cipherDigest: cipherHash.update(tag).digest() };
          },
        };
      },
    });
  },
};
