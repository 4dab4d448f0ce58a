// Several gateway nodes in one process: server engines over one memory store, joined by the
// in-memory cluster hub, each with a network of its own. Each test puts devices on chosen nodes
// and proves one promise of docs/scaling.md: what crosses nodes, and what a lost hint costs.
import { afterEach, describe, expect, it } from 'vitest';
import { createClient, type PostboxClient, type ReceivedMessage } from '../src/client/index.js';
import { memoryClientStore } from '../src/client/stores/memory.js';
import { CLOSE_CODES, decodeServerFrame, encodeFrame, type ServerFrame } from '../src/protocol/index.js';
import {
  memoryClusterHub,
  type MemoryClusterHub,
  type MemoryClusterNode,
} from '../src/server/cluster/local.js';
import { createServer, type PostboxServer, type ServerOptions } from '../src/server/index.js';
import { noMetrics } from '../src/server/metrics.js';
import type { PushProvider } from '../src/server/push/types.js';
import type { DeviceAddress, ServerStore } from '../src/server/store.js';
import { createMemoryServerState, memoryServerStore } from '../src/server/stores/memory.js';
import { VirtualClock } from '../src/testing/virtual-clock.js';
import { memoryNetwork, type MemoryNetwork } from '../src/transport/memory.js';
import { seededRandom } from '../src/util/clock.js';
import { countingStore, text, untext } from './helpers.js';

const TTL_MS = 3000;
const POLL_MS = 10_000;

interface Node {
  net: MemoryNetwork;
  server: PostboxServer;
  cluster: MemoryClusterNode;
}

interface Device {
  client: PostboxClient;
  messages: ReceivedMessage[];
  statuses: Map<string, string>;
  presence: Array<{ user: string; online: boolean; lastSeen?: number }>;
  typing: Array<{ user: string; on: boolean }>;
  /** Which node each connect went to. */
  connects: number[];
  linkCodes: string[];
  /** Connection state changes with their error codes. */
  closes: string[];
}

interface Cluster {
  clock: VirtualClock;
  hub: MemoryClusterHub;
  nodes: Node[];
  /** A device connecting to `node` (a function: where each connect goes). */
  device(
    user: string,
    device: string,
    node: number | (() => number),
    opts?: { register?: boolean },
  ): Promise<Device>;
  crash(i: number): Promise<void>;
  advance(ms: number): Promise<void>;
  close(): Promise<void>;
}

let cluster: Cluster | undefined;
afterEach(async () => {
  await cluster?.close();
  cluster = undefined;
});

async function makeCluster(n: number, server: Partial<ServerOptions> = {}): Promise<Cluster> {
  const clock = new VirtualClock();
  const hub = memoryClusterHub({ clock, ttlMs: TTL_MS });
  const state = createMemoryServerState();
  const nodes: Node[] = [];
  const devices: Device[] = [];
  let incarnation = 0;
  const startNode = async (i: number): Promise<Node> => {
    const net =
      nodes[i]?.net ??
      memoryNetwork({ clock, random: seededRandom(i + 1), faults: { latency: { min: 1, max: 5 } } });
    const c = hub.node();
    await c.start(`n${i}.${incarnation++}`);
    const s = createServer({
      store: memoryServerStore({ state }),
      authenticate: (cred) => {
        const [user, device] = String(cred).split('/');
        return user && device ? { user, device } : null;
      },
      clock,
      heartbeatMs: 1000,
      linking: 'open',
      groupConsent: 'open', // the groups here are of users that never wrote to each other
      presence: 'everyone',
      presenceDebounceMs: 500,
      inboxPollMs: POLL_MS,
      cluster: c,
      ...server,
    });
    await s.listen(net.server);
    return { net, server: s, cluster: c };
  };
  for (let i = 0; i < n; i++) nodes.push(await startNode(i));
  const c: Cluster = {
    clock,
    hub,
    nodes,
    async device(user, device, node, opts = {}) {
      const where = typeof node === 'number' ? () => node : node;
      const d: Device = {
        client: undefined as unknown as PostboxClient,
        messages: [],
        statuses: new Map(),
        presence: [],
        typing: [],
        connects: [],
        linkCodes: [],
        closes: [],
      };
      d.client = createClient({
        transport: {
          name: 'cluster-test',
          connect: () => {
            const i = where();
            d.connects.push(i);
            return nodes[i]!.net.client(`${user}/${device}`).connect();
          },
        },
        store: memoryClientStore(),
        credentials: `${user}/${device}`,
        clock,
        random: seededRandom(devices.length + 11),
        backoffBaseMs: 50,
        backoffMaxMs: 500,
      });
      d.client.on('message', (m) => d.messages.push(m));
      d.client.on('status', (s) => d.statuses.set(s.id, s.status));
      d.client.on('presence', (p) => d.presence.push(p));
      d.client.on('typing', (t) => d.typing.push({ user: t.user, on: t.on }));
      d.client.on('error', () => {});
      d.client.on('linkCode', (l) => d.linkCodes.push(l.code));
      d.client.on('connection', (state, error) => {
        if (state === 'closed') d.closes.push(error?.code ?? 'closed');
      });
      devices.push(d);
      if (opts.register !== false) await nodes[0]!.server.registerDevice(user, device);
      await clock.advance(100);
      return d;
    },
    async crash(i) {
      // kill -9: the cluster node stops without cleanup, every connection dies, the engine is gone.
      await nodes[i]!.cluster.crash();
      nodes[i]!.net.cutAll();
      await nodes[i]!.server.close();
    },
    advance: (ms) => clock.advance(ms),
    async close() {
      for (const d of devices) await d.client.close();
      for (const x of nodes) {
        await x.server.close();
        await x.cluster.stop();
      }
    },
  };
  return c;
}

/** Advances the virtual clock until `p` settles (client requests need the network to move). */
async function settle<T>(c: Cluster, p: Promise<T>): Promise<T> {
  let done = false;
  const out = p.finally(() => {
    done = true;
  });
  out.catch(() => {}); // handled by the caller once returned; not unhandled while we wait
  for (let t = 0; t < 20_000 && !done; t += 10) {
    await c.advance(10);
    await new Promise((r) => setImmediate(r));
  }
  return out;
}

/** A bare protocol connection to one node: sees every frame and its close code. */
async function rawDevice(c: Cluster, node: number, user: string, device: string) {
  const pending = c.nodes[node]!.net.client(`raw ${user}/${device}`).connect();
  await c.advance(20);
  const conn = await pending;
  const raw = { frames: [] as ServerFrame[], closed: undefined as number | undefined };
  conn.setHandlers({
    frame: (data) => raw.frames.push(decodeServerFrame(data, 1 << 20)),
    close: (code) => {
      raw.closed = code;
    },
  });
  conn.send(encodeFrame({ t: 'hello', v: [1, 1], cred: `${user}/${device}` }));
  await c.advance(50);
  return raw;
}

describe('gateway nodes over one store and a cluster', () => {
  it('a message to a device on another node arrives at once (a doorbell, not a poll), and ✓✓ comes back across', async () => {
    cluster = await makeCluster(3);
    const alice = await cluster.device('alice', 'phone', 0);
    const bob = await cluster.device('bob', 'phone', 1);
    const bobTablet = await cluster.device('bob', 'tablet', 2);
    const ids = await Promise.all([1, 2, 3].map((i) => alice.client.send('bob', text(`m${i}`))));
    await cluster.advance(200); // far below the inbox poll interval
    expect(bob.messages.map((m) => untext(m.body))).toEqual(['m1', 'm2', 'm3']);
    expect(bobTablet.messages.map((m) => untext(m.body))).toEqual(['m1', 'm2', 'm3']);
    expect(ids.map((id) => alice.statuses.get(id))).toEqual(['delivered', 'delivered', 'delivered']);
  });

  it("✓✓ for a sender on another node rides in the doorbell: the sender's inbox is not read again", async () => {
    const { store, readsOf } = countingStore();
    cluster = await makeCluster(2, { store });
    const alice = await cluster.device('alice', 'phone', 0);
    const bob = await cluster.device('bob', 'phone', 1);
    await cluster.advance(100);
    const before = readsOf('alice/phone');
    const id = await alice.client.send('bob', text('hi'));
    await cluster.advance(200);
    expect(bob.messages.map((m) => untext(m.body))).toEqual(['hi']);
    expect(alice.statuses.get(id)).toBe('delivered');
    expect(readsOf('alice/phone') - before).toBe(0);
  });

  it("a short message for a device on another node rides in the doorbell: the recipient's inbox is not read again", async () => {
    const { store, readsOf } = countingStore();
    cluster = await makeCluster(2, { store });
    const alice = await cluster.device('alice', 'phone', 0);
    const bob = await cluster.device('bob', 'phone', 1);
    const tablet = await cluster.device('bob', 'tablet', 0); // bob's other device, on alice's node
    await cluster.advance(100);
    const before = readsOf('bob/phone');
    for (const t of ['one', 'two', 'three']) await alice.client.send('bob', text(t));
    await cluster.advance(200);
    expect(bob.messages.map((m) => untext(m.body))).toEqual(['one', 'two', 'three']);
    expect(tablet.messages.map((m) => untext(m.body))).toEqual(['one', 'two', 'three']);
    expect(readsOf('bob/phone') - before).toBe(0);
  });

  it('a batch that wrote several entries for a device on another node rings its node once for it, with them all', async () => {
    // Appends wait at a gate, so the sends that arrive meanwhile commit as one batch.
    const inner = memoryServerStore({ state: createMemoryServerState() });
    const gate = { shut: Promise.resolve() };
    const store: ServerStore = {
      ...inner,
      async append(items, opts) {
        await gate.shut;
        return inner.append(items, opts);
      },
    };
    cluster = await makeCluster(2, { store });
    const rings: Array<{ devices: string[]; carried: number }> = [];
    const c = cluster.nodes[0]!.cluster;
    const ring = c.ring.bind(c);
    c.ring = (devices, entries) => {
      rings.push({ devices: devices.map((d) => `${d.user}/${d.device}`), carried: entries?.length ?? 0 });
      return ring(devices, entries);
    };
    const alice = await cluster.device('alice', 'phone', 0);
    const bob = await cluster.device('bob', 'phone', 1);
    await cluster.advance(100);
    rings.length = 0;
    let open = (): void => {};
    gate.shut = new Promise((r) => (open = r));
    const sends = ['a', 'b', 'c', 'd'].map((t) => alice.client.send('bob', text(t)));
    await cluster.advance(50);
    open();
    await cluster.advance(200);
    await Promise.all(sends);
    expect(bob.messages.map((m) => untext(m.body))).toEqual(['a', 'b', 'c', 'd']);
    const forBob = rings.filter((r) => r.devices.includes('bob/phone'));
    expect(forBob.some((r) => r.carried > 1)).toBe(true); // one batch wrote several
    for (const r of forBob) expect(r.devices.filter((d) => d === 'bob/phone')).toHaveLength(1);
  });

  it.each([
    ['the default window (64), 20 messages', {}, 20],
    ['a window of 128, 100 messages', { deliveryWindow: 128 }, 100],
  ] as const)(
    'a batch that wrote many entries for a device on another node carries them all, up to its delivery window: its inbox is not read (%s)',
    async (_what, options, count) => {
      // Appends wait at a gate, so the sends that arrive meanwhile commit as one batch.
      const counting = countingStore();
      const gate = { shut: Promise.resolve() };
      const store: ServerStore = {
        ...counting.store,
        async append(items, now, opts) {
          await gate.shut;
          return counting.store.append(items, now, opts);
        },
      };
      cluster = await makeCluster(2, { store, ...options });
      const alice = await cluster.device('alice', 'phone', 0);
      const bob = await cluster.device('bob', 'phone', 1);
      await cluster.advance(100);
      const before = counting.readsOf('bob/phone');
      let open = (): void => {};
      gate.shut = new Promise((r) => (open = r));
      const words = Array.from({ length: count }, (_, i) => `m${i}`);
      const sends = words.map((t) => alice.client.send('bob', text(t)));
      await cluster.advance(50);
      open();
      await cluster.advance(300);
      await Promise.all(sends);
      expect(bob.messages.map((m) => untext(m.body))).toEqual(words);
      expect(counting.readsOf('bob/phone') - before).toBe(0);
    },
  );

  it('a message too long to ride is read from the inbox on the other node, in order with the short ones', async () => {
    const { store, readsOf } = countingStore();
    cluster = await makeCluster(2, { store });
    const alice = await cluster.device('alice', 'phone', 0);
    const bob = await cluster.device('bob', 'phone', 1);
    await cluster.advance(100);
    const before = readsOf('bob/phone');
    const long = 'x'.repeat(4096);
    for (const t of ['short', long, 'after']) await alice.client.send('bob', text(t));
    await cluster.advance(300);
    expect(bob.messages.map((m) => untext(m.body))).toEqual(['short', long, 'after']);
    expect(readsOf('bob/phone') - before).toBeGreaterThan(0);
  });

  it('a group message fans out to members on every node, once each, in order', async () => {
    cluster = await makeCluster(3);
    const members = await Promise.all(
      ['alice', 'bob', 'carol', 'dave', 'erin', 'frank'].map((u, i) => cluster!.device(u, 'phone', i % 3)),
    );
    const [alice, ...rest] = members;
    const g = alice!.client.createGroup('trip', ['bob', 'carol', 'dave', 'erin', 'frank']);
    await cluster.advance(300);
    const group = await g;
    for (let i = 0; i < 5; i++) await alice!.client.sendToGroup(group, text(`g${i}`));
    await cluster.advance(300);
    for (const m of rest)
      expect(m.messages.map((x) => untext(x.body))).toEqual(['g0', 'g1', 'g2', 'g3', 'g4']);
  });

  it('a lost doorbell costs latency, not the message: the inbox poll delivers it', async () => {
    cluster = await makeCluster(2);
    const alice = await cluster.device('alice', 'phone', 0);
    const bob = await cluster.device('bob', 'phone', 1);
    cluster.hub.faults.dropDoorbells = true;
    await alice.client.send('bob', text('rung into the void'));
    await cluster.advance(POLL_MS / 4);
    expect(bob.messages).toHaveLength(0); // the hint was lost; the entry waits in the inbox
    await cluster.advance(POLL_MS);
    expect(bob.messages.map((m) => untext(m.body))).toEqual(['rung into the void']);
  });

  it("the newest connection of a device wins across nodes: the old node closes its session as 'replaced'", async () => {
    cluster = await makeCluster(2);
    const old = await rawDevice(cluster, 0, 'bob', 'phone');
    expect(old.frames.some((f) => f.t === 'welcome')).toBe(true);
    const now = await rawDevice(cluster, 1, 'bob', 'phone');
    expect(now.frames.some((f) => f.t === 'welcome')).toBe(true);
    await cluster.advance(50);
    expect(old.closed).toBe(CLOSE_CODES.replaced);
    expect(now.closed).toBeUndefined();
    // And the registry points at the new node: a message rings there.
    const alice = await cluster.device('alice', 'phone', 0);
    await alice.client.send('bob', text('to the new connection'));
    await cluster.advance(200);
    expect(now.frames.some((f) => f.t === 'msg')).toBe(true);
  });

  it('presence crosses nodes: a watcher sees a user on another node come online and, after the debounce, go offline with last seen', async () => {
    cluster = await makeCluster(2);
    const alice = await cluster.device('alice', 'phone', 0);
    await settle(cluster, alice.client.watchPresence('bob'));
    await cluster.advance(100);
    expect(alice.presence).toEqual([{ user: 'bob', online: false }]);
    const bob = await cluster.device('bob', 'phone', 1);
    await cluster.advance(100);
    expect(alice.presence.at(-1)).toEqual({ user: 'bob', online: true });
    // A second device on a third node: still one "online".
    const before = alice.presence.length;
    await settle(cluster, bob.client.close());
    await cluster.advance(100); // within the debounce: not announced
    expect(alice.presence).toHaveLength(before);
    await cluster.advance(1000);
    const last = alice.presence.at(-1)!;
    expect(last.online).toBe(false);
    expect(last.lastSeen).toBeGreaterThan(0);
    expect(alice.presence.filter((p) => !p.online)).toHaveLength(2); // the initial state and this
  });

  it('a user flapping between nodes within the debounce is never announced offline', async () => {
    cluster = await makeCluster(2);
    const alice = await cluster.device('alice', 'phone', 0);
    let at = 0;
    const bob = await cluster.device('bob', 'phone', () => at);
    await settle(cluster, alice.client.watchPresence('bob'));
    await cluster.advance(100);
    expect(alice.presence.at(-1)).toEqual({ user: 'bob', online: true });
    at = 1;
    for (const l of cluster.nodes[0]!.net.connections()) if (l.name === 'bob/phone') l.cut();
    await cluster.advance(2000);
    expect(bob.client.state).toBe('open');
    expect(bob.connects.at(-1)).toBe(1);
    expect(alice.presence.every((p) => p.online)).toBe(true);
  });

  it('typing crosses nodes and reaches only the devices it concerns', async () => {
    cluster = await makeCluster(3);
    const alice = await cluster.device('alice', 'phone', 0);
    const bob = await cluster.device('bob', 'phone', 1);
    const carol = await cluster.device('carol', 'phone', 2);
    await bob.client.send('alice', text('hi alice')); // bob wrote to alice: her typing may reach him
    await cluster.advance(200);
    alice.client.setTyping('bob', true);
    await cluster.advance(100);
    expect(bob.typing).toEqual([{ user: 'alice', on: true }]);
    expect(carol.typing).toEqual([]);
    expect(alice.typing).toEqual([]);
  });

  it('push wakes a device connected nowhere, never one connected to another node', async () => {
    const calls: DeviceAddress[] = [];
    const push: PushProvider = {
      name: 'recorder',
      async wake(device) {
        calls.push(device);
      },
    };
    cluster = await makeCluster(2, { push, pushIntervalMs: 1 });
    const alice = await cluster.device('alice', 'phone', 0);
    const bob = await cluster.device('bob', 'phone', 1);
    await settle(cluster, bob.client.setPushToken({ kind: 'fcm', token: 'tok' }));
    await cluster.advance(100);
    await alice.client.send('bob', text('online elsewhere'));
    await cluster.advance(300);
    expect(bob.messages).toHaveLength(1);
    expect(calls).toEqual([]);
    await settle(cluster, bob.client.close());
    await cluster.advance(1000);
    await alice.client.send('bob', text('offline'));
    await cluster.advance(300);
    expect(calls).toEqual([{ user: 'bob', device: 'phone' }]);
  });

  it('a node crash: its clients reconnect to the others, drain what waited, and nothing acked is lost', async () => {
    cluster = await makeCluster(3);
    const alice = await cluster.device('alice', 'phone', 0);
    let bobNode = 1;
    const bob = await cluster.device('bob', 'phone', () => bobNode);
    await settle(cluster, alice.client.watchPresence('bob'));
    const first = await Promise.all([0, 1, 2].map((i) => alice.client.send('bob', text(`before ${i}`))));
    await cluster.advance(200);
    expect(bob.messages).toHaveLength(3);
    await cluster.crash(1);
    bobNode = 2; // node 1 is gone; the client's next connect goes elsewhere
    const later = await Promise.all([0, 1, 2].map((i) => alice.client.send('bob', text(`after ${i}`))));
    await cluster.advance(2000);
    expect(bob.client.state).toBe('open');
    expect(bob.messages.map((m) => untext(m.body))).toEqual([
      'before 0',
      'before 1',
      'before 2',
      'after 0',
      'after 1',
      'after 2',
    ]);
    for (const id of [...first, ...later]) expect(alice.statuses.get(id)).toBe('delivered');
    // The dead node's registrations stop counting after the TTL and are reaped, without it.
    await cluster.advance(TTL_MS * 3);
    expect(cluster.hub.size().nodes).toBe(2);
  });

  it('the node that reaps a dead node records the last seen of the users it left offline', async () => {
    cluster = await makeCluster(2);
    await cluster.device('carol', 'phone', 1);
    await cluster.advance(100);
    await cluster.crash(1);
    const before = cluster.clock.now();
    await cluster.advance(TTL_MS * 3);
    const seen = await cluster.nodes[0]!.server.store.lastSeen('carol');
    expect(seen).toBeGreaterThanOrEqual(before);
  });

  it("a new device waiting on one node is approved by its user's device on another node", async () => {
    cluster = await makeCluster(2, { linking: 'approval' });
    const phone = await cluster.device('bob', 'phone', 0);
    const laptop = await cluster.device('bob', 'laptop', 1, { register: false });
    await cluster.advance(100);
    expect(laptop.client.state).toBe('linking');
    const code = laptop.linkCodes[0]!;
    // Another user cannot approve it, from any node.
    const mallory = await cluster.device('mallory', 'phone', 0);
    await expect(settle(cluster, mallory.client.approveDevice(code))).rejects.toMatchObject({
      code: 'forbidden',
    });
    await settle(cluster, phone.client.approveDevice(code));
    await cluster.advance(200);
    expect(laptop.client.state).toBe('open');
    expect(laptop.connects.at(-1)).toBe(1);
    expect(await cluster.nodes[0]!.server.store.devices('bob')).toContain('laptop');
    // And it is a device of bob's like any other: it gets what bob gets.
    const alice = await cluster.device('alice', 'phone', 0);
    await alice.client.send('bob', text('to all of bob'));
    await cluster.advance(300);
    expect(laptop.messages.map((m) => untext(m.body))).toEqual(['to all of bob']);
    // A code is good once.
    await expect(settle(cluster, phone.client.approveDevice(code))).rejects.toMatchObject({
      code: 'forbidden',
    });
  });

  it('a device unlinked from another node is closed there (4005) and stays out', async () => {
    cluster = await makeCluster(2);
    const phone = await cluster.device('bob', 'phone', 0);
    const tablet = await cluster.device('bob', 'tablet', 1);
    expect(tablet.client.state).toBe('open');
    await settle(cluster, phone.client.unlinkDevice('tablet'));
    await cluster.advance(200);
    expect(tablet.client.state).toBe('closed');
    expect(tablet.closes).toEqual(['forbidden']);
    expect(await cluster.nodes[0]!.server.store.devices('bob')).toEqual(['phone']);
  });

  it('a registered user’s first device gets what waited on whichever node it connects to, and unregisterUser on another node closes it', async () => {
    cluster = await makeCluster(2);
    const alice = await cluster.device('alice', 'phone', 0);
    expect(await cluster.nodes[1]!.server.registerUser('bob')).toBe(true);
    const waiting = await alice.client.send('bob', text('waiting'));
    await cluster.advance(200);
    const bob = await cluster.device('bob', 'phone', 1, { register: false });
    await cluster.advance(200);
    const after = await alice.client.send('bob', text('after'));
    await cluster.advance(200); // a doorbell from node 0, far below the inbox poll
    expect(bob.messages.map((m) => untext(m.body))).toEqual(['waiting', 'after']);
    expect([waiting, after].map((id) => alice.statuses.get(id))).toEqual(['delivered', 'delivered']);
    expect(await cluster.nodes[0]!.server.unregisterUser('bob')).toBe(true);
    await cluster.advance(200);
    expect(bob.closes).toEqual(['forbidden']);
  });

  it('server.disconnect on one node closes the user sessions on every node (4007)', async () => {
    cluster = await makeCluster(2);
    const phone = await cluster.device('bob', 'phone', 0);
    const tablet = await cluster.device('bob', 'tablet', 1);
    const alice = await cluster.device('alice', 'phone', 1);
    await cluster.nodes[0]!.server.disconnect('bob');
    await cluster.advance(200);
    // Static credentials, refused for good; a credentials function would be asked again.
    expect([phone.closes, tablet.closes]).toEqual([['unauthorized'], ['unauthorized']]);
    expect(alice.client.state).toBe('open');
  });

  it('with the cluster unreachable, sessions still open and get their entries by the inbox poll', async () => {
    cluster = await makeCluster(2);
    const alice = await cluster.device('alice', 'phone', 0);
    // Redis goes away for node 1: every registry call it makes fails.
    const down = cluster.nodes[1]!.cluster;
    const fail = () => Promise.reject(new Error('redis unreachable'));
    Object.assign(down, { register: fail, unregister: fail, locate: fail, presence: fail });
    const bob = await cluster.device('bob', 'phone', 1);
    expect(bob.client.state).toBe('open');
    await alice.client.send('bob', text('the long way round'));
    await cluster.advance(POLL_MS / 4);
    expect(bob.messages).toHaveLength(0); // nobody knows where bob is: no doorbell reaches him
    await cluster.advance(POLL_MS);
    expect(bob.messages.map((m) => untext(m.body))).toEqual(['the long way round']);
  });

  it('a cluster that hangs holds a handshake for at most a few seconds: the session opens and lives on the poll', async () => {
    cluster = await makeCluster(2);
    const alice = await cluster.device('alice', 'phone', 0);
    const hung = cluster.nodes[1]!.cluster;
    Object.assign(hung, { register: () => new Promise(() => {}) });
    const bob = await cluster.device('bob', 'phone', 1);
    expect(bob.client.state).not.toBe('open');
    for (let t = 0; t < 4000; t += 100) await cluster.advance(100);
    expect(bob.client.state).toBe('open');
    await alice.client.send('bob', text('via the poll'));
    await cluster.advance(POLL_MS * 1.5);
    expect(bob.messages.map((m) => untext(m.body))).toEqual(['via the poll']);
  });

  it('a reconnect storm past the handshake cap is told to try again later (1013), and every client gets in after backing off', async () => {
    let gate: (() => void) | undefined;
    let opened: Promise<void> = new Promise<void>((r) => (gate = r));
    let inFlight = 0;
    let most = 0;
    let refusals = 0;
    cluster = await makeCluster(1, {
      maxConcurrentHandshakes: 3,
      // A slow authenticator: handshakes pile up as they would behind a busy store.
      authenticate: async (cred) => {
        most = Math.max(most, ++inFlight);
        await opened;
        inFlight--;
        const [user, device] = String(cred).split('/');
        return { user: user!, device: device! };
      },
      metrics: {
        ...noMetrics,
        error: (code) => {
          if (code === 'unavailable') refusals++;
        },
      },
    });
    const c = cluster;
    // Ten bare connections say hello while the authenticator is stuck: three are let in.
    const raws = [];
    for (let i = 0; i < 10; i++) raws.push(await rawDevice(c, 0, `u${i}`, 'phone'));
    const refused = raws.filter((r) => r.closed === CLOSE_CODES.tryAgainLater);
    expect(refused).toHaveLength(7);
    // A bare close, no error frame: the client moves on to another gateway of its list.
    for (const r of refused) expect(r.frames.filter((f) => f.t === 'err')).toEqual([]);
    expect(refusals).toBe(7);
    gate!();
    await c.advance(100);
    expect(raws.filter((r) => r.frames.some((f) => f.t === 'welcome'))).toHaveLength(3);
    // Real clients whose handshakes each take a second: all of them get in, never more than
    // three handshakes at once, the rest told to come back later.
    opened = new Promise<void>((r) => c.clock.setTimeout(r, 1000));
    const renew = (): void => {
      opened = new Promise<void>((r) => c.clock.setTimeout(r, 1000));
      c.clock.setTimeout(renew, 1000);
    };
    c.clock.setTimeout(renew, 1000);
    most = 0;
    refusals = 0;
    const clients = [];
    for (let i = 0; i < 12; i++) clients.push(await c.device(`v${i}`, 'phone', 0));
    for (let t = 0; t < 600 && clients.some((d) => d.client.state !== 'open'); t++) await c.advance(100);
    expect(clients.filter((d) => d.client.state !== 'open')).toEqual([]);
    expect(most).toBeLessThanOrEqual(3);
    expect(refusals).toBeGreaterThan(0);
  });
});
