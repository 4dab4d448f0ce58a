// Offline drain (load side). `devices` devices that have never been online (postbox: registered;
// MQTT: a persistent session with a QoS 1 subscription) each have `perDevice` messages waiting.
// They come back at a steady `rate` per second; we measure how fast the whole backlog drains,
// how long each device waits for its first message, and count duplicates and missing messages.
import { performance } from 'node:perf_hooks';
import { mark, sleep } from '../lib/child.mjs';
import { Samples } from '../lib/stats.mjs';

export async function run(sys, p) {
  const { url, devices, perDevice, senders, size, rate, prefix, timeoutMs } = p;
  const now = () => performance.now();
  const t = now();
  await sys.drainSetup({ url, devices, perDevice, senders, size, prefix });
  const setupMs = now() - t;
  await mark('queued');

  const total = devices * perDevice;
  const seen = new Uint8Array(total);
  const firstWait = new Samples(devices);
  let received = 0;
  let unique = 0;
  let duplicates = 0;
  let misrouted = 0;
  let last = 0;
  let done;
  const finished = new Promise((r) => (done = r));
  const handles = [];
  const t0 = now();
  for (let j = 0; j < devices; j++) {
    const at = t0 + (j * 1000) / rate;
    while (now() < at) await sleep(Math.max(0, Math.min(5, at - now())));
    const started = now();
    let first = true;
    handles.push(
      sys.drainConnect({
        url,
        device: j,
        prefix,
        onMessage(tag) {
          const tt = now();
          if (first) {
            first = false;
            firstWait.push(tt - started);
          }
          received++;
          if (Math.floor(tag / perDevice) !== j) misrouted++;
          if (tag < total && seen[tag]++ > 0) duplicates++;
          else if (tag < total) unique++;
          last = tt;
          if (unique === total) done();
        },
      }),
    );
  }
  const timedOut = await Promise.race([finished.then(() => false), sleep(timeoutMs).then(() => true)]);
  const settled = await Promise.allSettled(handles);
  await Promise.all(settled.map((s) => (s.status === 'fulfilled' ? s.value.close() : undefined)));
  const [p50, p99] = firstWait.percentiles([50, 99]);
  return {
    drain_msgs_per_s: (unique / Math.max(1, last - t0)) * 1000,
    drain_total_s: (last - t0) / 1000,
    first_msg_p50_ms: p50,
    first_msg_p99_ms: p99,
    duplicates,
    missing: total - unique,
    misrouted,
    setup_s: setupMs / 1000,
    ...(timedOut ? { timed_out: 1 } : {}),
    ...(received > unique + duplicates ? { out_of_range: received - unique - duplicates } : {}),
  };
}
