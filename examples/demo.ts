// The main job: a scripted tour of postbox's promise, with a transcript and a checked summary.
//   npm run demo
// A real `postbox serve` process on SQLite in a temp dir, and two users whose clients (SQLite
// stores, WebSocket) run in this process — imported by the package's public names, the way an
// app would. The server is killed with SIGKILL mid-stream and restarted on the same file.
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { createClient, type PostboxClient, type ReceivedMessage } from 'postbox/client';
import { sqliteClientStore } from 'postbox/client/sqlite';
import { signToken } from 'postbox/server';
import { websocketClientTransport } from 'postbox/transport/websocket';
const started = Date.now();
const say = (line: string) =>
  console.log(`${((Date.now() - started) / 1000).toFixed(2).padStart(6)}s  ${line}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const text = (s: string) => new TextEncoder().encode(s);
const untext = (b: Uint8Array) => new TextDecoder().decode(b);
const TICKS: Record<string, string> = {
  pending: '…',
  sent: '✓',
  delivered: '✓✓',
  read: '✓✓ read',
  failed: '✗',
  expired: '⌛',
};

async function until(what: string, cond: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

// ---------------------------------------------------------------- the world
const dir = mkdtempSync(join(tmpdir(), 'postbox-demo-'));
const data = join(dir, 'server.sqlite');
const secret = randomBytes(24).toString('base64url');
// The `postbox` command, from the source tree (npm run demo) or beside this file when built.
const cli = ['../dist/cli/main.js', '../cli/main.js']
  .map((p) => fileURLToPath(new URL(p, import.meta.url)))
  .find((p) => existsSync(p))!;

let serverProc: ChildProcess | undefined;
const startServer = (port: number): Promise<string> =>
  new Promise((resolve, reject) => {
    const p = spawn(
      process.execPath,
      [
        cli,
        'serve',
        '--port',
        String(port),
        '--data',
        data,
        '--log-level',
        'error',
        '--heartbeat-ms',
        '3000',
      ],
      {
        env: { ...process.env, POSTBOX_SECRET: secret },
        stdio: ['ignore', 'pipe', 'inherit'],
      },
    );
    serverProc = p;
    p.once('exit', (code) => reject(new Error(`server exited early (${code})`)));
    createInterface({ input: p.stdout! }).on('line', (line) => {
      if (line.startsWith('postbox listening on ')) resolve(line.split(' ')[3]!);
    });
  });
const url = await startServer(0);
const port = Number(new URL(url).port);
say(`server up: ${url}, SQLite at ${data} (WAL, fsync before every ack)`);

interface Person {
  name: string;
  client: PostboxClient;
  inbox: ReceivedMessage[];
  status: Map<string, string>;
}
const person = (name: string): Person => {
  const client = createClient({
    transport: websocketClientTransport({ url }),
    store: sqliteClientStore({ path: join(dir, `${name}.sqlite`) }),
    credentials: signToken(secret, { user: name, device: 'phone' }),
    backoffBaseMs: 100,
    backoffMaxMs: 2000,
  });
  const p: Person = { name, client, inbox: [], status: new Map() };
  client.on('message', (m) => p.inbox.push(m));
  client.on('status', (s) => p.status.set(s.id, s.status));
  client.on('error', () => {});
  return p;
};
const alice = person('alice');
const bob = person('bob');
await until('both online', () => alice.client.state === 'open' && bob.client.state === 'open');
say('alice and bob are online (signed tokens, SQLite client stores)');

// ---------------------------------------------------------------- 1. ticks
console.log('\n— 1. one message, ✓ → ✓✓ → read');
const watch = (p: Person, id: string) =>
  p.client.on('status', (s) => {
    if (s.id === id) say(`alice's "hi bob" is ${TICKS[s.status]} (${s.status})`);
  });
// Resolves once the message is in alice's outbox on disk: from here on it survives a crash.
const hi = await alice.client.send('bob', text('hi bob'));
watch(alice, hi);
await until('bob has it', () => bob.inbox.some((m) => m.id === hi));
say(`bob's screen: alice: ${untext(bob.inbox.find((m) => m.id === hi)!.body)}`);
await until('delivered', () => alice.status.get(hi) === 'delivered');
say('bob opens the chat');
await bob.client.markRead('alice');
await until('read', () => alice.status.get(hi) === 'read');

// ---------------------------------------------------------------- 2. offline backlog
console.log('\n— 2. bob goes offline; his messages wait for him on the server');
await bob.client.close();
say('bob is offline');
const backlog = await Promise.all(
  ['are you there?', 'call me', 'never mind, found it'].map((t) => alice.client.send('bob', text(t))),
);
await until('backlog acked', () => backlog.every((id) => alice.status.get(id) === 'sent'));
say(`alice sent ${backlog.length}: each shows ✓ (durable on the server), none ✓✓ yet`);
const before = bob.inbox.length;
bob.client.start();
await until('backlog drained', () => bob.inbox.length === before + backlog.length);
say(
  `bob is back and gets the backlog: ${bob.inbox
    .slice(before)
    .map((m) => JSON.stringify(untext(m.body)))
    .join(', ')}`,
);
await until('backlog delivered', () => backlog.every((id) => alice.status.get(id) === 'delivered'));
say('alice sees ✓✓ on all three');

// ---------------------------------------------------------------- 3. crash mid-stream
console.log('\n— 3. a steady stream both ways; the server crashes mid-stream and restarts');
const N = 300;
const sent: { from: Person; to: Person; id: string }[] = [];
const pump = async (from: Person, to: Person) => {
  for (let i = 0; i < N; i++) {
    sent.push({ from, to, id: await from.client.send(to.name, text(`${from.name} #${i}`)) });
    await sleep(3);
  }
};
const streams = Promise.all([pump(alice, bob), pump(bob, alice)]);
await until('stream under way', () => sent.length > N / 2);
say(`kill -9 the server mid-stream (after ${sent.length} sends)`);
serverProc!.removeAllListeners('exit');
serverProc!.kill('SIGKILL');
await new Promise((r) => serverProc!.once('exit', r));
await sleep(500);
say('server dead: clients show "offline" and keep queueing; restarting on the same file');
await startServer(port);
say('server back; clients reconnect by themselves (backoff with jitter) and resend what was never acked');
await streams;
await until(
  'everything delivered',
  () => sent.every(({ from, id }) => from.status.get(id) === 'delivered' || from.status.get(id) === 'read'),
  30_000,
);
say(`all ${sent.length} stream messages show ✓✓`);

// ---------------------------------------------------------------- the check
const all = [
  { from: alice, to: bob, id: hi },
  ...backlog.map((id) => ({ from: alice, to: bob, id })),
  ...sent,
];
let lost = 0;
let duplicated = 0;
let outOfOrder = 0;
for (const { to, id } of all) {
  const n = to.inbox.filter((m) => m.id === id).length;
  if (n === 0) lost++;
  if (n > 1) duplicated += n - 1;
}
for (const p of [alice, bob]) {
  const last = new Map<string, number>();
  for (const m of p.inbox) {
    const key = `${m.from}/${m.fromDevice}`;
    if (m.seq <= (last.get(key) ?? 0)) outOfOrder++;
    last.set(key, m.seq);
  }
}
const delivered = all.length - lost;
console.log(
  `\nsent ${all.length}, delivered ${delivered}, lost ${lost}, duplicated ${duplicated}, out of order ${outOfOrder}`,
);
await alice.client.close();
await bob.client.close();
serverProc!.removeAllListeners('exit');
serverProc!.kill('SIGTERM');
await new Promise((r) => serverProc!.once('exit', r));
rmSync(dir, { recursive: true, force: true });
process.exit(lost + duplicated + outOfOrder === 0 ? 0 : 1);
