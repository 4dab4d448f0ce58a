// The memory client store keeps bodies packed in shared chunks (src/client/stores/memory-bytes.ts).
// What it must still guarantee: every body reads back byte for byte whatever the mix of sizes
// (empty, small, ones that end a chunk exactly or spill into the next, ones large enough for a
// chunk of their own), and the store's bytes are its own: changing the array given, or one read,
// changes nothing kept. Seeded; MEMORY_BYTES_SEED=N replays one seed.
import { describe, expect, it } from 'vitest';
import { ByteSlab } from '../src/client/stores/memory-bytes.js';
import { seededRandom } from '../src/util/clock.js';

const CHUNK = 64 * 1024;
const SEEDS = process.env.MEMORY_BYTES_SEED
  ? [Number(process.env.MEMORY_BYTES_SEED)]
  : Array.from({ length: 20 }, (_, i) => i + 1);

/** A body size: mostly small, with every boundary of the chunking drawn often. */
function size(r: () => number): number {
  const edges = [0, 1, CHUNK / 4, CHUNK / 4 + 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK];
  return r() < 0.3 ? edges[Math.floor(r() * edges.length)]! : Math.floor(r() * 2_000);
}

/** Byte equality (a matcher's element-by-element diff of 192 KB arrays takes minutes). */
const same = (a: Uint8Array, b: Uint8Array): boolean => Buffer.compare(a, b) === 0;

describe('memory client store body slab', () => {
  for (const seed of SEEDS) {
    it(`every body reads back byte for byte and is the store's own copy (seed ${seed})`, () => {
      const r = seededRandom(seed);
      const slab = new ByteSlab();
      const kept: Array<{ at: number; want: Uint8Array }> = [];
      for (let i = 0; i < 400; i++) {
        const given = new Uint8Array(size(r));
        for (let j = 0; j < given.length; j++) given[j] = Math.floor(r() * 256);
        const want = given.slice();
        const at = slab.put(given);
        given.fill(0xee); // the caller's array, changed after the put
        kept.push({ at, want });
      }
      const wrong: string[] = [];
      for (const { at, want } of kept) {
        const got = slab.read(at, want.length);
        if (!same(got, want)) wrong.push(`${want.length} bytes at ${at}`);
        got.fill(0x11); // a read, changed by its reader
        if (!same(slab.read(at, want.length), want)) wrong.push(`${want.length} bytes at ${at}, read again`);
      }
      expect(wrong, `seed ${seed}: bodies that did not read back`).toEqual([]);
    });
  }
});
