// The structural scan that runs before any decoding: every plain msgpack value passes, every
// extension type and every impossible length is refused; and the request id a refused frame is
// answered under, read without decoding. Seeded random values.
import { Packr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { scanMsgpack } from '../src/protocol/msgpack-scan.js';
import { encodeFrame, peekClientRequestId } from '../src/protocol/codec.js';
import type { ClientFrame } from '../src/protocol/frames.js';
import { seededRandom } from '../src/util/clock.js';

const packr = new Packr({ useRecords: false, variableMapSize: true, moreTypes: false });

/** The project's seeded PRNG (mulberry32). */
const rng = seededRandom;

/** A random plain msgpack value: every non-extension type msgpackr writes, nested. */
function value(r: () => number, depth = 0): unknown {
  const k = Math.floor(r() * (depth > 2 ? 7 : 9));
  const ints = [0, 1, 127, 128, 255, 256, 65535, 65536, 2 ** 32, -1, -32, -33, -129, -32769, -(2 ** 31) - 1];
  switch (k) {
    case 0:
      return null;
    case 1:
      return r() < 0.5;
    case 2:
      return ints[Math.floor(r() * ints.length)];
    case 3:
      return r() * 1e6;
    case 4:
      return (
        'é'.repeat(Math.floor(r() * 40)) + 'x'.repeat([0, 31, 32, 255, 256, 70_000][Math.floor(r() * 6)]!)
      );
    case 5:
      return new Uint8Array([0, 1, 255, 256, 70_000][Math.floor(r() * 5)]!);
    case 6:
      return -1.5;
    case 7:
      return Array.from(
        { length: depth === 0 ? [0, 3, 15, 16, 300][Math.floor(r() * 5)]! : Math.floor(r() * 17) },
        () => value(r, depth + 1),
      );
    default:
      return Object.fromEntries(
        Array.from(
          { length: depth === 0 ? [0, 2, 15, 16, 40][Math.floor(r() * 5)]! : Math.floor(r() * 17) },
          (_, i) => [`k${i}`, value(r, depth + 1)],
        ),
      );
  }
}

describe('the msgpack scan before decoding', () => {
  it('passes every plain msgpack value and refuses every truncation of it (seeds 1-300)', () => {
    for (let seed = 1; seed <= 300; seed++) {
      const bytes = packr.pack(value(rng(seed)));
      expect(scanMsgpack(bytes), `seed ${seed}`).toBeUndefined();
      const cut = Math.floor(rng(seed + 1000)() * bytes.length);
      if (cut < bytes.length)
        expect(scanMsgpack(bytes.subarray(0, cut)), `seed ${seed} cut at ${cut}`).toBeDefined();
      const extra = new Uint8Array(bytes.length + 1);
      extra.set(bytes);
      expect(scanMsgpack(extra)).toBe('bytes after the frame');
    }
  });

  it('refuses every extension type, wherever it sits', () => {
    const more = new Packr({ moreTypes: true, useRecords: false });
    for (const v of [new Error('x'), new Date(0), new Set([1]), /re/]) {
      expect(scanMsgpack(more.pack([1, { a: [v] }]))).toBe('a msgpack extension type');
    }
    for (const b of [0xc7, 0xc8, 0xc9, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8]) {
      expect(
        scanMsgpack(new Uint8Array([0x91, b, 0x65, 0x65, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])),
      ).toBe('a msgpack extension type');
    }
    expect(scanMsgpack(new Uint8Array([0xc1]))).toBe('the never-used byte 0xc1');
    // The one exception: msgpackr's `undefined` (fixext 1, type 0), what a nested optional field
    // left undefined packs to; it decodes to nothing.
    expect(scanMsgpack(packr.pack({ a: [1, undefined], b: undefined }))).toBeUndefined();
  });

  it('refuses lengths longer than the frame and nesting deeper than 16', () => {
    expect(scanMsgpack(new Uint8Array([0xdd, 0xff, 0xff, 0xff, 0xff, 1]))).toBe(
      'a length longer than the frame',
    );
    expect(scanMsgpack(new Uint8Array([0xdf, 0x00, 0x01, 0x00, 0x00, 1, 2]))).toBe(
      'a length longer than the frame',
    );
    expect(scanMsgpack(new Uint8Array([0xc6, 0x7f, 0xff, 0xff, 0xff, 1]))).toBe(
      'a length longer than the frame',
    );
    expect(scanMsgpack(new Uint8Array([...new Array(17).fill(0x91), 0]))).toBe('nesting deeper than 16');
    expect(scanMsgpack(new Uint8Array([...new Array(16).fill(0x91), 0]))).toBeUndefined();
  });
});

describe('the request id read without decoding', () => {
  it('is the r of every request frame in the compact form, and absent from frames without one', () => {
    const b = new Uint8Array(70_000);
    for (const r of [0, 1, 127, 128, 255, 256, 65_535, 65_536, 0xffffffff]) {
      const frames: ClientFrame[] = [
        { t: 'send', r, id: 'm', to: 'bob', seq: 1, b },
        { t: 'rcpt', r, id: 'x', to: 'bob', ids: ['m'] },
        { t: 'ptok', r, k: 'fcm', tok: 't' },
        { t: 'kget', r, u: ['bob'] },
      ];
      for (const f of frames) {
        expect(peekClientRequestId(encodeFrame(f)), `${f.t} ${r}`).toBe(r);
      }
    }
    expect(peekClientRequestId(encodeFrame({ t: 'ack', o: [5, 6] }))).toBeUndefined();
    expect(peekClientRequestId(encodeFrame({ t: 'ping' }))).toBeUndefined();
  });

  it('is found in the map form behind any other keys (seeds 1-200), and never read past a truncation', () => {
    for (let seed = 1; seed <= 200; seed++) {
      const rand = rng(seed);
      const r = Math.floor(rand() * 2 ** 32);
      const frame = { ...(value(rand, 1) as object), t: 'send', r, tail: value(rand, 1) };
      const bytes = packr.pack(frame);
      expect(peekClientRequestId(bytes), `seed ${seed}`).toBe(r);
      expect([r, undefined]).toContain(
        peekClientRequestId(bytes.subarray(0, Math.floor(rand() * bytes.length))),
      );
    }
  });
});
