// 1:1 at saturation (load side). `n` clients; client i sends to client (i + n/2) mod n, keeping
// `window` messages in flight each: a message leaves the window when its recipient has it. After
// a warm-up, one measurement window: messages delivered per second, and latencies of the
// messages sent inside it (send → delivered to the recipient, send → acked to the sender, and for
// postbox send → the sender's `delivered` status).
import { performance } from 'node:perf_hooks';
import { mark, sleep } from '../lib/child.mjs';
import { Samples } from '../lib/stats.mjs';

const PS = [50, 99, 99.9];
const cpuSec = (a, b) => (b.user + b.system - a.user - a.system) / 1e6;

export async function run(sys, p) {
  const { url, n, window: W, size, warmupMs, measureMs, prefix } = p;
  const now = () => performance.now();
  const sentAt = new Samples(1 << 20);
  const lat = { delivered: new Samples(), acked: new Samples(), status: new Samples() };
  const inflight = new Int32Array(n);
  const seq = new Int32Array(n);
  let tStart = Infinity;
  let tEnd = Infinity;
  let inWindow = 0;
  let stopping = false;
  let client;

  const inSendWindow = (tag) => {
    const s = sentAt.get(tag);
    return s >= tStart && s < tEnd ? s : undefined;
  };
  function pump(i) {
    while (!stopping && inflight[i] < W) {
      const tag = seq[i]++ * n + i;
      sentAt.set(tag, now());
      inflight[i]++;
      client.send(i, (i + n / 2) % n, tag);
    }
  }
  const onDeliver = (_to, tag) => {
    const t = now();
    const i = tag % n;
    inflight[i]--;
    if (t >= tStart && t < tEnd) inWindow++;
    const s = inSendWindow(tag);
    if (s !== undefined) lat.delivered.push(t - s);
    pump(i);
  };
  const onAck = (_i, tag) => {
    const s = inSendWindow(tag);
    if (s !== undefined) lat.acked.push(now() - s);
  };
  const onStatus = (_i, tag) => {
    const s = inSendWindow(tag);
    if (s !== undefined) lat.status.push(now() - s);
  };

  client = await sys.connect({ url, n, size, prefix, onDeliver, onAck, onStatus, crypto: p.crypto });
  for (let i = 0; i < n; i++) pump(i);
  await sleep(warmupMs);
  const m0 = await mark('start');
  const c0 = process.cpuUsage();
  tStart = now();
  await sleep(measureMs);
  tEnd = now();
  const c1 = process.cpuUsage();
  const m1 = await mark('end');
  stopping = true;
  // Let the window's last messages arrive so their latencies count.
  const deadline = now() + 5000;
  while (inflight.some((x) => x > 0) && now() < deadline) await sleep(20);
  await client.close();

  const secs = (tEnd - tStart) / 1000;
  const out = { msgs_per_s: inWindow / secs };
  const serverCpu = m0.cpu && m1.cpu ? cpuSec(m0.cpu, m1.cpu) : undefined;
  if (serverCpu) {
    out.msgs_per_server_cpu_s = inWindow / serverCpu;
    out.server_cpu_pct = (100 * serverCpu) / secs;
  }
  out.load_cpu_pct = (100 * cpuSec(c0, c1)) / secs;
  for (const [name, s] of Object.entries(lat)) {
    if (s.length === 0) continue;
    const [p50, p99, p999] = s.percentiles(PS);
    Object.assign(out, { [`${name}_p50_ms`]: p50, [`${name}_p99_ms`]: p99, [`${name}_p999_ms`]: p999 });
  }
  return out;
}
