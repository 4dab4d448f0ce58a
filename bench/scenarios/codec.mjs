// Codec: encode + decode of the real envelope (a `msg` frame as the server pushes it, 100-byte
// body, 16-character user id, ULID message id). postbox-codec is what ships (msgpackr + zod
// validation); msgpackr is the bare codec with postbox's options; json is JSON.stringify + parse
// with the body as base64 (JSON cannot carry bytes).
import { performance } from 'node:perf_hooks';
import { Packr } from 'msgpackr';
import { decodeServerFrame, encodeFrame } from 'postbox/protocol';

const frame = {
  t: 'msg',
  o: 123456,
  id: '01JDQ4M7X8K2V9TZP3N6B5C0RA',
  f: 'alice.4f1c2e9a7b',
  fd: 'd',
  seq: 4242,
  ts: 1732350000000,
  b: new Uint8Array(100).fill(7),
};
const packr = new Packr({ useRecords: false, variableMapSize: true, moreTypes: false });

const SYSTEMS = {
  'postbox-codec': () => decodeServerFrame(encodeFrame(frame)),
  msgpackr: () => packr.unpack(packr.pack(frame)),
  json: () => {
    const o = JSON.parse(JSON.stringify({ ...frame, b: Buffer.from(frame.b).toString('base64') }));
    o.b = new Uint8Array(Buffer.from(o.b, 'base64'));
    return o;
  },
};
const SIZES = {
  'postbox-codec': encodeFrame(frame).byteLength,
  msgpackr: packr.pack(frame).byteLength,
  json: Buffer.byteLength(JSON.stringify({ ...frame, b: Buffer.from(frame.b).toString('base64') })),
};

function opsPerSec(fn, ms) {
  let sink = 0;
  const end = performance.now() + ms;
  let n = 0;
  let t = performance.now();
  const t0 = t;
  while (t < end) {
    for (let i = 0; i < 500; i++) sink += fn() ? 1 : 0;
    n += 500;
    t = performance.now();
  }
  if (sink < 0) console.log(sink);
  return (n / (t - t0)) * 1000;
}

export async function run({ ms, round = 0 }) {
  const names = Object.keys(SYSTEMS);
  const order = names.map((_, k) => names[(k + round) % names.length]);
  for (const name of order) opsPerSec(SYSTEMS[name], Math.min(200, ms)); // warm up the JIT
  const results = [];
  for (const name of order) {
    results.push({ system: name, metric: 'ops_per_s', value: opsPerSec(SYSTEMS[name], ms), unit: 'ops/s' });
    results.push({ system: name, metric: 'encoded_bytes', value: SIZES[name], unit: 'B' });
  }
  return { results };
}
