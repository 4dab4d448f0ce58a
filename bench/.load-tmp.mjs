import { performance } from 'node:perf_hooks';
import * as sys from './systems/postbox.client.mjs';
import { Samples } from './lib/stats.mjs';
import { monitorEventLoopDelay } from 'node:perf_hooks';
const url = process.argv[2];
const rate = Number(process.argv[3] ?? 5000);
const n = 200;
const sentAt = new Samples(1 << 20);
const seq = new Int32Array(n);
const lat = new Samples();
const now = () => performance.now();
const ackAt = new Samples(1 << 20);
let tStart = Infinity,
  tEnd = Infinity;
const big = [];
const c = await sys.connect({
  url,
  n,
  size: 100,
  onDeliver: (_, tag) => {
    const s = sentAt.get(tag);
    if (s >= tStart && s < tEnd) {
      const l = now() - s;
      lat.push(l);
      if (l > 10) big.push([Math.round(s - tStart), Math.round(l), Math.round((ackAt.get(tag) || NaN) - s)]);
    }
  },
  onAck: (_, tag) => {
    ackAt.set(tag, now());
  },
  onStatus() {},
});
const h = monitorEventLoopDelay({ resolution: 1 });
h.enable();
const start = now();
tStart = start + 2000;
tEnd = tStart + 4000;
let sent = 0;
await new Promise((res) => {
  const tick = () => {
    const t = now();
    const due = Math.floor(((t - start) * rate) / 1000);
    while (sent < due) {
      const i = sent % n;
      const tag = seq[i]++ * n + i;
      sentAt.set(tag, start + (sent * 1000) / rate);
      sent++;
      c.send(i, (i + 100) % n, tag);
    }
    if (t >= tEnd) res();
    else setImmediate(tick);
  };
  tick();
});
await new Promise((r) => setTimeout(r, 1000));
console.log('load loop delay max', h.max / 1e6, 'p99', h.percentile(99) / 1e6);
console.log(
  'p50/p99/p999',
  lat
    .percentiles([50, 99, 99.9])
    .map((x) => x.toFixed(2))
    .join(' '),
  'n',
  lat.length,
);
// group slow messages by send-time bucket (100 ms)
const buckets = new Map();
for (const [s, l] of big) {
  const b = Math.floor(s / 100) * 100;
  buckets.set(b, Math.max(buckets.get(b) ?? 0, l));
}
console.log(
  'slow msgs ack latency sample:',
  big
    .slice(0, 12)
    .map((b) => b[1] + '/' + b[2])
    .join(' '),
);
console.log(
  'slow buckets (ms since window start → max latency):',
  [...buckets].map(([b, l]) => `${b}:${l}`).join(' '),
);
process.exit(0);
