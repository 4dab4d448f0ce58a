// Small scenario builders shared by the engine tests: a world on a virtual clock with an
// in-memory network, one server engine over a memory store, and devices whose events are
// recorded so a test reads like the guarantee it proves.
import type { StoreCapabilities } from '../src/server/store.js';
import { expect } from 'vitest';
import type { CryptoAdapter } from '../src/crypto/types.js';
import {
  createClient,
  type ClientOptions,
  type GroupChangeEvent,
  type PostboxClient,
  type PresenceChange,
  type ReceivedMessage,
  type StatusChange,
  type TypingChange,
} from '../src/client/index.js';
import {
  createMemoryClientState,
  memoryClientStore,
  type MemoryClientState,
} from '../src/client/stores/memory.js';
import {
  decodeClientFrame,
  decodeServerFrame,
  encodeFrame,
  type ClientFrame,
  type ErrorCode,
  type ServerFrame,
} from '../src/protocol/index.js';
import {
  createServer,
  type PostboxServer,
  type DeviceAddress,
  type ServerOptions,
  type ServerStore,
} from '../src/server/index.js';
import {
  createMemoryServerState,
  memoryServerStore,
  type MemoryServerState,
} from '../src/server/stores/memory.js';
import { VirtualClock } from '../src/testing/virtual-clock.js';
import { memoryNetwork, type LinkFaults, type MemoryNetwork } from '../src/transport/memory.js';
import type { Connection } from '../src/transport/types.js';
import { seededRandom } from '../src/util/clock.js';

/** Credentials the test server accepts: `user/device:secret` with the right secret. */
export const SECRET = 'letmein';

export interface TestDevice {
  user: string;
  device: string;
  state: MemoryClientState;
  client: PostboxClient;
  messages: ReceivedMessage[];
  statuses: StatusChange[];
  gaps: unknown[];
  groupChanges: GroupChangeEvent[];
  presence: PresenceChange[];
  typing: TypingChange[];
  memberStatuses: Array<{ id: string; user: string; status: string }>;
  linkCodes: string[];
  identityChanges: Array<{ user: string; device: string }>;
  undecryptable: Array<{ from: string; fromDevice: string; id: string }>;
  /** Every `error` event (local faults only: a refused request is reported on its own outcome). */
  errors: unknown[];
  /** Latest status seen per message id. */
  statusOf(id: string): string | undefined;
  restart(): Promise<void>;
}

export interface World {
  clock: VirtualClock;
  net: MemoryNetwork;
  serverState: MemoryServerState;
  server: PostboxServer;
  /**
   * A client device; `register: false` leaves registration to its hello (and linking rules);
   * `state` reuses a client state (a re-opened app), `client` adds client options.
   */
  device(
    user: string,
    device?: string,
    opts?: { register?: boolean; state?: MemoryClientState; client?: Partial<ClientOptions> },
  ): Promise<TestDevice>;
  restartServer(): Promise<void>;
  advance(ms: number): Promise<void>;
  /** A raw protocol connection (no client engine) for bad-input tests. */
  raw(name?: string): Promise<RawConnection>;
  close(): Promise<void>;
}

export interface RawConnection {
  conn: Connection;
  frames: ServerFrame[];
  closed: { code: number; reason: string } | undefined;
  send(frame: Record<string, unknown>): void;
  sendBytes(data: Uint8Array): void;
  hello(user: string, device: string, secret?: string): Promise<void>;
}

export async function makeWorld(
  opts: {
    seed?: number;
    faults?: LinkFaults;
    server?: Partial<ServerOptions>;
    /** Opens the server store (again after a restart, over the same data); memory by default. */
    openStore?: () => ServerStore | Promise<ServerStore>;
    /** A crypto adapter for each client start (end-to-end encryption on every device). */
    crypto?: (user: string, device: string) => CryptoAdapter;
  } = {},
): Promise<World> {
  const clock = new VirtualClock();
  const net = memoryNetwork({
    clock,
    random: seededRandom(opts.seed ?? 7),
    faults: opts.faults ?? { latency: { min: 1, max: 5 } },
  });
  const serverState = createMemoryServerState();
  let store: ServerStore = (await opts.openStore?.()) ?? memoryServerStore({ state: serverState });
  const makeServer = () =>
    createServer({
      store,
      authenticate: (cred) => {
        if (typeof cred !== 'string') return null;
        const m = /^([^/]+)\/([^:]+):(.*)$/.exec(cred);
        if (!m || m[3] !== SECRET) return null;
        return { user: m[1]!, device: m[2]! };
      },
      clock,
      heartbeatMs: 1000,
      // Most tests give a user several devices freely; the linking tests ask for approval.
      linking: 'open',
      // Most tests make groups of users that never wrote to each other; the consent tests
      // (group-consent.test.ts) ask for the default rule.
      groupConsent: 'open',
      ...opts.server,
    });
  let server = makeServer();
  await server.listen(net.server);
  const devices: TestDevice[] = [];

  const world: World = {
    clock,
    net,
    serverState,
    get server() {
      return server;
    },
    async device(user, device = 'phone', deviceOpts = {}) {
      const state = deviceOpts.state ?? createMemoryClientState();
      const d: TestDevice = {
        user,
        device,
        state,
        client: undefined as unknown as PostboxClient,
        messages: [],
        statuses: [],
        gaps: [],
        groupChanges: [],
        presence: [],
        typing: [],
        memberStatuses: [],
        linkCodes: [],
        identityChanges: [],
        undecryptable: [],
        errors: [],
        statusOf(id) {
          return [...d.statuses].reverse().find((s) => s.id === id)?.status;
        },
        async restart() {
          await d.client.close();
          d.client = start();
        },
      };
      const start = () => {
        const c = createClient({
          transport: net.client(`${user}/${device}`),
          store: memoryClientStore({ state }),
          credentials: `${user}/${device}:${SECRET}`,
          clock,
          random: seededRandom(devices.length + 1),
          backoffBaseMs: 50,
          backoffMaxMs: 1000,
          ...(opts.crypto ? { crypto: opts.crypto(user, device) } : {}),
          ...deviceOpts.client,
        });
        c.on('identityChanged', (p) => d.identityChanges.push(p));
        c.on('undecryptable', (u) => d.undecryptable.push(u));
        c.on('message', (m) => d.messages.push(m));
        c.on('status', (s) => d.statuses.push(s));
        c.on('gap', (g) => d.gaps.push(g));
        c.on('group', (_view, change) => d.groupChanges.push(change));
        c.on('presence', (p) => d.presence.push(p));
        c.on('typing', (t) => d.typing.push(t));
        c.on('memberStatus', (m) => d.memberStatuses.push(m));
        c.on('linkCode', (l) => d.linkCodes.push(l.code));
        c.on('error', (e) => {
          d.errors.push(e);
          if (process.env.POSTBOX_TEST_DEBUG) console.log(`${user}/${device} error:`, e);
        });
        return c;
      };
      d.client = start();
      devices.push(d);
      if (deviceOpts.register !== false) await server.registerDevice(user, device);
      await clock.advance(50);
      return d;
    },
    async restartServer() {
      net.cutAll();
      await server.close();
      if (opts.openStore) {
        await store.close();
        store = await opts.openStore();
      }
      server = makeServer();
      await server.listen(net.server);
    },
    advance: (ms) => clock.advance(ms),
    async raw(name = 'raw') {
      const conn = await connectRaw(net, clock, name);
      return conn;
    },
    async close() {
      for (const d of devices) await d.client.close();
      await server.close();
      if (opts.openStore) await store.close();
    },
  };
  return world;
}

async function connectRaw(net: MemoryNetwork, clock: VirtualClock, name: string): Promise<RawConnection> {
  const pending = net.client(name).connect();
  await clock.advance(20);
  const conn = await pending;
  const raw: RawConnection = {
    conn,
    frames: [],
    closed: undefined,
    send(frame) {
      conn.send(encodeFrame(frame as ClientFrame));
    },
    sendBytes(data) {
      conn.send(data);
    },
    async hello(user, device, secret = SECRET) {
      raw.send({ t: 'hello', v: [1, 1], cred: `${user}/${device}:${secret}` });
      await clock.advance(20);
    },
  };
  conn.setHandlers({
    frame: (data) => raw.frames.push(decodeServerFrame(data, 1 << 24)),
    close: (code, reason) => {
      raw.closed = { code, reason };
    },
  });
  return raw;
}

/**
 * Advances the virtual clock (and lets real promises run: encryption does real work) until the
 * promise settles, and returns its value or throws its error.
 */
export async function settled<T>(w: World, p: Promise<T>, maxMs = 20_000): Promise<T> {
  let done = false;
  let value: T | undefined;
  let error: unknown;
  p.then(
    (v) => {
      done = true;
      value = v;
    },
    (e: unknown) => {
      done = true;
      error = e;
    },
  );
  for (let t = 0; t < maxMs && !done; t += 10) {
    await w.advance(10);
    await new Promise((r) => setImmediate(r));
  }
  if (!done) throw new Error('promise did not settle');
  if (error) throw error;
  return value as T;
}

/** Advances the clock (letting real promises run: encryption does real work) until `done()`. */
export async function until(w: World, done: () => boolean | Promise<boolean>, ms = 20_000): Promise<void> {
  for (let t = 0; t < ms && !(await done()); t += 20) {
    await w.advance(20);
    await new Promise((r) => setImmediate(r));
  }
  expect(await done()).toBe(true);
}

export const text = (s: string): Uint8Array => new TextEncoder().encode(s);
export const untext = (b: Uint8Array): string => new TextDecoder().decode(b);

/** The memory store, counting inbox reads per device (`user/device`); `plain` drops `entries` from acks. */
export function countingStore(plain = false): { store: ServerStore; readsOf: (device: string) => number } {
  const reads = new Map<string, number>();
  const inner = memoryServerStore({ state: createMemoryServerState() });
  const store: ServerStore = {
    ...inner,
    readInbox(d: DeviceAddress, after: number, limit: number) {
      reads.set(`${d.user}/${d.device}`, (reads.get(`${d.user}/${d.device}`) ?? 0) + 1);
      return inner.readInbox(d, after, limit);
    },
    async ack(d: DeviceAddress, offsets: number[], now: number) {
      const res = await inner.ack(d, offsets, now);
      return plain ? { count: res.count, notify: res.notify } : res;
    },
  };
  return { store, readsOf: (d: string) => reads.get(d) ?? 0 };
}

/**
 * A server that speaks just enough of the protocol to open a session (it welcomes whoever says
 * hello, as `user`/the device asked for) and commits every request (`ok`); a test then pushes
 * frames of its choosing, such as a status a real server would never send, to see what a client
 * makes of them.
 */
export interface FakeServer {
  /** Frames every client sent, in order. */
  received: ClientFrame[];
  /** Sends a frame to every open connection. */
  push(frame: ServerFrame): void;
}

/**
 * @param refuse - answers a request with this `err` (code and message) instead of `ok`; a send a
 *   real server would refuse for a reason the test world cannot produce, say.
 */
export async function fakeServer(
  net: MemoryNetwork,
  user: string,
  refuse?: (frame: ClientFrame) => { c: ErrorCode; m: string } | undefined,
): Promise<FakeServer> {
  const open = new Set<Connection>();
  const fake: FakeServer = {
    received: [],
    push(frame) {
      for (const c of open) c.send(encodeFrame(frame));
    },
  };
  await net.server.listen((conn) => {
    conn.setHandlers({
      frame(data) {
        const f = decodeClientFrame(data);
        fake.received.push(f);
        const reply = (frame: ServerFrame) => conn.send(encodeFrame(frame));
        if (f.t === 'hello') {
          open.add(conn);
          const lim = { frame: 1 << 18, body: 1 << 16, window: 256 };
          reply({ t: 'welcome', v: 1, u: user, d: f.dev ?? 'phone', hb: 1000, lim });
        } else if (f.t === 'ping') reply({ t: 'pong' });
        else if ('r' in f && f.t !== 'kget') {
          const no = refuse?.(f);
          reply(no ? { t: 'err', r: f.r, ...no } : { t: 'ok', r: f.r });
        }
      },
      close() {
        open.delete(conn);
      },
    });
  });
  return fake;
}

/**
 * One client (user `user`, memory store, virtual clock) connected to a {@link fakeServer} on a
 * network of its own; `refuse` as for the fake server. The client starts connecting at once.
 */
export async function clientOfFakeServer(
  user: string,
  refuse?: Parameters<typeof fakeServer>[2],
): Promise<{ clock: VirtualClock; server: FakeServer; client: PostboxClient }> {
  const clock = new VirtualClock();
  const net = memoryNetwork({ clock, random: seededRandom(3), faults: { latency: { min: 1, max: 2 } } });
  const server = await fakeServer(net, user, refuse);
  const client = createClient({
    transport: net.client(user),
    store: memoryClientStore({ state: createMemoryClientState() }),
    credentials: user,
    clock,
    random: seededRandom(4),
  });
  return { clock, server, client };
}

/**
 * Every capability the three built-in stores' conformance subjects claim (the SQLite store also
 * declares `slicedAppend`).
 */
export const EVERY_CAPABILITY: StoreCapabilities = {
  pushTokens: true,
  inboxSize: true,
  ping: true,
  atomicBatch: true,
  actionCounts: true,
};

/**
 * A gate that a test store's calls wait at while it is held (a slow disk): `passed()` resolves at
 * once when open, or when `release()` opens it.
 */
export function storeGate(): { hold(): void; release(): void; passed(): Promise<void> | undefined } {
  let gate: Promise<void> | undefined;
  let open = () => {};
  return {
    hold() {
      gate = new Promise((resolve) => (open = resolve));
    },
    release() {
      gate = undefined;
      open();
    },
    passed: () => gate,
  };
}

/** Cost budgets no test traffic reaches: for tests about commit batching, not budgets. */
export const UNLIMITED_BUDGETS: NonNullable<ServerOptions['costBudgets']> = {
  device: { perSecond: 1e9, burst: 1e9 },
  user: { perSecond: 1e9, burst: 1e9 },
};

/**
 * Group spam in `w`: a spammer in a group with 1,023 offline members (`m0`…`m1022`), then alice
 * and bob online.
 */
export async function groupSpam(
  w: World,
): Promise<{ spammer: TestDevice; group: string; alice: TestDevice }> {
  const members = Array.from({ length: 1023 }, (_, i) => `m${i}`);
  for (const m of members) await w.server.registerDevice(m, 'd');
  const spammer = await w.device('spammer');
  const group = await settled(w, spammer.client.createGroup('spam', members));
  const alice = await w.device('alice');
  await w.device('bob');
  return { spammer, group, alice };
}
