// The delivery trace's own CPU per 1:1 message life, in one process and without the network: the
// four events a delivered message leaves (committed, pushed, acked, a ✓✓ status pushed back),
// recorded into the default memory ring, against the same calls with the trace off. Rounds
// alternate; CPU time, not wall time.
//   npm run build && node bench/tools/trace-micro.mjs [messages=200000] [rounds=5]
import { memoryTraceStore, Tracer } from '../../dist/server/trace.js';

const N = Number(process.argv[2] ?? 200_000);
const ROUNDS = Number(process.argv[3] ?? 5);
const clock = { now: () => Date.now() };
const alice = { user: 'alice', device: 'd1' };
const bob = { user: 'bob', device: 'd1' };
const body = new Uint8Array(100);

function life(tracer, i) {
  const id = `01J${String(i).padStart(23, '0')}`;
  if (!tracer.on) return;
  tracer.committed(
    { kind: 'msg', id, from: alice, to: 'bob', seq: i, body },
    { ok: true, ts: 0, duplicate: false, notify: [bob] },
  );
  tracer.pushed(bob, { offset: i, kind: 'msg', id, from: alice, to: 'bob', seq: i, ts: 0, body });
  tracer.acked(bob, [i]);
  tracer.pushed(alice, { offset: i, kind: 'status', status: 'delivered', ids: [id], by: 'bob', ts: 0 });
}

function run(tracer) {
  const c0 = process.cpuUsage();
  for (let i = 1; i <= N; i++) life(tracer, i);
  const c1 = process.cpuUsage(c0);
  return ((c1.user + c1.system) / N) * 1000; // ns per message
}

const on = [];
const off = [];
for (let r = 0; r < ROUNDS; r++) {
  off.push(run(new Tracer(undefined, clock, undefined)));
  on.push(run(new Tracer(memoryTraceStore(), clock, undefined)));
}
const med = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
console.log(
  `trace on:  ${(med(on) / 1000).toFixed(2)} µs CPU per message life [${on.map((v) => (v / 1000).toFixed(2)).join(', ')}]`,
);
console.log(
  `trace off: ${(med(off) / 1000).toFixed(3)} µs [${off.map((v) => (v / 1000).toFixed(3)).join(', ')}]`,
);
