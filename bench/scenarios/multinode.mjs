// multinode (solo): postbox as several gateway nodes over PostgreSQL + Redis (issue 7), beside
// one node on PostgreSQL, in one run, with the same load. This process orchestrates: it starts
// `postbox serve` nodes (bench/multinode/serve.mjs: the CLI as a user runs it) and a load process
// (bench/multinode/load.mjs: full client engines), reads every node's CPU from /proc, and
// SIGKILLs a node when the load asks. Nothing is pinned (see `unpin`).
//
// Per round:
//   1node      `postbox serve --store postgres://…` (no cluster), all clients on it
//   3nodes     three `postbox serve --store postgres://… --cluster redis://… --node-id nK` on one
//              schema and prefix; client i starts on node i mod 3 and sends to client i + n/2,
//              which is on another node, so every message crosses nodes
//   3nodes-same  the same three nodes and load, but client i starts on its peer's node: no message
//              crosses nodes. Three nodes ÷ this is what crossing costs (issue 19's target):
//              3nodes ÷ 1node also counts that each of three nodes commits a third of the
//              messages per batch (its statements spread over fewer messages)
//   both: n clients, 100-byte messages; first one message per conversation (its first message
//   creates rows a steady state does not: timed apart, as first_messages_ms), then `window` in
//   flight per client; messages/s delivered and acked, latencies, and CPU per message: the nodes' (sum, from /proc/PID/stat), the nodes'
//   PostgreSQL backends' (found by application_name in pg_stat_activity) and Redis's (the whole
//   redis-server process, shared with anything else using it)
//   failover   three nodes under an open-loop load (`rate` msg/s); one node is SIGKILLed; its
//              clients come back on the others by themselves (client defaults: backoff 500 ms
//              base, 30 s max, with jitter); time until all are `open` again, time until every
//              message sent before that moment is delivered, duplicates/missing/reordered
//
// Every measurement gets a fresh schema and Redis prefix, dropped/deleted afterwards, and its
// processes are stopped (killed if they do not stop). PostgreSQL (POSTBOX_PG_URL, default
// postgres://postgres@127.0.0.1:5432/test) or Redis (POSTBOX_REDIS_URL, default
// redis://127.0.0.1:6379) not answering: the scenario reports it is skipped and why.
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import pg from 'pg';
import { procCpu, startNode } from '../lib/proc.mjs';
import { pgUnreachable, redact } from '../lib/services.mjs';
import { human } from '../lib/stats.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const SERVE = path.join(here, '..', 'multinode', 'serve.mjs');
const LOAD = path.join(here, '..', 'multinode', 'load.mjs');
const PG_URL = process.env.POSTBOX_PG_URL ?? 'postgres://postgres@127.0.0.1:5432/test';
const REDIS_URL = process.env.POSTBOX_REDIS_URL ?? 'redis://127.0.0.1:6379';
const ONE = 'postbox-pg-1node';
const THREE = 'postbox-pg-3nodes';
/** Three nodes as THREE, each client on its peer's node: the same deployment and load, nothing crossing. */
const SAME = 'postbox-pg-3nodes-same';
const NODES = 3;
/**
 * Nothing is pinned here: the nodes, the load, PostgreSQL and Redis all share the machine's cores
 * as the OS schedules them. Three nodes pinned to one core would mostly measure how long each of
 * a transaction's round trips waits for its node to be scheduled. The bench starts this process
 * pinned to the server core and children inherit that, so it widens its own affinity first.
 */
const CORES = os.cpus().length; // not availableParallelism(): in a pinned process that is 1
function unpin() {
  if (process.platform !== 'linux') return true;
  const r = spawnSync('taskset', ['-a', '-p', '-c', `0-${CORES - 1}`, String(process.pid)], {
    stdio: 'ignore',
  });
  return r.status === 0;
}

/** A URL with these query parameters set. */
function withParams(url, params) {
  const u = new URL(url);
  for (const [k, v] of Object.entries(params)) u.searchParams.set(k, v);
  return u.toString();
}

/** A Redis connection that fails fast instead of retrying (probes and clean-ups). */
function redis() {
  const r = new Redis(REDIS_URL, {
    lazyConnect: true,
    connectTimeout: 2000,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
  });
  r.on('error', () => {});
  return r;
}

/** Why PostgreSQL or Redis cannot be used, or undefined when both can. */
async function unavailable() {
  const pgReason = await pgUnreachable(PG_URL);
  if (pgReason) return pgReason;
  const r = redis();
  let cause; // ioredis rejects with "Connection is closed."; its 'error' event says why
  r.on('error', (e) => (cause ??= e));
  try {
    await r.connect();
    await r.ping();
  } catch (e) {
    return `Redis at ${redact(REDIS_URL)} is not reachable (${(cause ?? e).message || e})`;
  } finally {
    r.disconnect();
  }
  return undefined;
}

/** Pids of processes whose /proc/PID/comm is `comm`. */
function pidsOf(comm) {
  const out = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (readFileSync(`/proc/${d}/comm`, 'utf8').trim() === comm) out.push(Number(d));
    } catch {
      // raced with an exiting process
    }
  }
  return out;
}

const cpuUs = (pid) => {
  const c = procCpu(pid);
  return c === undefined ? undefined : c.user + c.system;
};

// ------------------------------------------------------------------------------- a deployment

/**
 * Starts `count` gateway nodes on a fresh schema (and, with `cluster`, a fresh Redis prefix).
 * The nodes' PostgreSQL connections carry an application_name of their own, so their backends
 * can be found (and their CPU read) among everything else the server runs.
 */
async function deploy(count, cluster, admin) {
  const id = randomBytes(5).toString('hex');
  const dep = {
    schema: `pbbench_mn_${id}`,
    prefix: `pbbench-mn-${id}:`,
    app: `pbbench-mn-${id}`,
    nodes: [],
  };
  const store = withParams(PG_URL, { schema: dep.schema, application_name: dep.app });
  const clusterUrl = withParams(REDIS_URL, { prefix: dep.prefix });
  const opening = await Promise.allSettled(
    Array.from({ length: count }, async (_, k) => {
      const child = startNode(SERVE, [
        'serve',
        '--port',
        '0',
        '--insecure-dev-auth',
        '--store',
        store,
        ...(cluster ? ['--cluster', clusterUrl, '--node-id', `n${k + 1}`] : []),
        // Every bench client comes from 127.0.0.1; real ones come from many addresses.
        '--max-conns-per-address',
        '100000',
        '--log-level',
        'warn',
      ]);
      dep.nodes[k] = { child, pid: child.pid, url: undefined };
      dep.nodes[k].url = (await child.next('ready', 30_000)).url;
    }),
  );
  const bad = opening.find((r) => r.status === 'rejected');
  if (bad) {
    await teardown(dep, admin);
    throw bad.reason;
  }
  return dep;
}

/** CPU (µs) of the nodes (each), of their PostgreSQL backends (by pid) and of Redis. */
async function cpuSnapshot(dep, admin, redisPids) {
  const { rows } = await admin.query('SELECT pid FROM pg_stat_activity WHERE application_name = $1', [
    dep.app,
  ]);
  const pgCpu = new Map();
  for (const { pid } of rows) {
    const c = cpuUs(pid);
    if (c !== undefined) pgCpu.set(pid, c);
  }
  return {
    nodes: dep.nodes.map((n) => cpuUs(n.pid) ?? 0),
    pg: pgCpu,
    redis: redisPids.reduce((a, pid) => a + (cpuUs(pid) ?? 0), 0),
  };
}

/** CPU seconds between two snapshots: per node, and PostgreSQL backends (new ones count whole). */
function cpuDelta(a, b) {
  let pgUs = 0;
  for (const [pid, c] of b.pg) pgUs += c - (a.pg.get(pid) ?? 0);
  return {
    nodes: b.nodes.map((c, k) => (c - a.nodes[k]) / 1e6),
    pg: pgUs / 1e6,
    redis: (b.redis - a.redis) / 1e6,
  };
}

/** Stops the nodes (gracefully, killed after 3 s), drops the schema, deletes the Redis keys. */
async function teardown(dep, admin) {
  await Promise.all(dep.nodes.map((n) => n?.child.stop(3000)));
  let lastError;
  for (let attempt = 0; attempt < 4; attempt++) {
    try {
      // A backend of a killed node may hold a lock until PostgreSQL notices its client is gone.
      await admin.query("SET lock_timeout = '5s'");
      await admin.query(`DROP SCHEMA IF EXISTS "${dep.schema}" CASCADE`);
      lastError = undefined;
      break;
    } catch (e) {
      lastError = e;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
  const r = redis();
  try {
    await r.connect();
    let cursor = '0';
    do {
      const [next, keys] = await r.scan(cursor, 'MATCH', `${dep.prefix}*`, 'COUNT', 1000);
      cursor = next;
      if (keys.length > 0) await r.del(...keys);
    } while (cursor !== '0');
  } finally {
    r.disconnect();
  }
  if (lastError) throw new Error(`could not drop schema ${dep.schema}: ${lastError.message}`);
}

/**
 * One measurement: a fresh deployment of `count` nodes, the load process in `mode`, CPU samples
 * at its marks, the node it names SIGKILLed at its `kill` mark.
 */
async function measure(ctx, { count, cluster, mode, params }) {
  const dep = await deploy(count, cluster, ctx.admin);
  let load;
  try {
    const snaps = {};
    const wall = {};
    let killed;
    load = startNode(LOAD, [
      JSON.stringify({ mode, urls: dep.nodes.map((n) => n.url), params: { ...ctx.load, ...params } }),
    ]);
    load.onMessage = async (m) => {
      if (m.type !== 'mark') return;
      const reply = { type: 'marked', mark: m.mark };
      try {
        if (m.name === 'kill') {
          const node = dep.nodes[m.data.index];
          reply.at = performance.timeOrigin + performance.now();
          killed = { index: m.data.index, url: node.url };
          void node.child.kill(); // SIGKILL: no close handshake, no goodbye to Redis
        } else {
          snaps[m.name] = await cpuSnapshot(dep, ctx.admin, ctx.redisPids);
          wall[m.name] = performance.now();
        }
      } catch (e) {
        reply.error = String(e);
      }
      load.send(reply);
    };
    const r = (await load.next('result', ctx.timeoutMs)).result;
    if (snaps.start && snaps.end) {
      r.cpu = cpuDelta(snaps.start, snaps.end);
      r.cpu.seconds = (wall.end - wall.start) / 1000;
    }
    if (killed) r.killed = killed;
    return r;
  } finally {
    await load?.kill();
    await teardown(dep, ctx.admin);
  }
}

// ------------------------------------------------------------------------------- figures

const sum = (a) => a.reduce((x, y) => x + y, 0);

/** The saturation figures of one deployment, CPU per message in µs. */
function saturationFigures(r, withRedis) {
  const msgs = r.delivered_in_window;
  const out = {
    msgs_per_s: r.msgs_per_s,
    acked_per_s: r.acked_per_s,
    delivered_p50_ms: r.delivered_p50_ms,
    delivered_p99_ms: r.delivered_p99_ms,
    acked_p50_ms: r.acked_p50_ms,
    acked_p99_ms: r.acked_p99_ms,
    status_p50_ms: r.status_p50_ms,
    status_p99_ms: r.status_p99_ms,
    load_cpu_pct: r.load_cpu_pct,
    first_messages_ms: r.first_messages_ms,
  };
  if (r.cpu && msgs > 0) {
    const nodes = sum(r.cpu.nodes);
    out.server_cpu_pct = (100 * nodes) / r.cpu.seconds;
    out.msgs_per_server_cpu_s = msgs / nodes;
    out.server_cpu_us_per_msg = (nodes * 1e6) / msgs;
    out.pg_cpu_us_per_msg = (r.cpu.pg * 1e6) / msgs;
    out.pg_cpu_pct = (100 * r.cpu.pg) / r.cpu.seconds;
    if (withRedis) {
      out.redis_cpu_us_per_msg = (r.cpu.redis * 1e6) / msgs;
      out.redis_cpu_pct = (100 * r.cpu.redis) / r.cpu.seconds;
    }
    out.total_cpu_us_per_msg = ((nodes + r.cpu.pg + (withRedis ? r.cpu.redis : 0)) * 1e6) / msgs;
  }
  return out;
}

const UNITS = {
  server_cpu_us_per_msg: 'µs',
  pg_cpu_us_per_msg: 'µs',
  redis_cpu_us_per_msg: 'µs',
  total_cpu_us_per_msg: 'µs',
  acked_per_s: 'msg/s',
  cross_node_fraction: 'fraction',
  clients_on_killed_node: 'clients',
  reconnected: 'clients',
  reconnected_elsewhere: 'clients',
  collateral_drops: 'count',
  messages: 'count',
  sent_before_kill: 'count',
  acked_before_kill: 'count',
  final_wait_s: 's',
};

const FAILOVER_KEYS = [
  'clients_on_killed_node',
  'reconnected_elsewhere',
  'reconnect_p50_ms',
  'reconnect_all_ms',
  'drained_prekill_ms',
  'drained_ms',
  'steady_delivered_p50_ms',
  'steady_delivered_p99_ms',
  'outage_delivered_p50_ms',
  'outage_delivered_p99_ms',
  'outage_delivered_max_ms',
  'messages',
  'acked_before_kill',
  'duplicates',
  'missing',
  'missing_acked',
  'unacked',
  'reordered',
  'failed',
  'collateral_drops',
];

const ms = (v) => (v === undefined ? '–' : `${human(v)} ms`);
const us = (v) => (v === undefined ? '–' : `${human(v)} µs`);
const times = (a, b) => (a && b ? `${human(a / b)}×` : '–');

// ------------------------------------------------------------------------------- the scenario

export async function run(params) {
  const why = await unavailable();
  if (why) return { skipped: why };
  const loadavg = os.loadavg()[0];
  const unpinned = unpin();
  const round = params.round ?? 0;
  // `parts`: a subset to run (trying things out); the bench runs all three.
  const parts = params.parts ?? [ONE, THREE, SAME, 'failover'];
  const admin = new pg.Client({ connectionString: PG_URL, application_name: 'pbbench-mn-admin' });
  await admin.connect();
  const ctx = {
    admin,
    redisPids: pidsOf('redis-server'),
    load: { n: params.n, size: params.size },
    timeoutMs: params.measureTimeoutMs,
  };
  const results = [];
  const errors = [];
  const add = (scenario, system, metric, value) => {
    if (value === undefined || value === null || Number.isNaN(value)) return;
    results.push({ scenario, system, metric, value, ...(UNITS[metric] ? { unit: UNITS[metric] } : {}) });
  };
  const sat = {};
  let fo;
  let urlList;
  try {
    // Alternate which deployment goes first, so a drift of the shared machine spreads over both.
    const systems = [ONE, THREE, SAME];
    const order = [0, 1, 2].map((j) => systems[(round + j) % 3]).filter((s) => parts.includes(s));
    for (const system of order) {
      const three = system !== ONE;
      try {
        const r = await measure(ctx, {
          count: three ? NODES : 1,
          cluster: three,
          mode: 'saturation',
          params: system === SAME ? { ...params.saturation, pairing: 'same' } : params.saturation,
        });
        urlList = r.url_list;
        sat[system] = { raw: r, fig: saturationFigures(r, three) };
        for (const [k, v] of Object.entries(sat[system].fig)) add('multinode', system, k, v);
        if (three) {
          add('multinode', system, 'cross_node_fraction', r.cross_node_fraction);
          const want = system === THREE ? 1 : 0;
          if (r.cross_node_fraction !== want) {
            errors.push(
              `${system}: ${(r.cross_node_fraction * 100).toFixed(0)}% of clients had their peer on another node (want ${want * 100}%)`,
            );
          }
        }
      } catch (e) {
        errors.push(`${system}: ${String(e.message ?? e).split('\n')[0]}`);
      }
    }
    for (const [over, system] of [
      [ONE, '3nodes/1node'],
      [SAME, '3nodes/3nodes-same'],
    ]) {
      if (!sat[THREE] || !sat[over]) continue;
      const a = sat[THREE].fig;
      const b = sat[over].fig;
      for (const k of [
        'msgs_per_s',
        'delivered_p50_ms',
        'delivered_p99_ms',
        'server_cpu_us_per_msg',
        'pg_cpu_us_per_msg',
        'total_cpu_us_per_msg',
      ]) {
        if (a[k] && b[k])
          results.push({ scenario: 'multinode-ratio', system, metric: k, value: a[k] / b[k], unit: 'ratio' });
      }
    }
    if (parts.includes('failover'))
      try {
        fo = await measure(ctx, {
          count: NODES,
          cluster: true,
          mode: 'failover',
          params: { ...params.failover, killIndex: round % NODES },
        });
        urlList ??= fo.url_list;
        for (const k of FAILOVER_KEYS) add('multinode-failover', THREE, k, fo[k]);
        if (fo.reconnect_all_ms === undefined) {
          errors.push(
            `failover: ${fo.clients_on_killed_node - fo.reconnected} of ${fo.clients_on_killed_node} clients of the killed node not back within ${params.failover.reconnectTimeoutMs / 1000} s`,
          );
        }
        for (const k of ['duplicates', 'missing', 'unacked', 'reordered', 'failed']) {
          if (fo[k] > 0) errors.push(`failover: ${k} ${fo[k]} (must be 0)`);
        }
        if (fo.reconnected_elsewhere < fo.reconnected) {
          errors.push(
            `failover: ${fo.reconnected - fo.reconnected_elsewhere} clients reconnected to the killed node's URL`,
          );
        }
      } catch (e) {
        errors.push(`failover: ${String(e.message ?? e).split('\n')[0]}`);
      }
  } finally {
    await admin.end().catch(() => undefined);
  }

  // A readable block per round; the medians over rounds are in the bench's tables.
  const lines = [];
  const cores = `${CORES} cores: every node, PostgreSQL, Redis and the load share them (${unpinned ? 'nothing pinned' : 'could not widen this process’s CPU affinity: the children share its cores'})`;
  lines.push(`multinode — ${cores}; load average ${loadavg.toFixed(1)} at the start of the round`);
  const row = (name, f) =>
    `  ${name.padEnd(18)} ${human(f.msgs_per_s).padStart(6)} msg/s delivered, ${human(f.acked_per_s).padStart(6)} acked, delivered p50/p99 ${human(f.delivered_p50_ms)}/${human(f.delivered_p99_ms)} ms; CPU per msg: nodes ${us(f.server_cpu_us_per_msg)}, PostgreSQL ${us(f.pg_cpu_us_per_msg)}${f.redis_cpu_us_per_msg !== undefined ? `, Redis ${us(f.redis_cpu_us_per_msg)}` : ''}; nodes ${human(f.server_cpu_pct)}% CPU, load ${human(f.load_cpu_pct)}%`;
  if (sat[ONE]) lines.push(row('1 node', sat[ONE].fig));
  if (sat[THREE]) lines.push(row('3 nodes', sat[THREE].fig));
  if (sat[SAME]) lines.push(row('3 nodes, same-node', sat[SAME].fig));
  for (const [over, name] of [
    [ONE, '1 node'],
    [SAME, '3 nodes same-node'],
  ]) {
    if (!sat[THREE] || !sat[over]) continue;
    const a = sat[THREE].fig;
    const b = sat[over].fig;
    lines.push(
      `  3 nodes ÷ ${name}: msg/s ${times(a.msgs_per_s, b.msgs_per_s)}, delivered p99 ${times(a.delivered_p99_ms, b.delivered_p99_ms)}, CPU per msg: nodes ${times(a.server_cpu_us_per_msg, b.server_cpu_us_per_msg)}, all ${times(a.total_cpu_us_per_msg, b.total_cpu_us_per_msg)}`,
    );
  }
  if (fo) {
    lines.push(
      `  failover (SIGKILL node ${fo.killed?.index + 1} of 3 at ${params.failover.rate}/s, client backoff defaults 500 ms / 30 s, ${urlList ? 'transport URL list' : 'url() rotating per connect'}): ` +
        `${fo.reconnected}/${fo.clients_on_killed_node} clients back (${fo.landed.map((c, k) => `n${k + 1}: ${c}`).join(', ')}) p50 ${ms(fo.reconnect_p50_ms)}, all ${ms(fo.reconnect_all_ms)}; ` +
        `delivered p50/p99 before the kill ${human(fo.steady_delivered_p50_ms)}/${human(fo.steady_delivered_p99_ms)} ms; drained ${ms(fo.drained_ms)} after the kill (pre-kill messages ${ms(fo.drained_prekill_ms)}); ` +
        `${fo.messages} msgs, ${fo.acked_before_kill} acked before the kill; duplicates ${fo.duplicates}, missing ${fo.missing}, unacked ${fo.unacked}, reordered ${fo.reordered}`,
    );
  }
  return { results, errors, brief: lines.join('\n  ') };
}
