// A terminal chat client on the public API: type a line to send it, watch ✓ / ✓✓ / read change
// live, and keep typing while the server is down — the outbox sends when it returns.
//   npx postbox chat --server ws://127.0.0.1:8080/postbox --as alice --to bob --insecure-dev-auth
//   npx postbox chat --server ws://… --as alice --to bob --secret "$POSTBOX_SECRET"   (signs its own token)
//   npx postbox chat --server ws://… --as alice --to bob --token pb1.…               (a token from your login service)
import { mkdirSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { createClient } from 'postbox/client';
import { sqliteClientStore } from 'postbox/client/sqlite';
import { signToken } from 'postbox/server';
import { websocketClientTransport } from 'postbox/transport/websocket';

const { values } = parseArgs({
  args: process.argv.slice(3),
  options: {
    server: { type: 'string', default: 'ws://127.0.0.1:8080/postbox' },
    as: { type: 'string' },
    device: { type: 'string', default: 'cli' },
    to: { type: 'string' },
    token: { type: 'string' },
    secret: { type: 'string' },
    'insecure-dev-auth': { type: 'boolean' },
    store: { type: 'string' },
  },
});
if (!values.as || !values.to) {
  process.stderr.write(
    'usage: postbox chat --server URL --as USER --to PEER [--token T | --secret S | --insecure-dev-auth]\n',
  );
  process.exit(2);
}
const me = values.as;
const peer = values.to;
const secret = values.secret ?? process.env.POSTBOX_SECRET;
const credentials =
  values.token ??
  (secret ? signToken(secret, { user: me, device: values.device }) : `${me}/${values.device}`);
if (!values.token && !secret && !values['insecure-dev-auth']) {
  process.stderr.write(
    'pass --token, --secret (or POSTBOX_SECRET), or --insecure-dev-auth for a dev server\n',
  );
  process.exit(2);
}

// The device's own durable state: its outbox survives a restart of this program.
const dir = join(homedir(), '.postbox');
mkdirSync(dir, { recursive: true });
const store = sqliteClientStore({ path: values.store ?? join(dir, `${me}-${values.device}.sqlite`) });
const client = createClient({
  transport: websocketClientTransport({ url: values.server }),
  store,
  credentials,
});

const TICK: Record<string, string> = {
  pending: '…',
  sent: '✓',
  delivered: '✓✓',
  read: '✓✓ (read)',
  failed: '✗ failed',
  expired: '⌛ expired',
};
const texts = new Map<string, string>();
const rl = createInterface({ input: process.stdin, output: process.stdout, prompt: `${me}> ` });
const print = (line: string) => {
  process.stdout.write(`\r\x1b[K${line}\n`);
  rl.prompt(true);
};

client.on('connection', (state, error) => {
  if (state === 'open') print(`[online as ${me}, chatting with ${peer}]`);
  else if (state === 'backoff')
    print(
      `[offline: ${error?.message ?? 'disconnected'}; messages queue and go out when the server is back]`,
    );
  else if (state === 'closed' && error) print(`[stopped: ${error.message}]`);
});
client.on('message', (m) => {
  const body = new TextDecoder().decode(m.body);
  if (m.conv !== peer) print(`(${m.conv}) ${m.from}: ${body}`);
  else print(`${m.self ? `${m.from} (other device)` : m.from}: ${body}`);
  // The chat with the peer is on screen, so what arrives in it is read.
  if (m.conv === peer && !m.self) void client.markRead(peer);
});
client.on('status', (s) => {
  const t = texts.get(s.id);
  if (t !== undefined && s.status !== 'pending') print(`  ${TICK[s.status]}  "${t}"`);
});
client.on('gap', (g) => print(`[${g.fromSeq}–${g.toSeq} from ${g.from} never arrived]`));

rl.on('line', (line) => {
  const t = line.trim();
  if (t === '/quit') return rl.close();
  if (t) texts.set(client.send(peer, new TextEncoder().encode(t)), t);
  rl.prompt();
});
rl.on('close', () => {
  void client.close().then(() => store.close().then(() => process.exit(0)));
});
void client.markRead(peer);
rl.prompt();
