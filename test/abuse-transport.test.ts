// Issue 22, transport half: nothing costly before authentication, every socket counted, the
// outbound queue bounded. Real servers on real sockets; no clock assertions.
import { Packr } from 'msgpackr';
import { afterEach, describe, expect, it } from 'vitest';
import { CLOSE_CODES, encodeFrame } from '../src/protocol/index.js';
import { createServer, type PostboxServer } from '../src/server/index.js';
import { memoryServerStore } from '../src/server/stores/memory.js';
import { websocketServerTransport, type WebSocketServerOptions } from '../src/transport/websocket.js';
import { rawPeer } from './fixtures/raw-peer.js';

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
