// Many gateway nodes (issue 7) with real processes: three `postbox serve` nodes over one
// PostgreSQL schema and one Redis prefix form a deployment; 32 client devices (24 users, 8 of
// them with two devices, two groups of 8) spread over the nodes and message each other across
// them. Under load one node is SIGKILLed; its clients move to the survivors by themselves (the
// WebSocket transport's gateway list, the engine's backoff), and once everything has drained
// every invariant holds: no loss, no duplicates, per-sender order, monotone statuses. Three
// rounds, each killing a different node, which comes back (empty) on its port for the next.
//
// Every choice the test makes comes from one seed, printed at the start: the groups, each
// client's gateway list and first node, what each send goes from and to, the node killed in each
// round and the send after which it dies. CLUSTER_KILL_SEED=N replays a run's choices (the
// timing of the processes still varies).
import { randomBytes, randomInt } from 'node:crypto';
import { createInterface } from 'node:readline';
import pg from 'pg';
import { WebSocket as WsSocket, type ClientOptions as WsClientOptions } from 'ws';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  createClient,
  type GapEvent,
  type MessageStatus,
  type PostboxClient,
  type ReceivedMessage,
} from '../src/client/index.js';
import { STATUS_RANK } from '../src/client/status.js';
import { memoryClientStore } from '../src/client/stores/memory.js';
import { websocketClientTransport, type WebSocketConstructor } from '../src/transport/websocket.js';
import { seededRandom } from '../src/util/clock.js';
import { killAll, run, type Proc } from './fixtures/proc.js';
import { deleteRedisPrefix, REDIS_URL, redisUnreachable } from './fixtures/redis.js';
import { describeWithServices, PG_URL, pgUnreachable } from './fixtures/services.js';
import { sleep } from './fixtures/util.js';

const pgReason = await pgUnreachable();
const reason = pgReason ?? (await redisUnreachable());
const TITLE = 'three gateway nodes over PostgreSQL + Redis, one SIGKILLed under load per round';

const USERS = 24;
/** Every third user has a second device: 8 users, 32 devices in all. */
const twoDevices = (u: number) => u % 3 === 0;
const GROUPS = 2;
const GROUP_SIZE = 8;
/** Messages per round (the bounded total), one every SEND_EVERY_MS (the bounded rate). */
const SENDS_PER_ROUND = 240;
const SEND_EVERY_MS = 10;
/** The node dies after a seeded number of sends in this range, so the rest go out meanwhile. */
const KILL_AFTER = [50, 150] as const;
/** Every READ_EVERY-th send, a device also marks its latest conversation read. */
const READ_EVERY = 15;
const ROUNDS = 3;
/** Vitest budget of a round and of the set-up: the file stays under 90 s even when they run out. */
const ROUND_MS = 19_000;
const SETUP_MS = 18_000;

const SEED = Number(process.env.CLUSTER_KILL_SEED) || randomInt(1, 2 ** 31);
const runId = randomBytes(4).toString('hex');
const schema = `pb_nodes_${runId}`;
const prefix = `pbnodes-${runId}:`;
const enc = new TextEncoder();

// ---------------------------------------------------------------------------- nodes

interface GatewayNode {
  id: string;
  port: number;
  url: string;
  /** The running process; undefined while the node is dead. */
  p: Proc | undefined;
  /** Error lines the node logged (store failures, …), over all its lives. */
  errors: string[];
}

const nodes: GatewayNode[] = [];
const nodeName = (url: string | undefined) => nodes.find((n) => n.url === url)?.id ?? String(url);

/** Starts `node` again on its port, or a new gateway of the deployment on a free one. */
async function startNode(id: string, node?: GatewayNode): Promise<GatewayNode> {
  const p = run([
    'dist/cli/main.js',
    'serve',
    '--port',
    String(node?.port ?? 0),
    '--insecure-dev-auth',
    '--linking',
    'open',
    '--group-consent',
    'open', // the seeded groups are of users that never wrote to each other
    '--store',
    `${PG_URL}?schema=${schema}`,
    '--cluster',
    `${REDIS_URL}?prefix=${prefix}`,
    '--node-id',
    id,
    '--cluster-ttl-ms',
    '1500',
    '--heartbeat-ms',
    '2000',
    '--log-level',
    'warn',
  ]);
  const errors = node?.errors ?? [];
  createInterface({ input: p.proc.stderr }).on('line', (l) => {
    if (l.includes('"level":"error"')) errors.push(l);
  });
  const line = await p.waitFor('postbox listening on ', 15_000);
  const url = line.split(' ')[3]!;
  if (node) {
    node.p = p;
    return node;
  }
  return { id, port: Number(new URL(url).port), url, p, errors };
}

// ---------------------------------------------------------------------------- clients

interface Device {
  user: string;
  device: string;
  name: string;
  client: PostboxClient;
  /** URL of the socket opened last. */
  dialed: string | undefined;
  /** URL of the node it was on when it last became `open`, and when. */
  node: string | undefined;
  openedAt: number;
  received: ReceivedMessage[];
  /** The node this device was on when each message arrived (same index as `received`). */
  receivedOn: Array<string | undefined>;
  gaps: GapEvent[];
}

interface Sent {
  id: string;
  from: Device;
  /** A user id (1:1) or a group id. */
  to: string;
  round: number;
  /** Every status event of the message, in order. */
  statuses: MessageStatus[];
  /** The node the sender was on when the message first showed `sent` (or beyond), and when. */
  ackedOn: string | undefined;
  ackedAt: number | undefined;
  /** Every device that must show it, and how many times each did. */
  shown: Map<string, number>;
}

const devices: Device[] = [];
const devicesOf = new Map<string, Device[]>();
const groups = new Map<string, string[]>();
const sent = new Map<string, Sent>();
/** Ids each sender device sent to each target (`device\0target`), in send order. */
const sentOrder = new Map<string, string[]>();
/** Messages shown where they should not be, or not as what they are. */
const phantoms: string[] = [];
/** Per round, for the drain: (message, device) pairs not shown yet, messages not acked, not ✓✓. */
const pending = new Map<number, { unshown: number; unacked: number; undelivered: number }>();
const pendingIn = (round: number) => {
  let p = pending.get(round);
  if (!p) pending.set(round, (p = { unshown: 0, unacked: 0, undelivered: 0 }));
  return p;
};

const rank = (s: MessageStatus) => STATUS_RANK[s];
const last = <T>(a: readonly T[]): T | undefined => a[a.length - 1];
const isGroup = (to: string) => to.startsWith('#');

/** A `ws` WebSocket that records which gateway the device dialed. */
function trackingWebSocket(d: { dialed: string | undefined }): WebSocketConstructor {
  class Tracked extends WsSocket {
    constructor(url: string, protocols?: string | string[], options?: WsClientOptions) {
      super(url, protocols, options);
      d.dialed = url;
    }
  }
  return Tracked as unknown as WebSocketConstructor;
}

/**
 * A device of `user`, connecting through its own gateway list: every node, the `first` one
 * first, the other two in a seeded order, so the clients of a dead node spread over both
 * survivors rather than all moving to the same next one.
 */
function addDevice(user: string, device: string, first: number, rng: () => number): Device {
  const d: Device = {
    user,
    device,
    name: `${user}/${device}`,
    client: undefined as unknown as PostboxClient,
    dialed: undefined,
    node: undefined,
    openedAt: 0,
    received: [],
    receivedOn: [],
    gaps: [],
  };
  const others = nodes.filter((_, i) => i !== first).map((n) => n.url);
  if (rng() < 0.5) others.reverse();
  d.client = createClient({
    transport: websocketClientTransport({
      url: [nodes[first]!.url, ...others],
      random: () => 0, // start at the first entry of the list
      WebSocket: trackingWebSocket(d),
      connectTimeoutMs: 2000,
    }),
    store: memoryClientStore(),
    credentials: d.name,
    backoffBaseMs: 100,
    backoffMaxMs: 1000,
    random: seededRandom(Math.floor(rng() * 2 ** 32)),
  });
  d.client.on('connection', (state) => {
    if (state !== 'open') return;
    d.node = d.dialed;
    d.openedAt = Date.now();
  });
  d.client.on('message', (m) => {
    d.received.push(m);
    d.receivedOn.push(d.node);
    const s = sent.get(m.id);
    const n = s?.shown.get(d.name);
    if (!s || n === undefined) {
      phantoms.push(`${d.name} shows ${m.id} from ${m.from}/${m.fromDevice} in ${m.conv}`);
      return;
    }
    s.shown.set(d.name, n + 1);
    if (n === 0) pendingIn(s.round).unshown--;
    const self = s.from.user === d.user;
    const conv = isGroup(s.to) ? s.to : self ? s.to : s.from.user;
    if (
      m.from !== s.from.user ||
      m.fromDevice !== s.from.device ||
      m.conv !== conv ||
      m.self !== self ||
      m.group !== isGroup(s.to)
    ) {
      phantoms.push(`${d.name} shows ${m.id} as ${JSON.stringify({ ...m, body: undefined })}`);
    }
  });
  d.client.on('status', (st) => {
    const s = sent.get(st.id);
    if (!s) return;
    const before = last(s.statuses);
    s.statuses.push(st.status);
    if (rank(st.status) >= 1 && (before === undefined || rank(before) < 1)) {
      pendingIn(s.round).unacked--;
      s.ackedOn = d.node;
      s.ackedAt = Date.now();
    }
    if (rank(st.status) >= 2 && (before === undefined || rank(before) < 2)) pendingIn(s.round).undelivered--;
  });
  d.client.on('gap', (g) => d.gaps.push(g));
  devices.push(d);
  devicesOf.set(user, [...(devicesOf.get(user) ?? []), d]);
  return d;
}

/**
 * Queues one message and, once stored, records which devices must show it (docs/devices.md): for 1:1 every
 * device of the peer and every other device of the sender; for a group every device of every
 * member but the sending one.
 */
async function send(from: Device, to: string, round: number): Promise<void> {
  const audience = isGroup(to)
    ? groups.get(to)!.flatMap((u) => devicesOf.get(u)!)
    : [...devicesOf.get(to)!, ...devicesOf.get(from.user)!];
  const shown = new Map(audience.filter((d) => d !== from).map((d) => [d.name, 0]));
  const body = enc.encode(`${from.name} to ${to}, round ${round}`);
  const id = await (isGroup(to) ? from.client.sendToGroup(to, body) : from.client.send(to, body));
  // Resolved: the message is in the outbox, pending (its `pending` event came just before).
  const statuses: MessageStatus[] = ['pending'];
  sent.set(id, { id, from, to, round, statuses, ackedOn: undefined, ackedAt: undefined, shown });
  const key = `${from.name}\u0000${to}`;
  sentOrder.set(key, [...(sentOrder.get(key) ?? []), id]);
  const p = pendingIn(round);
  p.unshown += shown.size;
  p.unacked++;
  p.undelivered++;
}

/** Polls `condition` every 5 ms until it holds (true) or `ms` ran out (false). */
async function within(ms: number, condition: () => boolean): Promise<boolean> {
  const end = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > end) return false;
    await sleep(5);
  }
  return true;
}

// ---------------------------------------------------------------------------- invariants

/**
 * Every invariant over the messages sent in `round`: the violations of each kind (all empty when
 * they hold). Rounds are checked apart, so a failing round does not fail the ones after it.
 */
function violations(
  round: number,
  since: { phantoms: number; gaps: Map<Device, number> },
): Record<string, string[]> {
  const v = {
    'no loss': [] as string[],
    'no duplicates': [] as string[],
    'no phantom': phantoms.slice(since.phantoms),
    'per-sender order': [] as string[],
    'no gaps': [] as string[],
    'monotone statuses': [] as string[],
    'final status delivered or read': [] as string[],
  };
  for (const s of sent.values()) {
    if (s.round !== round) continue;
    const what = `${s.id} (${s.from.name} to ${s.to}, acked on ${nodeName(s.ackedOn)})`;
    for (const [dev, n] of s.shown) {
      if (n === 0) v['no loss'].push(`${what} never reached ${dev}`);
      if (n > 1) v['no duplicates'].push(`${what} shown ${n} times on ${dev}`);
    }
    const ranks = s.statuses.map(rank);
    if (s.statuses[0] !== 'pending' || ranks.some((r, i) => i > 0 && r <= ranks[i - 1]!)) {
      v['monotone statuses'].push(`${what}: ${s.statuses.join(' → ')}`);
    }
    const final = last(s.statuses);
    if (final !== 'delivered' && final !== 'read') {
      v['final status delivered or read'].push(`${what}: ${s.statuses.join(' → ') || 'no status'}`);
    }
  }
  for (const d of devices) {
    for (const g of d.gaps.slice(since.gaps.get(d) ?? 0))
      v['no gaps'].push(`${d.name}: gap ${JSON.stringify(g)}`);
    // One stream per (conversation, sender device), as this device sees it.
    const streams = new Map<string, ReceivedMessage[]>();
    for (const m of d.received) {
      if (sent.get(m.id)?.round !== round) continue;
      if (m.late) v['no gaps'].push(`${d.name}: ${m.id} shown late`);
      const k = `${m.conv} from ${m.from}/${m.fromDevice}`;
      streams.set(k, [...(streams.get(k) ?? []), m]);
    }
    for (const [k, ms] of streams) {
      const m0 = ms[0]!;
      // What the sender sent to: the group, this user (a peer's message) or the peer (a copy).
      const target = m0.group || m0.from === d.user ? m0.conv : d.user;
      const all = sentOrder.get(`${m0.from}/${m0.fromDevice}\u0000${target}`) ?? [];
      const want = all.filter((id) => sent.get(id)!.round === round);
      const got = ms.map((m) => m.id);
      // Shown in the order sent, and each with its place in the sender's stream as its sequence
      // number: 1:1 sequences are exactly 1..n; a group's need only increase
      // (docs/groups.md#order), but with the members fixed from the start they are 1..n too.
      const seqsOk = ms.every((m) => m.seq === all.indexOf(m.id) + 1);
      if (!seqsOk || got.join() !== want.join()) {
        v['per-sender order'].push(
          `${d.name}, ${k}: seqs ${ms.map((m) => m.seq).join(',')} for sent #${ms.map((m) => all.indexOf(m.id) + 1).join(',')}; ` +
            `${got.length} shown of ${want.length} sent this round` +
            (got.join() === want.slice(0, got.length).join() ? '' : ', not in send order'),
        );
      }
    }
  }
  return v;
}

/** The count and first few of each kind of violation, 'ok' for the kinds that hold. */
const summary = (v: Record<string, string[]>) =>
  Object.fromEntries(
    Object.entries(v).map(([k, list]) => [
      k,
      list.length === 0 ? 'ok' : `${list.length}: ${list.slice(0, 4).join(' | ')}`,
    ]),
  );

// ---------------------------------------------------------------------------- the test

describeWithServices(TITLE, reason, () => {
  const rng = seededRandom(SEED);
  const pick = <T>(a: readonly T[]): T => a[Math.floor(rng() * a.length)]!;
  /** The node killed in each round: each one once, in a seeded order. */
  const killOrder = [0, 1, 2]
    .map((i) => ({ i, r: rng() }))
    .sort((a, b) => a.r - b.r)
    .map((x) => x.i);

  describe(TITLE, () => {
    beforeAll(async () => {
      console.log(
        `cluster-nodes: seed ${SEED} (replay: CLUSTER_KILL_SEED=${SEED}); schema ${schema}, Redis prefix ${prefix}`,
      );
      nodes.push(...(await Promise.all(['n1', 'n2', 'n3'].map((id) => startNode(id)))));
      let index = 0;
      for (let u = 0; u < USERS; u++) {
        const user = `u${String(u).padStart(2, '0')}`;
        addDevice(user, 'd1', index++ % nodes.length, rng);
        if (twoDevices(u)) addDevice(user, 'd2', index++ % nodes.length, rng);
      }
      const open = await within(10_000, () => devices.every((d) => d.client.state === 'open'));
      expect(open, `not open: ${devices.filter((d) => d.client.state !== 'open').map((d) => d.name)}`).toBe(
        true,
      );
      // Two groups (seeded members), each created by its first member. Every member device must
      // know a group before anyone sends to it: ✓✓ counts the members the sender knew.
      const users = [...devicesOf.keys()];
      for (let g = 1; g <= GROUPS; g++) {
        const members = users
          .map((u) => ({ u, r: rng() }))
          .sort((a, b) => a.r - b.r)
          .slice(0, GROUP_SIZE)
          .map((x) => x.u);
        const creator = devicesOf.get(members[0]!)![0]!;
        groups.set(await creator.client.createGroup(`g${g}`, members.slice(1), `#g${g}`), members);
      }
      const known = await within(10_000, () =>
        [...groups].every(([id, members]) =>
          members.every((u) =>
            devicesOf.get(u)!.every((d) => d.client.group(id)?.members.length === GROUP_SIZE),
          ),
        ),
      );
      expect(known, 'every member device knows both groups').toBe(true);
      const spread = nodes.map((n) => `${n.id} ${devices.filter((d) => d.node === n.url).length}`);
      console.log(
        `cluster-nodes: ${devices.length} devices of ${USERS} users on ${spread.join(', ')}; ` +
          `groups ${[...groups].map(([id, m]) => `${id} [${m}]`).join(', ')}; kill order ${killOrder.map((i) => nodes[i]!.id)}`,
      );
    }, SETUP_MS);

    afterAll(async () => {
      await Promise.all(devices.map((d) => d.client.close().catch(() => undefined)));
      killAll();
      await Promise.all(nodes.map((n) => n.p?.exited));
      const c = new pg.Client({ connectionString: PG_URL });
      await c.connect();
      await c.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
      await c.end();
      await deleteRedisPrefix(prefix);
    }, 6_000);

    for (let round = 1; round <= ROUNDS; round++) {
      it(
        `round ${round}: nothing lost, doubled or reordered; the dead node's clients move to the survivors`,
        async () => {
          const deadline = Date.now() + ROUND_MS - 1_500; // what is left is for the checks
          const victim = nodes[killOrder[round - 1]!]!;
          const killAfter = KILL_AFTER[0] + Math.floor(rng() * (KILL_AFTER[1] - KILL_AFTER[0]));
          const targets = [...devicesOf.keys(), ...groups.keys()];
          // The node killed in the round before comes back first, empty, on its port.
          for (const n of nodes) if (!n.p) await startNode(n.id, n);
          const since = { phantoms: phantoms.length, gaps: new Map(devices.map((d) => [d, d.gaps.length])) };
          const errorsBefore = nodes.map((n) => n.errors.length);

          // Load: a bounded number of sends at a bounded rate, some reads; the node dies midway.
          let onVictim: Device[] = [];
          let killedAt = 0;
          const loadStart = Date.now();
          for (let i = 0; i < SENDS_PER_ROUND; i++) {
            if (i === killAfter) {
              onVictim = devices.filter((d) => d.node === victim.url);
              killedAt = Date.now();
              victim.p!.proc.kill('SIGKILL');
              victim.p = undefined;
            }
            const from = pick(devices);
            let to = pick(targets);
            while (to === from.user || (isGroup(to) && !groups.get(to)!.includes(from.user)))
              to = pick(targets);
            await send(from, to, round);
            if (i % READ_EVERY === READ_EVERY - 1) {
              const reader = pick(devices);
              const conv = last(reader.received)?.conv;
              if (conv) void reader.client.markRead(conv).catch(() => undefined);
            }
            await sleep(SEND_EVERY_MS);
          }
          const loadEnd = Date.now();
          const ackedInLoad = [...sent.values()].filter(
            (s) => s.round === round && s.ackedAt !== undefined && s.ackedAt <= loadEnd,
          ).length;

          // Every client of the dead node reconnects by itself, to a survivor; then all drains.
          const moved = (d: Device) =>
            d.client.state === 'open' && d.openedAt > killedAt && d.node !== victim.url;
          const reconnected = await within(deadline - Date.now(), () => onVictim.every(moved));
          const reconnectMs = onVictim.map((d) => d.openedAt - killedAt).sort((x, y) => x - y);
          const medianMs = reconnectMs[reconnectMs.length >> 1];
          const left = pendingIn(round);
          const drained = await within(
            deadline - Date.now(),
            () => left.unacked === 0 && left.unshown === 0 && left.undelivered === 0,
          );
          const drainedAt = Date.now();

          let crossNode = 0;
          for (const d of devices) {
            d.received.forEach((m, i) => {
              const s = sent.get(m.id);
              if (s?.round === round && s.ackedOn && d.receivedOn[i] && s.ackedOn !== d.receivedOn[i])
                crossNode++;
            });
          }
          const movedTo = nodes
            .filter((n) => n !== victim)
            .map((n) => `${n.id} ${onVictim.filter((d) => d.node === n.url).length}`)
            .join(', ');
          const loadMs = loadEnd - loadStart;
          const errors = nodes.flatMap((n, i) => n.errors.slice(errorsBefore[i]).map((e) => `${n.id} ${e}`));
          console.log(
            `cluster-nodes round ${round} (seed ${SEED}): SIGKILL ${victim.id} after send ${killAfter}/${SENDS_PER_ROUND}, ` +
              `${onVictim.length} clients on it; kill→all reconnected ${reconnected ? `${last(reconnectMs)} ms (median ${medianMs} ms)` : 'NEVER'} ` +
              `(to ${movedTo}); kill→drained ${drained ? `${drainedAt - killedAt} ms` : 'NEVER'} ` +
              `(last send→drained ${drainedAt - loadEnd} ms); ${ackedInLoad} of ${SENDS_PER_ROUND} acked during ` +
              `${loadMs} ms of load = ${Math.round((ackedInLoad * 1000) / loadMs)} msg/s; ${crossNode} deliveries across nodes; ` +
              `${errors.length} error lines from the nodes${errors.length ? ` (first: ${errors[0]})` : ''}`,
          );

          expect(onVictim.length, `${victim.id} had clients when it died`).toBeGreaterThan(0);
          expect(
            onVictim
              .filter((d) => !moved(d))
              .map((d) => `${d.name} ${d.client.state} on ${nodeName(d.node)}`),
            `clients of ${victim.id} open on a survivor`,
          ).toEqual([]);
          expect(
            devices.filter((d) => d.client.state !== 'open').map((d) => d.name),
            'every client open',
          ).toEqual([]);
          expect(crossNode, 'messages went between clients on different nodes').toBeGreaterThan(0);
          const v = violations(round, since);
          expect(summary(v)).toEqual(Object.fromEntries(Object.keys(v).map((k) => [k, 'ok'])));
          expect(drained, `drained (still ${JSON.stringify(left)})`).toBe(true);
          const read = [...sent.values()].filter((s) => s.round === round && last(s.statuses) === 'read');
          expect(read.length, 'some messages of the round were read').toBeGreaterThan(0);
        },
        ROUND_MS,
      );
    }
  });
});
