import { describe, expect, it } from 'vitest';
import { passesFastCheck } from '../src/protocol/fast-checks.js';
import { clientFrame, decodeServerFrame, encodeFrame, serverFrame } from '../src/protocol/index.js';
import { seededRandom } from '../src/util/clock.js';

// The hot frames' hand-written checks (src/protocol/fast-checks.ts) may only ever accept what
// the zod schema accepts, and hand on what the schema would: seeded valid frames, each broken
// in one or two fields with values that are wrong in every way a field can be.

const bin = (n: number) => Uint8Array.from({ length: n }, (_, i) => i & 0xff);
const ULID = '01HZX3K4M5N6P7Q8R9S0T1V2W3';

const VALID: Array<['server' | 'client', Record<string, unknown>]> = [
  ['server', { t: 'ok', r: 7 }],
  ['server', { t: 'msg', o: 3, id: ULID, f: 'alice', fd: 'd1', seq: 1, ts: 1700000000000, b: bin(100) }],
  ['server', { t: 'msg', o: 9, id: 'x', f: 'a', fd: 'p', seq: 0, ts: 1.5, b: bin(0), to: 'bob' }],
  [
    'server',
    {
      t: 'msg',
      o: 0,
      id: ULID,
      f: 'a@b.c',
      fd: 'd',
      seq: 4,
      ts: 2,
      b: Buffer.from(bin(5)),
      to: '#g1',
      g: true,
    },
  ],
  ['server', { t: 'st', o: 12, s: 'd', ids: [ULID], by: 'bob', ts: 1 }],
  ['server', { t: 'st', o: 12, s: 'r', ids: [ULID, 'abc', 'z'.repeat(64)], by: '+15551234567', ts: -3 }],
  ['client', { t: 'ack', o: [1, 2, 3] }],
  ['client', { t: 'send', r: 1, id: ULID, to: 'bob', seq: 1, b: bin(100) }],
  ['client', { t: 'send', r: 0xffffffff, id: 'm', to: '#grp', seq: 2, b: Buffer.from(bin(3)), g: true }],
];

const BAD: unknown[] = [
  undefined,
  null,
  '',
  'x'.repeat(65),
  'u'.repeat(129),
  'has space',
  '#g',
  '#',
  'é',
  -1,
  1.5,
  2 ** 53,
  0x100000000,
  Number.NaN,
  Number.POSITIVE_INFINITY,
  true,
  false,
  0,
  'd',
  'q',
  [],
  [''],
  [ULID, 5],
  [-1],
  Array.from({ length: 1025 }, (_, i) => i),
  {},
  bin(2),
  Buffer.from('ab'),
];

function clone(f: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(f)) {
    out[k] = Array.isArray(v) ? [...v] : v instanceof Uint8Array ? new Uint8Array(v) : v;
    if (v instanceof Buffer) out[k] = Buffer.from(v);
  }
  return out;
}

function agrees(from: 'server' | 'client', frame: Record<string, unknown>): boolean {
  const fast = clone(frame);
  if (!passesFastCheck(from, fast)) return false;
  const parsed = (from === 'server' ? serverFrame : clientFrame).safeParse(clone(frame));
  expect(
    parsed.success,
    JSON.stringify(frame, (_k, v) => (v instanceof Uint8Array ? [...v] : v)),
  ).toBe(true);
  expect(fast).toEqual(parsed.data);
  for (const k of ['b']) if (k in fast) expect((fast[k] as Uint8Array).constructor).toBe(Uint8Array);
  return true;
}

describe('fast frame checks', () => {
  it('accept the plain frames of every message life, as the schema reads them', () => {
    for (const [from, frame] of VALID) expect(agrees(from, frame)).toBe(true);
  });

  it('never accept a frame the schema refuses, nor hand on anything else than it (seeded)', () => {
    const random = seededRandom(23);
    const pick = <T>(list: readonly T[]): T => list[Math.floor(random() * list.length)]!;
    // The compact decoder hands on only the fields of a type's layout (src/protocol/codec.ts).
    const fields: Record<string, string[]> = {
      ok: ['r'],
      msg: ['o', 'id', 'f', 'fd', 'seq', 'ts', 'b', 'to', 'g'],
      st: ['o', 's', 'ids', 'by', 'ts'],
      ack: ['o'],
      send: ['r', 'id', 'to', 'seq', 'b', 'g', 'e'],
    };
    let refused = 0;
    for (let i = 0; i < 4000; i++) {
      const [from, base] = pick(VALID);
      const frame = clone(base);
      for (let k = 1 + Math.floor(random() * 2); k > 0; k--) {
        const field = pick(fields[base.t as string]!);
        const value = pick(BAD);
        if (value === undefined) delete frame[field];
        else frame[field] = value;
      }
      if (!agrees(from, frame)) refused++;
    }
    expect(refused).toBeGreaterThan(1000);
  });

  it('leave a frame from the other side to the schema', () => {
    expect(passesFastCheck('client', { t: 'ok', r: 1 })).toBe(false);
    expect(passesFastCheck('server', { t: 'ack', o: [1] })).toBe(false);
    expect(passesFastCheck('server', { t: 'toString' })).toBe(false);
    expect(() => decodeServerFrame(encodeFrame({ t: 'ack', o: [1] }))).toThrow(/failed validation/);
  });
});
