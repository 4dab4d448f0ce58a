// Time to commit and push ONE message to a group with every member online, in one process:
// a postbox server on the WebSocket transport (SQLite or memory store) and N member clients
// (postbox client engines, memory stores) connected over loopback WebSockets. Messages are sent
// one at a time; for each: send → ✓ (committed, `sent`), send → first member, send → last member.
//   npm run build && node bench/tools/group-once.mjs [--members 1024] [--messages 30] [--store sqlite|memory] [--gap-ms 300]
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { createClient } from 'postbox/client';
import { memoryClientStore } from 'postbox/client/memory';
import { createServer } from 'postbox/server';
import { memoryServerStore } from 'postbox/server/memory';
import { sqliteServerStore } from 'postbox/server/sqlite';
import { websocketClientTransport, websocketServerTransport } from 'postbox/transport/websocket';

const { values } = parseArgs({
  options: {
    members: { type: 'string', default: '1024' },
    messages: { type: 'string', default: '30' },
    store: { type: 'string', default: 'sqlite' },
    // Quiet time between messages, so each one meets an idle system (the members' acks and the
    // sender's 1,023 receipts of the previous one have been processed).
    'gap-ms': { type: 'string', default: '300' },
  },
});
const N = Number(values.members);
const M = Number(values.messages);
const dir = mkdtempSync(join(tmpdir(), 'postbox-group-once-'));
const store =
  values.store === 'memory' ? memoryServerStore() : sqliteServerStore({ path: join(dir, 'server.sqlite') });
const server = createServer({
  store,
  authenticate: (c) => ({ user: String(c), device: 'd' }),
  linking: 'open',
  groupConsent: 'open', // synthetic members never wrote to the sender
});
const transport = websocketServerTransport({ port: 0, maxConnectionsPerAddress: 100_000 });
await server.listen(transport);

const clients = [];
let open = 0;
let onOpen;
const allOpen = new Promise((r) => (onOpen = r));
for (let i = 0; i < N; i++) {
  const c = createClient({
    transport: websocketClientTransport({ url: transport.url }),
    store: memoryClientStore(),
    credentials: `u${i}`,
  });
  c.once('connection', function seen(s) {
    if (s === 'open') {
      if (++open === N) onOpen();
    } else c.once('connection', seen);
  });
  clients.push(c);
  if (i % 100 === 99) await new Promise((r) => setTimeout(r, 20));
}
await allOpen;
const sender = clients[0];
const members = clients.slice(1);
const group = await sender.createGroup(
  'bench',
  members.map((_, i) => `u${i + 1}`),
);
await new Promise((resolve) => {
  let known = 0;
  for (const c of members) {
    if (c.group(group)) known++;
    else c.once('group', () => ++known === members.length && resolve());
  }
  if (known === members.length) resolve();
});

const sentAt = new Map();
const samples = { ack: [], first: [], last: [] };
let pending;
for (const c of members) {
  c.on('message', (m) => {
    const p = pending;
    if (!p || m.id !== p.id) return;
    const t = performance.now() - p.t0;
    if (p.got === 0) samples.first.push(t);
    if (++p.got === members.length) {
      samples.last.push(t);
      p.resolve();
    }
  });
}
sender.on('status', (s) => {
  if (s.status === 'sent' && pending && s.id === pending.id) samples.ack.push(performance.now() - pending.t0);
});
const body = new Uint8Array(100).fill(7);
for (let k = 0; k < M + 3; k++) {
  const t0 = performance.now();
  const done = new Promise((resolve) => (pending = { id: undefined, t0, got: 0, resolve }));
  pending.id = await sender.sendToGroup(group, body);
  sentAt.set(pending.id, t0);
  await done;
  if (k === 2) for (const s of Object.values(samples)) s.length = 0; // warm-up
  await new Promise((r) => setTimeout(r, Number(values['gap-ms'])));
}
const pct = (xs, p) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};
const fmt = (xs) => `p50 ${pct(xs, 50).toFixed(1)} ms, p99 ${pct(xs, 99).toFixed(1)} ms`;
console.log(
  `group of ${N} (1 sender + ${N - 1} members, all online, one process, WebSocket, ${values.store} store), ${M} messages one at a time:`,
);
console.log(`  send → committed (✓):      ${fmt(samples.ack)}`);
console.log(`  send → first member has it: ${fmt(samples.first)}`);
console.log(`  send → last member has it:  ${fmt(samples.last)}`);
for (const c of clients) await c.close();
await server.close();
await store.close();
rmSync(dir, { recursive: true, force: true });
process.exit(0);
