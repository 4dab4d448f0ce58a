import { pack } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { nextStatus, STATUS_RANK } from '../src/client/status.js';
import type { MessageStatus } from '../src/client/store.js';
import {
  ERROR_CODES,
  ERROR_CODE_LIST,
  PostboxError,
  clientFrame,
  decodeClientFrame,
  decodeServerFrame,
  encodeAtOffset,
  encodeFrame,
  isPostboxError,
  isRetryable,
  negotiateVersion,
  serverFrame,
  type ClientFrame,
  type ServerFrame,
} from '../src/protocol/index.js';
import { backoff, seededRandom } from '../src/util/clock.js';
import { ulidFactory } from '../src/util/ulid.js';
import { badGroupIds, badIds, validGroupIds, validIds } from './fixtures/ids.js';

const b = (n: number) => Uint8Array.from({ length: n }, (_, i) => i & 0xff);

type IdKind = 'user' | 'device' | 'group' | 'conv';
/** Where each frame type carries ids (`*`: every element); `conv` is a user or, with `g`, a group. */
const ID_FIELDS: Record<string, Array<[string, IdKind]>> = {
  hello: [['dev', 'device']],
  send: [
    ['to', 'conv'],
    ['e.*.0', 'user'],
    ['e.*.1', 'device'],
  ],
  rcpt: [['to', 'user']],
  grp: [
    ['g', 'group'],
    ['m.*', 'user'],
  ],
  unl: [['d', 'device']],
  sub: [['u', 'user']],
  unsub: [['u', 'user']],
  typ: [['to', 'conv']],
  kget: [
    ['u.*', 'user'],
    ['d', 'device'],
  ],
  welcome: [
    ['u', 'user'],
    ['d', 'device'],
  ],
  err: ['m', 'x', 's'].flatMap((l): Array<[string, IdKind]> => [
    [`d.${l}.*.0`, 'user'],
    [`d.${l}.*.1`, 'device'],
  ]),
  msg: [
    ['f', 'user'],
    ['fd', 'device'],
    ['to', 'conv'],
  ],
  st: [['by', 'user']],
  gev: [
    ['g', 'group'],
    ['by', 'user'],
    ['m.*', 'user'],
    ['s.*.0', 'user'],
  ],
  pres: [['u', 'user']],
  typn: [
    ['f', 'user'],
    ['fd', 'device'],
    ['to', 'conv'],
  ],
  kb: [
    ['b.*.0', 'user'],
    ['b.*.1', 'device'],
    ['w.*', 'user'],
  ],
  // `s.*.2` is a user or a group id, with no `g` beside it: checked in its own case.
  gap: [
    ['s.*.0', 'user'],
    ['s.*.1', 'device'],
  ],
  kr: [['u', 'user']],
};
/** Frame types that carry no user, device or group id. */
const NO_IDS = ['ack', 'ping', 'pong', 'ok', 'keys', 'ptok', 'lnk', 'lcode', 'klow'];

/** The concrete paths a pattern names in `value` (none when a step is absent). */
function expand(value: unknown, pattern: string[]): string[][] {
  if (pattern.length === 0) return [[]];
  if (value === null || typeof value !== 'object') return [];
  const [head, ...rest] = pattern as [string, ...string[]];
  const keys = head === '*' ? Object.keys(value) : head in value ? [head] : [];
  return keys.flatMap((k) => expand((value as Record<string, unknown>)[k], rest).map((p) => [k, ...p]));
}

/** A deep copy of `frame` with the value at `path` replaced. */
function withAt<F>(frame: F, path: string[], v: string): F {
  if (path.length === 0) return v as F;
  const [head, ...rest] = path as [string, ...string[]];
  const copy = (Array.isArray(frame) ? [...frame] : { ...frame }) as Record<string, unknown>;
  copy[head] = withAt(copy[head], rest, v);
  return copy as F;
}

const clientFrames: ClientFrame[] = [
  { t: 'hello', v: [1, 1], cred: { token: 'abc' }, dev: 'phone' },
  { t: 'send', r: 1, id: '01HZX', to: 'bob', seq: 1, b: b(100) },
  { t: 'rcpt', r: 2, id: '01HZY', to: 'alice', ids: ['a', 'b'] },
  { t: 'ack', o: [1, 2, 3] },
  { t: 'ping' },
  { t: 'pong' },
  { t: 'send', r: 3, id: '01HZW', to: '#trip', seq: 2, b: b(5), g: true },
  { t: 'grp', r: 4, id: '01HZV', g: '#trip', op: 'create', m: ['bob', 'carol'], n: 'Trip' },
  { t: 'grp', r: 5, id: '01HZU', g: '#trip', op: 'leave' },
  { t: 'lnk', r: 6, code: 'ABCDEFGHJKMNPQR' },
  { t: 'unl', r: 7, d: 'laptop' },
  { t: 'sub', r: 8, u: 'bob' },
  { t: 'unsub', u: 'bob' },
  { t: 'typ', to: 'bob', on: true },
  { t: 'typ', to: '#trip', on: false, g: true },
  {
    t: 'send',
    r: 9,
    id: '01HZT',
    to: 'bob',
    seq: 3,
    b: b(0),
    e: [
      ['bob', 'phone', 77, b(40)],
      ['alice', 'laptop', 12, b(41)],
    ],
  },
  { t: 'send', r: 10, id: '01HZS', to: 'bob', seq: 0, b: b(0), e: [['bob', 'phone', 77, b(9)]] },
  {
    t: 'keys',
    r: 11,
    rid: 4242,
    ik: b(33),
    spk: [1, b(33), b(64)],
    lrk: [2, b(1569), b(64)],
    pk: [
      [3, b(33)],
      [4, b(33)],
    ],
    kpk: [[5, b(1569), b(64)]],
  },
  { t: 'keys', r: 12, rid: 4242, ik: b(33), pk: [[6, b(33)]] },
  { t: 'kget', r: 13, u: ['bob', 'carol'] },
  { t: 'kget', r: 14, u: ['bob'], d: 'phone' },
  { t: 'ptok', r: 15, k: 'fcm', tok: 'a-token' },
  { t: 'ptok', r: 16 },
];
const serverFrames: ServerFrame[] = [
  { t: 'welcome', v: 1, u: 'bob', d: 'phone', hb: 25000, lim: { frame: 262144, body: 65536, window: 256 } },
  { t: 'ok', r: 1 },
  { t: 'err', r: 1, c: 'too_large', m: 'body too big' },
  { t: 'msg', o: 7, id: '01HZX', f: 'alice', fd: 'phone', seq: 3, ts: 1700000000000, b: b(10) },
  { t: 'msg', o: 8, id: '01HZZ', f: 'bob', fd: 'laptop', to: 'alice', seq: 1, ts: 1700000000000, b: b(1) },
  { t: 'st', o: 9, s: 'd', ids: ['01HZX'], by: 'bob', ts: 1700000000001 },
  { t: 'ping' },
  {
    t: 'msg',
    o: 10,
    id: '01HZW',
    f: 'bob',
    fd: 'p',
    to: '#trip',
    seq: 2,
    ts: 1700000000002,
    b: b(3),
    g: true,
  },
  {
    t: 'gev',
    o: 11,
    g: '#trip',
    v: 1,
    op: 'create',
    by: 'alice',
    m: ['bob'],
    ts: 1,
    n: 'Trip',
    s: [
      ['alice', 1],
      ['bob', 0],
    ],
  },
  { t: 'gev', o: 12, g: '#trip', v: 2, op: 'remove', by: 'alice', m: ['bob'], ts: 2 },
  { t: 'lcode', code: 'ABCDEFGHJKMNPQR', exp: 1700000300000 },
  { t: 'pres', u: 'bob', on: false, ls: 1700000000000 },
  { t: 'pres', u: 'bob', on: true },
  { t: 'typn', f: 'alice', fd: 'phone', on: true },
  { t: 'typn', f: 'alice', fd: 'phone', on: true, to: '#trip', g: true },
  {
    t: 'err',
    r: 9,
    c: 'mismatched_devices',
    m: 'device list does not match the directory',
    d: { m: [['bob', 'tablet']], x: [['bob', 'old']] },
  },
  { t: 'err', r: 10, c: 'stale_devices', d: { s: [['bob', 'phone']] } },
  {
    t: 'kb',
    r: 13,
    b: [
      ['bob', 'phone', 77, b(33), [1, b(33), b(64)], [5, b(1569), b(64)], [3, b(33)]],
      ['carol', 'p', 9, b(33), [1, b(33), b(64)], [2, b(1569), b(64)]],
    ],
  },
  { t: 'kb', r: 14, b: [] },
  { t: 'kb', r: 15, b: [], w: ['bob', 'dave'] },
  { t: 'klow', pk: 3, kpk: 0 },
  {
    t: 'gap',
    o: 15,
    why: 'x',
    s: [
      ['bob', 'phone', 'alice', 1, 3, 7, 7],
      ['carol', 'p', '#trip', 2, 2],
    ],
    ts: 1700000000003,
  },
  { t: 'kr', u: 'bob' },
];

describe('the wire protocol', () => {
  it('every frame survives encode → decode unchanged', () => {
    for (const f of clientFrames) expect(decodeClientFrame(encodeFrame(f))).toEqual(f);
    for (const f of serverFrames) expect(decodeServerFrame(encodeFrame(f))).toEqual(f);
  });

  it('an entry frame packed once for many offsets has exactly the bytes of packing it per offset', () => {
    const offsets = [
      0,
      1,
      127,
      128,
      255,
      256,
      65535,
      65536,
      2 ** 31,
      2 ** 32 - 1,
      2 ** 32,
      2 ** 40,
      2 ** 53 - 1,
    ];
    const big: ServerFrame = {
      t: 'msg',
      o: 0,
      id: '01JDQ4M7X8K2V9TZP3N6B5C0RA',
      f: 'a',
      fd: 'd',
      seq: 1,
      ts: 1,
      b: b(70_000),
      to: '#g',
      g: true,
    };
    for (const f of [...serverFrames.filter((f) => 'o' in f), big]) {
      const at = encodeAtOffset(f);
      for (const o of offsets)
        expect(Buffer.from(at(o))).toEqual(Buffer.from(encodeFrame({ ...f, o } as ServerFrame)));
    }
  });

  it('undefined optional fields are left off the wire', () => {
    const withUndefined = { t: 'err', c: 'internal', r: undefined, m: undefined } as unknown as ServerFrame;
    expect(encodeFrame(withUndefined)).toEqual(encodeFrame({ t: 'err', c: 'internal' }));
  });

  it('a frame over the limit is refused with too_large before it is decoded', () => {
    const data = encodeFrame({ t: 'send', r: 1, id: 'x', to: 'bob', seq: 1, b: b(2000) });
    expect(() => decodeClientFrame(data, 1000)).toThrow(expect.objectContaining({ code: 'too_large' }));
  });

  it('a frame that is not msgpack or fails its schema is invalid_frame, with the request id when readable', () => {
    expect(() => decodeClientFrame(new Uint8Array([0xc1]))).toThrow(
      expect.objectContaining({ code: 'invalid_frame' }),
    );
    try {
      decodeClientFrame(encodeFrame({ t: 'send', r: 42, id: 'x', to: '', seq: 1, b: b(1) } as ClientFrame));
      expect.unreachable();
    } catch (e) {
      expect(isPostboxError(e) && e.code === 'invalid_frame' && e.requestId === 42).toBe(true);
    }
  });

  it('group ids, member lists and names are bounded by the schema', () => {
    const bad: Array<Record<string, unknown>> = [
      { t: 'grp', r: 1, id: 'x', g: 'no-hash', op: 'leave' },
      { t: 'grp', r: 1, id: 'x', g: '#' + 'a'.repeat(64), op: 'leave' },
      { t: 'grp', r: 1, id: 'x', g: '#ok', op: 'explode' },
      { t: 'grp', r: 1, id: 'x', g: '#ok', op: 'add', m: Array.from({ length: 1025 }, (_, i) => `u${i}`) },
      { t: 'grp', r: 1, id: 'x', g: '#ok', op: 'add', m: [] },
      { t: 'grp', r: 1, id: 'x', g: '#ok', op: 'rename', n: 'x'.repeat(129) },
      { t: 'send', r: 1, id: 'x', to: 'bob', seq: 1, b: b(1), g: 1 },
      { t: 'typ', to: 'bob', on: 'yes' },
    ];
    for (const f of bad) {
      expect(() => decodeClientFrame(encodeFrame(f as ClientFrame))).toThrow(
        expect.objectContaining({ code: 'invalid_frame' }),
      );
    }
  });

  it('every id field of every frame follows the one id rule (seeded, generated ids)', () => {
    const types = (u: typeof clientFrame | typeof serverFrame) =>
      u.def.options.map((o) => o.def.shape.t.def.values[0]!);
    expect(new Set([...Object.keys(ID_FIELDS), ...NO_IDS])).toEqual(
      new Set([...types(clientFrame), ...types(serverFrame)]),
    );
    const fromClient = new Set<string>(types(clientFrame));
    const decode = (f: ClientFrame | ServerFrame) =>
      fromClient.has(f.t) ? decodeClientFrame(encodeFrame(f)) : decodeServerFrame(encodeFrame(f));
    const good = { user: validIds(1, 8, 128), device: validIds(2, 8, 64), group: validGroupIds(3, 8) };
    const bad = { user: badIds(4, 128), device: badIds(5, 64), group: badGroupIds(6) };
    let checked = 0;
    for (const frame of [...clientFrames, ...serverFrames]) {
      for (const [path, kind] of ID_FIELDS[frame.t] ?? []) {
        for (const at of expand(frame, path.split('.'))) {
          // `to` is a group id exactly when the frame says `g`: the other kind is as bad as junk.
          const k = kind === 'conv' ? ((frame as { g?: true }).g ? 'group' : 'user') : kind;
          const other = kind === 'conv' ? good[k === 'group' ? 'user' : 'group'].slice(0, 3) : [];
          for (const id of good[k]) expect(decode(withAt(frame, at, id))).toEqual(withAt(frame, at, id));
          for (const { id, why } of [...bad[k], ...other.map((id) => ({ id, why: 'other kind' }))]) {
            expect(() => decode(withAt(frame, at, id)), `${frame.t}.${at.join('.')}: ${why}`).toThrow(
              expect.objectContaining({ code: 'invalid_frame' }),
            );
          }
          checked++;
        }
      }
    }
    expect(checked).toBeGreaterThan(40);
  });

  it('a gap frame names ascending, non-touching ranges of positive numbers, at most MAX_GAP_RANGES of them', () => {
    const gap = (s: unknown[][]) => ({ t: 'gap', o: 1, why: 'x', s, ts: 1 }) as unknown as ServerFrame;
    const ok = [
      [['bob', 'p', 'alice', 1, 1]],
      [['bob', 'p', '#g', 1, 5, 7, 9]],
      [['bob', 'p', 'bob', 4, 4, 6, 6]],
      Array.from({ length: 128 }, (_, i) => ['bob', `d${i}`, 'alice', 1, 1, 3, 3]),
    ];
    for (const s of ok) expect(decodeServerFrame(encodeFrame(gap(s)))).toEqual(gap(s));
    const bad = [
      [],
      [['bob', 'p', 'alice']], // no range
      [['bob', 'p', 'alice', 1]], // half a range
      [['bob', 'p', 'alice', 3, 1]], // first after last
      [['bob', 'p', 'alice', 1, 2, 3, 4]], // touching: one range
      [['bob', 'p', 'alice', 5, 6, 1, 2]], // not ascending
      [['bob', 'p', 'alice', 0, 2]], // 0 is in no sequence
      [['bob', 'p', 'not a conversation', 1, 1]],
      Array.from({ length: 129 }, (_, i) => ['bob', `d${i}`, 'alice', 1, 1, 3, 3]), // 258 ranges
    ];
    for (const s of bad) {
      expect(() => decodeServerFrame(encodeFrame(gap(s))), JSON.stringify(s).slice(0, 60)).toThrow(
        expect.objectContaining({ code: 'invalid_frame' }),
      );
    }
    expect(() =>
      decodeServerFrame(encodeFrame({ ...gap([['bob', 'p', 'alice', 1, 1]]), why: 'lost' } as never)),
    ).toThrow(expect.objectContaining({ code: 'invalid_frame' }));
  });

  it('a server frame is never accepted as a client frame', () => {
    for (const f of serverFrames.filter((f) => f.t !== 'ping')) {
      expect(() => decodeClientFrame(encodeFrame(f))).toThrow(
        expect.objectContaining({ code: 'invalid_frame' }),
      );
    }
  });

  it('the version is the highest both sides speak, or none', () => {
    expect(negotiateVersion([1, 3], [1, 2])).toBe(2);
    expect(negotiateVersion([1, 1], [1, 1])).toBe(1);
    expect(negotiateVersion([3, 4], [1, 2])).toBeUndefined();
  });

  it('error codes are a closed set, each marked retryable or not', () => {
    expect(ERROR_CODE_LIST.length).toBe(Object.keys(ERROR_CODES).length);
    for (const code of ERROR_CODE_LIST) {
      const e = new PostboxError(code, 'x');
      expect(typeof e.retryable).toBe('boolean');
      expect(e.retryable).toBe(isRetryable(code));
      expect(isPostboxError(e)).toBe(true);
    }
    expect(isRetryable('rate_limited')).toBe(true);
    expect(isRetryable('invalid_frame')).toBe(false);
    // The guard works on a structural copy (another bundle's class).
    expect(isPostboxError({ name: 'PostboxError', code: 'internal', message: '' })).toBe(true);
    expect(isPostboxError({ name: 'PostboxError', code: 'made_up' })).toBe(false);
  });
});

describe('the compact wire form', () => {
  const USER16 = 'alice.4f1c2e9a7b';
  it('canonical ULIDs travel as 16 bytes and come back as the same string (seeded, 2000 ids)', () => {
    const random = seededRandom(7);
    let t = 0;
    const next = ulidFactory({ now: () => (t += Math.floor(random() * 1e9)) }, random);
    const extremes = ['00000000000000000000000000', '7ZZZZZZZZZZZZZZZZZZZZZZZZZ'];
    for (const id of [...extremes, ...Array.from({ length: 2000 }, next)]) {
      const f: ClientFrame = { t: 'send', r: 1, id, to: USER16, seq: 1, b: b(0) };
      const data = encodeFrame(f);
      // 16 bytes and a 2-byte bin header: as long as a 17-character string (1-byte header).
      expect(data.byteLength).toBe(encodeFrame({ ...f, id: 'x'.repeat(17) }).byteLength);
      expect(decodeClientFrame(data)).toEqual(f);
    }
  });

  it('ids that are not canonical ULIDs stay strings, unchanged', () => {
    for (const id of [
      '01hzx8k2v9tzp3n6b5c0ra0000',
      '8ZZZZZZZZZZZZZZZZZZZZZZZZZ',
      'ILOU0000000000000000000000',
      'a',
      '€'.repeat(26),
    ]) {
      const f: ServerFrame = { t: 'st', o: 1, s: 'r', ids: [id, id], by: 'bob', ts: 1 };
      expect(decodeServerFrame(encodeFrame(f))).toEqual(f);
    }
  });

  it('one 1:1 message costs at most 160 bytes of protocol over its whole life (payload excluded)', () => {
    const id = ulidFactory({ now: () => 1_795_000_000_000 }, seededRandom(1))();
    const body = b(100);
    const life: Array<ClientFrame | ServerFrame> = [
      { t: 'send', r: 1, id, to: 'bob.4f1c2e9a7b3d', seq: 1, b: body },
      { t: 'ok', r: 1 },
      { t: 'msg', o: 1, id, f: USER16, fd: 'd', seq: 1, ts: 1_795_000_000_000, b: body },
      { t: 'ack', o: [1] },
      { t: 'st', o: 1, s: 'd', ids: [id], by: 'bob.4f1c2e9a7b3d', ts: 1_795_000_000_001 },
      { t: 'ack', o: [1] },
    ];
    const bytes = life.reduce((n, f) => n + encodeFrame(f).byteLength, 0) - 2 * body.byteLength;
    expect(bytes).toBeLessThanOrEqual(160);
  });

  it('the map form is accepted too; unknown codes and surplus fields are invalid_frame', () => {
    const f: ClientFrame = { t: 'send', r: 5, id: 'm1', to: 'bob', seq: 2, b: b(3) };
    expect(decodeClientFrame(pack(f))).toEqual(f);
    expect(() => decodeClientFrame(pack([99, 1]))).toThrow(/invalid|failed validation/);
    expect(() => decodeClientFrame(pack([4, [1], 'surplus']))).toThrow(/failed validation/);
    expect(() => decodeClientFrame(pack(['send', 1]))).toThrow(/failed validation/);
    // A server frame's code is not a client frame.
    expect(() => decodeClientFrame(encodeFrame({ t: 'ok', r: 1 }))).toThrow(/failed validation/);
  });
});

describe('receipts are monotone', () => {
  const all: MessageStatus[] = ['pending', 'sent', 'delivered', 'read', 'failed', 'expired'];

  it('no event ever moves a status backwards, whatever order receipts arrive in (seeded, 2000 orders)', () => {
    const rnd = seededRandom(99);
    for (let run = 0; run < 2000; run++) {
      let s: MessageStatus = 'pending';
      for (let i = 0; i < 8; i++) {
        const event = all[Math.floor(rnd() * all.length)]!;
        const next = nextStatus(s, event);
        expect(STATUS_RANK[next]).toBeGreaterThanOrEqual(STATUS_RANK[s]);
        if (next !== s) expect(next).toBe(event);
        s = next;
      }
    }
  });

  it('the happy path and its shortcuts', () => {
    expect(nextStatus('pending', 'sent')).toBe('sent');
    expect(nextStatus('sent', 'delivered')).toBe('delivered');
    expect(nextStatus('delivered', 'read')).toBe('read');
    expect(nextStatus('pending', 'read')).toBe('read');
    expect(nextStatus('read', 'delivered')).toBe('read');
    expect(nextStatus('delivered', 'expired')).toBe('delivered');
    expect(nextStatus('failed', 'sent')).toBe('failed');
  });
});

describe('backoff and ids', () => {
  it('backoff is full jitter under an exponential ceiling capped at max', () => {
    const rnd = seededRandom(5);
    for (let attempt = 0; attempt < 20; attempt++) {
      const ceiling = Math.min(30_000, 500 * 2 ** attempt);
      for (let i = 0; i < 50; i++) {
        const d = backoff(attempt, 500, 30_000, rnd);
        expect(d).toBeGreaterThanOrEqual(0);
        expect(d).toBeLessThan(ceiling);
      }
    }
    // Spread: full jitter uses the whole range, not a narrow band around the ceiling.
    const ds = Array.from({ length: 1000 }, () => backoff(10, 500, 30_000, rnd));
    expect(Math.min(...ds)).toBeLessThan(3000);
    expect(Math.max(...ds)).toBeGreaterThan(27_000);
  });

  it('ulids sort by creation, also within one millisecond and when the clock steps back', () => {
    let t = 1_700_000_000_000;
    const next = ulidFactory({ now: () => t }, seededRandom(1));
    const out: string[] = [];
    for (let i = 0; i < 1000; i++) {
      if (i % 100 === 0) t += 1;
      if (i === 500) t -= 50;
      out.push(next());
    }
    expect([...out].sort()).toEqual(out);
    expect(new Set(out).size).toBe(out.length);
    expect(out.every((id) => id.length === 26)).toBe(true);
  });
});
