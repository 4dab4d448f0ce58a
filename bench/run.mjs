// postbox benchmarks, side by side with the peers a user would pick instead.
//
//   npm run bench                  every scenario, 3 rounds (≤ 20 min, pgstore about 2 more)
//   npm run bench -- --quick       one short round of everything (≤ 2 min, pgstore under 1 more)
//   npm run bench -- --only NAME   one scenario (saturation, latency, latency-light, drain, fanout, e2ee, crypto, idle,
//                                  wire, codec, pgstore, multinode, trace-cost)
//   npm run bench -- --rounds N    rounds per scenario
//   npm run bench -- --only abuse [--attacks a,b]
//                                  issue 22's attacks beside a legit client (bench/abuse/run.mjs)
//   npm run bench -- --only browser
//                                  durable sends/s of the IndexedDB store in Chromium beside the
//                                  SQLite and memory stores in Node (bench/browser.mjs, < 1 min)
//
// Each measurement runs the server under test and the load generator in separate processes,
// pinned to core 0 and core 1 when `taskset` exists; systems alternate inside every round and
// medians with the min–max spread are reported. See docs/benchmarks.md.
//
// pgstore needs PostgreSQL (POSTBOX_PG_URL, default postgres://postgres@127.0.0.1:5432/test); when it
// does not answer, the scenario says so and is skipped (a failure if POSTBOX_REQUIRE_SERVICES is set).
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync, readdirSync, readFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  LOAD_CORE,
  SERVER_CORE,
  canPin,
  procCpu,
  startNode,
  startProcess,
  withTimeout,
} from './lib/proc.mjs';
import {
  Results,
  checkTargets,
  ratios,
  renderChart,
  renderPgstore,
  renderRatios,
  renderTable,
  renderTargets,
} from './lib/report.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.dirname(here);
const SCRIPT = {
  server: path.join(here, 'server.mjs'),
  load: path.join(here, 'load.mjs'),
  solo: path.join(here, 'solo.mjs'),
};

// ------------------------------------------------------------------------------- arguments

function parseArgs(argv) {
  const a = { quick: false, only: undefined, rounds: undefined, profile: undefined };
  for (let i = 0; i < argv.length; i++) {
    const x = argv[i];
    if (x === '--quick') a.quick = true;
    else if (x === '--only') a.only = argv[++i];
    else if (x.startsWith('--only=')) a.only = x.slice(7);
    else if (x === '--rounds') a.rounds = Number(argv[++i]);
    else if (x === '--profile') a.profile = path.resolve(argv[++i]);
    else if (x === '--systems') a.systems = argv[++i].split(',');
    else if (x === '--attacks') a.attacks = argv[++i];
    else if (x.startsWith('--rounds=')) a.rounds = Number(x.slice(9));
    else if (x === '--help' || x === '-h') {
      console.log(
        'usage: npm run bench -- [--quick] [--only NAME] [--rounds N] [--systems a,b] [--profile DIR]',
      );
      process.exit(0);
    } else {
      console.error(`unknown argument ${x}`);
      process.exit(2);
    }
  }
  return a;
}

const args = parseArgs(process.argv.slice(2));
const quick = args.quick;
const ROUNDS = args.rounds ?? (quick ? 1 : 3);
const started = Date.now();
const elapsed = () => `${((Date.now() - started) / 1000).toFixed(0)}s`;
const log = (s) => console.log(s);

// ------------------------------------------------------------------------------- scenarios

const LOAD = { n: 200, size: 100 };
const DRAIN = quick
  ? { devices: 200, perDevice: 100, senders: 100, rate: 1000 }
  : { devices: 1000, perDevice: 100, senders: 200, rate: 1000 };
const FANOUT = { sizes: [64, 256, 1024], window: 64 };
const E2EE = { n: 40, window: 8 };
const IDLE_STEPS = quick ? [1000] : [10000, 19000];
const idleLabel = (n) => `${n / 1000}k`;

const SCENARIOS = {
  saturation: {
    about: `1:1 at saturation: ${LOAD.n} clients, client i → i+${LOAD.n / 2}, 16 messages in flight each`,
    systems: ['ws', 'ws-fsync', 'socketio', 'mqtt', 'postbox-memory', 'postbox-sqlite'],
    params: {
      ...LOAD,
      window: 16,
      ...(quick ? { warmupMs: 400, measureMs: 1200 } : { warmupMs: 2000, measureMs: 5000 }),
    },
    timeoutMs: 60_000,
  },
  'trace-cost': {
    about: `what the delivery trace costs: 1:1 at saturation as in saturation, each postbox server with the trace on (the default memory ring) and off; server CPU per message`,
    systems: ['postbox-memory', 'postbox-memory-notrace', 'postbox-sqlite', 'postbox-sqlite-notrace'],
    params: {
      ...LOAD,
      window: 16,
      ...(quick ? { warmupMs: 400, measureMs: 1200 } : { warmupMs: 2000, measureMs: 5000 }),
    },
    timeoutMs: 60_000,
  },
  latency: {
    about: 'paced open-loop load at 5k, 10k, 20k msg/s; latency from the scheduled send time',
    systems: ['ws', 'ws-fsync', 'socketio', 'mqtt', 'postbox-memory', 'postbox-sqlite'],
    params: {
      ...LOAD,
      rates: [5000, 10000, 20000],
      ...(quick
        ? { firstWarmupMs: 600, warmupMs: 300, measureMs: 800 }
        : { firstWarmupMs: 2000, warmupMs: 1000, measureMs: 3000 }),
    },
    timeoutMs: 90_000,
  },
  'latency-light': {
    about:
      'paced open-loop load at 500 and 2,000 msg/s (a tenth of capacity and less): send → delivered and send → ✓✓ from the scheduled send time, one message’s timeline traced per rate',
    systems: ['ws', 'ws-fsync', 'socketio', 'postbox-memory', 'postbox-sqlite'],
    params: {
      ...LOAD,
      rates: [500, 2000],
      trace: true,
      receipts: true,
      ...(quick
        ? { firstWarmupMs: 800, warmupMs: 400, measureMs: 1200 }
        : { firstWarmupMs: 2000, warmupMs: 1000, measureMs: 3000 }),
    },
    serverOptions: { timelines: true },
    timeoutMs: 90_000,
  },
  'client-cost': {
    about: `CPU per message life of ${LOAD.n} full client engines in one load process (memory client stores) and of the server, read from /proc, at paced 500 and 2,000 msg/s with ✓✓ (Socket.IO: emitWithAck plus a relayed delivered event); send → delivered p50/p99 beside it`,
    systems: ['socketio', 'postbox-memory'],
    params: {
      ...LOAD,
      rates: [500, 2000],
      // No server trace session: it would add its own cost to the server's CPU per message.
      trace: false,
      // A spinning pacing loop would bill the load process 100% of a core whatever the clients cost.
      timerPacing: true,
      receipts: true,
      ...(quick
        ? { firstWarmupMs: 800, warmupMs: 400, measureMs: 2000 }
        : { firstWarmupMs: 2000, warmupMs: 1000, measureMs: 5000 }),
    },
    timeoutMs: 120_000,
  },
  drain: {
    about: `offline drain: ${DRAIN.devices} offline devices × ${DRAIN.perDevice} queued messages, reconnecting at ${DRAIN.rate}/s${quick ? ' (scaled down from 1,000 devices for --quick)' : ''}`,
    systems: ['mqtt', 'postbox-memory', 'postbox-sqlite'],
    params: { ...DRAIN, size: LOAD.size, timeoutMs: 60_000 },
    serverOptions: { preRegister: { prefix: 'r', count: DRAIN.devices } },
    timeoutMs: 180_000,
  },
  fanout: {
    about: `group fan-out: groups of ${FANOUT.sizes.join(', ')} members, all online, one sender; ${FANOUT.window} messages in flight (deliveries/s), then one message at a time (send → first / last member)`,
    systems: ['ws', 'socketio', 'postbox-memory', 'postbox-sqlite'],
    params: {
      ...FANOUT,
      size: LOAD.size,
      ...(quick
        ? { pacedWarmup: 3, pacedMsgs: 30, pacedMs: 600, warmupMs: 300, measureMs: 500, drainMs: 2000 }
        : {
            pacedWarmup: 5,
            pacedMsgs: 200,
            pacedMs: 6000,
            warmupMs: 1000,
            measureMs: 2000,
            drainMs: 10_000,
          }),
      gapMs: 50,
      settleMs: quick ? 100 : 200,
    },
    // ws and Socket.IO run their fan-out servers; postbox lets a user's devices in without approval.
    serverOptions: { variant: 'fanout', linking: 'open' },
    timeoutMs: 180_000,
  },
  e2ee: {
    about: `1:1 at saturation with end-to-end encryption (libsignal on every client): ${E2EE.n} clients, client i → i+${E2EE.n / 2}, ${E2EE.window} messages in flight each`,
    systems: ['postbox-memory', 'postbox-sqlite'],
    params: {
      ...E2EE,
      size: LOAD.size,
      crypto: 'libsignal',
      ...(quick ? { warmupMs: 1500, measureMs: 1500 } : { warmupMs: 3000, measureMs: 5000 }),
    },
    timeoutMs: 120_000,
  },
  crypto: {
    about:
      '1:1 encrypt + decrypt on one thread, established session, 100-byte plaintext: the postbox libsignal adapter beside raw libsignal (objects, and records kept serialized as a store does)',
    solo: true,
    params: { ms: quick ? 400 : 1500 },
    timeoutMs: 60_000,
  },
  idle: {
    about: `idle density: server heap and RSS per connection at ${IDLE_STEPS.map(idleLabel).join(' and ')} connections${quick ? ' (scaled down from 10k/19k for --quick)' : ''}`,
    systems: ['ws', 'socketio', 'postbox-memory'],
    params: { steps: IDLE_STEPS, base: 100 },
    timeoutMs: 240_000,
    rounds: quick ? 1 : 2,
  },
  wire: {
    about:
      'protocol bytes for one 1:1 message’s whole life (send, ack, deliver, device ack, delivered status, its ack), payload excluded',
    solo: true,
    rounds: 1,
    timeoutMs: 30_000,
  },
  codec: {
    about: 'encode + decode of the real `msg` envelope (100-byte body), ops/s on one core',
    solo: true,
    params: { ms: quick ? 300 : 1500 },
    timeoutMs: 60_000,
  },
  pgstore: {
    about:
      'PostgreSQL store append beside raw PostgreSQL INSERTs, synchronous_commit on, 100-byte messages, batches of 1/16/256 per transaction, 1 and 12 writers (postbox: 3 nodes × 4), then rows, round trips and WAL per message',
    solo: true,
    params: quick ? { ms: 600, warmupMs: 150, slices: 2 } : { ms: 1000, warmupMs: 200, slices: 4 },
    timeoutMs: 150_000,
  },
  // bench/scenarios/multinode.mjs starts its own `postbox serve` nodes and load process (nothing
  // pinned); needs PostgreSQL and Redis (POSTBOX_PG_URL, POSTBOX_REDIS_URL), else skipped.
  multinode: {
    about: `three postbox nodes on PostgreSQL + Redis beside one node on PostgreSQL: ${LOAD.n} clients spread over the nodes, each sending to a client on another node, 16 in flight each; the same three nodes with each client sending to one on its own node; then one of the three SIGKILLed under 100 msg/s (client defaults: backoff 500 ms–30 s): time until its clients are back on the others and everything is delivered. Nodes, PostgreSQL, Redis and the load share ${os.cpus().length} cores, unpinned`,
    solo: true,
    rounds: quick ? 1 : 2,
    params: {
      n: LOAD.n,
      size: LOAD.size,
      measureTimeoutMs: 120_000,
      saturation: {
        window: 16,
        ...(quick ? { warmupMs: 1500, measureMs: 2000 } : { warmupMs: 2000, measureMs: 5000 }),
      },
      failover: {
        rate: 100,
        ...(quick ? { beforeMs: 2500, afterMs: 1000 } : { beforeMs: 5000, afterMs: 2000 }),
        reconnectTimeoutMs: 60_000,
        drainTimeoutMs: 30_000,
      },
    },
    timeoutMs: 300_000,
  },
};
// `--profile DIR`: every server and load child writes a V8 CPU profile (.cpuprofile) into DIR,
// sampled every POSTBOX_PROFILE_INTERVAL_US µs (V8's default 1,000 is too coarse to see the stalls
// bench/tools/long-tasks.mjs looks for).
const PROFILE_FLAGS = args.profile
  ? [
      '--cpu-prof',
      `--cpu-prof-dir=${args.profile}`,
      `--cpu-prof-interval=${Number(process.env.POSTBOX_PROFILE_INTERVAL_US ?? 1000)}`,
    ]
  : [];

// The load process is the harness, pinned to one core. There V8's GC helper threads (4 by default)
// can only run by preempting its main thread, so a major GC's concurrent marking slows the event
// loop for as long as it lasts, by an amount that grows with the load's heap: an artifact of the
// pinning that no client on a phone (or an unpinned process) has. With a single-threaded GC the
// load still pays all its collections, as pauses its loop and the figures see. Measured: SQLite
// p99 send→delivered at 2,000/s 15–35 ms → 5.7–5.9, ws-fsync 3.7–4.2 → 3.5–3.9 (docs/benchmarks.md).
const LOAD_FLAGS = canPin ? ['--single-threaded-gc'] : [];

const SYSTEM_ORDER = [
  'ws',
  'ws-fsync',
  'socketio',
  'mqtt',
  'postbox-memory',
  'postbox-sqlite',
  'postbox-memory-notrace',
  'postbox-sqlite-notrace',
  'postbox',
  'xmpp',
  'postbox-codec',
  'msgpackr',
  'json',
  'libsignal',
  'libsignal-serialized',
  'postbox-libsignal',
  'postgres',
  'postgres-unnest',
  'postbox-pg',
  'postbox-pg-spread',
];

// The abuse bench runs its own processes (postbox serve, a legit client, an attacker) and report.
if (args.only === 'abuse') {
  const r = spawnSync(
    process.execPath,
    [
      path.join(here, 'abuse', 'run.mjs'),
      ...(quick ? ['--quick'] : []),
      ...(args.rounds ? ['--rounds', String(args.rounds)] : []),
      ...(args.attacks ? ['--attacks', args.attacks] : []),
      '--json',
      path.join(here, 'results', `only-abuse${quick ? '-quick' : ''}.json`),
    ],
    { stdio: 'inherit' },
  );
  process.exit(r.status ?? 1);
}

// The browser bench drives Chromium and the client stores itself, in one process.
if (args.only === 'browser') {
  const r = spawnSync(
    process.execPath,
    [
      path.join(here, 'browser.mjs'),
      ...(quick ? ['--quick'] : []),
      ...(args.rounds ? ['--rounds', String(args.rounds)] : []),
      '--json',
      path.join(here, 'results', `only-browser${quick ? '-quick' : ''}.json`),
    ],
    { stdio: 'inherit' },
  );
  process.exit(r.status ?? 1);
}

if (args.only && !SCENARIOS[args.only]) {
  console.error(`unknown scenario ${args.only}; one of: ${Object.keys(SCENARIOS).join(', ')}`);
  process.exit(2);
}

// ------------------------------------------------------------------------------- machine

function mosquittoVersion() {
  const r = spawnSync('mosquitto', ['-h'], { encoding: 'utf8' });
  if (r.error) return undefined;
  return /mosquitto version (\S+)/.exec(r.stdout + r.stderr)?.[1];
}

const machine = {
  cpu: os.cpus()[0]?.model ?? 'unknown',
  nproc: os.availableParallelism(),
  memory_gb: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
  node: process.version,
  os: `${os.type()} ${os.release()}`,
  pinned: canPin
    ? `server on core ${SERVER_CORE}, load on core ${LOAD_CORE} (taskset; load with a single-threaded GC)`
    : 'no (taskset unavailable)',
  mosquitto: mosquittoVersion() ?? 'not installed',
};
const machineLine = `${machine.nproc} cores (${machine.cpu}), ${machine.memory_gb} GB, Node ${machine.node}, ${machine.os}`;

// ------------------------------------------------------------------------------- mosquitto

const tmp = mkdtempSync(path.join(os.tmpdir(), 'postbox-bench-'));
process.on('exit', () => rmSync(tmp, { recursive: true, force: true }));

function reachable(port, host = '127.0.0.1') {
  return new Promise((resolve) => {
    const s = net.connect(port, host);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
    s.setTimeout(1000, () => {
      s.destroy();
      resolve(false);
    });
  });
}

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

function findMosquittoPid() {
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      if (readFileSync(`/proc/${d}/comm`, 'utf8').trim() === 'mosquitto') return Number(d);
    } catch {
      // raced with an exiting process
    }
  }
  return undefined;
}

/**
 * How MQTT runs: preferably a private broker per measurement (fresh state, pinned to the server
 * core like every other server, TCP_NODELAY on), else the machine's broker at 127.0.0.1:1883
 * (started with the system config if it is down), else skipped.
 */
async function mqttMode() {
  if (machine.mosquitto !== 'not installed') {
    try {
      const b = await startBroker();
      await b.stop();
      return {
        kind: 'private',
        note: `private mosquitto ${machine.mosquitto} per run, pinned, set_tcp_nodelay true`,
      };
    } catch (e) {
      log(`mosquitto: a private broker did not start (${e.message}); trying 127.0.0.1:1883`);
    }
  }
  if (!(await reachable(1883))) {
    spawnSync('mosquitto', ['-d', '-c', '/etc/mosquitto/mosquitto.conf'], { stdio: 'ignore' });
    for (let i = 0; i < 20 && !(await reachable(1883)); i++) await new Promise((r) => setTimeout(r, 100));
  }
  if (await reachable(1883)) {
    return {
      kind: 'shared',
      note: 'the machine’s broker at 127.0.0.1:1883 (not pinned; its own TCP_NODELAY setting)',
    };
  }
  return undefined;
}

async function startBroker() {
  const port = await freePort();
  const dir = mkdtempSync(path.join(tmp, 'mosquitto-'));
  const conf = path.join(dir, 'mosquitto.conf');
  writeFileSync(
    conf,
    [
      `listener ${port} 127.0.0.1`,
      'allow_anonymous true',
      'set_tcp_nodelay true',
      'persistence false',
      'log_dest none',
      '',
    ].join('\n'),
  );
  const p = startProcess('mosquitto', ['-c', conf], { core: SERVER_CORE });
  const deadline = Date.now() + 5000;
  while (!(await reachable(port))) {
    if (p.proc.exitCode !== null || Date.now() > deadline) {
      p.kill();
      throw new Error(`mosquitto did not listen: ${p.stderr.trim() || 'no output'}`);
    }
    await new Promise((r) => setTimeout(r, 30));
  }
  return {
    url: `mqtt://127.0.0.1:${port}`,
    cpu: async () => procCpu(p.proc.pid),
    stop: () => p.kill(),
  };
}

let mqtt;
let runId = 0;

// ------------------------------------------------------------------------------- running

async function startServer(system, options) {
  if (system === 'mqtt') {
    if (mqtt.kind === 'private') return startBroker();
    const pid = findMosquittoPid();
    return { url: 'mqtt://127.0.0.1:1883', cpu: async () => pid && procCpu(pid), stop: async () => {} };
  }
  const child = startNode(SCRIPT.server, [JSON.stringify({ system, options })], {
    core: SERVER_CORE,
    nodeFlags: ['--expose-gc', ...PROFILE_FLAGS],
  });
  try {
    const ready = await child.next('ready', 30_000);
    return {
      url: ready.url,
      // Read from /proc, not asked of the server: a server whose event loop is busy (say, in an
      // fsync) would answer late, and the sample would be taken at the wrong moment.
      cpu: async () => procCpu(child.pid) ?? (await child.request({ type: 'cpu' })).cpu,
      mem: async () => {
        const r = await child.request({ type: 'mem' }, 60_000);
        return { mem: r.mem, connections: r.connections };
      },
      trace: async (trace) => (await child.request({ type: 'trace', trace })).trace,
      stop: () => child.stop(),
    };
  } catch (e) {
    await child.kill();
    throw e;
  }
}

/** One measurement: a fresh server child and a fresh load child for `system`. */
async function runPair(scenario, system, def) {
  const dataDir = path.join(tmp, `${scenario}-${system}-${++runId}`);
  mkdirSync(dataDir, { recursive: true });
  const server = await startServer(system, { dataDir, ...def.serverOptions });
  let load;
  try {
    const params = { ...def.params, prefix: `b${process.pid}x${runId}` };
    load = startNode(SCRIPT.load, [JSON.stringify({ system, scenario, url: server.url, params })], {
      core: LOAD_CORE,
      nodeFlags: [...LOAD_FLAGS, ...PROFILE_FLAGS],
    });
    load.onMessage = async (m) => {
      if (m.type !== 'mark') return;
      const reply = { type: 'marked', mark: m.mark };
      try {
        reply.cpu = await server.cpu();
        if (m.data?.mem && server.mem) Object.assign(reply, await server.mem());
        if (m.data?.trace && server.trace) reply.trace = await server.trace(m.data.trace);
      } catch (e) {
        reply.error = String(e);
      }
      load.send(reply);
    };
    const r = await load.next('result', def.timeoutMs);
    return r.result;
  } finally {
    await load?.stop();
    await server.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

async function runSolo(scenario, params, timeoutMs) {
  const child = startNode(SCRIPT.solo, [JSON.stringify({ scenario, params })], { core: SERVER_CORE });
  try {
    return (await child.next('result', timeoutMs)).result;
  } finally {
    await child.kill();
  }
}

const results = new Results();
const failures = [];
const skipped = [];

async function runScenario(name) {
  const def = SCENARIOS[name];
  const rounds = Math.min(ROUNDS, def.rounds ?? ROUNDS);
  log(`\n# ${name}: ${def.about}${rounds > 1 ? ` — ${rounds} rounds` : ''}`);
  if (def.solo) {
    // A solo scenario that runs several deployments (multinode) takes `--systems` as its `parts`.
    const parts = args.systems ? { parts: args.systems } : {};
    for (let r = 0; r < rounds; r++) {
      try {
        const out = await withTimeout(
          runSolo(name, { ...def.params, ...parts, round: r }, def.timeoutMs),
          def.timeoutMs + 5000,
          `${name}: timed out`,
        );
        if (out.skipped) {
          // A service the scenario needs is missing: say so, and let the rest of the bench run.
          log(`  SKIP ${name}: ${out.skipped}`);
          skipped.push(`${name}: ${out.skipped}`);
          if (process.env.POSTBOX_REQUIRE_SERVICES) failures.push(`${name}: ${out.skipped}`);
          return;
        }
        for (const x of out.results) results.add(x.scenario ?? name, x.system, x.metric, x.value, x.unit);
        if (out.detail) results.detail[name] = { ...results.detail[name], ...out.detail };
        for (const e of out.errors ?? []) {
          failures.push(`${name} round ${r + 1}: ${e}`);
          log(`  ! ${name} round ${r + 1}: ${e}`);
        }
        log(`  round ${r + 1} done (${elapsed()})${out.brief ? `: ${out.brief}` : ''}`);
      } catch (e) {
        failures.push(`${name} round ${r + 1}: ${firstLines(e.message).split('\n')[0]}`);
        log(`  ! ${name} round ${r + 1} failed: ${firstLines(e.message)}`);
      }
    }
    return;
  }
  let systems = args.systems ? def.systems.filter((s) => args.systems.includes(s)) : def.systems;
  if (!mqtt && systems.includes('mqtt')) {
    log('  SKIP mqtt: mosquitto is not installed and nothing answers at 127.0.0.1:1883');
    systems = systems.filter((s) => s !== 'mqtt');
  }
  for (let r = 0; r < rounds; r++) {
    // Alternate: each round starts with a different system.
    const order = systems.map((_, k) => systems[(k + r) % systems.length]);
    for (const system of order) {
      const t = Date.now();
      try {
        const out = await runPair(name, system, def);
        results.addObject(name, system, out);
        log(
          `  round ${r + 1} ${system.padEnd(15)} ${brief(name, out)} (${((Date.now() - t) / 1000).toFixed(1)}s, total ${elapsed()})`,
        );
      } catch (e) {
        failures.push(`${name} ${system} round ${r + 1}: ${firstLines(e.message).split('\n')[0]}`);
        log(`  ! round ${r + 1} ${system} failed: ${firstLines(e.message)}`);
      }
    }
  }
}

/** An error message without its stack frames. */
function firstLines(msg) {
  return msg
    .split('\n')
    .filter((l) => !/^\s+at /.test(l))
    .slice(0, 6)
    .join('\n    ');
}

function brief(name, out) {
  const f = (v) => (v === undefined ? '–' : Number(v.toPrecision(3)));
  if (name === 'saturation' || name === 'e2ee')
    return `${Math.round(out.msgs_per_s)} msg/s, delivered p50/p99 ${f(out.delivered_p50_ms)}/${f(out.delivered_p99_ms)} ms`;
  if (name === 'latency')
    return `p99 at 5k/10k/20k: ${['5k', '10k', '20k'].map((k) => f(out[`${k}:delivered_p99_ms`])).join('/')} ms`;
  if (name === 'latency-light')
    return ['0.5k', '2k']
      .map((k) => {
        const t = ['acked', 'delivered', 'status'].map((p) => f(out[`${k}:trace_${p}_ms`])).join('/');
        // Where the slowest 1% of the traced messages waited (postbox: postbox.trace.mjs).
        const tail = Object.keys(out)
          .filter((m) => m.startsWith(`${k}:tail_`) && m !== `${k}:tail_total_ms`)
          .sort((a, b) => out[b] - out[a])
          .slice(0, 3)
          .map((m) => `${m.slice(k.length + 6, -3)} ${f(out[m])}`)
          .join(', ');
        const slow = tail
          ? `; slowest 1% (${f(out[`${k}:tail_total_ms`])} ms) wait in ${tail}; loop delay p99/max ${f(out[`${k}:eld_p99_ms`])}/${f(out[`${k}:eld_max_ms`])}, GC ${f(out[`${k}:gc_ms`])} ms`
          : '';
        return `${k}: delivered p50/p99 ${f(out[`${k}:delivered_p50_ms`])}/${f(out[`${k}:delivered_p99_ms`])}, ✓✓ p50/p99 ${f(out[`${k}:status_p50_ms`])}/${f(out[`${k}:status_p99_ms`])} ms, one message ✓/delivered/✓✓ at ${t} ms${slow}`;
      })
      .join('; ');
  if (name === 'client-cost')
    return ['0.5k', '2k']
      .map(
        (k) =>
          `${k}: load ${f(out[`${k}:load_cpu_us_per_msg`])} µs/msg, server ${f(out[`${k}:server_cpu_us_per_msg`])} µs/msg, delivered p50/p99 ${f(out[`${k}:delivered_p50_ms`])}/${f(out[`${k}:delivered_p99_ms`])} ms`,
      )
      .join('; ');
  if (name === 'drain')
    return `${Math.round(out.drain_msgs_per_s)} msg/s, first msg p50 ${f(out.first_msg_p50_ms)} ms, dup ${out.duplicates}, missing ${out.missing}`;
  if (name === 'fanout')
    return FANOUT.sizes
      .map(
        (k) =>
          `${k}: ${Math.round(out[`${k}:deliveries_per_s`] ?? 0)}/s, last p50/p99 ${f(out[`${k}:last_p50_ms`])}/${f(out[`${k}:last_p99_ms`])} ms`,
      )
      .join('; ');
  if (name === 'idle')
    return Object.entries(out)
      .filter(([k]) => k.endsWith('heap_kb_per_conn'))
      .map(([k, v]) => `${k.split(':')[0]}: ${f(v)} KB heap/conn`)
      .join(', ');
  return '';
}

// ------------------------------------------------------------------------------- main

async function main() {
  log(
    `postbox bench${quick ? ' --quick' : ''}${args.only ? ` --only ${args.only}` : ''}, ${ROUNDS} round(s)`,
  );
  log(`machine: ${machineLine}`);
  log(`pinning: ${machine.pinned}`);
  const selected = args.only ? [args.only] : Object.keys(SCENARIOS);
  if (selected.some((s) => SCENARIOS[s].systems?.includes('mqtt'))) {
    mqtt = await mqttMode();
    log(
      `mqtt:    ${mqtt ? mqtt.note : 'SKIPPED — mosquitto is not installed and 127.0.0.1:1883 does not answer'}`,
    );
  }
  for (const name of selected) await runScenario(name);

  const summary = results.summary();
  const rs = ratios(summary);
  const idleStep = idleLabel(IDLE_STEPS[IDLE_STEPS.length - 1]);
  const targets = checkTargets(results, idleStep);

  log(`\n================ results (median${ROUNDS > 1 ? ' [min–max]' : ''} over rounds) ================\n`);
  log(renderTable(summary, SYSTEM_ORDER));
  if (results.detail.wire) {
    log('\n== wire: the frames of one message');
    for (const [sys, lines] of Object.entries(results.detail.wire)) log(`${sys}:\n  ${lines.join('\n  ')}`);
  }
  log('\n================ ratios: postbox ÷ peer (same run) ================\n');
  log(renderRatios(rs));
  const pgstore = renderPgstore(summary, rs, ROUNDS > 1, results.detail.pgstore);
  if (pgstore) log(`\n${pgstore}`);
  log('\n================ targets (issues 4, 16, 19 and 23) ================\n');
  log(renderTargets(targets));
  if (skipped.length) log(`\nskipped: ${skipped.join('; ')}`);
  if (failures.length) log(`\n${failures.length} measurement(s) failed:\n  ${failures.join('\n  ')}`);
  log(`\nmachine: ${machineLine}; ${machine.pinned}; total ${elapsed()}`);

  // JSON lines: every median, then every ratio and target, each a line starting with `{`.
  log('');
  for (const r of summary) {
    log(
      JSON.stringify({
        scenario: r.scenario,
        system: r.system,
        metric: r.metric,
        value: r.value,
        unit: r.unit,
      }),
    );
  }
  for (const r of rs) {
    log(
      JSON.stringify({
        scenario: r.scenario,
        system: `${r.ours}/${r.peer}`,
        metric: r.metric,
        value: r.value,
        unit: 'ratio',
      }),
    );
  }
  for (const t of targets) {
    if (t.value === undefined) continue;
    log(
      JSON.stringify({
        scenario: 'target',
        system: t.peer ? `${t.ours}/${t.peer}` : t.ours,
        metric: `${t.name.trim()} — ${t.pass ? 'PASS' : 'MISS'}`,
        value: t.value,
        unit: t.unit ?? 'ratio',
      }),
    );
  }

  const report = {
    date: new Date().toISOString(),
    mode: quick ? 'quick' : 'full',
    rounds: ROUNDS,
    only: args.only ?? null,
    machine,
    mqtt: mqtt?.note ?? null,
    scenarios: Object.fromEntries(Object.entries(SCENARIOS).map(([k, v]) => [k, v.about])),
    results: summary,
    ratios: rs,
    targets,
    wire_detail: results.detail.wire ?? null,
    pgstore_detail: results.detail.pgstore ?? null,
    failures,
    skipped,
    seconds: Math.round((Date.now() - started) / 1000),
  };
  const dir = path.join(here, 'results');
  mkdirSync(dir, { recursive: true });
  const file = quick ? 'quick.json' : args.only ? `only-${args.only}.json` : 'latest.json';
  writeFileSync(path.join(dir, file), JSON.stringify(report, null, 2) + '\n');
  const written = [`bench/results/${file}`];
  if (!quick && !args.only) {
    const systems = SCENARIOS.saturation.systems.filter((s) => summary.some((r) => r.system === s));
    writeFileSync(
      path.join(root, 'docs', 'benchmarks.svg'),
      renderChart(summary, systems, `${machineLine}; ${ROUNDS} rounds, medians; whiskers: min–max`),
    );
    written.push('docs/benchmarks.svg');
  }
  console.error(`\nwrote ${written.join(', ')}`);
}

main().then(
  () => process.exit(failures.length ? 1 : 0),
  (e) => {
    console.error(e);
    process.exit(1);
  },
);
