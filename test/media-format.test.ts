// The pbm1 format: streamed encryption and decryption round-trip any size, and no tampered,
// truncated, reordered or mismatched blob yields a single byte to the app — it is a typed
// `corrupt_media` error instead. The rejections are proven for both readers: the general one
// (WebCrypto: whole chunks) and the incremental one (node:crypto: pieces decrypted where they lie).
import { createHash, randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { webCryptoCipher, type MediaCipher } from '../src/media/cipher.js';
import { nodeMediaCipher } from '../src/media/node-cipher.js';
import { cipherSize, MEDIA_CHUNK_BYTES, MEDIA_HEADER_BYTES, MEDIA_TAG_BYTES } from '../src/media/format.js';
import { decodeMediaRef, encodeMediaRef, type MediaRef } from '../src/media/ref.js';
import { Sha256 } from '../src/media/sha256.js';
import { decryptMedia, encryptMedia, encryptPieces, freshSecret } from '../src/media/stream.js';

function streamOf(bytes: Uint8Array, piece = 10_007): ReadableStream<Uint8Array> {
  let o = 0;
  return new ReadableStream({
    pull(c) {
      if (o >= bytes.length) return c.close();
      c.enqueue(bytes.slice(o, o + piece));
      o += piece;
    },
  });
}

async function readAll(s: ReadableStream<Uint8Array>): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const p of s as unknown as AsyncIterable<Uint8Array>) parts.push(Buffer.from(p));
  return Buffer.concat(parts);
}

async function seal(plain: Uint8Array) {
  const { stream, done } = encryptMedia(streamOf(plain));
  const cipher = await readAll(stream);
  const s = await done;
  return { cipher, expect: { key: s.key, size: s.size, plainHash: s.plainHash, cipherHash: s.cipherHash } };
}

describe('pbm1 media format', () => {
  it('a blob sealed in another chunk size (64 KiB, as earlier clients wrote) decrypts to the same bytes', async () => {
    const plain = randomBytes(3 * 65536 + 777);
    const secret = freshSecret();
    let summary: { size: number; plainHash: Uint8Array; cipherHash: Uint8Array } | undefined;
    const parts: Uint8Array[] = [];
    for await (const p of encryptPieces(streamOf(plain) as unknown as AsyncIterable<Uint8Array>, secret, {
      chunk: 65536,
      onDone: (s) => (summary = s),
    }))
      parts.push(p.bytes);
    const cipher = Buffer.concat(parts);
    expect(cipher.length).toBe(cipherSize(plain.length, 65536));
    for (const reader of [webCryptoCipher, nodeMediaCipher]) {
      const out = await readAll(
        decryptMedia(streamOf(cipher), { key: secret.key, ...summary!, cipher: reader }),
      );
      expect(out.equals(plain)).toBe(true);
    }
  });

  it('the incremental SHA-256 matches the reference one, also from a saved state', () => {
    for (const n of [0, 1, 55, 56, 63, 64, 65, 1000, 70_000]) {
      const d = randomBytes(n);
      const h = new Sha256().update(d.subarray(0, n >> 2));
      const resumed = new Sha256(h.save()).update(d.subarray(n >> 2));
      expect(Buffer.from(resumed.digest()).toString('hex')).toBe(
        createHash('sha256').update(d).digest('hex'),
      );
    }
  });

  it('the ciphertext does not contain the plaintext, and two encryptions of one file differ', async () => {
    const plain = Buffer.alloc(200_000, 'secret text ');
    const a = await seal(plain);
    const b = await seal(plain);
    expect(a.cipher.includes(plain.subarray(0, 32))).toBe(false);
    expect(a.cipher.equals(b.cipher)).toBe(false);
  });

  for (const reader of [webCryptoCipher, nodeMediaCipher] as MediaCipher[]) {
    describe(`read by the ${reader.name} reader`, () => {
      const open = (blob: Uint8Array, e: Parameters<typeof decryptMedia>[1], piece?: number) =>
        decryptMedia(streamOf(blob, piece), { ...e, cipher: reader });

      async function rejects(blob: Uint8Array, e: Parameters<typeof decryptMedia>[1]) {
        const got: Uint8Array[] = [];
        let error: unknown;
        try {
          for await (const p of open(blob, e) as unknown as AsyncIterable<Uint8Array>) got.push(p);
        } catch (err) {
          error = err;
        }
        expect((error as { code?: string })?.code).toBe('corrupt_media');
        return got;
      }

      for (const size of [
        0,
        1,
        MEDIA_CHUNK_BYTES - 1,
        MEDIA_CHUNK_BYTES,
        MEDIA_CHUNK_BYTES + 1,
        3 * MEDIA_CHUNK_BYTES,
        1_000_003,
      ]) {
        it(`a ${size}-byte file round-trips and its blob has the computed size`, async () => {
          const plain = randomBytes(size);
          const { cipher, expect: e } = await seal(plain);
          expect(cipher.length).toBe(cipherSize(size));
          for (const piece of [7, 777, 65536])
            expect((await readAll(open(cipher, e, piece))).equals(plain)).toBe(true);
        });
      }

      it('a flipped bit anywhere is rejected as corrupt_media before the bad chunk is handed on', async () => {
        const plain = randomBytes(5 * MEDIA_CHUNK_BYTES + 100);
        const { cipher, expect: e } = await seal(plain);
        for (const at of [
          0,
          5,
          MEDIA_HEADER_BYTES + 3,
          MEDIA_HEADER_BYTES + 2 * (MEDIA_CHUNK_BYTES + 16) + 9,
          MEDIA_HEADER_BYTES + 2 * (MEDIA_CHUNK_BYTES + 16) - 1, // chunk 1's tag: its plaintext is intact
          cipher.length - 1,
        ]) {
          const bad = Buffer.from(cipher);
          bad[at]! ^= 1;
          const got = await rejects(bad, e);
          // Only whole chunks before the tampered one may have been released, and they are the
          // true bytes (a byte of the tampered chunk would be released unauthenticated).
          const released = Buffer.concat(got);
          expect(plain.subarray(0, released.length).equals(released)).toBe(true);
          const chunk = Math.floor((at - MEDIA_HEADER_BYTES) / (MEDIA_CHUNK_BYTES + MEDIA_TAG_BYTES));
          expect(released.length).toBeLessThanOrEqual(Math.max(0, chunk) * MEDIA_CHUNK_BYTES);
        }
      });

      it('a blob truncated anywhere, at a chunk boundary too, is rejected', async () => {
        const plain = randomBytes(4 * MEDIA_CHUNK_BYTES);
        const { cipher, expect: e } = await seal(plain);
        const boundary = MEDIA_HEADER_BYTES + 2 * (MEDIA_CHUNK_BYTES + MEDIA_TAG_BYTES);
        for (const len of [0, 10, MEDIA_HEADER_BYTES, boundary, boundary + 100, cipher.length - 1]) {
          const released = Buffer.concat(await rejects(cipher.subarray(0, len), e));
          expect(released.length).toBeLessThan(plain.length);
        }
      });

      it('reordered chunks, extra bytes and a wrong key, ciphertext hash or size are rejected', async () => {
        const plain = randomBytes(3 * MEDIA_CHUNK_BYTES);
        const { cipher, expect: e } = await seal(plain);
        const c = MEDIA_CHUNK_BYTES + MEDIA_TAG_BYTES;
        const h = MEDIA_HEADER_BYTES;
        const swapped = Buffer.concat([
          cipher.subarray(0, h),
          cipher.subarray(h + c, h + 2 * c),
          cipher.subarray(h, h + c),
          cipher.subarray(h + 2 * c),
        ]);
        await rejects(swapped, e);
        await rejects(Buffer.concat([cipher, Buffer.from([1, 2, 3])]), e);
        await rejects(cipher, { ...e, key: randomBytes(32) });
        await rejects(cipher, { ...e, cipherHash: randomBytes(32) });
        await rejects(cipher, { ...e, size: e.size - 1 });
        await rejects(cipher, { ...e, size: e.size + 1 });
      });

      it('a blob sealed anew under the same key (every tag valid) is rejected unless it is the hashed one', async () => {
        // What a holder of the key (a group member, with the server's help) could substitute: the
        // tags cannot tell it apart, the ciphertext hash can. Other bytes of the same size under
        // the same key and nonce, and the same bytes under another nonce, are both refused; the
        // reader checks no plaintext hash, so this is where a plaintext other than the sender's
        // is caught.
        const plain = randomBytes(2 * MEDIA_CHUNK_BYTES + 5);
        const secret = freshSecret();
        const sealWith = async (p: Uint8Array, s: typeof secret) => {
          let summary: { size: number; plainHash: Uint8Array; cipherHash: Uint8Array } | undefined;
          const parts: Uint8Array[] = [];
          for await (const x of encryptPieces(streamOf(p) as unknown as AsyncIterable<Uint8Array>, s, {
            onDone: (v) => (summary = v),
          }))
            parts.push(x.bytes);
          return { cipher: Buffer.concat(parts), expect: { key: s.key, ...summary! } };
        };
        const sent = await sealWith(plain, secret);
        expect((await readAll(open(sent.cipher, sent.expect))).equals(plain)).toBe(true);
        const other = await sealWith(randomBytes(plain.length), secret);
        await rejects(other.cipher, sent.expect);
        const renonced = await sealWith(plain, { key: secret.key, baseNonce: randomBytes(12) });
        await rejects(renonced.cipher, sent.expect);
      });
    });
  }

  it('a media reference survives encoding and a malformed one is refused', async () => {
    const ref: MediaRef = {
      v: 1,
      id: '0123456789ABCDEFGHJKMNPQRS',
      key: randomBytes(32),
      cipherHash: randomBytes(32),
      plainHash: randomBytes(32),
      size: 123,
      mime: 'image/jpeg',
      name: 'cat.jpg',
      thumbnail: randomBytes(100),
      width: 640,
      height: 480,
    };
    const back = decodeMediaRef(encodeMediaRef(ref));
    expect(Buffer.from(back.key).equals(Buffer.from(ref.key))).toBe(true);
    expect({ ...back, key: 0, cipherHash: 0, plainHash: 0, thumbnail: 0 }).toEqual({
      ...ref,
      key: 0,
      cipherHash: 0,
      plainHash: 0,
      thumbnail: 0,
    });
    expect(() => decodeMediaRef(new Uint8Array([1, 2, 3]))).toThrow(/not a media message/);
    expect(() => encodeMediaRef({ ...ref, key: randomBytes(5) })).toThrow();
    expect(() => encodeMediaRef({ ...ref, thumbnail: randomBytes(20_000) })).toThrow();
  });
});
