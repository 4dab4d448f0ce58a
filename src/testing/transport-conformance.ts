/**
 * The transport conformance suite: the guarantees of `src/transport/types.ts` that postbox's
 * engines rely on, checked against any transport (the in-memory one, WebSocket, yours) under
 * any test runner. Runs in Node, in real time, with small bounded waits.
 */
import assert from 'node:assert/strict';
import type { ClientTransport, Connection, ServerTransport } from '../transport/types.js';
import type { ConformanceCase } from './conformance.js';

/** A transport under test, as {@link transportConformance} drives it. */
export interface TransportSubject {
  /** Shown in failure messages. */
  name: string;
  /**
   * Starts a fresh server transport (not yet listening: each case calls `listen`) and returns it
   * with a factory for client transports that reach it, and a teardown that releases everything
   * (a case may already have closed the server). Uses real time.
   */
  setup(): Promise<{ server: ServerTransport; client(): ClientTransport; teardown(): Promise<void> }>;
}

/** How long any one wait may take before the case fails: generous for CI, bounded for hangs. */
const WAIT_MS = 5_000;
/** A quiet period long enough for a stray duplicate or late frame to show up on a local transport. */
const SETTLE_MS = 50;

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + WAIT_MS;
  while (!condition()) {
    if (Date.now() > deadline) assert.fail(`timed out after ${WAIT_MS} ms waiting for ${what}`);
    await sleep(2);
  }
}

/** Bounds a promise that a broken transport might leave pending forever. */
async function within<T>(promise: Promise<T>, what: string): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new assert.AssertionError({ message: `${what} did not settle in ${WAIT_MS} ms` })),
      WAIT_MS,
    );
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

type Event = { type: 'frame'; data: Uint8Array } | { type: 'close'; code: number; reason: string };

/** Everything one connection reported, in order. */
interface Recording {
  events: Event[];
  frames(): Uint8Array[];
  closes(): { code: number; reason: string }[];
}

function record(connection: Connection): Recording {
  const events: Event[] = [];
  connection.setHandlers({
    frame: (data) => events.push({ type: 'frame', data }),
    close: (code, reason) => events.push({ type: 'close', code, reason }),
  });
  return {
    events,
    frames: () => events.flatMap((e) => (e.type === 'frame' ? [e.data] : [])),
    closes: () => events.flatMap((e) => (e.type === 'close' ? [{ code: e.code, reason: e.reason }] : [])),
  };
}

/** A deterministic frame whose bytes depend on its index, size and stream, so any mix-up shows. */
function pattern(index: number, size: number, salt: number): Uint8Array {
  const bytes = new Uint8Array(size);
  for (let j = 0; j < size; j++) bytes[j] = (index * 131 + j * 7 + salt * 29) & 0xff;
  return bytes;
}

/** 500 frames of 1 to 3000 bytes, with one of 200 KB in the middle. */
function frameSet(salt: number): Uint8Array[] {
  return Array.from({ length: 500 }, (_, i) =>
    pattern(i, i === 250 ? 200 * 1024 : 1 + ((i * 7919 + salt * 97) % 3000), salt),
  );
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}

function assertFrames(actual: Uint8Array[], expected: Uint8Array[], label: string): void {
  assert.equal(actual.length, expected.length, `${label}: frame count`);
  for (let i = 0; i < expected.length; i++) {
    const got = actual[i]!;
    assert.ok(got instanceof Uint8Array, `${label}: frame ${i} is not a Uint8Array`);
    if (!sameBytes(got, expected[i]!)) {
      assert.fail(
        `${label}: frame ${i} differs (got ${got.byteLength} bytes, expected ${expected[i]!.byteLength}); frames lost, reordered or corrupted`,
      );
    }
  }
}

function assertBuffered(connection: Connection, when: string): void {
  const amount = connection.bufferedAmount;
  assert.equal(typeof amount, 'number', `bufferedAmount ${when} is not a number`);
  assert.ok(Number.isFinite(amount) && amount >= 0, `bufferedAmount ${when} is ${amount}`);
}

/** What a case gets: a listening server, client connections, and cleanup it need not think about. */
interface Harness {
  server: ServerTransport;
  client(): ClientTransport;
  /** Server-side connections in acceptance order. */
  accepted: Connection[];
  /** Called for each accepted connection, synchronously, before the case sees it. */
  onAccept: ((connection: Connection) => void) | undefined;
  /** Opens one connection and waits for its server side; neither side has handlers yet. */
  pair(): Promise<{ client: Connection; server: Connection }>;
  /** Opens a connection (closed at teardown). */
  connect(transport?: ClientTransport): Promise<Connection>;
}

async function withHarness(subject: TransportSubject, body: (h: Harness) => Promise<void>): Promise<void> {
  const world = await subject.setup();
  const opened: Connection[] = [];
  const h: Harness = {
    server: world.server,
    client: () => world.client(),
    accepted: [],
    onAccept: undefined,
    async connect(transport = world.client()) {
      const connection = await within(transport.connect(), `${subject.name}: connect()`);
      opened.push(connection);
      return connection;
    },
    async pair() {
      const before = h.accepted.length;
      const client = await h.connect();
      await waitFor(() => h.accepted.length > before, `${subject.name}: the server side of a new connection`);
      assert.equal(h.accepted.length, before + 1, 'one connect() produced one server connection');
      return { client, server: h.accepted[before]! };
    },
  };
  try {
    await within(
      world.server.listen((connection) => {
        h.accepted.push(connection);
        h.onAccept?.(connection);
      }),
      `${subject.name}: listen()`,
    );
    await body(h);
  } finally {
    for (const connection of [...opened, ...h.accepted]) {
      try {
        connection.close(1000, 'conformance teardown');
      } catch {
        // Teardown must not mask the case's own failure.
      }
    }
    await world.teardown();
  }
}

/**
 * The conformance cases for one transport, each named after the guarantee it proves. Register
 * them with any runner (see `registerCases` in `postbox/testing`).
 *
 * @example
 * ```ts
 * const subject: TransportSubject = {
 *   name: 'memory',
 *   async setup() {
 *     const net = memoryNetwork();
 *     return { server: net.server, client: () => net.client('c'), teardown: async () => net.cutAll() };
 *   },
 * };
 * describe('memory transport', () => registerCases(transportConformance(subject), it));
 * ```
 */
export function transportConformance(subject: TransportSubject): ConformanceCase[] {
  const run = (body: (h: Harness) => Promise<void>) => () => withHarness(subject, body);
  return [
    {
      name: 'binary frames arrive intact and in order both ways, from 1 byte to 200 KB',
      run: run(async (h) => {
        const { client, server } = await h.pair();
        const atServer = record(server);
        const atClient = record(client);
        const up = frameSet(1);
        const down = frameSet(2);
        for (let i = 0; i < up.length; i++) {
          client.send(up[i]!);
          server.send(down[i]!);
        }
        await waitFor(
          () => atServer.frames().length >= up.length && atClient.frames().length >= down.length,
          `${up.length} frames each way`,
        );
        await sleep(SETTLE_MS);
        assertFrames(atServer.frames(), up, 'client→server');
        assertFrames(atClient.frames(), down, 'server→client');
      }),
    },
    {
      name: 'a close reaches the peer exactly once with its code and reason, after the frames sent before it; the local close handler fires at most once',
      run: run(async (h) => {
        for (const closer of ['client', 'server'] as const) {
          const pair = await h.pair();
          const local = pair[closer];
          const peer = pair[closer === 'client' ? 'server' : 'client'];
          const atLocal = record(local);
          const atPeer = record(peer);
          const sent = [1, 2, 3].map((i) => pattern(i, 64, 3));
          for (const f of sent) local.send(f);
          local.close(4321, `conformance bye from ${closer}`);
          assert.equal(local.isOpen, false, `${closer}: isOpen right after close()`);
          await waitFor(() => atPeer.closes().length > 0, `the ${closer}'s close at its peer`);
          await sleep(SETTLE_MS);
          assert.deepEqual(
            atPeer.closes(),
            [{ code: 4321, reason: `conformance bye from ${closer}` }],
            `${closer} closed: the peer's close events`,
          );
          assert.equal(
            atPeer.events.at(-1)?.type,
            'close',
            `${closer} closed: nothing after the peer's close event`,
          );
          assertFrames(atPeer.frames(), sent, `${closer} closed: frames sent before close()`);
          assert.equal(peer.isOpen, false, `${closer} closed: the peer's isOpen after its close event`);
          assert.ok(
            atLocal.closes().length <= 1,
            `${closer} closed: the local close handler fired ${atLocal.closes().length} times`,
          );
        }
      }),
    },
    {
      name: 'frames sent before the peer set its handlers are not lost, nor overtaken by later ones',
      run: run(async (h) => {
        const { client, server } = await h.pair();
        const up = Array.from({ length: 25 }, (_, i) => pattern(i, 100 + i, 4));
        const down = Array.from({ length: 25 }, (_, i) => pattern(i, 200 + i, 5));
        for (let i = 0; i < 20; i++) {
          client.send(up[i]!);
          server.send(down[i]!);
        }
        // Long enough for the frames to have arrived and be waiting for handlers.
        await sleep(SETTLE_MS * 2);
        const atServer = record(server);
        const atClient = record(client);
        for (let i = 20; i < 25; i++) {
          client.send(up[i]!);
          server.send(down[i]!);
        }
        await waitFor(
          () => atServer.frames().length >= 25 && atClient.frames().length >= 25,
          '25 frames each way',
        );
        await sleep(SETTLE_MS);
        assertFrames(atServer.frames(), up, 'client→server');
        assertFrames(atClient.frames(), down, 'server→client');
      }),
    },
    {
      name: '50 concurrent connections stay separate: each gets only its own frames, in order',
      run: run(async (h) => {
        h.onAccept = (connection) =>
          connection.setHandlers({ frame: (data) => connection.send(data), close: () => {} });
        const count = 50;
        const perConnection = 10;
        const clients = await Promise.all(Array.from({ length: count }, () => h.connect()));
        const recordings = clients.map(record);
        const expected = clients.map((_, c) =>
          Array.from({ length: perConnection }, (_, k) => {
            const f = pattern(k, 32 + k, c);
            f[0] = c;
            f[1] = k;
            return f;
          }),
        );
        for (let k = 0; k < perConnection; k++) clients.forEach((c, i) => c.send(expected[i]![k]!));
        await waitFor(
          () => recordings.every((r) => r.frames().length >= perConnection),
          `${perConnection} echoes on each of ${count} connections`,
        );
        await sleep(SETTLE_MS);
        recordings.forEach((r, i) => assertFrames(r.frames(), expected[i]!, `connection ${i}`));
        assert.equal(h.accepted.length, count, 'server connections');
        assert.equal(new Set(h.accepted.map((c) => c.id)).size, count, 'server connection ids are unique');
        assert.equal(new Set(clients.map((c) => c.id)).size, count, 'client connection ids are unique');
      }),
    },
    {
      name: "after the server transport's close(), a new connect() rejects and open connections keep working",
      run: run(async (h) => {
        const { client, server } = await h.pair();
        const atServer = record(server);
        const atClient = record(client);
        await within(h.server.close(), 'server.close()');
        let connection: Connection | undefined;
        try {
          connection = await within(h.client().connect(), 'connect() after server.close()');
        } catch (e) {
          if (e instanceof assert.AssertionError) throw e; // it hung
          assert.ok(e instanceof Error, 'connect() rejects with an Error');
        }
        if (connection) {
          connection.close();
          assert.fail('connect() resolved after the server transport closed');
        }
        const up = pattern(1, 10, 6);
        const down = pattern(2, 10, 6);
        client.send(up);
        server.send(down);
        await waitFor(() => atServer.frames().length > 0 && atClient.frames().length > 0, 'a frame each way');
        assertFrames(atServer.frames(), [up], 'client→server after server.close()');
        assertFrames(atClient.frames(), [down], 'server→client after server.close()');
      }),
    },
    {
      name: 'sends and a second close() after close are ignored without throwing',
      run: run(async (h) => {
        const { client, server } = await h.pair();
        const atServer = record(server);
        const atClient = record(client);
        client.close(1000, 'done');
        assert.doesNotThrow(() => client.send(pattern(1, 10, 7)), 'send after close()');
        assert.doesNotThrow(() => client.close(1000, 'again'), 'a second close()');
        await waitFor(() => atServer.closes().length > 0, "the client's close at the server");
        assert.doesNotThrow(() => server.send(pattern(2, 10, 7)), 'send after the peer closed');
        assert.doesNotThrow(() => server.close(1000, 'late'), 'close() after the peer closed');
        await sleep(SETTLE_MS);
        assert.equal(atServer.frames().length, 0, 'frames the server got from a closed client');
        assert.equal(atClient.frames().length, 0, 'frames a closed client got');
        assert.ok(atClient.closes().length <= 1, 'client close events');
        assert.equal(atServer.closes().length, 1, 'server close events');
      }),
    },
    {
      name: 'bufferedAmount is always a finite, non-negative number',
      run: run(async (h) => {
        const { client, server } = await h.pair();
        const atServer = record(server);
        record(client);
        for (const c of [client, server]) assertBuffered(c, 'on a fresh connection');
        const burst = Array.from({ length: 20 }, (_, i) => pattern(i, 50 * 1024, 8));
        for (const f of burst) {
          client.send(f);
          assertBuffered(client, 'while sending a burst');
        }
        await waitFor(() => atServer.frames().length >= burst.length, 'the burst');
        assertBuffered(client, 'after the burst arrived');
        client.close();
        for (const c of [client, server]) assertBuffered(c, 'after close()');
      }),
    },
  ];
}
