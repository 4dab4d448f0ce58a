// Child process: the load of the multinode scenario (not pinned, like everything in it).
//   node bench/multinode/load.mjs '{"mode":"saturation"|"failover","urls":[…],"params":{…}}'
//
// `n` full client engines (createClient, memory client store, default options) as in
// bench/systems/postbox.client.mjs, each a user `u<i>` with device `d` (`--insecure-dev-auth`
// credentials `u<i>/d`). Client i starts on gateway i mod (number of URLs) and sends to client
// i + n/2, which with 200 clients and 3 gateways is always on another gateway: every message
// crosses nodes. With `pairing: 'same'` (saturation only) client i starts on gateway
// (i mod n/2) mod k instead, the gateway of its peer: no message crosses nodes, and each node
// carries the same share of the load as with crossing pairs (what a cross-node message costs is
// the difference). Clients find the gateways by themselves: the WebSocket client transport's URL
// list (placed start, failover to a random other gateway) when this build has it, else a function moving to
// the next gateway on every connect. Before either mode, every client sends one message to its
// peer and all must arrive (`prime`): a conversation's first message is not a steady state.
//
// saturation: each client keeps `window` messages in flight (a message leaves the window when its
//   recipient has it); after `warmupMs`, `measureMs` of messages delivered and acked per second
//   and the latencies of the messages sent inside the window (as bench/scenarios/saturation.mjs).
//   The orchestrator samples CPU at the marks `start` and `end`.
// failover: open loop at `rate` msg/s (round robin over the clients, latency from the scheduled
//   send time). After `beforeMs` the mark `kill` has the orchestrator SIGKILL gateway
//   `killIndex`; every client that was on it must come back `open` on another gateway by itself.
//   Sending goes on for `afterMs` after the last one is back, then stops, and every message must
//   arrive: duplicates, missing, reordered (per sender), never acked are counted.
import { performance } from 'node:perf_hooks';
import { createClient } from 'postbox/client';
import { memoryClientStore } from 'postbox/client/memory';
import * as wsTransport from 'postbox/transport/websocket';
import { WebSocket } from 'ws';
import { fail, mark, sleep, tell } from '../lib/child.mjs';
import { Samples } from '../lib/stats.mjs';
import { openMany } from '../systems/common.mjs';

/** A `random` whose first draw picks gateway `home` of `k`, and Math.random after that. */
function placeThen(home, k) {
  let first = true;
  return () => {
    if (!first) return Math.random();
    first = false;
    return (home + 0.5) / k;
  };
}

const websocketClientTransport =
  wsTransport.websocketClientTransport ??
  (await import('postbox/transport/websocket-client')).websocketClientTransport;

/** Whether this build's client transport takes a list of gateway URLs (it rejects an empty one). */
const urlListSupported = (() => {
  try {
    websocketClientTransport({ url: [] });
    return false;
  } catch {
    return true;
  }
})();

const now = () => performance.now();
const PS = [50, 99, 99.9];
/** Tags from here on are priming messages, outside every measurement. */
const PRIME = 0xffff0000;
const tagOfBody = (b) => new DataView(b.buffer, b.byteOffset, b.byteLength).getUint32(0, true);

/**
 * The clients. `on.deliver(to, tag)`, `on.ack(from, tag)`, `on.status(from, tag)` (✓✓),
 * `on.state(i, state)` after the first `open`. Each client's current gateway is `gateway[i]`
 * (index into `urls`, from the URL its last socket was opened to).
 */
async function connectAll({ urls, n, size, pairing }, on) {
  const k = urls.length;
  let primedCount = 0;
  let allPrimed;
  const primed = () => {
    if (++primedCount === n) allPrimed();
  };
  const gateway = new Int32Array(n).fill(-1);
  const tagMaps = [];
  const clients = await openMany(n, (i) => {
    const home = pairing === 'same' ? (i % (n / 2)) % k : i % k;
    // Records the URL each socket of client i is opened to: which gateway it is on.
    class Dial extends WebSocket {
      constructor(url, protocols, options) {
        super(url, protocols, options);
        gateway[i] = urls.indexOf(String(url));
      }
    }
    let connects = 0;
    const url = urlListSupported ? urls : () => urls[(home + connects++) % k];
    const client = createClient({
      transport: websocketClientTransport({
        url,
        // The first draw places client i on gateway i mod k; later draws (where to fail over
        // to) are the transport's own random choice, as in an app.
        ...(urlListSupported ? { random: placeThen(home, k) } : {}),
        WebSocket: Dial,
      }),
      store: memoryClientStore(),
      credentials: `u${i}/d`,
    });
    client.on('error', () => {});
    const tags = new Map();
    tagMaps[i] = tags;
    client.on('status', (s) => {
      const tag = tags.get(s.id);
      if (tag === undefined) return;
      if (tag >= PRIME) {
        if (s.status === 'delivered' || s.status === 'read') tags.delete(s.id);
        return;
      }
      if (s.status === 'sent') on.ack(i, tag);
      else if (s.status === 'delivered' || s.status === 'read') {
        tags.delete(s.id);
        on.status?.(i, tag);
      } else if (s.status === 'failed') on.failed?.(i, tag);
    });
    client.on('message', (m) => {
      const tag = tagOfBody(m.body);
      if (tag >= PRIME) primed();
      else on.deliver(i, tag);
    });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`u${i}: not open in 30 s`)), 30_000);
      const first = (state, error) => {
        if (state === 'open') {
          clearTimeout(timer);
          client.off('connection', first);
          client.on('connection', (s) => on.state?.(i, s));
          resolve(client);
        } else if (state === 'closed') {
          clearTimeout(timer);
          reject(error ?? new Error(`u${i}: closed`));
        }
      };
      client.on('connection', first);
    });
  });
  const body = new Uint8Array(size);
  const view = new DataView(body.buffer);
  const send = (i, to, tag) => {
    view.setUint32(0, tag, true);
    // `send` copies the body when called; not awaited (an app's send button would not wait).
    void clients[i].send(`u${to}`, body).then((id) => tagMaps[i].set(id, tag));
  };
  return {
    gateway,
    clients,
    send,
    /**
     * One message from every client to its peer, resolving (with the time it took) when all have
     * arrived: the first message of each conversation is the slow one (the devices' first inbox
     * entries, the contact rows), and it is not what a steady state costs.
     */
    async prime(timeoutMs = 60_000) {
      const t = now();
      const done = new Promise((resolve) => (allPrimed = resolve));
      for (let i = 0; i < n; i++) send(i, (i + n / 2) % n, PRIME + i);
      const ok = await Promise.race([done.then(() => true), sleep(timeoutMs).then(() => false)]);
      if (!ok)
        throw new Error(`priming: ${primedCount} of ${n} first messages arrived in ${timeoutMs / 1000} s`);
      return now() - t;
    },
    close: () => Promise.all(clients.map((c) => c.close())),
  };
}

/** Clients whose recipient is on another gateway, of those whose recipient is known. */
function crossNode(gateway, n) {
  let cross = 0;
  for (let i = 0; i < n; i++) if (gateway[i] !== gateway[(i + n / 2) % n]) cross++;
  return cross / n;
}

function addPercentiles(out, name, s) {
  if (s.length === 0) return;
  const [p50, p99, p999] = s.percentiles(PS);
  Object.assign(out, { [`${name}_p50_ms`]: p50, [`${name}_p99_ms`]: p99, [`${name}_p999_ms`]: p999 });
}

// ------------------------------------------------------------------------------- saturation

async function saturation(urls, p) {
  const { n, window: W, size, warmupMs, measureMs, pairing } = p;
  const sentAt = new Samples(1 << 20);
  const lat = { delivered: new Samples(), acked: new Samples(), status: new Samples() };
  const inflight = new Int32Array(n);
  const seq = new Int32Array(n);
  let tStart = Infinity;
  let tEnd = Infinity;
  let delivered = 0;
  let acked = 0;
  let stopping = false;
  let load;
  const inSendWindow = (tag) => {
    const s = sentAt.get(tag);
    return s >= tStart && s < tEnd ? s : undefined;
  };
  const inWindow = (t) => t >= tStart && t < tEnd;
  function pump(i) {
    while (!stopping && inflight[i] < W) {
      const tag = seq[i]++ * n + i;
      sentAt.set(tag, now());
      inflight[i]++;
      load.send(i, (i + n / 2) % n, tag);
    }
  }
  load = await connectAll(
    { urls, n, size, pairing },
    {
      deliver(_to, tag) {
        const t = now();
        const i = tag % n;
        inflight[i]--;
        if (inWindow(t)) delivered++;
        const s = inSendWindow(tag);
        if (s !== undefined) lat.delivered.push(t - s);
        pump(i);
      },
      ack(_i, tag) {
        const t = now();
        if (inWindow(t)) acked++;
        const s = inSendWindow(tag);
        if (s !== undefined) lat.acked.push(t - s);
      },
      status(_i, tag) {
        const s = inSendWindow(tag);
        if (s !== undefined) lat.status.push(now() - s);
      },
    },
  );
  const cross = crossNode(load.gateway, n);
  const primeMs = await load.prime();
  for (let i = 0; i < n; i++) pump(i);
  await sleep(warmupMs);
  await mark('start');
  const c0 = process.cpuUsage();
  tStart = now();
  await sleep(measureMs);
  tEnd = now();
  const c1 = process.cpuUsage();
  await mark('end');
  stopping = true;
  // Let the window's last messages arrive so their latencies count. At a few hundred messages a
  // second the n × window in flight take several seconds (saturation.mjs waits 5 s at most).
  const deadline = now() + 15_000;
  while (inflight.some((x) => x > 0) && now() < deadline) await sleep(20);
  await load.close();
  const secs = (tEnd - tStart) / 1000;
  const out = {
    msgs_per_s: delivered / secs,
    acked_per_s: acked / secs,
    delivered_in_window: delivered,
    window_s: secs,
    load_cpu_pct: (100 * (c1.user + c1.system - c0.user - c0.system)) / 1e6 / secs,
    cross_node_fraction: cross,
    first_messages_ms: primeMs,
  };
  for (const [name, s] of Object.entries(lat)) addPercentiles(out, name, s);
  return out;
}

// ------------------------------------------------------------------------------- failover

async function failover(urls, p) {
  const { n, size, rate, beforeMs, afterMs, killIndex, reconnectTimeoutMs, drainTimeoutMs } = p;
  const sentAt = new Samples(1 << 16);
  const deliveredAt = new Samples(1 << 16); // 0: not yet
  const ackedAt = new Samples(1 << 16);
  const seen = new Uint8Array(1 << 22); // tag = schedule position: 4M covers over an hour at 1k/s
  const lastSeq = new Int32Array(n).fill(-1);
  const seq = new Int32Array(n);
  let sent = 0;
  let delivered = 0;
  let acked = 0;
  let duplicates = 0;
  let reordered = 0;
  let failed = 0;
  let tKill = Infinity;
  // Clients on the killed gateway at the kill, when each dropped and came back, and where.
  let victims;
  const downAt = new Float64Array(n);
  const upAt = new Float64Array(n);
  let collateral = 0; // clients of surviving gateways that dropped after the kill
  let allUp;
  const allUpP = new Promise((r) => (allUp = r));
  let waitingFor = 0;

  const load = await connectAll(
    { urls, n, size },
    {
      deliver(_to, tag) {
        const t = now();
        if (seen[tag]++ > 0) {
          duplicates++;
          return;
        }
        delivered++;
        deliveredAt.set(tag, t);
        const i = tag % n;
        const s = Math.floor(tag / n);
        if (s < lastSeq[i]) reordered++;
        else lastSeq[i] = s;
      },
      ack(_i, tag) {
        if (!ackedAt.get(tag)) {
          ackedAt.set(tag, now());
          acked++;
        }
      },
      failed() {
        failed++;
      },
      state(i, state) {
        if (now() < tKill) return;
        if (!victims?.has(i)) {
          if (state === 'backoff') collateral++;
          return;
        }
        if (state !== 'open' && downAt[i] === 0) downAt[i] = now();
        if (state === 'open' && upAt[i] === 0 && downAt[i] !== 0) {
          upAt[i] = now();
          if (--waitingFor === 0) allUp(now());
        }
      },
    },
  );
  const cross = crossNode(load.gateway, n);
  const primeMs = await load.prime();

  // Open loop: message k is due at start + k/rate, from client k mod n to client k mod n + n/2.
  let sending = true;
  const start = now();
  const loop = new Promise((resolve) => {
    const tick = () => {
      const due = Math.floor(((now() - start) * rate) / 1000);
      while (sent < due) {
        const i = sent % n;
        const tag = seq[i]++ * n + i;
        sentAt.set(tag, start + (sent * 1000) / rate);
        sent++;
        load.send(i, (i + n / 2) % n, tag);
      }
      if (sending) setTimeout(tick, 1);
      else resolve();
    };
    tick();
  });

  await sleep(beforeMs);
  victims = new Set();
  for (let i = 0; i < n; i++) if (load.gateway[i] === killIndex) victims.add(i);
  waitingFor = victims.size;
  const ackedBeforeKill = acked;
  const sentBeforeKill = sent;
  // The orchestrator answers with the moment it sent SIGKILL (epoch ms, high resolution).
  tKill = now(); // until the answer: nothing before this moment counts as a reaction
  const killed = await mark('kill', { index: killIndex });
  tKill = killed.at - performance.timeOrigin;
  const tAllUp = await Promise.race([allUpP, sleep(reconnectTimeoutMs).then(() => undefined)]);
  await sleep(afterMs);
  sending = false;
  await loop;
  const tStop = now();
  const sentTotal = sent;
  // Drain: every message sent must arrive (and be acked).
  const deadline = now() + drainTimeoutMs;
  while ((delivered < sentTotal || acked < sentTotal) && now() < deadline) await sleep(20);
  const tDrained = now();

  // What arrived when.
  let missing = 0;
  let missingAcked = 0;
  let lastPreKill = 0;
  let lastOutage = 0;
  const steady = new Samples();
  const outage = new Samples();
  const cutoff = tAllUp ?? tStop;
  // Message k of the schedule is sent by client k mod n as its (k div n)-th: its tag is k.
  for (let tag = 0; tag < sentTotal; tag++) {
    const s = sentAt.get(tag);
    const d = deliveredAt.get(tag);
    if (!d) {
      missing++;
      if (ackedAt.get(tag)) missingAcked++;
      continue;
    }
    if (s < tKill) {
      lastPreKill = Math.max(lastPreKill, d);
      // Steady state: the last 60% before the kill (the first 40% warm the pools and the JIT).
      if (s >= start + beforeMs * 0.4) steady.push(d - s);
    } else if (s < cutoff) {
      lastOutage = Math.max(lastOutage, d);
      outage.push(d - s);
    }
  }
  const ups = new Samples(victims.size);
  let elsewhere = 0;
  const landed = urls.map(() => 0); // where the killed gateway's clients came back
  for (const i of victims) {
    if (upAt[i]) ups.push(upAt[i] - tKill);
    if (upAt[i] && load.gateway[i] !== killIndex && load.gateway[i] >= 0) elsewhere++;
    if (upAt[i] && load.gateway[i] >= 0) landed[load.gateway[i]]++;
  }
  await load.close();
  const [upP50] = ups.percentiles([50]);
  const out = {
    clients_on_killed_node: victims.size,
    reconnected: ups.length,
    reconnected_elsewhere: elsewhere,
    reconnect_p50_ms: upP50,
    reconnect_all_ms: tAllUp === undefined ? undefined : tAllUp - tKill,
    drained_prekill_ms: lastPreKill ? lastPreKill - tKill : undefined,
    drained_ms: tAllUp === undefined ? undefined : Math.max(lastPreKill, lastOutage) - tKill,
    messages: sentTotal,
    sent_before_kill: sentBeforeKill,
    acked_before_kill: ackedBeforeKill,
    duplicates,
    missing,
    missing_acked: missingAcked,
    unacked: sentTotal - acked,
    reordered,
    failed,
    collateral_drops: collateral,
    cross_node_fraction: cross,
    final_wait_s: (tDrained - tStop) / 1000,
    first_messages_ms: primeMs,
    landed,
  };
  addPercentiles(out, 'steady_delivered', steady);
  addPercentiles(out, 'outage_delivered', outage);
  const [, , , max] = outage.percentiles([50, 99, 99.9, 100]);
  if (max !== undefined) out.outage_delivered_max_ms = max;
  return out;
}

try {
  const { mode, urls, params } = JSON.parse(process.argv[2]);
  const result = mode === 'failover' ? await failover(urls, params) : await saturation(urls, params);
  await tell({ type: 'result', result: { ...result, url_list: urlListSupported ? 1 : 0 } });
  process.exit(0);
} catch (e) {
  fail(e);
}
