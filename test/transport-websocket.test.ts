// The WebSocket transport over real sockets on 127.0.0.1 (ephemeral ports): the transport
// conformance suite in both server modes, the engines end to end, bad input that closes only
// the offending connection while the others keep working, and a client on a list of gateways
// that spreads over them and fails over when its node dies.
import { once } from 'node:events';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocketServer, WebSocket as WsWebSocket } from 'ws';
import { createClient, type PostboxClient, type ReceivedMessage } from '../src/client/index.js';
import { memoryClientStore } from '../src/client/stores/memory.js';
import { CLOSE_CODES } from '../src/protocol/errors.js';
import { createServer } from '../src/server/index.js';
import { memoryServerStore } from '../src/server/stores/memory.js';
import { registerCases } from '../src/testing/conformance.js';
import { transportConformance, type TransportSubject } from '../src/testing/transport-conformance.js';
import type { ClientTransport, Connection } from '../src/transport/types.js';
import { seededRandom } from '../src/util/clock.js';
import { until as waitUntil } from './fixtures/util.js';
import {
  websocketClientTransport,
  websocketServerTransport,
  type WebSocketConstructor,
  type WebSocketServerOptions,
  type WebSocketServerTransport,
} from '../src/transport/websocket.js';

// Both implementations fit the structural type the client declares instead of importing peers.
const _ws: WebSocketConstructor = WsWebSocket;
const _platform: WebSocketConstructor = null as unknown as typeof globalThis.WebSocket;
void _ws;
void _platform;

const TEST_MS = 10_000;
/** Waits for loopback events: a few seconds is already far too long. */
const until = (what: string, condition: () => boolean) => waitUntil(what, condition, 5_000);

let cleanup: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanup.reverse()) await f();
  cleanup = [];
});

/** An http server on an ephemeral loopback port whose plain requests get 404. */
async function httpServer(): Promise<{ server: HttpServer; port: number; close(): Promise<void> }> {
  const server = createHttpServer((_req, res) => res.writeHead(404).end());
  // Upgraded sockets leave the http server's own tracking (closeAllConnections misses them), and
  // an upgrade no handler answers is never read: keep every socket to destroy it at the end.
  const sockets = new Set<net.Socket>();
  server.on('connection', (s: net.Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;
  const close = () =>
    new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    });
  return { server, port, close };
}

interface Accepted {
  conn: Connection;
  frames: Uint8Array[];
  closes: { code: number; reason: string }[];
}

/** Starts `transport` with an owner that records everything and echoes frames unless told not to. */
async function serve(transport: WebSocketServerTransport, echo = true): Promise<Accepted[]> {
  const accepted: Accepted[] = [];
  await transport.listen((conn) => {
    const a: Accepted = { conn, frames: [], closes: [] };
    accepted.push(a);
    conn.setHandlers({
      frame: (data) => {
        a.frames.push(data);
        if (echo) conn.send(data);
      },
      close: (code, reason) => a.closes.push({ code, reason }),
    });
  });
  cleanup.push(async () => {
    for (const a of accepted) a.conn.close(1000, 'test over');
    await transport.close();
  });
  return accepted;
}

/** A postbox client connection that records what it gets. */
async function connect(url: string, options: { maxFrameBytes?: number } = {}) {
  const conn = await websocketClientTransport({ url, ...options }).connect();
  const frames: Uint8Array[] = [];
  const closes: { code: number; reason: string }[] = [];
  conn.setHandlers({ frame: (d) => frames.push(d), close: (code, reason) => closes.push({ code, reason }) });
  cleanup.push(() => conn.close());
  return { conn, frames, closes };
}

/** Proves a connection still works: one frame there and back. */
async function echoes(client: { conn: Connection; frames: Uint8Array[] }, label: string): Promise<void> {
  const before = client.frames.length;
  const probe = new Uint8Array([7, 7, 7, label.length]);
  client.conn.send(probe);
  await until(`an echo on ${label}`, () => client.frames.length > before);
  expect(client.frames.at(-1)).toEqual(probe);
}

/** A bare `ws` client, for sending what postbox's client never would. */
function rawWs(url: string, options: { localAddress?: string } = {}) {
  const ws = new WsWebSocket(url, { perMessageDeflate: false, ...options });
  ws.on('error', () => {});
  const opened = new Promise<void>((resolve, reject) => {
    ws.once('open', () => resolve());
    ws.once('error', reject);
  });
  const closed = new Promise<{ code: number; reason: string }>((resolve) =>
    ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })),
  );
  cleanup.push(() => ws.terminate());
  return { ws, opened, closed };
}

async function ownPort(options: Omit<WebSocketServerOptions, 'server' | 'port'> = {}) {
  const transport = websocketServerTransport({ port: 0, ...options });
  const accepted = await serve(transport);
  return { transport, accepted, url: transport.url!, port: transport.address!.port };
}

describe('websocket transport conformance', () => {
  const ownPortSubject: TransportSubject = {
    name: 'websocket (own port)',
    async setup() {
      const server = websocketServerTransport({ port: 0 });
      let url: string | undefined;
      return {
        server,
        // Read once the server listens, then kept: after close() the port must refuse connects.
        client: () => websocketClientTransport({ url: () => (url ??= server.url!) }),
        teardown: () => server.close(),
      };
    },
  };
  const attachedSubject: TransportSubject = {
    name: 'websocket (attached to an http.Server)',
    async setup() {
      const http = await httpServer();
      const server = websocketServerTransport({ server: http.server, path: '/chat' });
      return {
        server,
        client: () => websocketClientTransport({ url: `ws://127.0.0.1:${http.port}/chat?v=1` }),
        async teardown() {
          await server.close();
          await http.close();
        },
      };
    },
  };
  for (const subject of [ownPortSubject, attachedSubject]) {
    describe(subject.name, () =>
      registerCases(transportConformance(subject), (name, fn) => it(name, fn, TEST_MS)),
    );
  }
});

describe('the engines over the websocket transport', () => {
  it(
    'alice sends to bob over real sockets, bob receives it once, alice sees delivered',
    { timeout: TEST_MS },
    async () => {
      const { server, url } = await node();
      const device = (user: string, WebSocket?: WebSocketConstructor) => {
        const client: PostboxClient = createClient({
          transport: websocketClientTransport({ url, ...(WebSocket ? { WebSocket } : {}) }),
          store: memoryClientStore(),
          credentials: user,
        });
        cleanup.push(() => client.close());
        const inbox: ReceivedMessage[] = [];
        const status = new Map<string, string>();
        client.on('message', (m) => inbox.push(m));
        client.on('status', (s) => status.set(s.id, s.status));
        return { client, inbox, status };
      };
      // One lazily loads `ws` (Node 20 has no global WebSocket), one is handed the constructor.
      const alice = device('alice');
      const bob = device('bob', WsWebSocket);
      await until('both online', () => alice.client.state === 'open' && bob.client.state === 'open');
      const id = await alice.client.send('bob', new TextEncoder().encode('hello over TCP'));
      await until('delivered', () => alice.status.get(id) === 'delivered');
      expect(bob.inbox.map((m) => [m.id, m.from, new TextDecoder().decode(m.body)])).toEqual([
        [id, 'alice', 'hello over TCP'],
      ]);
      expect(server.connectionCount).toBe(2);
    },
  );
});

describe('bad input closes only the offending connection', () => {
  it(
    'a text frame closes its connection with 1003; another connection keeps working',
    { timeout: TEST_MS },
    async () => {
      const { accepted, url } = await ownPort();
      const good = await connect(url);
      const bad = rawWs(url);
      await bad.opened;
      bad.ws.send('{"t":"hello"}');
      expect(await bad.closed).toEqual({ code: 1003, reason: 'binary frames only' });
      await until('the server side closed', () => accepted.some((a) => a.closes.length > 0));
      const badSide = accepted.find((a) => a.closes.length > 0)!;
      expect(badSide.closes).toEqual([{ code: 1003, reason: 'binary frames only' }]);
      expect(badSide.frames).toEqual([]);
      await echoes(good, 'the good connection');
    },
  );

  it(
    'a frame over maxFrameBytes closes with 1009 before it is buffered or decoded',
    { timeout: TEST_MS },
    async () => {
      const { accepted, url, port } = await ownPort({ maxFrameBytes: 1024 });
      const good = await connect(url);
      await echoes(good, 'the good connection');

      // A whole frame one KiB over the limit.
      const bad = rawWs(url);
      await bad.opened;
      bad.ws.send(new Uint8Array(2048));
      expect((await bad.closed).code).toBe(CLOSE_CODES.tooLarge);

      // A header announcing 1 GiB followed by a few bytes: refused from the header alone, so the
      // server never waits for (or buffers) the payload.
      const raw = await handshake(port);
      const header = Buffer.from([0x82, 0xff, 0, 0, 0, 0, 0x40, 0, 0, 0, 1, 2, 3, 4]); // binary, masked, 64-bit length
      raw.socket.write(Buffer.concat([header, Buffer.alloc(16)]));
      const reply = await raw.nextBytes(4);
      expect(reply[0]).toBe(0x88); // a close frame...
      expect(reply.readUInt16BE(2)).toBe(CLOSE_CODES.tooLarge); // ...with 1009

      await until('both server sides closed', () => accepted.filter((a) => a.closes.length > 0).length === 2);
      for (const a of accepted.filter((x) => x.closes.length > 0)) {
        expect(a.closes.map((c) => c.code)).toEqual([CLOSE_CODES.tooLarge]);
        expect(a.frames).toEqual([]); // the owner never saw a byte of it
      }
      await echoes(good, 'the good connection');
    },
  );

  it(
    'a flood of connections from one address is refused past maxConnectionsPerAddress; others are unaffected',
    { timeout: TEST_MS },
    async () => {
      const { accepted, url } = await ownPort({ maxConnectionsPerAddress: 3 });
      const first = await connect(url);
      await connect(url);
      await connect(url);
      const flood = await Promise.allSettled(
        Array.from({ length: 20 }, () => websocketClientTransport({ url }).connect()),
      );
      for (const attempt of flood) {
        if (attempt.status === 'fulfilled') attempt.value.close();
        expect(attempt.status).toBe('rejected');
        // Own-port mode also guards sockets: the socket is reset at accept, or the upgrade gets 429.
        expect(String((attempt as PromiseRejectedResult).reason?.message)).toMatch(
          /429|ECONNRESET|socket hang up/,
        );
      }
      expect(accepted).toHaveLength(3);
      await echoes(first, 'an existing connection');

      // Another address (all of 127.0.0.0/8 is loopback on Linux) is not limited by this one.
      const other = rawWs(url, { localAddress: '127.0.0.2' });
      await other.opened;
      expect(accepted.at(-1)!.conn.remoteAddress).toBe('127.0.0.2');

      // A closed connection frees its slot.
      first.conn.close();
      await until('the slot to free', () => accepted[0]!.closes.length > 0);
      let again: Awaited<ReturnType<typeof connect>> | undefined;
      const end = Date.now() + 2_000;
      while (!again && Date.now() < end) again = await connect(url).catch(() => undefined);
      expect(again).toBeDefined();
      await echoes(again!, 'a connection made after one closed');
    },
  );

  it(
    'a peer that never reads is cut at maxBufferedBytes; server memory stays bounded',
    { timeout: TEST_MS },
    async () => {
      const cap = 1024 * 1024;
      const frameBytes = 64 * 1024;
      const transport = websocketServerTransport({ port: 0, maxBufferedBytes: cap });
      const accepted = await serve(transport);
      const good = await connect(transport.url!);
      await until('the good connection at the server', () => accepted.length === 1);

      const slow = await handshake(transport.address!.port);
      slow.socket.pause(); // never reads again: the kernel buffers fill, then the server's do
      await until('the slow connection at the server', () => accepted.length === 2);
      const victim = accepted[1]!;
      let maxBuffered = 0;
      let sent = 0;
      await new Promise<void>((resolve) => {
        const push = () => {
          for (let i = 0; i < 16 && victim.conn.isOpen; i++) {
            victim.conn.send(new Uint8Array(frameBytes).fill(i)); // fresh bytes: what is queued is really held
            sent += frameBytes;
            maxBuffered = Math.max(maxBuffered, victim.conn.bufferedAmount);
          }
          if (victim.conn.isOpen && sent < 1024 * 1024 * 1024) setImmediate(push);
          else resolve();
        };
        push();
      });
      expect(victim.conn.isOpen).toBe(false);
      await until('the close event', () => victim.closes.length > 0);
      expect(victim.closes).toEqual([
        { code: CLOSE_CODES.rateLimited, reason: 'send buffer full: the peer is not reading' },
      ]);
      // It really pushed up to the cap (with frames of one tick corked together, the kernel may
      // not have taken any of them yet; otherwise more went out before the cut).
      expect(sent).toBeGreaterThanOrEqual(cap);
      expect(maxBuffered).toBeGreaterThan(0);
      expect(maxBuffered).toBeLessThanOrEqual(cap + frameBytes);
      expect(victim.conn.bufferedAmount).toBeLessThanOrEqual(cap);
      // The socket was reset, not left to a close handshake the peer would never read.
      slow.socket.resume();
      await slow.ended;
      await echoes(good, 'the good connection');
    },
  );

  it(
    'upgrades for other paths on an attached http.Server are left to their owner',
    { timeout: TEST_MS },
    async () => {
      const http = await httpServer();
      cleanup.push(() => http.close());
      const transport = websocketServerTransport({ server: http.server, path: '/postbox' });
      const accepted = await serve(transport);
      // Another WebSocket endpoint on the same server, the way `ws` recommends (noServer), added after ours.
      const other = new WebSocketServer({ noServer: true });
      cleanup.push(() => new Promise((resolve) => other.close(resolve)));
      http.server.on('upgrade', (req, socket, head) => {
        if (req.url === '/other')
          other.handleUpgrade(req, socket, head, (ws) => ws.on('message', (d) => ws.send(`other: ${d}`)));
      });
      const good = await connect(`ws://127.0.0.1:${http.port}/postbox`);
      const foreign = rawWs(`ws://127.0.0.1:${http.port}/other`);
      await foreign.opened;
      const reply = once(foreign.ws, 'message');
      foreign.ws.send('ping');
      expect(String((await reply)[0])).toBe('other: ping');
      expect(accepted).toHaveLength(1); // postbox never saw /other
      await echoes(good, 'the postbox connection');

      // With no other upgrade handler, a foreign path is refused rather than left hanging.
      const lone = await httpServer();
      cleanup.push(() => lone.close());
      const alone = websocketServerTransport({ server: lone.server });
      await serve(alone);
      await expect(
        websocketClientTransport({ url: `ws://127.0.0.1:${lone.port}/elsewhere` }).connect(),
      ).rejects.toThrow(/404/);
      // Closing the transport detaches it and leaves the app's server alone.
      await transport.close();
      expect(http.server.listening).toBe(true);
      // (The app's remaining handler ignores /postbox, so the attempt can only time out.)
      await expect(
        websocketClientTransport({
          url: `ws://127.0.0.1:${http.port}/postbox`,
          connectTimeoutMs: 300,
        }).connect(),
      ).rejects.toThrow();
      expect(accepted).toHaveLength(1);
      await echoes(good, 'an open connection after the transport closed');
    },
  );
});

describe('the client side', () => {
  /** A bare `ws` server that does `onConnection` to each client. */
  async function rawServer(onConnection: (ws: WsWebSocket) => void): Promise<string> {
    const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
    await once(wss, 'listening');
    wss.on('connection', onConnection);
    cleanup.push(
      () =>
        new Promise<void>((resolve) => {
          for (const c of wss.clients) c.terminate();
          wss.close(() => resolve());
        }),
    );
    return `ws://127.0.0.1:${(wss.address() as net.AddressInfo).port}`;
  }

  it('a text frame from the server closes the connection with 1003', { timeout: TEST_MS }, async () => {
    let seen: Promise<[number, Buffer]> | undefined;
    const url = await rawServer((ws) => {
      seen = once(ws, 'close') as Promise<[number, Buffer]>;
      ws.send(new Uint8Array([1, 2]));
      ws.send('not binary');
      ws.send(new Uint8Array([3]));
    });
    const client = await connect(url);
    await until('the close', () => client.closes.length > 0);
    expect(client.frames).toEqual([new Uint8Array([1, 2])]);
    expect(client.closes).toEqual([{ code: 1003, reason: 'binary frames only' }]);
    expect(client.conn.isOpen).toBe(false);
    expect((await seen!)[0]).toBe(1003);
  });

  it('a frame over the client maxFrameBytes closes with 1009', { timeout: TEST_MS }, async () => {
    const url = await rawServer((ws) => ws.send(new Uint8Array(4096)));
    const client = await connect(url, { maxFrameBytes: 1024 });
    await until('the close', () => client.closes.length > 0);
    expect(client.frames).toEqual([]);
    expect(client.closes.map((c) => c.code)).toEqual([CLOSE_CODES.tooLarge]);
  });

  it(
    'a connect that never opens rejects after connectTimeoutMs and closes its socket',
    { timeout: TEST_MS },
    async () => {
      const sockets: net.Socket[] = [];
      // The server reads (and drops) what arrives, so it sees the client's end of the socket.
      const silent = net.createServer((s) => sockets.push(s.on('error', () => {}).resume()));
      silent.listen(0, '127.0.0.1');
      await once(silent, 'listening');
      cleanup.push(() => new Promise((resolve) => silent.close(resolve)));
      cleanup.push(() => sockets.forEach((s) => s.destroy()));
      const started = Date.now();
      const url = `ws://127.0.0.1:${(silent.address() as net.AddressInfo).port}/postbox`;
      await expect(websocketClientTransport({ url, connectTimeoutMs: 300 }).connect()).rejects.toThrow(
        /within 300 ms/,
      );
      expect(Date.now() - started).toBeGreaterThanOrEqual(290);
      await until('the socket to close', () => sockets.length === 1 && sockets[0]!.destroyed);
    },
  );

  it('a connect to a closed port rejects', { timeout: TEST_MS }, async () => {
    await expect(websocketClientTransport({ url: await deadUrl() }).connect()).rejects.toThrow(
      /websocket transport/,
    );
  });
});

/** A server engine on a port of its own (a gateway node), accepting `user` strings as credentials. */
async function node() {
  const server = createServer({
    store: memoryServerStore(),
    authenticate: (cred) => (typeof cred === 'string' ? { user: cred, device: 'phone' } : null),
  });
  const transport = websocketServerTransport({ port: 0 });
  await server.listen(transport);
  cleanup.push(() => server.close());
  return { server, url: transport.url! };
}

/** A URL on a loopback port that was free a moment ago and has nothing listening now. */
async function deadUrl(): Promise<string> {
  const probe = net.createServer();
  probe.listen(0, '127.0.0.1');
  await once(probe, 'listening');
  const port = (probe.address() as net.AddressInfo).port;
  await new Promise((resolve) => probe.close(resolve));
  return `ws://127.0.0.1:${port}/postbox`;
}

describe('a list of gateway URLs', () => {
  /** One gateway node: a bare `ws` server that keeps its sockets, so a test can close or kill them. */
  async function gateway() {
    const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' });
    await once(wss, 'listening');
    const sockets: WsWebSocket[] = [];
    wss.on('connection', (ws) => sockets.push(ws.on('error', () => {})));
    cleanup.push(
      () =>
        new Promise<void>((resolve) => {
          for (const ws of sockets) ws.terminate();
          wss.close(() => resolve());
        }),
    );
    return { url: `ws://127.0.0.1:${(wss.address() as net.AddressInfo).port}/postbox`, sockets };
  }

  /** Connects once through `transport` and records what the connection's owner is told. */
  async function connectVia(transport: ClientTransport) {
    const conn = await transport.connect();
    const closes: number[] = [];
    conn.setHandlers({ frame: () => {}, close: (code) => closes.push(code) });
    cleanup.push(() => conn.close());
    return { conn, closes };
  }

  /** How many connections each gateway has accepted so far. */
  const counts = (nodes: Array<{ sockets: unknown[] }>) => nodes.map((n) => n.sockets.length);

  it('an empty list is refused when the transport is created', () => {
    expect(() => websocketClientTransport({ url: [] })).toThrow(/empty list/);
    expect(() => websocketClientTransport({ url: ['ws://127.0.0.1:1/postbox', ''] })).toThrow(
      /url\[1\] must be a non-empty string/,
    );
  });

  it(
    'first connects spread over the gateways, each starting where the injected random points',
    { timeout: TEST_MS },
    async () => {
      const nodes = [await gateway(), await gateway(), await gateway()];
      const urls = nodes.map((n) => n.url);
      const random = seededRandom(20_240_601);
      const draws = Array.from({ length: 12 }, () => random());
      const expected = draws.map((r) => Math.floor(r * nodes.length));
      // The seed was picked so that every gateway gets some: the spread is what is under test.
      expect(new Set(expected).size).toBe(nodes.length);
      for (const [i, r] of draws.entries()) {
        const before = counts(nodes);
        await connectVia(websocketClientTransport({ url: urls, random: () => r }));
        await until(`client ${i} accepted`, () => counts(nodes).some((c, n) => c > before[n]!));
        expect(counts(nodes).map((c, n) => c - before[n]!)).toEqual(
          nodes.map((_, n) => (n === expected[i] ? 1 : 0)),
        );
      }
      expect(counts(nodes)).toEqual(nodes.map((_, n) => expected.filter((e) => e === n).length));
    },
  );

  it(
    'a gateway with nothing listening is skipped: the next connect goes to another URL',
    { timeout: TEST_MS },
    async () => {
      const live = await gateway();
      const transport = websocketClientTransport({ url: [await deadUrl(), live.url], random: () => 0 });
      await expect(transport.connect()).rejects.toThrow(/websocket transport/);
      await connectVia(transport);
      await until('the live gateway to accept', () => live.sockets.length === 1);
    },
  );

  it(
    'the clients of a dead gateway spread over all the survivors, not onto one neighbour',
    { timeout: TEST_MS },
    async () => {
      const survivors = [await gateway(), await gateway(), await gateway()];
      const dead = await deadUrl();
      const seeded = seededRandom(7);
      for (let i = 0; i < 12; i++) {
        let first = true;
        // Every client starts on the dead gateway; where it moves is the transport's own draw.
        const random = () => (first ? ((first = false), 0) : seeded());
        const transport = websocketClientTransport({ url: [dead, ...survivors.map((g) => g.url)], random });
        await expect(transport.connect()).rejects.toThrow(/websocket transport/);
        await connectVia(transport);
      }
      await until('every client on a survivor', () => counts(survivors).reduce((a, b) => a + b) === 12);
      expect(counts(survivors).every((n) => n > 0)).toBe(true);
    },
  );

  it(
    'connects failing together on one dead gateway move the transport one URL on, not one per failure',
    { timeout: TEST_MS },
    async () => {
      const [next, after] = [await gateway(), await gateway()];
      const transport = websocketClientTransport({
        url: [await deadUrl(), next.url, after.url],
        random: () => 0,
      });
      const attempts = await Promise.allSettled([transport.connect(), transport.connect()]);
      expect(attempts.map((a) => a.status)).toEqual(['rejected', 'rejected']);
      await connectVia(transport);
      await until('a gateway to accept', () => next.sockets.length + after.sockets.length === 1);
      expect(counts([next, after])).toEqual([1, 0]);
    },
  );

  /** How the gateway a client is on ends its connection; `moves` says where the next connect goes. */
  const endings: Array<{ how: string; code: number; end: (ws: WsWebSocket) => void; moves: boolean }> = [
    { how: 'dies (socket killed, no close frame)', code: 1006, end: (ws) => ws.terminate(), moves: true },
    { how: 'goes away (1001)', code: 1001, end: (ws) => ws.close(1001, 'shutting down'), moves: true },
    { how: 'fails (1011)', code: 1011, end: (ws) => ws.close(1011, 'store unavailable'), moves: true },
    { how: 'restarts (1012)', code: 1012, end: (ws) => ws.close(1012, 'restart'), moves: true },
    { how: 'sheds load (1013)', code: 1013, end: (ws) => ws.close(1013, 'try again later'), moves: true },
    { how: 'closes cleanly (1000)', code: 1000, end: (ws) => ws.close(1000, 'bye'), moves: false },
    {
      how: 'closes with a postbox code (4000 heartbeat timeout)',
      code: CLOSE_CODES.heartbeatTimeout,
      end: (ws) => ws.close(CLOSE_CODES.heartbeatTimeout, 'heartbeat timeout'),
      moves: false,
    },
    {
      how: 'closes with a postbox code (4001 replaced)',
      code: CLOSE_CODES.replaced,
      end: (ws) => ws.close(CLOSE_CODES.replaced, 'replaced'),
      moves: false,
    },
  ];
  for (const { how, code, end, moves } of endings) {
    it(
      `when the gateway a client is on ${how}, the next connect goes to ${moves ? 'another gateway' : 'the same gateway'}`,
      { timeout: TEST_MS },
      async () => {
        // The first gateway keeps listening throughout: only the close code decides.
        const [first, second] = [await gateway(), await gateway()];
        const transport = websocketClientTransport({ url: [first.url, second.url], random: () => 0 });
        const client = await connectVia(transport);
        await until('the first gateway to accept', () => first.sockets.length === 1);
        end(first.sockets[0]!);
        await until('the close to reach the client', () => client.closes.length === 1);
        expect(client.closes).toEqual([code]);
        await connectVia(transport);
        await until(
          'a gateway to accept the reconnect',
          () => first.sockets.length + second.sockets.length === 2,
        );
        expect(counts([first, second])).toEqual(moves ? [1, 1] : [2, 0]);
      },
    );
  }

  it(
    'the transport stays on a gateway that keeps working, and reads random only once',
    { timeout: TEST_MS },
    async () => {
      const nodes = [await gateway(), await gateway(), await gateway()];
      let draws = 0;
      const transport = websocketClientTransport({
        url: nodes.map((n) => n.url),
        random: () => (draws++, 0.5),
      });
      for (let i = 1; i <= 3; i++) {
        const client = await connectVia(transport);
        await until(`connect ${i} accepted`, () => nodes[1]!.sockets.length === i);
        client.conn.close(); // the owner's own clean close
      }
      expect(counts(nodes)).toEqual([0, 3, 0]);
      expect(draws).toBe(1);
    },
  );

  it(
    'an owner that closes a link it found dead with 1006 sends the next connect to another gateway',
    { timeout: TEST_MS },
    async () => {
      const [first, second] = [await gateway(), await gateway()];
      const transport = websocketClientTransport({ url: [first.url, second.url], random: () => 0 });
      const client = await connectVia(transport);
      client.conn.close(CLOSE_CODES.abnormal, 'heartbeat timeout');
      await connectVia(transport);
      await until('both gateways to accept', () => first.sockets.length + second.sockets.length === 2);
      expect(counts([first, second])).toEqual([1, 1]);
    },
  );

  describe('with the engines', () => {
    function client(urls: string[]): PostboxClient {
      const c = createClient({
        transport: websocketClientTransport({ url: urls, random: () => 0 }),
        store: memoryClientStore(),
        credentials: 'alice',
        // Short waits keep the test quick; the engine still picks each one with full jitter.
        backoffBaseMs: 20,
        backoffMaxMs: 100,
      });
      cleanup.push(() => c.close());
      return c;
    }

    it(
      'a client whose first gateway is down comes online on the next one by itself',
      { timeout: TEST_MS },
      async () => {
        const live = await node();
        const alice = client([await deadUrl(), live.url]);
        await until('alice online', () => alice.state === 'open');
        expect(live.server.connectionCount).toBe(1);
      },
    );

    it(
      'a client whose gateway shuts down comes back online on another gateway by itself',
      { timeout: TEST_MS },
      async () => {
        const [first, second] = [await node(), await node()];
        const alice = client([first.url, second.url]);
        await until('alice online on the first gateway', () => alice.state === 'open');
        expect([first.server.connectionCount, second.server.connectionCount]).toEqual([1, 0]);
        await first.server.close();
        await until(
          'alice online on the second gateway',
          () => alice.state === 'open' && second.server.connectionCount === 1,
        );
      },
    );
  });
});

/** A WebSocket upgrade done by hand on a raw TCP socket, so a test controls every byte and every read. */
async function handshake(port: number) {
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => {});
  cleanup.push(() => socket.destroy());
  const ended = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  let buffered = Buffer.alloc(0);
  let wake: (() => void) | undefined;
  socket.on('data', (d: Buffer) => {
    buffered = Buffer.concat([buffered, d]);
    wake?.();
  });
  const need = async (enough: () => boolean): Promise<void> => {
    while (!enough()) {
      if (socket.destroyed) throw new Error('socket closed');
      await Promise.race([new Promise<void>((resolve) => (wake = resolve)), ended]);
    }
  };
  const nextBytes = async (n: number): Promise<Buffer> => {
    await need(() => buffered.length >= n);
    const out = buffered.subarray(0, n);
    buffered = buffered.subarray(n);
    return out;
  };
  await once(socket, 'connect');
  socket.write(
    `GET /postbox HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
      'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n',
  );
  await need(() => buffered.includes('\r\n\r\n'));
  const end = buffered.indexOf('\r\n\r\n') + 4;
  expect(buffered.subarray(0, end).toString()).toMatch(/^HTTP\/1\.1 101 /);
  buffered = buffered.subarray(end);
  return { socket, nextBytes, ended };
}
