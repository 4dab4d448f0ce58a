/**
 * Where the memory client store keeps message bodies: packed into shared 64 KB chunks, each body
 * addressed by two small integers on its record, not one `Uint8Array` (with its `ArrayBuffer` and
 * backing allocation) per body. A store keeps every message it is given for as long as it lives,
 * so its objects are what every garbage collection of the app has to mark and, while young, copy:
 * a body held as its own typed array is three heap objects and an off-heap allocation the
 * collector sweeps; here it is a few bytes in a chunk and no object at all.
 *
 * Browser-safe: no Node built-ins.
 * @packageDocumentation
 */

/** Bytes per shared chunk. A body longer than a quarter of it gets a chunk of its own. */
const CHUNK = 64 * 1024;
const OWN_CHUNK_OVER = CHUNK / 4;

/**
 * Append-only body storage: {@link ByteSlab.put} copies bytes in and returns their address,
 * {@link ByteSlab.read} copies them out. Nothing is ever freed (the store deletes no message); the
 * only waste is the tail of a chunk a body did not fit in, under a quarter of a chunk.
 */
export class ByteSlab {
  private readonly chunks: Uint8Array[] = [];
  /** Bytes used in the last shared chunk (`CHUNK` when there is none to fill). */
  private used = CHUNK;
  /** Index of the shared chunk being filled. */
  private current = -1;

  /**
   * Copies `bytes` into the slab. The address is `chunk × CHUNK + offset`: a small integer (an
   * unboxed field) for the first 2 GB of bodies, and exact well beyond.
   */
  put(bytes: Uint8Array): number {
    const n = bytes.length;
    if (n === 0) return 0; // nothing to keep: read gives a fresh empty array for any address
    if (n > OWN_CHUNK_OVER) {
      this.chunks.push(new Uint8Array(bytes));
      return (this.chunks.length - 1) * CHUNK;
    }
    if (this.used + n > CHUNK) {
      this.chunks.push(new Uint8Array(CHUNK));
      this.current = this.chunks.length - 1;
      this.used = 0;
    }
    this.chunks[this.current]!.set(bytes, this.used);
    const at = this.current * CHUNK + this.used;
    this.used += n;
    return at;
  }

  /** A fresh copy of the `length` bytes at `at` (a caller may keep or change it). */
  read(at: number, length: number): Uint8Array {
    if (length === 0) return new Uint8Array(0);
    const off = at % CHUNK;
    // `slice` of a plain Uint8Array copies (unlike a Node Buffer's, which is a view).
    return this.chunks[(at - off) / CHUNK]!.slice(off, off + length);
  }
}
