/**
 * Decryption of a `pbm1` blob piece by piece, for a cipher that can open a chunk incrementally
 * (`ChunkCipher.opening`: `node:crypto`). The general reader (`decryptPieces` in `stream.ts`)
 * gathers every sealed chunk into a buffer of its own and opens it whole; a download arrives in
 * pieces of about 64 KiB, so that cost a 256 KiB allocation and copy per chunk, and a plaintext
 * buffer of the same size, which fed the garbage collector. Here each piece is decrypted and hashed
 * where it lies, and the plaintext is handed on in the pieces it came in.
 *
 * The rules are the general reader's: a chunk's plaintext is held until its tag verified; the last
 * chunk's until the blob ended at exactly the size the reference implies and the ciphertext hash
 * matched.
 * The layout (which chunk is the last, how long it is) comes from the reference's size and the
 * header's chunk size, so a blob cut at a chunk boundary is caught as ending early, and one that
 * was not sealed for that size fails its final chunk's tag (the final flag is in the AAD).
 * @packageDocumentation
 */
import type { ChunkCipher, ChunkOpening } from './cipher.js';
import {
  type BlobExpect,
  ChunkedHash,
  checkWhole,
  chunkAad,
  chunkCount,
  chunkIv,
  cipherSize,
  corrupt,
  MEDIA_HEADER_BYTES,
  MEDIA_TAG_BYTES,
  parseHeader,
} from './format.js';

/**
 * Opens a `pbm1` blob with `key.opening`, yielding authenticated plaintext pieces; throws
 * `corrupt_media` on any tampering, truncation, extra bytes or mismatch with `expect`.
 */
export async function* openIncrementally(
  src: AsyncIterable<Uint8Array>,
  expect: BlobExpect,
  key: Required<Pick<ChunkCipher, 'opening'>>,
): AsyncGenerator<Uint8Array> {
  const header = new Uint8Array(MEDIA_HEADER_BYTES);
  const tag = new Uint8Array(MEDIA_TAG_BYTES);
  const cipherHash = new ChunkedHash();
  let headerFill = 0;
  let tagFill = 0;
  let chunk = 0; // plaintext bytes per chunk, from the header
  let chunks = 0; // chunks the reference's size implies
  let total = Infinity; // blob bytes, once the header is read
  let seen = 0;
  let index = 0; // the chunk being read
  let left = 0; // its ciphertext bytes still to come (the tag excluded)
  let opening: ChunkOpening | undefined;
  let size = 0;
  let held: Uint8Array[] = []; // the current chunk's plaintext: not authenticated yet
  const ready: Uint8Array[] = []; // authenticated, handed on after the current input piece
  let last: Uint8Array[] | undefined; // the final chunk's, handed on once the blob ended

  const begin = () => {
    const final = index === chunks - 1;
    left = final ? expect.size - index * chunk : chunk;
    opening = key.opening(chunkIv(header, index), chunkAad(header, index, final));
  };
  const finish = () => {
    const final = index === chunks - 1;
    let d: { cipherDigest: Uint8Array };
    try {
      d = opening!.final(tag);
    } catch (e) {
      throw corrupt(
        final
          ? `chunk ${index} (as the last one) fails authentication: tampered or truncated`
          : `chunk ${index} fails authentication`,
        e,
      );
    }
    cipherHash.addDigest(d.cipherDigest);
    for (const p of held) size += p.length;
    if (final) last = held;
    else ready.push(...held);
    held = [];
    tagFill = 0;
    index++;
    if (!final) begin();
  };

  for await (const piece of src) {
    seen += piece.length;
    if (seen > total) throw corrupt('the blob is longer than the reference says');
    let o = 0;
    while (o < piece.length) {
      const n = piece.length - o;
      if (headerFill < MEDIA_HEADER_BYTES) {
        const take = Math.min(MEDIA_HEADER_BYTES - headerFill, n);
        header.set(piece.subarray(o, o + take), headerFill);
        headerFill += take;
        o += take;
        if (headerFill < MEDIA_HEADER_BYTES) continue;
        chunk = parseHeader(header).chunk;
        chunks = chunkCount(expect.size, chunk);
        total = cipherSize(expect.size, chunk);
        if (seen > total) throw corrupt('the blob is longer than the reference says');
        cipherHash.add(header);
        begin();
      } else if (left > 0) {
        const take = Math.min(left, n);
        const plain = opening!.update(piece.subarray(o, o + take));
        if (plain.length > 0) held.push(plain);
        left -= take;
        o += take;
      } else {
        const take = Math.min(MEDIA_TAG_BYTES - tagFill, n);
        tag.set(piece.subarray(o, o + take), tagFill);
        tagFill += take;
        o += take;
        if (tagFill === MEDIA_TAG_BYTES) finish();
      }
    }
    for (const p of ready) yield p;
    ready.length = 0;
  }
  if (headerFill < MEDIA_HEADER_BYTES) throw corrupt('the blob ends inside its header');
  if (!last) throw corrupt(`the blob ends early, at byte ${seen} of ${total}: truncated`);
  checkWhole(size, cipherHash, expect);
  yield* last;
}
