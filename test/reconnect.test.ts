// Reconnecting: the default backoff brings a client back soon after an outage, the app can hurry
// it (reconnectNow, start) without being able to hammer a dead server, and can await a live
// connection (connected). All on the virtual clock: no wall-clock timing.
import { afterEach, describe, expect, it } from 'vitest';
import { createClient, type ConnectionState, type PostboxClient } from '../src/client/index.js';
import { memoryClientStore } from '../src/client/stores/memory.js';
import { CLOSE_CODES, isPostboxError } from '../src/protocol/index.js';
import { VirtualClock } from '../src/testing/virtual-clock.js';
import { memoryNetwork } from '../src/transport/memory.js';
import type { ClientTransport } from '../src/transport/types.js';
import { seededRandom } from '../src/util/clock.js';
import { makeWorld, type TestDevice, type World } from './helpers.js';

let world: World | undefined;
afterEach(async () => {
  await world?.close();
  world = undefined;
});

/** The engine's own backoff defaults, not the test world's fast ones. */
const DEFAULT_BACKOFF = { backoffBaseMs: undefined, backoffMaxMs: undefined };
/** The default ceiling this suite holds the engine to. */
const CEILING = 8000;
const LATENCY = { min: 1, max: 5 };

/** A transport that counts its connection attempts. */
function counting(inner: ClientTransport): ClientTransport & { attempts: number } {
  const t = {
    name: inner.name,
    attempts: 0,
    connect() {
      t.attempts++;
      return inner.connect();
    },
  };
  return t;
}

/** A device on the default backoff whose waits are always near their ceiling (the worst case). */
async function patientDevice(
  w: World,
  user: string,
): Promise<TestDevice & { transport: { attempts: number } }> {
  const transport = counting(w.net.client(`${user}/phone`));
  const d = await w.device(user, 'phone', { client: { ...DEFAULT_BACKOFF, transport, random: () => 0.99 } });
  return Object.assign(d, { transport });
}

/** The server is unreachable: live links drop, new connects are refused. */
function outage(w: World): void {
  w.net.setFaults({ latency: LATENCY, connectFailProbability: 1 });
  w.net.cutAll();
}

const heal = (w: World) => w.net.setFaults({ latency: LATENCY });

/** Times at which the client entered `state`. */
function timesOf(w: World, client: PostboxClient, state: ConnectionState): number[] {
  const times: number[] = [];
  client.on('connection', (s) => {
    if (s === state) times.push(w.clock.now());
  });
  return times;
}

/** A client on `net` whose waits are near their ceiling; `errors` lists why each backoff began. */
function backoffWatched(clock: VirtualClock, net: ReturnType<typeof memoryNetwork>) {
  const client = createClient({
    transport: net.client('alice'),
    store: memoryClientStore(),
    credentials: 'alice',
    clock,
    random: () => 0.99,
  });
  const errors: string[] = [];
  client.on('connection', (s, e) => {
    if (s === 'backoff' && e) errors.push(e.code);
  });
  return { client, errors };
}

describe('the default backoff', () => {
  it('brings a client back within its 8 s ceiling after an outage, every wait under the ceiling', async () => {
    world = await makeWorld({ seed: 11 });
    const alice = await world.device('alice', 'phone', { client: DEFAULT_BACKOFF });
    const attempts = timesOf(world, alice.client, 'connecting');
    const opened = timesOf(world, alice.client, 'open');
    outage(world);
    const lost = world.clock.now();
    await world.advance(120_000);
    expect(alice.client.state).toBe('backoff');
    const times = [lost, ...attempts];
    const gaps = times.slice(1).map((t, i) => t - times[i]!);
    // Each wait is at most the ceiling (plus the few ms a refused connect takes).
    expect(Math.max(...gaps)).toBeLessThanOrEqual(CEILING + 10);
    expect(gaps.length).toBeGreaterThan(12);
    heal(world);
    const back = world.clock.now();
    await world.advance(CEILING + 100);
    expect(alice.client.state).toBe('open');
    expect(opened.at(-1)! - back).toBeLessThanOrEqual(CEILING + 100);
  });
});

describe('reconnectNow', () => {
  it('a client in backoff after an outage reconnects at once, without waiting out its backoff; open or connecting, it is a no-op', async () => {
    world = await makeWorld();
    const alice = await patientDevice(world, 'alice');
    const first = alice.transport.attempts;
    expect(alice.client.reconnectNow()).toBe(false); // open
    await world.advance(100);
    expect(alice.transport.attempts).toBe(first);
    outage(world);
    await world.advance(60_000);
    expect(alice.client.state).toBe('backoff');
    heal(world);
    const before = alice.transport.attempts;
    expect(alice.client.reconnectNow()).toBe(true);
    expect(alice.client.state).toBe('connecting');
    expect(alice.client.reconnectNow()).toBe(false); // connecting
    // Its pending wait was ~7.9 s (random 0.99 of the ceiling); it is open within a round trip.
    await world.advance(50);
    expect(alice.client.state).toBe('open');
    expect(alice.transport.attempts).toBe(before + 1);
  });

  it('called every 50 ms against a dead server, it skips at most one wait per ceiling: no connection storm', async () => {
    world = await makeWorld();
    const eager = await patientDevice(world, 'alice');
    const quiet = await patientDevice(world, 'bob');
    outage(world);
    const start = { eager: eager.transport.attempts, quiet: quiet.transport.attempts };
    let calls = 0;
    let skipped = 0;
    for (let t = 0; t < 120_000; t += 50) {
      calls++;
      if (eager.client.reconnectNow()) skipped++;
      await world.advance(50);
    }
    const made = eager.transport.attempts - start.eager;
    const alone = quiet.transport.attempts - start.quiet;
    expect(calls).toBe(2400);
    // One skip per 8 s at most …
    expect(skipped).toBeLessThanOrEqual(Math.ceil(120_000 / CEILING));
    // … and the attempts are the backoff's own plus the skips, with one climb from the shortest
    // wait after the first skip (its reset): at most about twice a patient client's.
    expect(made).toBeLessThanOrEqual(alone + skipped + 5);
    expect(made).toBeLessThan(2 * alone + 5);
    heal(world);
    await world.advance(CEILING + 100);
    expect(eager.client.state).toBe('open');
  });

  it('does not skip a wait the server asked for (1013 try again later)', async () => {
    const clock = new VirtualClock();
    const net = memoryNetwork({ clock, random: seededRandom(5), faults: { latency: LATENCY } });
    await net.server.listen((conn) => {
      conn.setHandlers({
        frame: () => conn.close(CLOSE_CODES.tryAgainLater, 'server busy'),
        close: () => {},
      });
    });
    const { client, errors } = backoffWatched(clock, net);
    await clock.advance(20);
    expect(client.state).toBe('backoff');
    expect(errors).toEqual(['unavailable']);
    expect(client.reconnectNow()).toBe(false);
    expect(client.state).toBe('backoff');
    await client.close();
  });
});

describe('a slow reader shed by the server', () => {
  // A shed reader that still reads hears 4008 (slowReader); one that is not reading cannot (the
  // close frame waits behind the bytes it is not reading) and is reset: 1006. Either way it must
  // come back, after a backoff, and get what it missed from its inbox.
  for (const [heard, how, error] of [
    [CLOSE_CODES.slowReader, 'close 4008', 'unavailable'],
    [CLOSE_CODES.abnormal, 'a reset (1006)', 'disconnected'],
  ] as const) {
    it(`after ${how} it waits out a backoff and connects again`, async () => {
      const clock = new VirtualClock();
      const net = memoryNetwork({ clock, random: seededRandom(5), faults: { latency: LATENCY } });
      let accepted = 0;
      await net.server.listen((conn) => {
        accepted++;
        conn.setHandlers({
          // The first connection is shed as soon as it says hello; later ones are left waiting.
          frame: () => {
            if (accepted > 1) return;
            if (heard === CLOSE_CODES.abnormal) net.connections()[0]!.cut();
            else conn.close(heard, 'slow reader: reconnect later');
          },
          close: () => {},
        });
      });
      const { client, errors } = backoffWatched(clock, net);
      await clock.advance(20);
      expect(client.state).toBe('backoff');
      expect(errors).toEqual([error]);
      expect(accepted).toBe(1);
      // A wait the server asked for (4008) cannot be cut short by the app.
      if (heard === CLOSE_CODES.slowReader) expect(client.reconnectNow()).toBe(false);
      // Retryable, not fatal: after the backoff it connects again.
      await clock.advance(CEILING + 100);
      expect(accepted).toBe(2);
      await client.close();
    });
  }
});

describe('start', () => {
  it('after a close, connects at once and starts the waits again from the shortest', async () => {
    world = await makeWorld();
    const alice = await patientDevice(world, 'alice');
    const attempts = timesOf(world, alice.client, 'connecting');
    const waits = timesOf(world, alice.client, 'backoff');
    outage(world);
    await world.advance(60_000); // the waits have grown to the ceiling
    await alice.client.close();
    const restarted = world.clock.now();
    alice.client.start();
    expect(attempts.at(-1)).toBe(restarted);
    await world.advance(2000);
    // That attempt failed (still an outage); the next came after the shortest wait (≤ 500 ms),
    // not after the ~8 s the client had grown to before the close.
    const failed = waits.find((t) => t >= restarted)!;
    const next = attempts.find((t) => t > failed);
    expect(next).toBeDefined();
    expect(next! - failed).toBeLessThanOrEqual(500);
  });

  it('while waiting in backoff, connects at once like reconnectNow', async () => {
    world = await makeWorld();
    const alice = await patientDevice(world, 'alice');
    outage(world);
    await world.advance(60_000);
    heal(world);
    expect(alice.client.state).toBe('backoff');
    alice.client.start();
    expect(alice.client.state).toBe('connecting');
    await world.advance(50);
    expect(alice.client.state).toBe('open');
  });
});

describe('connected', () => {
  it('resolves when the connection opens, and at once when it is open', async () => {
    world = await makeWorld();
    const alice = await world.device('alice', 'phone', { client: { autoStart: false } });
    let open = false;
    const waiting = alice.client.connected().then(() => (open = true));
    await world.advance(100);
    expect(open).toBe(false); // not started: it waits for a start
    alice.client.start();
    await world.advance(100);
    await waiting;
    expect(open).toBe(true);
    await expect(alice.client.connected()).resolves.toBeUndefined();
  });

  it('rejects with closed when the client is closed, and at once once it is', async () => {
    world = await makeWorld();
    const alice = await world.device('alice');
    outage(world);
    await world.advance(1000);
    const waiting = alice.client.connected().catch((e: unknown) => e);
    await alice.client.close();
    const error = await waiting;
    expect(isPostboxError(error) && error.code).toBe('closed');
    const again = await alice.client.connected().catch((e: unknown) => e);
    expect(isPostboxError(again) && again.code).toBe('closed');
  });

  it('with timeoutMs rejects with disconnected after that long; with a signal, with the abort reason; and leaves no listener', async () => {
    const w = (world = await makeWorld());
    const alice = await w.device('alice');
    outage(w);
    await w.advance(1000);
    const listeners = alice.client.listenerCount('connection');
    let settledAt: number | undefined;
    const start = w.clock.now();
    const timedOut = alice.client
      .connected({ timeoutMs: 5000 })
      .catch((e: unknown) => ((settledAt = w.clock.now()), e));
    await w.advance(6000);
    const error = await timedOut;
    expect(isPostboxError(error) && error.code).toBe('disconnected');
    expect(settledAt! - start).toBe(5000);
    // Why it is not connected: the last attempt's failure.
    expect(isPostboxError(error) && (error.cause as Error | undefined)?.message).toMatch(/connect failed/);
    const abort = new AbortController();
    const aborted = alice.client.connected({ signal: abort.signal }).catch((e: unknown) => e);
    const reason = new Error('user left the screen');
    abort.abort(reason);
    expect(await aborted).toBe(reason);
    expect(alice.client.listenerCount('connection')).toBe(listeners);
    heal(w);
    await w.advance(2000);
    await expect(alice.client.connected({ timeoutMs: 1 })).resolves.toBeUndefined();
  });
});
