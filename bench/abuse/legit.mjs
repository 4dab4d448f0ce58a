/* global fetch, AbortSignal */
// The legit user beside an attack, in its own process: alice sends to bob at a steady pace over
// the real client library, and every delivery's latency (alice's send call → bob's `message`
// event) is a sample. A probe also opens a fresh connection (hello → welcome) and fetches
// `/healthz` twice a second, because some attacks hurt newcomers rather than open sessions.
//   requests: start {url, httpUrl, secret, rate}, measure {ms} → {p50, p99, …}
import { createClient } from 'postbox/client';
import { memoryClientStore } from 'postbox/client/memory';
import { websocketClientTransport } from 'postbox/transport/websocket';
import { onRequest, sleep } from '../lib/child.mjs';
import { Samples } from '../lib/stats.mjs';
import { openPeer, token } from './lib/wire-peer.mjs';

let alice;
let bob;
let window; // the samples of the measurement in progress
let probes;
const sentAt = new Map();
let timer;

function open(url, cred) {
  const client = createClient({
    transport: websocketClientTransport({ url }),
    store: memoryClientStore(),
    credentials: cred,
  });
  client.on('error', () => {});
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('legit client: no welcome in 20 s')), 20_000);
    client.on('connection', (state) => {
      if (state === 'open') {
        clearTimeout(t);
        resolve(client);
      }
    });
  });
}

async function probe(url, httpUrl, secret) {
  while (probes.running) {
    const t0 = performance.now();
    try {
      const p = await openPeer(url, token(secret, 'newcomer', 'p0'), { timeoutMs: 5000 });
      p.close();
      probes.connect.push(performance.now() - t0);
    } catch {
      probes.connectFailures++;
    }
    try {
      const r = await fetch(`${httpUrl}/healthz`, { signal: AbortSignal.timeout(5000) });
      if (!r.ok) probes.healthFailures++;
    } catch {
      probes.healthFailures++;
    }
    await sleep(500);
  }
}

onRequest('start', async ({ url, httpUrl, secret, rate }) => {
  alice = await open(url, token(secret, 'alice', 'phone'));
  bob = await open(url, token(secret, 'bob', 'phone'));
  bob.on('message', (m) => {
    const tag = new DataView(m.body.buffer, m.body.byteOffset, 4).getUint32(0, true);
    const t = sentAt.get(tag);
    if (t === undefined) return;
    sentAt.delete(tag);
    window?.samples.push(performance.now() - t);
  });
  const body = new Uint8Array(100);
  const view = new DataView(body.buffer);
  let tag = 0;
  timer = setInterval(() => {
    view.setUint32(0, ++tag, true);
    sentAt.set(tag, performance.now());
    if (window) window.sent++;
    alice.send('bob', body).catch(() => {});
  }, 1000 / rate);
  probes = { running: true, connect: new Samples(), connectFailures: 0, healthFailures: 0 };
  void probe(url, httpUrl, secret);
  return {};
});

onRequest('measure', async ({ ms }) => {
  window = { samples: new Samples(), sent: 0 };
  probes.connect = new Samples();
  probes.connectFailures = 0;
  probes.healthFailures = 0;
  await sleep(ms);
  const w = window;
  window = undefined;
  // Deliveries still on their way count as late, not lost: give them a moment.
  const stale = [...sentAt.entries()].filter(([, t]) => performance.now() - t > 10_000).length;
  const [p50, p99, max] = w.samples.percentiles([50, 99, 100]);
  const [c50, c99] = probes.connect.percentiles([50, 99]);
  return {
    n: w.samples.length,
    sent: w.sent,
    p50,
    p99,
    max,
    undelivered10s: stale,
    connects: probes.connect.length,
    connectP50: c50,
    connectP99: c99,
    connectFailures: probes.connectFailures,
    healthFailures: probes.healthFailures,
  };
});

onRequest('close', async () => {
  clearInterval(timer);
  probes.running = false;
  await Promise.all([alice?.close(), bob?.close()]);
  return {};
});
