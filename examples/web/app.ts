// A web chat on postbox: sign in as a user, see your conversations, send with ✓ / ✓✓ / read
// marks, typing and presence, and keep working through network drops (the engine reconnects by
// itself; queued messages wait in IndexedDB and go out when it is back, also after a reload).
// Built with esbuild (`npm run web`), served by `postbox serve --static examples/web`.
//
// The screen is always drawn from the client store (history(), conversations()), never from
// events alone: events only say when to redraw, so what a reload or a missed event would lose is
// never missing. Open http://127.0.0.1:8080/?user=alice&peer=bob to skip the sign-in.
import { createClient, type MessageStatus } from 'postbox/client';
import { tabClient, type TabClient } from 'postbox/client/tabs';
import { openIndexedDbClientStore } from 'postbox/client/indexeddb';
import { websocketClientTransport } from 'postbox/transport/websocket-client';

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const utf8 = new TextEncoder();
const text = new TextDecoder();
const params = new URLSearchParams(location.search);

/** The device's client as this tab sees it: the leader tab owns the connection, the others call through it. */
type Chat = TabClient;

/** What a test (or a curious developer) can read from the console. */
interface Debug {
  client?: Chat;
  /** Ids of `message` events, in order: each must appear once. */
  received: string[];
  /** The `status` events' statuses, in order. */
  statuses: MessageStatus[];
}
const debug: Debug = { received: [], statuses: [] };
(window as unknown as { postbox: Debug }).postbox = debug;

/** One device per browser profile and user, kept across reloads. */
function deviceOf(user: string): string {
  const key = `postbox-device:${user}`;
  let device = localStorage.getItem(key);
  if (!device) {
    device = `web-${crypto.randomUUID().slice(0, 8)}`;
    localStorage.setItem(key, device);
  }
  return device;
}

async function connect(user: string): Promise<Chat> {
  const device = deviceOf(user);
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  // Every tab of this user is one device with one connection: the leader tab opens the client
  // (store and socket); the others send and receive through it, and take over when it closes.
  return tabClient({
    name: `postbox-${user}`,
    open: async () =>
      createClient({
        store: await openIndexedDbClientStore({ name: `postbox-${user}` }),
        transport: websocketClientTransport({ url: `${scheme}://${location.host}/postbox` }),
        // `postbox serve --insecure-dev-auth` takes "user/device"; a real app fetches a token here.
        credentials: `${user}/${device}`,
        device,
      }),
  });
}

const RANK: Record<MessageStatus, number> = {
  pending: 0,
  sent: 1,
  delivered: 2,
  read: 3,
  failed: 4,
  expired: 4,
};
const MARKS: Record<MessageStatus, string> = {
  pending: '🕓',
  sent: '✓',
  delivered: '✓✓',
  read: '✓✓',
  failed: '!',
  expired: '!',
};

let client: Chat;
let me = '';
let open = '';
/** The latest status events said, by message id (the store may not have it yet when we draw). */
const statuses = new Map<string, MessageStatus>();
let drawing: Promise<void> | undefined;
let again = false;

/** Redraws the list and the open conversation from the store, coalescing bursts of events. */
function redraw(): void {
  if (drawing) {
    again = true;
    return;
  }
  drawing = draw().finally(() => {
    drawing = undefined;
    if (again) {
      again = false;
      redraw();
    }
  });
}

async function draw(): Promise<void> {
  const convs = await client.conversations();
  $('convs').replaceChildren(
    ...convs.map((c) => {
      const li = document.createElement('li');
      li.className = `conv${c.conv === open ? ' open' : ''}`;
      li.dataset.conv = c.conv;
      li.innerHTML = `<b></b>${c.unread ? `<span class="unread">${c.unread}</span>` : ''}<div class="last"></div>`;
      li.querySelector('b')!.textContent = c.conv;
      li.querySelector('.last')!.textContent = text.decode(c.last.body);
      li.onclick = () => openChat(c.conv);
      return li;
    }),
  );
  if (!open) return;
  const page = (await client.history(open, { limit: 50 })).reverse();
  $('messages').replaceChildren(
    ...page.map((m) => {
      const div = document.createElement('div');
      div.className = `msg${m.outgoing ? ' out' : ''}`;
      div.dataset.id = m.id;
      const body = document.createElement('span');
      body.className = 'text';
      body.textContent = text.decode(m.body);
      div.append(body);
      if (m.outgoing) {
        let status = m.status ?? 'pending';
        const seen = statuses.get(m.id);
        if (seen && RANK[seen] > RANK[status]) status = seen;
        const mark = document.createElement('span');
        mark.className = `mark ${status}`;
        mark.dataset.status = status;
        mark.textContent = MARKS[status];
        div.append(mark);
      }
      return div;
    }),
  );
  $('messages').scrollTop = $('messages').scrollHeight;
  if (document.visibilityState === 'visible' && page.some((m) => !m.outgoing && !m.read)) {
    await client.markRead(open);
    again = true; // the unread counts changed
  }
}

function openChat(peer: string): void {
  open = peer;
  $('title').textContent = peer;
  $('presence').textContent = '';
  $('typing').textContent = '';
  // Presence needs a live connection and the server's consent; without them the header stays quiet.
  client.watchPresence(peer).catch(() => {});
  redraw();
}

function wire(): void {
  client.on('connection', (state) => {
    $('conn').textContent = state;
    $('conn').className = state;
    if (state === 'open' && open) client.watchPresence(open).catch(() => {});
  });
  client.on('message', (m) => {
    debug.received.push(m.id);
    redraw();
  });
  client.on('status', (s) => {
    debug.statuses.push(s.status);
    const prev = statuses.get(s.id);
    if (!prev || RANK[s.status] > RANK[prev]) statuses.set(s.id, s.status);
    redraw();
  });
  client.on('readElsewhere', () => redraw());
  // Another tab took over: events of the switch may be missed, the store has everything.
  client.on('resync', () => redraw());
  client.on('role', (role) => ($('role').textContent = ` · ${role} tab`));
  client.on('typing', (t) => {
    if (t.conv === open) $('typing').textContent = t.on ? `${t.user} is typing…` : '';
  });
  client.on('presence', (p) => {
    if (p.user !== open) return;
    $('presence').textContent = p.online
      ? 'online'
      : p.lastSeen
        ? `last seen ${new Date(p.lastSeen).toLocaleTimeString()}`
        : '';
  });
  // Back on the network, or back in front: do not wait out a backoff that grew meanwhile.
  addEventListener('online', () => client.reconnectNow());
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') {
      client.reconnectNow();
      redraw();
    }
  });
  $<HTMLFormElement>('compose').onsubmit = async (ev) => {
    ev.preventDefault();
    const input = $<HTMLInputElement>('text');
    if (!open || !input.value) return;
    const body = utf8.encode(input.value);
    input.value = '';
    client.setTyping(open, false);
    // Resolves once the message is in IndexedDB: from here it survives a reload.
    await client.send(open, body);
    redraw();
  };
  $<HTMLInputElement>('text').oninput = () => {
    if (open) client.setTyping(open, $<HTMLInputElement>('text').value !== '');
  };
  $<HTMLFormElement>('newchat').onsubmit = (ev) => {
    ev.preventDefault();
    const peer = $<HTMLInputElement>('peer').value.trim();
    if (peer) openChat(peer);
  };
}

async function signIn(user: string): Promise<void> {
  me = user;
  client = await connect(user);
  debug.client = client;
  $('signin').style.display = 'none';
  $('app').classList.add('on');
  $('me').textContent = me;
  $('conn').textContent = client.state;
  $('role').textContent = ` · ${client.role} tab`;
  wire();
  const peer = params.get('peer');
  if (peer) openChat(peer);
  else redraw();
}

$<HTMLFormElement>('signin').onsubmit = (ev) => {
  ev.preventDefault();
  void signIn($<HTMLInputElement>('user').value.trim());
};
const preset = params.get('user');
if (preset) void signIn(preset);
