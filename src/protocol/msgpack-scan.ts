/**
 * A structural scan of msgpack bytes, run before any decoding. It reads only the type bytes and
 * length headers (a string or binary payload is skipped in one step, never read), so it costs a
 * few nanoseconds per value and allocates nothing, and it refuses what postbox frames never
 * contain and what makes a decoder expensive:
 *
 * - **extension types** (`fixext`, `ext 8/16/32`; all but msgpackr's 3-byte `undefined`, fixext 1
 *   of type 0, which a nested optional field left undefined encodes to): msgpackr decodes some of them into objects
 *   (an `Error` ext builds an Error and captures a stack trace; records redefine how later bytes
 *   decode), so a frame full of them cost 0.2–0.5 s of CPU before authentication (issue 22);
 * - the never-used byte `0xc1`;
 * - **lengths that cannot be true**: a string, binary, array or map that claims more bytes or
 *   elements than the frame has left (a decoder would otherwise pre-size an array for 4 billion
 *   elements before finding the frame short);
 * - nesting deeper than {@link MAX_SCAN_DEPTH}, and bytes after the one top-level value.
 * @packageDocumentation
 */

/** Deepest nesting of arrays and maps a frame may have (postbox frames use 4). */
export const MAX_SCAN_DEPTH = 16;

/**
 * For each type byte from 0xc0: the size of its length header (str, bin, array, map), or minus
 * the size of its fixed payload (numbers), or 0 (nil, booleans, ext, the unused byte).
 */
const LENGTH_HEADER = new Int8Array(32);
for (const [bytes, header] of [
  [[0xc4, 0xd9], 1],
  [[0xc5, 0xda, 0xdc, 0xde], 2],
  [[0xc6, 0xdb, 0xdd, 0xdf], 4],
  [[0xcc, 0xd0], -1],
  [[0xcd, 0xd1], -2],
  [[0xca, 0xce, 0xd2], -4],
  [[0xcb, 0xcf, 0xd3], -8],
] as const) {
  for (const b of bytes) LENGTH_HEADER[b - 0xc0] = header;
}

/** What {@link readHeader} found: where the value's payload starts, its bytes, its elements. */
const head = { p: 0, skip: 0, items: 0 };

/**
 * Reads the type byte and length header of the value at `p` into `head` (allocation-free: the
 * scan runs on every frame). Returns why the value is refused, or undefined.
 */
function readHeader(data: Uint8Array, p: number): string | undefined {
  const end = data.byteLength;
  if (p >= end) return 'frame ends inside a value';
  const b = data[p++]!;
  let skip = 0; // payload bytes to jump over
  let items = -1; // elements of a container that opens here
  if (b <= 0x7f || b >= 0xe0) {
    // positive / negative fixint
  } else if (b <= 0x8f) items = (b & 0x0f) * 2;
  else if (b <= 0x9f) items = b & 0x0f;
  else if (b <= 0xbf) skip = b & 0x1f;
  else {
    const header = LENGTH_HEADER[b - 0xc0]!;
    if (header > 0) {
      // str / bin / array / map with an explicit length of 1, 2 or 4 bytes
      if (p + header > end) return 'frame ends inside a length';
      const n = header === 1 ? data[p]! : header === 2 ? (data[p]! << 8) | data[p + 1]! : u32(data, p);
      p += header;
      if (b === 0xdc || b === 0xdd) items = n;
      else if (b === 0xde || b === 0xdf) items = n * 2;
      else skip = n;
    } else if (header < 0) {
      skip = -header; // fixed-size numbers
    } else if (b === 0xd4 && p < end && data[p] === 0) {
      // fixext 1 of type 0: msgpackr's `undefined` (a nested optional field left undefined),
      // decoded to nothing at no cost.
      skip = 2;
    } else if (b === 0xc1) {
      return 'the never-used byte 0xc1';
    } else if ((b >= 0xc7 && b <= 0xc9) || (b >= 0xd4 && b <= 0xd8)) {
      return 'a msgpack extension type';
    }
    // 0xc0 nil, 0xc2 false, 0xc3 true: nothing more to read
  }
  if (skip > end - p) return 'a length longer than the frame';
  // Every element takes at least one byte.
  if (items > end - p - skip) return 'a length longer than the frame';
  head.p = p;
  head.skip = skip;
  head.items = items;
  return undefined;
}

/** The level counts of {@link scanMsgpack} at the default depth (reused; see there). */
const SCRATCH = new Float64Array(MAX_SCAN_DEPTH + 1);

/**
 * Checks that `data` is exactly one msgpack value made only of nil, undefined, booleans, numbers,
 * strings, binaries, arrays and maps, with lengths that fit the bytes. Returns undefined when it is, else
 * why not (a short phrase for an error message).
 */
export function scanMsgpack(data: Uint8Array, maxDepth = MAX_SCAN_DEPTH): string | undefined {
  // Values still expected at each open level; level 0 is the single top-level value. The scan is
  // synchronous, so one buffer serves every call at the default depth: a fresh one per frame was
  // an off-heap ArrayBuffer per frame for the garbage collector to track.
  const left = maxDepth === MAX_SCAN_DEPTH ? SCRATCH : new Float64Array(maxDepth + 1);
  let depth = 0;
  left[0] = 1;
  let p = 0;
  while (depth >= 0) {
    if (left[depth] === 0) {
      depth--;
      continue;
    }
    left[depth]!--;
    const refused = readHeader(data, p);
    if (refused !== undefined) return refused;
    p = head.p + head.skip;
    if (head.items > 0) {
      if (depth === maxDepth) return `nesting deeper than ${maxDepth}`;
      left[++depth] = head.items;
    }
  }
  return p === data.byteLength ? undefined : 'bytes after the frame';
}

/**
 * The request id (`r`) of a frame, read without decoding it, so that a frame the server refuses
 * unread (a device over its cost budget) can still be answered under its request id. In the
 * compact form `[code, r, …]` it is the second element when `requestCodes` has the code; in the map
 * form, the value of key `r` (the other keys' values are skipped by their headers). Undefined when
 * there is none, or the frame is malformed (the decoder will say why, if it ever runs).
 */
export function peekRequestId(data: Uint8Array, requestCodes: ReadonlySet<number>): number | undefined {
  const b = data[0];
  if (b === undefined) return undefined;
  if (b >= 0x92 && b <= 0x9f) return requestCodes.has(data[1]!) ? readUint(data, 2) : undefined;
  if (b === 0xdc) return requestCodes.has(data[3]!) ? readUint(data, 4) : undefined;
  let pairs: number;
  let p = 1;
  if (b >= 0x80 && b <= 0x8f) pairs = b & 0x0f;
  else if (b === 0xde && data.byteLength >= 3) {
    pairs = (data[1]! << 8) | data[2]!;
    p = 3;
  } else if (b === 0xdf && data.byteLength >= 5) {
    pairs = u32(data, 1);
    p = 5;
  } else return undefined;
  for (let i = 0; i < pairs; i++) {
    // The key "r" is a one-character fixstr: 0xa1 0x72.
    if (data[p] === 0xa1 && data[p + 1] === 0x72) return readUint(data, p + 2);
    // Skip the key and its value (a value may be a container: count its elements as still to skip).
    for (let left = 2; left > 0; left--) {
      if (readHeader(data, p) !== undefined) return undefined;
      p = head.p + head.skip;
      if (head.items > 0) left += head.items;
    }
  }
  return undefined;
}

/** The unsigned integer at `p` (fixint, uint 8/16/32), or undefined. */
function readUint(data: Uint8Array, p: number): number | undefined {
  const b = data[p];
  if (b === undefined) return undefined;
  if (b <= 0x7f) return b;
  const size = b === 0xcc ? 1 : b === 0xcd ? 2 : b === 0xce ? 4 : 0;
  if (size === 0 || p + 1 + size > data.byteLength) return undefined;
  return size === 1 ? data[p + 1]! : size === 2 ? (data[p + 1]! << 8) | data[p + 2]! : u32(data, p + 1);
}

function u32(data: Uint8Array, p: number): number {
  return ((data[p]! << 24) >>> 0) + ((data[p + 1]! << 16) | (data[p + 2]! << 8) | data[p + 3]!);
}
