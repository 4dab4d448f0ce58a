import { describe, expect, it } from 'vitest';
import { transportConformance, type TransportSubject } from '../src/testing/transport-conformance.js';
import { VirtualClock } from '../src/testing/virtual-clock.js';
import {
  memoryNetwork,
  type LinkFaults,
  type MemoryLink,
  type MemoryNetwork,
} from '../src/transport/memory.js';
import type { Connection } from '../src/transport/types.js';
import { seededRandom } from '../src/util/clock.js';

const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
const dec = (b: Uint8Array): string => new TextDecoder().decode(b);

/** A memory network on the real clock, for the conformance suite. */
const memorySubject = (name: string, faults?: LinkFaults): TransportSubject => ({
  name,
  async setup() {
    const net = memoryNetwork(faults ? { faults } : {});
    return {
      server: net.server,
      client: () => net.client('conformance'),
      async teardown() {
        net.cutAll();
        await net.server.close();
      },
    };
  },
});

for (const subject of [
  memorySubject('memory transport'),
  memorySubject('memory transport with latency and a slow link', {
    latency: { min: 0, max: 3 },
    bytesPerMs: 50_000,
  }),
]) {
  describe(`${subject.name} conformance`, () => {
    for (const c of transportConformance(subject)) it(c.name, () => c.run());
  });
}

interface Recorder {
  frames: { at: number; text: string }[];
  closes: { at: number; code: number; reason: string }[];
  drains: number[];
  texts(): string[];
}

function recorder(clock: VirtualClock, connection: Connection): Recorder {
  const r: Recorder = { frames: [], closes: [], drains: [], texts: () => r.frames.map((f) => f.text) };
  connection.setHandlers({
    frame: (data) => r.frames.push({ at: clock.now(), text: dec(data) }),
    close: (code, reason) => r.closes.push({ at: clock.now(), code, reason }),
    drain: () => r.drains.push(clock.now()),
  });
  return r;
}

interface Pair {
  link: MemoryLink;
  client: Connection;
  server: Connection;
  atClient: Recorder;
  atServer: Recorder;
}

/** A network on a virtual clock starting at 0, with a listening server that records nothing by itself. */
async function world(faults: LinkFaults = {}, seed = 1) {
  const clock = new VirtualClock(0);
  const net: MemoryNetwork = memoryNetwork({ clock, random: seededRandom(seed), faults });
  const accepted: Connection[] = [];
  await net.server.listen((c) => accepted.push(c));
  /** Connects `name` (advancing past the worst-case latency) and records both sides. */
  const open = async (name = 'alice/phone'): Promise<Pair> => {
    const pending = net.client(name).connect();
    await clock.advance(faults.latency?.max ?? 0);
    const client = await pending;
    const server = accepted.at(-1)!;
    const link = net.connections().at(-1)!;
    return { link, client, server, atClient: recorder(clock, client), atServer: recorder(clock, server) };
  };
  return { clock, net, accepted, open };
}

const HOUR = 3_600_000;

describe('memory transport faults, on a virtual clock', () => {
  it('random latency never reorders frames on one direction of a link', async () => {
    const { clock, open } = await world({ latency: { min: 1, max: 100 } }, 11);
    const { client, server, atClient, atServer } = await open();
    const sentAt: number[] = [];
    for (let i = 0; i < 200; i++) {
      sentAt.push(clock.now());
      client.send(enc(`up${i}`));
      server.send(enc(`down${i}`));
      await clock.advance(1);
    }
    await clock.advance(200);
    expect(atServer.texts()).toEqual(Array.from({ length: 200 }, (_, i) => `up${i}`));
    expect(atClient.texts()).toEqual(Array.from({ length: 200 }, (_, i) => `down${i}`));
    for (const r of [atServer, atClient]) {
      const delays = r.frames.map((f, i) => f.at - sentAt[i]!);
      expect(Math.min(...delays)).toBeGreaterThanOrEqual(1);
      // Delays vary (latency is really random) ...
      expect(new Set(delays.map(Math.round)).size).toBeGreaterThan(20);
      // ... and FIFO held some frames back to arrive with the one they would have overtaken.
      expect(r.frames.some((f, i) => i > 0 && f.at === r.frames[i - 1]!.at)).toBe(true);
      for (let i = 1; i < r.frames.length; i++)
        expect(r.frames[i]!.at).toBeGreaterThanOrEqual(r.frames[i - 1]!.at);
    }
  });

  it('a close travels behind the frames sent before it', async () => {
    const { clock, open } = await world({ latency: { min: 1, max: 100 } }, 5);
    const { client, atServer, atClient } = await open();
    for (let i = 0; i < 20; i++) client.send(enc(`m${i}`));
    client.close(4100, 'bye');
    await clock.advance(200);
    expect(atServer.texts()).toEqual(Array.from({ length: 20 }, (_, i) => `m${i}`));
    expect(atServer.closes).toEqual([{ at: expect.any(Number), code: 4100, reason: 'bye' }]);
    expect(atServer.closes[0]!.at).toBeGreaterThanOrEqual(atServer.frames.at(-1)!.at);
    expect(atClient.closes).toEqual([{ at: expect.any(Number), code: 4100, reason: 'bye' }]);
  });

  it('a sent frame is copied, so the sender may reuse its buffer at once', async () => {
    const { clock, open } = await world({ latency: { min: 5, max: 5 } });
    const { client, atServer } = await open();
    const buffer = enc('original');
    client.send(buffer);
    buffer.fill(0x21);
    await clock.advance(10);
    expect(atServer.texts()).toEqual(['original']);
  });

  it('a cut loses the frames in flight and both sides get 1006 exactly once', async () => {
    const { clock, net, open } = await world({ latency: { min: 10, max: 10 } });
    const { link, client, server, atClient, atServer } = await open();
    client.send(enc('up'));
    server.send(enc('down'));
    await clock.advance(5);
    link.cut();
    // Only the two close notices are left: the in-flight frames' timers are gone with them.
    expect(clock.pendingTimers).toBe(2);
    expect(link.isOpen).toBe(false);
    expect(net.connections()).toEqual([]);
    client.send(enc('after the cut'));
    link.cut();
    await clock.advance(HOUR);
    expect(atServer.frames).toEqual([]);
    expect(atClient.frames).toEqual([]);
    // Told one latency after the cut (at 15), never earlier.
    expect(atClient.closes).toEqual([{ at: 25, code: 1006, reason: 'cut' }]);
    expect(atServer.closes).toEqual([{ at: 25, code: 1006, reason: 'cut' }]);
    expect(client.isOpen).toBe(false);
    expect(server.isOpen).toBe(false);
  });

  it('an interceptor can cut the link exactly as the 3rd server→client frame is about to cross, and that frame never arrives', async () => {
    const { clock, net, open } = await world({ latency: { min: 2, max: 8 } }, 3);
    const { link, client, server, atClient, atServer } = await open();
    const seen: string[] = [];
    net.intercept((frame, direction, l) => {
      seen.push(`${direction} ${dec(frame)}`);
      // The two frames before this one were carried: the cut falls between them and this one.
      return direction === 'toClient' && l.stats.toClient.frames === 2 ? 'cut' : 'pass';
    });
    for (let i = 1; i <= 5; i++) {
      client.send(enc(`send${i}`));
      server.send(enc(`ack${i}`));
      await clock.advance(10); // past the worst latency: earlier frames have landed
    }
    await clock.advance(HOUR);
    expect(seen).toEqual([
      'toServer send1',
      'toClient ack1',
      'toServer send2',
      'toClient ack2',
      'toServer send3',
      'toClient ack3',
    ]);
    expect(atClient.texts()).toEqual(['ack1', 'ack2']);
    expect(atServer.texts()).toEqual(['send1', 'send2']); // send3 was in flight when the link died
    expect(link.stats.toClient).toEqual({ frames: 2, bytes: 8 });
    expect(atClient.closes.map((c) => c.code)).toEqual([1006]);
    expect(atServer.closes.map((c) => c.code)).toEqual([1006]);
    expect(link.isOpen).toBe(false);
  });

  it("an interceptor's 'drop' loses only that frame and keeps the link open", async () => {
    const { clock, net, open } = await world({ latency: { min: 1, max: 3 } });
    const { link, client, atServer, atClient } = await open();
    net.intercept((frame) => (dec(frame) === 'b' ? 'drop' : 'pass'));
    for (const t of ['a', 'b', 'c']) client.send(enc(t));
    await clock.advance(10);
    net.intercept(undefined);
    client.send(enc('b'));
    await clock.advance(10);
    expect(atServer.texts()).toEqual(['a', 'c', 'b']);
    expect(link.isOpen).toBe(true);
    expect(atServer.closes).toEqual([]);
    expect(atClient.closes).toEqual([]);
  });

  it('a half-open link stops frames silently both ways and tells neither side, even after an hour', async () => {
    const { clock, net, open } = await world({ latency: { min: 5, max: 5 } });
    const { link, client, server, atClient, atServer } = await open();
    client.send(enc('in flight'));
    await clock.advance(2);
    link.halfOpen();
    client.send(enc('up'));
    server.send(enc('down'));
    await clock.advance(HOUR);
    expect(atServer.frames).toEqual([]);
    expect(atClient.frames).toEqual([]);
    expect(atServer.closes).toEqual([]);
    expect(atClient.closes).toEqual([]);
    expect([link.isOpen, link.isHalfOpen, client.isOpen, server.isOpen]).toEqual([true, true, true, true]);
    expect(net.connections().map((l) => l.id)).toEqual([link.id]);

    // The client's heartbeat notices and closes: only the client hears of it.
    client.close(4000, 'heartbeat timeout');
    await clock.advance(HOUR);
    expect(atClient.closes.map((c) => [c.code, c.reason])).toEqual([[4000, 'heartbeat timeout']]);
    expect(atServer.closes).toEqual([]);
    expect(server.isOpen).toBe(true);
    expect(net.connections()).toEqual([]);

    // A later cut (say, a server crash) still reaches the side that never knew.
    link.cut();
    await clock.advance(10);
    expect(atServer.closes.map((c) => c.code)).toEqual([1006]);
    expect(atClient.closes).toHaveLength(1);
  });

  it('a slow link queues bytes in bufferedAmount, drains them at bytesPerMs, and calls drain when empty', async () => {
    const { clock, open } = await world({ bytesPerMs: 10 });
    const { client, server, atServer, atClient } = await open();
    const frame = new Uint8Array(100);
    for (let i = 0; i < 10; i++) client.send(frame);
    expect(client.bufferedAmount).toBe(1000);
    expect(server.bufferedAmount).toBe(0);
    await clock.advance(50);
    expect(client.bufferedAmount).toBe(500);
    expect(atServer.frames.map((f) => f.at)).toEqual([10, 20, 30, 40, 50]);
    expect(atClient.drains).toEqual([]);
    await clock.advance(50);
    expect(client.bufferedAmount).toBe(0);
    expect(atServer.frames).toHaveLength(10);
    expect(atClient.drains).toEqual([100]);
  });

  it('connect is refused when nothing listens and after server.close(), and succeeds again after a new listen()', async () => {
    const clock = new VirtualClock(0);
    const net = memoryNetwork({ clock, faults: { latency: { min: 3, max: 3 } } });
    const connect = async () => {
      const pending = net.client('bob/laptop').connect();
      const settled = pending.then(
        (c) => ({ ok: true as const, c }),
        (e: unknown) => ({ ok: false as const, e }),
      );
      await clock.advance(3);
      return settled;
    };
    const refused1 = await connect();
    expect(refused1.ok).toBe(false);
    expect(String((refused1 as { e: unknown }).e)).toMatch(/nothing listening/);

    const accepted: Connection[] = [];
    await net.server.listen((c) => accepted.push(c));
    await expect(net.server.listen(() => {})).rejects.toThrow(/already listening/);
    const first = await connect();
    expect(first.ok).toBe(true);
    expect(accepted).toHaveLength(1);

    await net.server.close();
    expect((await connect()).ok).toBe(false);
    // Existing links are the owner's business, not the listener's.
    expect(net.connections()).toHaveLength(1);

    await net.server.listen((c) => accepted.push(c));
    expect((await connect()).ok).toBe(true);
    expect(accepted).toHaveLength(2);
    expect(net.connections().map((l) => l.id)).toEqual(['bob/laptop#1', 'bob/laptop#2']);
  });

  it('connectFailProbability refuses connects, and a refused connect creates no link', async () => {
    const { clock, net } = await world({ connectFailProbability: 1 });
    const outcome = net
      .client('c')
      .connect()
      .then(
        () => 'connected',
        (e: Error) => e.message,
      );
    await clock.advance(0);
    expect(await outcome).toMatch(/refused/);
    expect(net.connections()).toEqual([]);
  });

  it('cutProbability and halfOpenProbability break a link on the frame they pick', async () => {
    const cutWorld = await world({ cutProbability: 1 });
    const a = await cutWorld.open();
    a.client.send(enc('x'));
    await cutWorld.clock.advance(10);
    expect(a.atServer.frames).toEqual([]);
    expect([a.atClient.closes.length, a.atServer.closes.length]).toEqual([1, 1]);

    const halfWorld = await world({ halfOpenProbability: 1 });
    const b = await halfWorld.open();
    b.server.send(enc('y'));
    await halfWorld.clock.advance(HOUR);
    expect(b.atClient.frames).toEqual([]);
    expect(b.link.isHalfOpen).toBe(true);
    expect([b.atClient.closes.length, b.atServer.closes.length]).toEqual([0, 0]);
  });

  it('frames and a close that arrive before setHandlers are handed over in order when it is called', async () => {
    const { clock, net, accepted } = await world({ latency: { min: 1, max: 1 } });
    const pending = net.client('late').connect();
    await clock.advance(1);
    const client = await pending;
    const server = accepted[0]!;
    server.send(enc('one'));
    server.send(enc('two'));
    server.close(1001, 'going away');
    await clock.advance(10);
    expect(client.isOpen).toBe(false);
    const atClient = recorder(clock, client);
    expect(atClient.frames).toEqual([]); // not inside setHandlers: its caller may not be ready
    await clock.advance(0);
    expect(atClient.texts()).toEqual(['one', 'two']);
    expect(atClient.closes.map((c) => [c.code, c.reason])).toEqual([[1001, 'going away']]);
    expect(() => client.setHandlers({ frame: () => {}, close: () => {} })).toThrow(/twice/);
  });

  it('a frame arriving while buffered frames are being handed over queues behind them', async () => {
    const { clock, net, accepted } = await world();
    const pending = net.client('late').connect();
    await clock.advance(0);
    const client = await pending;
    const server = accepted[0]!;
    server.send(enc('one'));
    await clock.advance(0);
    // 'two' lands in the same instant as the hand-over of 'one', but was scheduled first.
    server.send(enc('two'));
    const atClient = recorder(clock, client);
    await clock.advance(0);
    expect(atClient.texts()).toEqual(['one', 'two']);
  });

  it('cutAll cuts every live link; links get deterministic ids in creation order', async () => {
    const { clock, net, open } = await world({ latency: { min: 1, max: 4 } });
    const pairs = [await open('a'), await open('b'), await open('c')];
    expect(net.connections().map((l) => [l.id, l.name])).toEqual([
      ['a#1', 'a'],
      ['b#2', 'b'],
      ['c#3', 'c'],
    ]);
    pairs[1]!.client.close();
    expect(net.connections().map((l) => l.id)).toEqual(['a#1', 'c#3']);
    net.cutAll();
    await clock.advance(10);
    expect(net.connections()).toEqual([]);
    for (const p of [pairs[0]!, pairs[2]!]) {
      expect(p.atClient.closes.map((c) => c.code)).toEqual([1006]);
      expect(p.atServer.closes.map((c) => c.code)).toEqual([1006]);
    }
    expect(pairs[1]!.atServer.closes.map((c) => c.code)).toEqual([1000]);
  });

  it('rejects nonsense fault settings instead of silently ignoring them', () => {
    const net = memoryNetwork({ clock: new VirtualClock(0) });
    expect(() => net.setFaults({ latency: { min: 10, max: 1 } })).toThrow(RangeError);
    expect(() => net.setFaults({ bytesPerMs: 0 })).toThrow(RangeError);
    expect(() => net.setFaults({ cutProbability: 1.5 })).toThrow(RangeError);
    expect(() => memoryNetwork({ faults: { connectFailProbability: -1 } })).toThrow(RangeError);
  });

  it('the same seed replays the same deliveries, at the same times', async () => {
    const run = async (seed: number): Promise<string[]> => {
      const clock = new VirtualClock(0);
      const net = memoryNetwork({
        clock,
        random: seededRandom(seed),
        faults: {
          latency: { min: 1, max: 50 },
          bytesPerMs: 20,
          cutProbability: 0.01,
          halfOpenProbability: 0.005,
          connectFailProbability: 0.1,
        },
      });
      const log: string[] = [];
      await net.server.listen((c) =>
        c.setHandlers({
          frame: (d) => {
            log.push(`${clock.now()} server ${c.id} ${dec(d)}`);
            c.send(enc(`echo ${dec(d)}`));
          },
          close: (code, reason) => log.push(`${clock.now()} server ${c.id} close ${code} ${reason}`),
        }),
      );
      const clients: Connection[] = [];
      for (let i = 0; i < 6; i++) {
        net
          .client(`dev${i}`)
          .connect()
          .then(
            (c) => {
              clients.push(c);
              c.setHandlers({
                frame: (d) => log.push(`${clock.now()} ${c.id} ${dec(d)}`),
                close: (code, reason) => log.push(`${clock.now()} ${c.id} close ${code} ${reason}`),
              });
            },
            (e: Error) => log.push(`${clock.now()} dev${i} ${e.message}`),
          );
      }
      await clock.advance(60);
      for (let k = 0; k < 40; k++) {
        for (const c of clients) c.send(enc(`${c.id} m${k} ${'x'.repeat(k * 3)}`));
        await clock.advance(7);
      }
      await clock.advance(HOUR);
      return log;
    };
    const first = await run(42);
    expect(first.length).toBeGreaterThan(100);
    expect(await run(42)).toEqual(first);
    expect(await run(43)).not.toEqual(first);
  });
});
