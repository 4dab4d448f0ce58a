// A terminal chat client on the public API: type a line to send it, watch ✓ / ✓✓ / read change
// live, and keep typing while the server is down — the outbox sends when it returns. At start it
// draws the conversation's recent history from the client store: the screen is rebuilt from
// what the store holds, so nothing the program missed before a crash is missing here.
//   npx postbox chat --server ws://127.0.0.1:8080/postbox --as alice --to bob --insecure-dev-auth
//   npx postbox chat --server ws://… --as alice --to bob --secret "$POSTBOX_SECRET"   (signs its own token)
//   npx postbox chat --server ws://… --as alice --to bob --token pb1.…               (a token from your login service)
// --to may be a group id (#…). Commands: /group NAME user1,user2 (create a group and chat in it),
// /add USER, /remove USER, /leave, /members, /approve CODE (link a new device of yours),
// /send FILE (encrypted on this device, uploaded resumably; received files are saved to
// --downloads, default ~/.postbox/downloads/USER), /quit.
import { mkdirSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { parseArgs } from 'node:util';
import { isDeviceId, isGroupId, isUserId } from 'postbox';
import { createClient } from 'postbox/client';
import { sqliteClientStore } from 'postbox/client/sqlite';
import { signToken } from 'postbox/server';
import { websocketClientTransport } from 'postbox/transport/websocket';
import { chatMedia } from './chat-media.js';

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
    downloads: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  },
});
const USAGE = `usage: postbox chat --server URL --as USER --to PEER [--device D] [--store FILE]
                    [--token T | --secret S | --insecure-dev-auth]
  --server URL        the server's WebSocket URL (default ws://127.0.0.1:8080/postbox)
  --as USER           who you are; --device D names this device (default cli)
  --to PEER           the user (or #group) to chat with
  --token T           a token from your login service; or --secret S (or POSTBOX_SECRET) to sign
                      one on every connect; or --insecure-dev-auth for a dev server
  --store FILE        this device's SQLite file (default ~/.postbox/USER-DEVICE.sqlite)
  --downloads DIR     where received files are saved (default ~/.postbox/downloads/USER)
In the chat: /help lists the commands.
`;
if (values.help) {
  process.stdout.write(USAGE);
  process.exit(0);
}
if (!values.as || !values.to) {
  process.stderr.write(USAGE);
  process.exit(2);
}
const me = values.as;
let peer = values.to;
if (!isUserId(me) || !isDeviceId(values.device) || !(isUserId(peer) || isGroupId(peer))) {
  process.stderr.write(
    'user and device ids are 1-128 (devices: 1-64) of A-Z a-z 0-9 . _ - : @ +; group ids are # then 1-63 of A-Z a-z 0-9 _ -\n',
  );
  process.exit(2);
}
const device = values.device;
const secret = values.secret ?? process.env.POSTBOX_SECRET;
// With the secret, every (re)connect signs a fresh token: a session outlives any one token.
const credentials =
  values.token ?? (secret ? () => signToken(secret, { user: me, device }) : `${me}/${device}`);
if (!values.token && !secret && !values['insecure-dev-auth']) {
  process.stderr.write(
    'pass --token, --secret (or POSTBOX_SECRET), or --insecure-dev-auth for a dev server\n',
  );
  process.exit(2);
}

// The device's own durable state: its outbox survives a restart of this program.
const dir = join(homedir(), '.postbox');
mkdirSync(dir, { recursive: true });
const store = sqliteClientStore({ path: values.store ?? join(dir, `${me}-${device}.sqlite`) });
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
const media = chatMedia({
  client,
  store,
  server: values.server,
  credentials,
  downloads: values.downloads ?? join(dir, 'downloads', me),
  print: (line) => print(line),
  onQueued: (id, label) => {
    shown.add(id);
    texts.set(id, label);
  },
});
/** A message body as the chat shows it: text, or a file's description. */
const show = (body: Uint8Array) => media.describe(body) ?? new TextDecoder().decode(body);
/** Ids on screen: history and the live `message` event may both show a message; draw it once. */
const shown = new Set<string>();
const rl = createInterface({ input: process.stdin, output: process.stdout, prompt: `${me}> ` });
const print = (line: string) => {
  process.stdout.write(`\r\x1b[K${line}\n`);
  rl.prompt(true);
};

// One line when the connection goes and one when it is back, not one per failed retry.
let offline = false;
client.on('connection', (state, error) => {
  if (state === 'open') {
    print(offline ? '[back online]' : `[online as ${me}, chatting with ${peer}]`);
    offline = false;
    if (!isGroupId(peer)) client.watchPresence(peer).catch(() => {});
  } else if (state === 'linking') print('[this device waits for approval from one you already have]');
  else if (state === 'backoff' && !offline) {
    offline = true;
    print(
      `[offline: ${error?.message ?? 'disconnected'}; messages queue and go out when the server is back]`,
    );
  } else if (state === 'closed' && error) print(`[stopped: ${error.message}]`);
});
client.on('message', (m) => {
  if (shown.has(m.id)) return;
  shown.add(m.id);
  const body = show(m.body);
  if (m.conv !== peer) print(`(${m.conv}) ${m.from}: ${body}`);
  else print(`${m.self ? `${m.from} (other device)` : m.from}: ${body}`);
  // The chat with the peer is on screen, so what arrives in it is read.
  if (m.conv === peer && !m.self) void client.markRead(peer);
  if (!m.self) media.receive(m.from, m.body);
});
client.on('status', (s) => {
  const t = texts.get(s.id);
  if (t !== undefined && s.status !== 'pending') print(`  ${TICK[s.status]}  "${t}"`);
});
client.on('gap', (g) => print(`[${g.fromSeq}–${g.toSeq} from ${g.from} never arrived]`));
client.on('linkCode', ({ code }) => print(`[on a device you already have, type: /approve ${code}]`));
// Each reconnect watches again and hears the current state: say it only when it changed.
const presenceShown = new Map<string, boolean>();
client.on('presence', (p) => {
  if (presenceShown.get(p.user) === p.online) return;
  presenceShown.set(p.user, p.online);
  print(
    `[${p.user} is ${p.online ? 'online' : `offline${p.lastSeen ? `, last seen ${new Date(p.lastSeen).toLocaleTimeString()}` : ''}`}]`,
  );
});
client.on('typing', (t) => {
  if (t.on && t.conv === peer) print(`[${t.user} is typing…]`);
});
client.on('group', (view, change) =>
  print(
    change.op === 'sync'
      ? `[you are in ${view.name} (${view.id})]`
      : `[${view.name} (${view.id}): ${change.by} ${change.op} ${change.members.join(', ')}]`,
  ),
);
client.on('memberStatus', (s) => {
  const t = texts.get(s.id);
  if (t !== undefined) print(`  ${s.user}: ${s.status}  "${t}"`);
});

/** Runs a command line; false when it was not one. */
function command(t: string): boolean {
  const [cmd, ...rest] = t.split(/\s+/);
  const arg = rest.join(' ');
  const report = (p: Promise<unknown>) =>
    p.then(
      () => print(`[${cmd}: done]`),
      (e: Error) => print(`[${cmd}: ${e.message}]`),
    );
  switch (cmd) {
    case '/group': {
      const [name, users = ''] = rest;
      if (!name) return (print('usage: /group NAME user1,user2'), true);
      client.createGroup(name, users.split(',').filter(Boolean)).then(
        (id) => {
          peer = id;
          print(`[group ${id} created; now chatting in it]`);
        },
        (e: Error) => print(`[/group: ${e.message}]`),
      );
      return true;
    }
    case '/add':
      return (void report(client.addMembers(peer, [arg])), true);
    case '/remove':
      return (void report(client.removeMembers(peer, [arg])), true);
    case '/leave':
      return (void report(client.leaveGroup(peer)), true);
    case '/members':
      print(
        `[${
          client
            .group(peer)
            ?.members.map((m) => `${m.user}${m.role === 'admin' ? ' (admin)' : ''}`)
            .join(', ') ?? 'not a group'
        }]`,
      );
      return true;
    case '/approve':
      return (void report(client.approveDevice(arg)), true);
    case '/send':
      if (!arg) return (print('usage: /send FILE'), true);
      return (media.send(peer, arg), true);
    case '/help':
      print(HELP);
      return true;
    default:
      // A typo is not a message: only `//…` sends a line that starts with a slash.
      print(`[unknown command ${cmd}; /help lists them, //text sends "/text"]`);
      return true;
  }
}

const HELP = `commands:
  /group NAME user1,user2   create a group and chat in it     /members   who is in this group
  /add USER, /remove USER   change this group (admins)        /leave     leave this group
  /approve CODE             link a new device of yours        /quit      leave the chat
  /send FILE                send a file (encrypted here, resumable; received ones are saved)
  //text                    send a line that starts with /    /help      this list`;

rl.on('line', (line) => {
  let t = line.trim();
  if (t === '/quit') return rl.close();
  if (t.startsWith('//')) t = t.slice(1);
  else if (t.startsWith('/') && command(t)) return rl.prompt();
  if (t) {
    const body = new TextEncoder().encode(t);
    // Resolved: in the outbox on disk, so it goes out even if this program dies now.
    (isGroupId(peer) ? client.sendToGroup(peer, body) : client.send(peer, body)).then(
      (id) => {
        shown.add(id);
        texts.set(id, t);
      },
      (e: Error) => print(`  ✗ not sent (${e.message}): "${t}"`),
    );
  }
  rl.prompt();
});
rl.on('close', () => {
  void client.close().then(() => store.close().then(() => process.exit(0)));
});
/** Draws the last messages of the conversation, oldest first, from the store (works offline). */
async function drawHistory(): Promise<void> {
  const recent = (await client.history(peer, { limit: 20 })).reverse();
  if (recent.length > 0) print(`[last ${recent.length} messages with ${peer}]`);
  for (const m of recent) {
    shown.add(m.id);
    const body = show(m.body);
    if (m.outgoing) {
      texts.set(m.id, body);
      print(`${me}: ${body}  ${TICK[m.status!]}`);
    } else print(`${m.self ? `${m.from} (other device)` : m.from}: ${body}`);
  }
  const elsewhere = (await client.conversations()).filter((c) => c.conv !== peer && c.unread > 0);
  if (elsewhere.length > 0) {
    print(`[unread elsewhere: ${elsewhere.map((c) => `${c.conv} (${c.unread})`).join(', ')}]`);
  }
}

await drawHistory();
void client.markRead(peer);
rl.prompt();
