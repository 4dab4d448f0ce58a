// The media cipher is pluggable: the node:crypto one (Node's default) and the WebCrypto one
// (browsers) produce the same blob and hashes for the same secret, each opens the other's blobs,
// and the node one rejects tampering and truncation like WebCrypto does. Also: inputs whose pieces
// hold whole chunks (passed on without a copy) round-trip.
import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { defaultMediaCipher, webCryptoCipher, type MediaCipher } from '../src/media/cipher.js';
import { MEDIA_CHUNK_BYTES, MEDIA_HEADER_BYTES, MEDIA_TAG_BYTES } from '../src/media/format.js';
import { nodeMediaCipher } from '../src/media/node-cipher.js';
import { rangeGetOf } from '../src/media/http.js';
import { nodeRangeGet } from '../src/media/node-http.js';
import { decryptPieces, encryptPieces, freshSecret, type MediaSecret } from '../src/media/stream.js';
import type { EncryptSummary } from '../src/media/stream.js';

async function* piecesOf(bytes: Uint8Array, piece: number): AsyncGenerator<Uint8Array> {
  for (let o = 0; o < bytes.length; o += piece) yield bytes.slice(o, o + piece);
}

async function seal(plain: Uint8Array, secret: MediaSecret, cipher: MediaCipher, piece = 10_007) {
  let summary: EncryptSummary | undefined;
  const parts: Uint8Array[] = [];
  for await (const p of encryptPieces(piecesOf(plain, piece), secret, {
    cipher,
    onDone: (s) => (summary = s),
  }))
    parts.push(p.bytes);
  return { blob: Buffer.concat(parts), summary: summary! };
}

async function open(
  blob: Uint8Array,
  secret: MediaSecret,
  s: EncryptSummary,
  cipher: MediaCipher,
  piece = 777,
) {
  const parts: Uint8Array[] = [];
  for await (const p of decryptPieces(piecesOf(blob, piece), { key: secret.key, ...s, cipher }))
    parts.push(p);
  return Buffer.concat(parts);
}

describe('media ciphers', () => {
  it('node:crypto and WebCrypto seal a file to the same blob and hashes, and each opens the other', async () => {
    for (const size of [0, 1, MEDIA_CHUNK_BYTES, 3 * MEDIA_CHUNK_BYTES + 5]) {
      const plain = randomBytes(size);
      const secret = freshSecret();
      const byNode = await seal(plain, secret, nodeMediaCipher);
      const byWeb = await seal(plain, secret, webCryptoCipher);
      expect(byNode.blob.equals(byWeb.blob)).toBe(true);
      expect(byNode.summary).toEqual(byWeb.summary);
      expect((await open(byNode.blob, secret, byNode.summary, webCryptoCipher)).equals(plain)).toBe(true);
      expect((await open(byWeb.blob, secret, byWeb.summary, nodeMediaCipher)).equals(plain)).toBe(true);
    }
  });

  it('under node:crypto a flipped bit or a truncation is corrupt_media and only true bytes were released', async () => {
    const plain = randomBytes(3 * MEDIA_CHUNK_BYTES + 100);
    const secret = freshSecret();
    const { blob, summary } = await seal(plain, secret, nodeMediaCipher);
    const tagOfChunk1 = MEDIA_HEADER_BYTES + 2 * (MEDIA_CHUNK_BYTES + MEDIA_TAG_BYTES) - 1;
    const boundary = MEDIA_HEADER_BYTES + 2 * (MEDIA_CHUNK_BYTES + MEDIA_TAG_BYTES);
    const damaged = [
      ...[5, MEDIA_HEADER_BYTES + 3, tagOfChunk1, blob.length - 1].map((at) => {
        const bad = Buffer.from(blob);
        bad[at]! ^= 1;
        return bad;
      }),
      blob.subarray(0, boundary),
      blob.subarray(0, blob.length - 1),
    ];
    for (const bad of damaged) {
      const released: Uint8Array[] = [];
      const run = async () => {
        for await (const p of decryptPieces(piecesOf(bad, 4096), {
          key: secret.key,
          ...summary,
          cipher: nodeMediaCipher,
        }))
          released.push(p);
      };
      await expect(run()).rejects.toMatchObject({ code: 'corrupt_media' });
      const got = Buffer.concat(released);
      expect(got.length).toBeLessThan(plain.length);
      expect(plain.subarray(0, got.length).equals(got)).toBe(true);
    }
  });

  it('inputs in whole chunks, or several chunks per piece, round-trip (the no-copy path)', async () => {
    const plain = randomBytes(4 * MEDIA_CHUNK_BYTES + 9);
    const secret = freshSecret();
    for (const piece of [MEDIA_CHUNK_BYTES, 2 * MEDIA_CHUNK_BYTES + 7]) {
      const { blob, summary } = await seal(plain, secret, nodeMediaCipher, piece);
      for (const back of [MEDIA_HEADER_BYTES, MEDIA_CHUNK_BYTES + MEDIA_TAG_BYTES, blob.length])
        expect((await open(blob, secret, summary, nodeMediaCipher, back)).equals(plain)).toBe(true);
    }
  });

  it('postbox/media loaded by Node uses node:crypto and node:http by default; the browser entry keeps WebCrypto and fetch', async () => {
    const exports = JSON.parse(readFileSync('package.json', 'utf8')).exports['./media'];
    expect(exports.node).toBe('./dist/media/index.node.js');
    expect(exports.default).toBe('./dist/media/index.js');
    const ep = { url: 'http://127.0.0.1:1/media', credentials: () => 'x' };
    expect(defaultMediaCipher().name).toBe('webcrypto');
    expect(rangeGetOf(ep)).not.toBe(nodeRangeGet);
    await import('../src/media/index.node.js');
    expect(defaultMediaCipher().name).toBe('node');
    expect(rangeGetOf(ep)).toBe(nodeRangeGet);
    // An endpoint with a fetch of its own keeps it for downloads too.
    expect(rangeGetOf({ ...ep, fetch })).not.toBe(nodeRangeGet);
  });
});
