// The engines over real WebSockets with faults injected by a TCP proxy in the path: a half-open
// link found by heartbeats, and cuts mid-stream healed by reconnect and resume.
import { afterEach, describe, expect, it } from 'vitest';
import { createClient, type PostboxClient, type ReceivedMessage } from '../src/client/index.js';
import { memoryClientStore } from '../src/client/stores/memory.js';
import { createServer, type PostboxServer } from '../src/server/index.js';
import { memoryServerStore } from '../src/server/stores/memory.js';
import { websocketClientTransport, websocketServerTransport } from '../src/transport/websocket.js';
import { startTcpProxy, type TcpProxy } from './fixtures/tcp-proxy.js';
import { sleep, until } from './fixtures/util.js';

let cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const f of cleanup.reverse()) await f();
  cleanup = [];
});

async function setup(heartbeatMs: number) {
  const server: PostboxServer = createServer({
    store: memoryServerStore(),
    authenticate: (cred) => (typeof cred === 'string' ? { user: cred, device: 'd' } : null),
    heartbeatMs,
  });
  const transport = websocketServerTransport({ port: 0, host: '127.0.0.1' });
  await server.listen(transport);
  const port = transport.address!.port;
  const proxy: TcpProxy = await startTcpProxy(port);
  cleanup.push(async () => {
    await server.close();
    await proxy.close();
  });
  const client = (user: string, viaProxy: boolean) => {
    const c: PostboxClient = createClient({
      transport: websocketClientTransport({ url: `ws://127.0.0.1:${viaProxy ? proxy.port : port}/postbox` }),
      store: memoryClientStore(),
      credentials: user,
      backoffBaseMs: 50,
      backoffMaxMs: 500,
    });
    c.on('error', () => {});
    cleanup.push(() => c.close());
    const inbox: ReceivedMessage[] = [];
    const status = new Map<string, string>();
    c.on('message', (m) => inbox.push(m));
    c.on('status', (s) => status.set(s.id, s.status));
    return { c, inbox, status };
  };
  return { server, proxy, client };
}

describe('the engines over real WebSockets, with a faulty path', () => {
  it('a half-open link is found by heartbeats, the client reconnects, and what it sent meanwhile arrives', async () => {
    const hb = 400;
    const { server, proxy, client } = await setup(hb);
    const alice = client('alice', true);
    const bob = client('bob', false);
    await until('online', () => alice.c.state === 'open' && bob.c.state === 'open');
    proxy.blackholeAll();
    const lostAt = Date.now();
    const id = await alice.c.send('bob', new TextEncoder().encode('through the tunnel'));
    await until('alice notices', () => alice.c.state !== 'open');
    const noticedAfter = Date.now() - lostAt;
    await until('delivered', () => alice.status.get(id) === 'delivered');
    expect(bob.inbox.map((m) => m.id)).toEqual([id]);
    // Heartbeats: silence for 2 intervals is a dead link (checked every half interval). The
    // bound is generous on purpose; it proves detection, not speed.
    expect(noticedAfter).toBeLessThan(hb * 6);
    // The server dropped the dead session too: alice and bob are each on one connection.
    await until('server swept the dead session', () => server.connectionCount === 2);
    expect(proxy.accepted).toBeGreaterThanOrEqual(2);
  });

  it('cuts mid-stream lose nothing: every message arrives once, in order', async () => {
    const { proxy, client } = await setup(1000);
    const alice = client('alice', true);
    const bob = client('bob', false);
    await until('online', () => alice.c.state === 'open' && bob.c.state === 'open');
    const ids: string[] = [];
    for (let i = 0; i < 300; i++) {
      ids.push(await alice.c.send('bob', new TextEncoder().encode(`m${i}`)));
      if (i === 100 || i === 200) proxy.cutAll();
      if (i % 20 === 0) await sleep(5);
    }
    await until('all delivered', () => ids.every((id) => alice.status.get(id) === 'delivered'), 30_000);
    expect(bob.inbox.map((m) => m.id)).toEqual(ids);
    expect(bob.inbox.map((m) => m.seq)).toEqual(ids.map((_, i) => i + 1));
  });
});
