// Issue 22, transport half: nothing costly before authentication, every socket counted, the
// outbound queue bounded. Real servers on real sockets; no clock assertions.
import { Packr } from 'msgpackr';
import { createServer as createHttpServer } from 'node:http';
import { connect, type Socket } from 'node:net';
import { WebSocket } from 'ws';
import { afterEach, describe, expect, it } from 'vitest';
import { CLOSE_CODES, encodeFrame } from '../src/protocol/index.js';
import { createServer, type PostboxServer } from '../src/server/index.js';
import { memoryServerStore } from '../src/server/stores/memory.js';
import type { Connection } from '../src/transport/types.js';
import {
  guardSockets,
  websocketServerTransport,
  type WebSocketServerOptions,
} from '../src/transport/websocket.js';
import { rawPeer, type RawPeer } from './fixtures/raw-peer.js';
import { kyberBundle } from './fixtures/keys.js';

let cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const f of cleanup.reverse()) await f();
  cleanup = [];
});

async function serve(transportOptions: Partial<WebSocketServerOptions> = {}) {
  const server: PostboxServer = createServer({
    store: memoryServerStore(),
    authenticate: (cred) => (typeof cred === 'string' ? { user: cred, device: 'd' } : null),
  });
  const transport = websocketServerTransport({
    port: 0,
    host: '127.0.0.1',
    ...transportOptions,
  } as WebSocketServerOptions);
  await server.listen(transport);
  cleanup.push(() => server.close());
  return { server, url: transport.url!, port: transport.address!.port };
}

/** A msgpack array of `n` Error extension values (msgpackr builds an Error, with a stack trace, for each). */
function errorExtensions(n: number): Uint8Array {
  return new Packr({ moreTypes: true, useRecords: false }).pack(
    Array.from({ length: n }, () => new Error('x')),
  );
}

describe('nothing costly before authentication', () => {
  it('a frame holding msgpack extension types is refused unread, without credentials', async () => {
    const { url } = await serve();
    const peer = await rawPeer(url);
    peer.send(errorExtensions(500));
    expect(await peer.waitClosed()).toBe(CLOSE_CODES.protocolError);
    expect(peer.frames).toEqual([
      { t: 'err', c: 'invalid_frame', m: 'frame refused: a msgpack extension type' },
    ]);
  });

  it('a frame claiming more elements than it has bytes is refused unread', async () => {
    const { url } = await serve();
    const peer = await rawPeer(url);
    peer.send(new Uint8Array([0xdd, 0xff, 0xff, 0xff, 0xff, 0x01]));
    expect(await peer.waitClosed()).toBe(CLOSE_CODES.protocolError);
    expect(peer.frames[0]).toMatchObject({
      c: 'invalid_frame',
      m: 'frame refused: a length longer than the frame',
    });
  });

  it('before hello a frame may be 16 KiB at most; after hello the full frame limit applies', async () => {
    const { url } = await serve();
    const big = encodeFrame({ t: 'hello', v: [1, 1], cred: 'x'.repeat(20_000) });
    const early = await rawPeer(url);
    early.send(big);
    expect(await early.waitClosed()).toBe(CLOSE_CODES.tooLarge);
    expect(early.frames[0]).toMatchObject({ t: 'err', c: 'too_large' });

    const bob = await rawPeer(url);
    bob.hello('bob');
    await until(() => bob.frames.some((f) => f.t === 'welcome'));
    const late = await rawPeer(url);
    late.hello('alice');
    await until(() => late.frames.some((f) => f.t === 'welcome'));
    late.send(
      encodeFrame({
        t: 'send',
        r: 1,
        id: '01J00000000000000000000000',
        to: 'bob',
        seq: 1,
        b: new Uint8Array(40_000),
      }),
    );
    await until(() => late.frames.some((f) => f.t === 'ok' || f.t === 'err'));
    expect(late.frames.find((f) => f.t === 'ok' || f.t === 'err')).toEqual({ t: 'ok', r: 1 });
    expect(late.closed).toBeUndefined();
    late.ws.close();
    bob.ws.close();
  });
});

async function until(cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('every socket is counted', () => {
  it('raw TCP sockets that never speak count against their address; other addresses still connect', async () => {
    const { url, port } = await serve({ maxConnectionsPerAddress: 5 });
    const held = await Promise.all(Array.from({ length: 5 }, () => tcp(port, '127.0.0.2')));
    cleanup.push(async () => held.forEach((s) => s.destroy()));
    expect(await refusedSoon(port, '127.0.0.2')).toBe(true);
    const other = await rawPeer(url, '127.0.0.3');
    other.hello('carol');
    await until(() => other.frames.some((f) => f.t === 'welcome'));
    other.ws.close();
  });

  it('past the global socket cap a new socket is reset, whatever its address', async () => {
    const { port } = await serve({ maxSockets: 4 });
    const held = await Promise.all(
      ['127.0.0.2', '127.0.0.3', '127.0.0.4', '127.0.0.5'].map((a) => tcp(port, a)),
    );
    cleanup.push(async () => held.forEach((s) => s.destroy()));
    expect(await refusedSoon(port, '127.0.0.6')).toBe(true);
    held[0]!.destroy();
    await new Promise((r) => setTimeout(r, 50));
    const again = await tcp(port, '127.0.0.6');
    expect(await closedSoon(again, 300)).toBe(false);
    again.destroy();
  });

  it('a socket over its cap is reset on accept, before the HTTP server builds a socket for it', async () => {
    // A flooding peer reconnects as fast as it is reset: the refusal must not cost a net.Socket and
    // an HTTP parser. The `connection` event counts the sockets the server built.
    const http = createHttpServer();
    let built = 0;
    http.on('connection', () => built++);
    const guard = guardSockets(http, { maxSocketsPerAddress: 2 });
    await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
    cleanup.push(() => new Promise<void>((r) => http.close(() => r())));
    const port = (http.address() as { port: number }).port;
    const held = await Promise.all([tcp(port, '127.0.0.2'), tcp(port, '127.0.0.2')]);
    cleanup.push(async () => held.forEach((s) => s.destroy()));
    await until(() => built === 2);
    for (let i = 0; i < 5; i++) expect(await refusedSoon(port, '127.0.0.2')).toBe(true);
    expect(guard.refused.address).toBe(5);
    expect(built).toBe(2);
    expect(guard.openFrom('127.0.0.2')).toBe(2);
    // Detached, the server accepts again as Node alone would.
    guard.detach();
    const free = await tcp(port, '127.0.0.2');
    cleanup.push(async () => void free.destroy());
    await until(() => built === 3);
  });

  it('a socket that does not finish its request headers in time is reset', async () => {
    const { port } = await serve({ headersTimeoutMs: 200 });
    const slow = await tcp(port, '127.0.0.2');
    slow.write('GET /postbox HTTP/1.1\r\nHost: x\r\n');
    const trickle = setInterval(() => slow.write('X-A: b\r\n'), 50);
    try {
      expect(await closedSoon(slow, 5000)).toBe(true);
    } finally {
      clearInterval(trickle);
    }
  });
});

describe('trusted proxies', () => {
  it('behind a trusted proxy each forwarded client has its own per-address count; an untrusted peer’s header is ignored', async () => {
    const { url } = await serve({
      maxConnectionsPerAddress: 2,
      trustProxy: { proxies: ['127.0.0.2'] },
    });
    const via = (client: string, from: string) => rawPeerWith(url, from, { 'x-forwarded-for': `${client}` });
    // Through the proxy (127.0.0.2): two clients, two each.
    const a = await Promise.all([via('203.0.113.1', '127.0.0.2'), via('203.0.113.1', '127.0.0.2')]);
    await expect(via('203.0.113.1', '127.0.0.2')).rejects.toThrow(/429/);
    const b = await via('203.0.113.2', '127.0.0.2');
    // Not the proxy: its header means nothing, so its own address is counted (its third socket is
    // reset as soon as it is accepted, before any header is read).
    const c = await Promise.all([via('198.51.100.1', '127.0.0.3'), via('198.51.100.2', '127.0.0.3')]);
    await expect(via('198.51.100.3', '127.0.0.3')).rejects.toThrow(/ECONNRESET|socket hang up/);
    for (const ws of [...a, b, ...c]) ws.close();
  });
});

function tcp(port: number, localAddress: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port, localAddress }, () => resolve(s));
    s.once('error', reject);
  });
}

/** Whether the server closed (or reset) `s` within `ms`. */
function closedSoon(s: Socket, ms = 2000): Promise<boolean> {
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    s.on('error', () => {});
    s.once('close', () => {
      clearTimeout(t);
      resolve(true);
    });
  });
}

/** Whether a new socket from `localAddress` is refused: reset during its connect, or closed soon after. */
function refusedSoon(port: number, localAddress: string, ms = 2000): Promise<boolean> {
  return tcp(port, localAddress).then(
    (s) => closedSoon(s, ms),
    () => true,
  );
}

function rawPeerWith(url: string, localAddress: string, headers: Record<string, string>): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { localAddress, headers });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
    ws.once('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
  });
}

/** A transport with a queued-bytes bound of `max` whose accepted connections record their close code. */
async function boundedTransport(max: number, more: { shedGraceMs?: number; readPauseBytes?: number } = {}) {
  const transport = websocketServerTransport({ port: 0, host: '127.0.0.1', maxQueuedBytes: max, ...more });
  type Entry = { conn: Connection; closed?: number; frames: number; drains: number };
  const accepted: Entry[] = [];
  await transport.listen((conn) => {
    const entry: Entry = { conn, frames: 0, drains: 0 };
    conn.setHandlers({
      frame: () => void entry.frames++,
      close: (code) => (entry.closed = code),
      drain: () => void entry.drains++,
    });
    accepted.push(entry);
  });
  cleanup.push(async () => {
    for (const a of accepted) a.conn.close();
    await transport.close();
  });
  return { transport, accepted };
}

const pauseReading = (p: RawPeer) => (p.ws as unknown as { _socket: Socket })._socket.pause();
const resumeReading = (p: RawPeer) => (p.ws as unknown as { _socket: Socket })._socket.resume();

describe('queued outbound bytes are bounded across sessions', () => {
  it('past the bound the slowest reader is shed with 4008 and the others keep their connections', async () => {
    const max = 4 * 1024 * 1024;
    const { transport, accepted } = await boundedTransport(max);
    // Two peers that stop reading: the server sends the first twice what it sends the second.
    const peers = [await rawPeer(transport.url!), await rawPeer(transport.url!)];
    for (const p of peers) pauseReading(p);
    await until(() => accepted.length === 2);
    const [slow, slower] = [accepted[1]!, accepted[0]!];
    const chunk = new Uint8Array(64 * 1024);
    for (let i = 0; i < 2000 && slower.closed === undefined; i++) {
      slower.conn.send(chunk);
      slower.conn.send(chunk);
      slow.conn.send(chunk);
      expect(transport.queuedBytes).toBeLessThanOrEqual(max + 2 * chunk.byteLength);
      if (i % 16 === 0) await new Promise((r) => setImmediate(r));
    }
    expect(slower.closed).toBe(CLOSE_CODES.slowReader);
    expect(slow.closed).toBeUndefined();
    expect(transport.shedCount).toBe(1);
    expect(transport.queuedBytes).toBeLessThanOrEqual(max);
  });

  it('a peer that does not read what it is sent is not read either, until it catches up', async () => {
    const { transport, accepted } = await boundedTransport(64 * 1024 * 1024, { readPauseBytes: 256 * 1024 });
    const peer = await rawPeer(transport.url!);
    pauseReading(peer);
    await until(() => accepted.length === 1);
    const server = accepted[0]!;
    // Answers the peer does not take: once the kernel's buffers are full too, more than
    // readPauseBytes stay queued and its frames are left unread.
    const chunk = new Uint8Array(64 * 1024);
    for (let i = 0; i < 2000 && server.conn.bufferedAmount <= 256 * 1024; i++) {
      for (let k = 0; k < 8; k++) server.conn.send(chunk);
      await new Promise((r) => setImmediate(r));
    }
    expect(server.conn.bufferedAmount).toBeGreaterThan(256 * 1024);
    const asks = 20;
    for (let i = 0; i < asks; i++) peer.send(new Uint8Array([0x90]));
    // Proof of order, not of time: an echo through a second connection of the same server, sent
    // after the asks, comes back while the asks still wait unread.
    const other = await rawPeer(transport.url!);
    await until(() => accepted.length === 2);
    other.send(new Uint8Array([0x90]));
    await until(() => accepted[1]!.frames === 1);
    expect(server.frames).toBe(0);
    // It reads what it was sent; its queue drains, and then its frames are read, all of them.
    resumeReading(peer);
    await until(() => server.frames === asks);
    expect(server.closed).toBeUndefined();
  });

  it('bytes the kernel took for a peer that stopped reading count as unread, until its pong shows it read them', async () => {
    const { transport, accepted } = await boundedTransport(64 * 1024 * 1024);
    const peer = await rawPeer(transport.url!);
    await until(() => accepted.length === 1);
    const server = accepted[0]!;
    const chunk = new Uint8Array(64 * 1024);
    // A reading peer answers the pings: what it was sent is soon confirmed.
    for (let i = 0; i < 32; i++) server.conn.send(chunk);
    await until(() => server.conn.unreadBytes! <= 64 * 1024);
    pauseReading(peer);
    // 2 MiB to a peer that stopped reading: on loopback the kernel takes it all, so nothing
    // stays queued in the process, and yet all of it is unread.
    for (let i = 0; i < 32; i++) server.conn.send(chunk);
    await until(() => server.conn.bufferedAmount === 0);
    expect(server.conn.unreadBytes).toBeGreaterThanOrEqual(2 * 1024 * 1024);
    // A pong the peer made up (unsolicited pongs are legal) confirms nothing.
    const unread = server.conn.unreadBytes;
    peer.ws.pong(Buffer.from('made up!'));
    const echo = await rawPeer(transport.url!); // order: the pong was read before this arrives
    await until(() => accepted.length === 2);
    echo.ws.close();
    expect(server.conn.unreadBytes).toBe(unread);
    const before = server.drains;
    // It reads again: its ws answers the ping, the unread bytes fall back, and drain fires.
    resumeReading(peer);
    await until(() => server.conn.unreadBytes! <= 64 * 1024 && server.drains > before);
    expect(server.closed).toBeUndefined();
  });

  it('on a real socket, a session that stops reading is backlogged once its unread answers pass sendHighWaterBytes, though the kernel took them', async () => {
    const store = memoryServerStore();
    const server = createServer({
      store,
      authenticate: (cred) => (typeof cred === 'string' ? { user: cred, device: 'd' } : null),
      sendHighWaterBytes: 256 * 1024,
      maxNodeKeyClaimsPerSecond: 0,
    });
    const transport = websocketServerTransport({ port: 0, host: '127.0.0.1' });
    await server.listen(transport);
    cleanup.push(() => server.close());
    const owners = Array.from({ length: 40 }, (_, i) => `owner${i}`);
    for (const user of owners) {
      await server.registerDevice(user, 'd');
      await store.putKeys({ user, device: 'd' }, kyberBundle());
    }
    let claims = 0;
    const claimKeys = store.claimKeys.bind(store);
    store.claimKeys = (...args) => {
      claims++;
      return claimKeys(...args);
    };
    const peer = await rawPeer(transport.url!);
    peer.hello('mallory');
    await until(() => peer.frames.some((f) => f.t === 'welcome'));
    pauseReading(peer);
    // 30 claims of 40 bundles, 20 ms apart as an attacker paces them (some 70 KB an answer; 2 MB
    // in all, which loopback's kernel buffers take without a byte queued in the server).
    const asks = 30;
    for (let r = 1; r <= asks; r++) {
      peer.send(encodeFrame({ t: 'kget', r, u: owners }));
      await new Promise((ok) => setTimeout(ok, 20));
    }
    // Order, not time: a second session's claim, sent after them, is answered first.
    const carol = await rawPeer(transport.url!);
    carol.hello('carol');
    await until(() => carol.frames.some((f) => f.t === 'welcome'));
    carol.send(encodeFrame({ t: 'kget', r: 1, u: ['owner0'] }));
    await until(() => carol.frames.some((f) => f.t === 'kb'));
    // About 256 KiB of answers went out unread (4 of them; a claim or two more when the next frame
    // came before an answer was written): then the session was backlogged, 4 claims wait and the
    // rest were refused before the store was asked. Counting only what is queued in the process,
    // all 30 were answered.
    const first = claims - 1;
    expect(first).toBeGreaterThanOrEqual(4);
    expect(first).toBeLessThanOrEqual(asks / 2);
    // It reads again: its pongs drain it, the held claims are served, every claim answered once.
    resumeReading(peer);
    await until(() => peer.frames.filter((f) => f.t === 'kb' || f.t === 'err').length === asks);
    const answers = peer.frames.filter((f) => f.t === 'kb' || f.t === 'err');
    expect(answers.filter((f) => f.t === 'kb').length).toBe(first + 4);
    expect(claims).toBe(first + 4 + 1);
    expect(new Set(answers.map((f) => f.r)).size).toBe(asks);
  });

  // The close frame is queued behind every byte the peer has not read (frames go in order, and
  // queued bytes cannot be recalled), so only a peer that reads again can hear it.
  for (const [graceMs, what, heard] of [
    [60_000, 'reads again within the grace hears 4008', CLOSE_CODES.slowReader],
    [0, 'reads nothing before the grace ends is reset and sees 1006', CLOSE_CODES.abnormal],
  ] as const) {
    it(`a shed reader that ${what}`, async () => {
      const { transport, accepted } = await boundedTransport(4 * 1024 * 1024, { shedGraceMs: graceMs });
      const peer = await rawPeer(transport.url!);
      pauseReading(peer);
      await until(() => accepted.length === 1);
      const server = accepted[0]!;
      const chunk = new Uint8Array(64 * 1024);
      for (let i = 0; i < 2000 && server.closed === undefined; i++) {
        server.conn.send(chunk);
        if (i % 16 === 0) await new Promise((r) => setImmediate(r));
      }
      // The owner hears the close a moment after the shed (the slot delivers it asynchronously).
      await until(() => server.closed !== undefined);
      expect(server.closed).toBe(CLOSE_CODES.slowReader);
      // Order, not time: a timer set now runs after the reset timer the shed set (same process).
      await new Promise((r) => setTimeout(r, 20));
      resumeReading(peer);
      expect(await peer.waitClosed()).toBe(heard);
    });
  }
});
