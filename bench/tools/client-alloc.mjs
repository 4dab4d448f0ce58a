// What one 1:1 message life costs the client engines, in allocation, scavenges and CPU: the
// figures the load process's GC tail is made of (issues 16 and 23), read in a way the shared
// machine's noise barely moves (CPU time and bytes, not wall time).
//
// This process runs a postbox server (memory store, WebSocket transport, the worktree's dist);
// each round spawns one load process of N client engines (memory client stores, the WebSocket
// client transport) from one build, and builds alternate round by round (A/B interleaved in the
// same time window). The load process sends M 1:1 messages (client i → client i+1), paced at
// RATE msg/s, each life ending at the sender's ✓✓; after a warm-up it measures two phases of M
// messages: first CPU (process.cpuUsage) and GC (a `gc` PerformanceObserver: scavenges, major
// GCs, their time), then allocation (the inspector's sampling heap profiler with the objects
// that scavenges and major GCs collected, so the estimate is of every byte allocated, not what
// survived). The profiler is off in the CPU phase. Last, what the engines keep: the heap after a
// full collection, before the two phases and after them, over their messages (what every later
// major GC marks: the memory client stores' history, mostly). The server lives in another
// process, so the figures are the load process's alone.
//
//   npm run build
//   node bench/tools/client-alloc.mjs [--builds base=dist/.base,new=dist] [--clients 100]
//     [--messages 20000] [--rate 2000] [--rounds 3] [--body 100] [--top 0] [--cpuprof DIR]
// `--top K` prints each build's K functions that allocate most (self bytes, every round); with
// `--by file`, its K files.
import { spawn } from 'node:child_process';
import { fileURLToPath, pathToFileURL } from 'node:url';
import path from 'node:path';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const args = Object.fromEntries(
  process.argv
    .slice(2)
    .join(' ')
    .split('--')
    .filter(Boolean)
    .map((a) => a.trim().split(/\s+/))
    .map(([k, v]) => [k, v ?? 'true']),
);

async function load(dist) {
  const base = pathToFileURL(path.resolve(root, dist) + '/').href;
  const imp = (p) => import(new URL(p, base).href);
  return {
    client: await imp('client/index.js'),
    memory: await imp('client/stores/memory.js'),
    ws: await imp('transport/websocket.js'),
  };
}

// ------------------------------------------------------------------ load process (child)

async function child() {
  const { Session } = await import('node:inspector');
  const { PerformanceObserver, constants } = await import('node:perf_hooks');
  const { WebSocket } = await import('ws');
  const { client: c, memory, ws } = await load(args.dist);
  const N = Number(args.clients);
  const M = Number(args.messages);
  const RATE = Number(args.rate);
  const prefix = args.prefix;

  const clients = [];
  let delivered = 0;
  let target = 0;
  let onTarget = () => {};
  for (let i = 0; i < N; i++) {
    const client = c.createClient({
      transport: ws.websocketClientTransport({ url: args.url, WebSocket }),
      store: memory.memoryClientStore(),
      credentials: `${prefix}${i}`,
    });
    client.on('error', () => {});
    client.on('status', (s) => {
      if (s.status === 'delivered' && ++delivered === target) onTarget();
    });
    client.on('message', () => {});
    clients.push(client);
  }
  await Promise.all(clients.map((cl) => cl.connected({ timeoutMs: 60_000 })));

  const body = new Uint8Array(Number(args.body));
  let next = 0;
  // Paced: every 5 ms the messages the rate owes, round robin over the senders.
  function phase(m) {
    target = delivered + m;
    return new Promise((resolve) => {
      onTarget = resolve;
      let sent = 0;
      const t0 = performance.now();
      const timer = setInterval(() => {
        const owed = Math.min(m, Math.floor(((performance.now() - t0) * RATE) / 1000)) - sent;
        for (let k = 0; k < owed; k++, sent++) {
          const i = next++ % N;
          void clients[i].send(`${prefix}${(i + 1) % N}`, body);
        }
        if (sent >= m) clearInterval(timer);
      }, 5);
    });
  }

  await phase(Math.min(M, 5000)); // warm-up: JIT, maps, the server's per-user state
  const settle = async () => {
    await new Promise((r) => setTimeout(r, 300)); // the last acks and their timers
    globalThis.gc();
    globalThis.gc();
    return process.memoryUsage();
  };
  const kept0 = await settle();

  const gc = { minor: 0, major: 0, minorMs: 0, majorMs: 0 };
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const kind = e.detail?.kind ?? e.kind;
      if (kind === constants.NODE_PERFORMANCE_GC_MINOR) {
        gc.minor++;
        gc.minorMs += e.duration;
      } else if (kind === constants.NODE_PERFORMANCE_GC_MAJOR) {
        gc.major++;
        gc.majorMs += e.duration;
      }
    }
  });
  obs.observe({ entryTypes: ['gc'] });
  // `--cpuprof DIR`: a CPU profile of this phase (for bench/tools/profile-top.mjs); off by default.
  const profiler = args.cpuprof ? new Session() : undefined;
  const prof = (method, params) =>
    new Promise((resolve, reject) =>
      profiler.post(method, params, (err, res) => (err ? reject(err) : resolve(res))),
    );
  if (profiler) {
    profiler.connect();
    await prof('Profiler.enable');
    await prof('Profiler.start');
  }
  const cpu0 = process.cpuUsage();
  await phase(M);
  const cpu = process.cpuUsage(cpu0);
  if (profiler) {
    const { profile } = await prof('Profiler.stop');
    const { writeFileSync } = await import('node:fs');
    writeFileSync(path.join(args.cpuprof, `${args.prefix}.cpuprofile`), JSON.stringify(profile));
    profiler.disconnect();
  }
  await new Promise((r) => setTimeout(r, 50)); // the observer's last entries
  obs.disconnect();

  const session = new Session();
  session.connect();
  const post = (method, params) =>
    new Promise((resolve, reject) =>
      session.post(method, params, (err, res) => (err ? reject(err) : resolve(res))),
    );
  await post('HeapProfiler.enable');
  await post('HeapProfiler.startSampling', {
    samplingInterval: 4096,
    includeObjectsCollectedByMajorGC: true,
    includeObjectsCollectedByMinorGC: true,
  });
  await phase(M);
  const { profile } = await post('HeapProfiler.stopSampling');
  session.disconnect();
  const kept1 = await settle();

  let bytes = 0;
  const byFn = new Map();
  (function walk(node) {
    bytes += node.selfSize;
    const f = node.callFrame;
    const where = `${f.functionName || '(anonymous)'} ${f.url.replace(/^.*\/(dist|node_modules)\//, '$1/')}:${f.lineNumber + 1}`;
    const key = args.by === 'file' ? where.replace(/^\S+ /, '').replace(/:\d+$/, '') : where;
    byFn.set(key, (byFn.get(key) ?? 0) + node.selfSize);
    for (const ch of node.children) walk(ch);
  })(profile.head);
  const top = [...byFn].sort((a, b) => b[1] - a[1]).slice(0, Number(args.top ?? 0));

  for (const cl of clients) await cl.close();
  process.send({
    cpuUs: ((cpu.user + cpu.system) / M).toFixed(1),
    bytes: Math.round(bytes / M),
    scavenges: ((gc.minor / M) * 1000).toFixed(2),
    scavengeMs: ((gc.minorMs / M) * 1000).toFixed(2),
    majors: gc.major,
    majorMs: gc.majorMs.toFixed(1),
    keptHeap: Math.round((kept1.heapUsed - kept0.heapUsed) / (2 * M)),
    keptOff: Math.round((kept1.arrayBuffers - kept0.arrayBuffers) / (2 * M)),
    top: top.map(([w, b]) => [w, Math.round(b / M)]),
  });
  process.exit(0);
}

// ------------------------------------------------------------------ driver (server)

async function driver() {
  const { createServer } = await import(new URL('dist/server/index.js', pathToFileURL(root + '/')).href);
  const { memoryServerStore } = await import(
    new URL('dist/server/stores/memory.js', pathToFileURL(root + '/')).href
  );
  const { websocketServerTransport } = await import(
    new URL('dist/transport/websocket.js', pathToFileURL(root + '/')).href
  );
  const opt = {
    builds: 'base=dist/.base,new=dist',
    clients: '100',
    messages: '20000',
    rate: '2000',
    rounds: '3',
    body: '100',
    top: '0',
    ...args,
  };
  const builds = opt.builds.split(',').map((b) => b.split('='));
  const server = createServer({
    store: memoryServerStore(),
    authenticate: (cred) => ({ user: cred, device: 'd' }),
    costBudgets: { device: { perSecond: 1e9, burst: 1e9 }, user: { perSecond: 1e9, burst: 1e9 } },
  });
  server.on('error', (e) => process.stderr.write(`server error: ${e?.stack ?? e}\n`));
  const transport = websocketServerTransport({ port: 0, host: '127.0.0.1', maxConnectionsPerAddress: 1e6 });
  await server.listen(transport);
  const url = `ws://127.0.0.1:${transport.address.port}/postbox`;
  console.log(
    `client-alloc: ${opt.clients} clients, ${opt.messages} msgs/phase at ${opt.rate} msg/s, ${opt.body} B bodies, ${opt.rounds} rounds; builds ${opt.builds}`,
  );
  const results = new Map(builds.map(([name]) => [name, []]));
  for (let round = 0; round < Number(opt.rounds); round++) {
    for (const [name, dist] of round % 2 ? [...builds].reverse() : builds) {
      const flags = Object.entries({ ...opt, dist, url, prefix: `r${round}${name}u` }).flatMap(([k, v]) => [
        `--${k}`,
        v,
      ]);
      const r = await new Promise((resolve, reject) => {
        const p = spawn(
          process.execPath,
          ['--expose-gc', fileURLToPath(import.meta.url), '--child', ...flags],
          {
            stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
          },
        );
        p.on('message', resolve);
        p.on('exit', (code) => code && reject(new Error(`${name}: load process exited ${code}`)));
      });
      results.get(name).push(r);
      console.log(
        `round ${round + 1} ${name.padEnd(5)} CPU ${r.cpuUs} µs/msg  alloc ${(r.bytes / 1024).toFixed(1)} KB/msg  ` +
          `scavenges ${r.scavenges}/1000 msgs (${r.scavengeMs} ms/1000)  major GCs ${r.majors} (${r.majorMs} ms)  ` +
          `kept ${r.keptHeap} B heap + ${r.keptOff} B buffers/msg`,
      );
      for (const [w, b] of r.top) console.log(`    ${String(b).padStart(6)} B  ${w}`);
    }
  }
  const med = (a) => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)];
  console.log('median per message life:');
  for (const [name, rs] of results) {
    console.log(
      `  ${name.padEnd(5)} CPU ${med(rs.map((r) => +r.cpuUs)).toFixed(1)} µs  alloc ${(med(rs.map((r) => r.bytes)) / 1024).toFixed(1)} KB  ` +
        `scavenges ${med(rs.map((r) => +r.scavenges)).toFixed(2)} per 1000  ` +
        `kept ${med(rs.map((r) => r.keptHeap))} B heap + ${med(rs.map((r) => r.keptOff))} B buffers`,
    );
  }
  await server.close?.();
  process.exit(0);
}

if (args.child) await child();
else await driver();
