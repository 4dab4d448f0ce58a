// Throughput through `postbox serve` on SQLite (WAL, fsync before every ack), as a user runs it:
// the server in its own process, one client process (this one) with N connections; connection i
// sends to connection i + N/2 and back. Every message is checked: acked once, delivered once.
//   npm run build && node bench/serve-throughput.mjs [--connections 100] [--messages 200]
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { createClient } from 'postbox/client';
import { memoryClientStore } from 'postbox/client/memory';
import { websocketClientTransport } from 'postbox/transport/websocket';

const { values } = parseArgs({
  options: {
    connections: { type: 'string', default: '100' },
    messages: { type: 'string', default: '200' },
  },
});
const N = Number(values.connections);
const PER = Number(values.messages);
const dir = mkdtempSync(path.join(tmpdir(), 'postbox-serve-bench-'));

const server = spawn(
  process.execPath,
  ['dist/cli/main.js', 'serve', '--port', '0', '--data', path.join(dir, 'server.sqlite')].concat([
    '--insecure-dev-auth',
    '--log-level',
    'error',
  ]),
  { stdio: ['ignore', 'pipe', 'ignore'] },
);
const url = await new Promise((resolve, reject) => {
  createInterface({ input: server.stdout }).on('line', (l) => {
    if (l.startsWith('postbox listening on ')) resolve(l.split(' ')[3]);
  });
  server.once('exit', (code) => reject(new Error(`server exited with ${code}`)));
});

const total = N * PER;
const sentAt = new Map();
const ackMs = [];
const deliverMs = [];
let acked = 0;
let delivered = 0;
let duplicates = 0;
const seen = new Set();
const ackedIds = new Set();
let done;
const finished = new Promise((r) => (done = r));
const check = () => acked === total && delivered === total && done();

const clients = [];
for (let i = 0; i < N; i++) {
  const client = createClient({
    transport: websocketClientTransport({ url }),
    store: memoryClientStore(),
    credentials: `u${i}/d`,
  });
  client.on('status', (s) => {
    // The first status past pending is the ack (✓✓ can arrive in the same turn as ✓ and win).
    if (s.status !== 'pending' && s.status !== 'failed' && sentAt.has(s.id) && !ackedIds.has(s.id)) {
      ackedIds.add(s.id);
      acked++;
      ackMs.push(performance.now() - sentAt.get(s.id));
      check();
    }
  });
  client.on('message', (m) => {
    if (seen.has(m.id)) duplicates++;
    else {
      seen.add(m.id);
      delivered++;
      deliverMs.push(performance.now() - sentAt.get(m.id));
      check();
    }
  });
  clients.push(client);
}
await Promise.all(
  clients.map(
    (c) =>
      new Promise((resolve) => {
        if (c.state === 'open') return resolve();
        const on = (s) => s === 'open' && (c.off('connection', on), resolve());
        c.on('connection', on);
      }),
  ),
);

const body = new Uint8Array(100).fill(120);
const cpu0 = process.cpuUsage();
const t0 = performance.now();
for (let k = 0; k < PER; k++) {
  for (let i = 0; i < N; i++) {
    const to = `u${(i + N / 2) % N}`;
    const t = performance.now();
    // Not awaited, as an app would not: the id is known once stored, before any ack.
    void clients[i].send(to, body).then((id) => sentAt.set(id, t));
  }
  // Let the sockets breathe, as an app's event loop would between user actions.
  if (k % 10 === 9) await new Promise((r) => setImmediate(r));
}
const progress = setInterval(
  () => console.error(`  … acked ${acked}, delivered ${delivered} of ${total}`),
  5000,
);
await finished;
clearInterval(progress);
const seconds = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(cpu0);

const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))].toFixed(1);
};
console.log(
  `postbox serve on SQLite, ${N} connections from one client process, ${total} messages of 100 bytes:\n` +
    `  ${Math.round(total / seconds)} messages/s acked and delivered (${seconds.toFixed(2)} s)\n` +
    `  send→ack p50 ${pct(ackMs, 50)} ms, p99 ${pct(ackMs, 99)} ms; send→deliver p50 ${pct(deliverMs, 50)} ms, p99 ${pct(deliverMs, 99)} ms\n` +
    `  acked ${acked}, delivered ${delivered}, duplicates ${duplicates}; client CPU ${((cpu.user + cpu.system) / 1e6).toFixed(1)} s`,
);
await Promise.all(clients.map((c) => c.close()));
server.kill('SIGTERM');
await new Promise((r) => server.once('exit', r));
rmSync(dir, { recursive: true, force: true });
process.exit(duplicates === 0 ? 0 : 1);
