import { GAP_REASONS } from '../client/gaps.js';
import { createClient, type PostboxClient } from '../client/engine.js';
import { STATUS_RANK } from '../client/status.js';
import type { MessageStatus } from '../client/store.js';
import type { ErrorCode } from '../protocol/errors.js';
import type { CryptoAdapter } from '../crypto/types.js';
import type { ServerStore } from '../server/store.js';
import type { ClientStore } from '../client/store.js';
import type { ClusterAdapter } from '../server/cluster/types.js';
import {
  groupAudienceOracle,
  ioSettled,
  withInjectedFaults,
  type GroupAudienceRecord,
  type InflightCalls,
} from './sim-stores.js';
import {
  createMemoryClientState,
  memoryClientStore,
  type MemoryClientState,
} from '../client/stores/memory.js';
import { createServer, type PostboxServer } from '../server/engine.js';
import { createMemoryServerState, memoryServerStore } from '../server/stores/memory.js';
import { memoryClusterHub } from '../server/cluster/local.js';
import { memoryNetwork, type MemoryNetwork } from '../transport/memory.js';
import type { ClientTransport } from '../transport/types.js';
import { seededRandom, type Random } from '../util/clock.js';
import { VirtualClock } from './virtual-clock.js';
import { ExpiryOracle, type LoggedGap } from './sim-expiry.js';

/** Knobs of one simulated run; every default is drawn from the seed. */
export interface SimulationOptions {
  /** Everything random in the run derives from this. */
  seed: number;
  /** Users in the world. @default 3..5 */
  users?: number;
  /** Most devices per user. @default 3 */
  maxDevicesPerUser?: number;
  /** Random actions before the quiet phase. @default 250 */
  steps?: number;
  /** Probability scale of faults (0 = none). @default 1 */
  faultLevel?: number;
  /** Groups created at the start; members then come and go while messages flow. @default 1..2 */
  groups?: number;
  /** Print each action (for replaying a failing seed). */
  trace?: (line: string) => void;
  /**
   * End-to-end encryption on every device: a new adapter per client start (restarts re-open the
   * device's crypto state from its store). Every device uploads its keys before the first send.
   */
  crypto?: () => CryptoAdapter;
  /**
   * Gateway nodes over the one store, joined by an in-memory cluster (`memoryClusterHub`). With
   * more than one, every connect goes to a random node, crashes hit one node at a time (its
   * registrations linger until the cluster's TTL), and doorbells between nodes are sometimes
   * dropped, so delivery across nodes must survive lost hints. @default 1
   */
  nodes?: number;
  /**
   * Users the app puts in the user directory (`server.registerUser`) before any device of theirs
   * exists: each has one device, which first connects at a random step of the run's first half,
   * so messages and group changes for it wait in its pending inbox until then and must all reach
   * it. Not with `crypto`: a user without a device has no keys to encrypt to. @default 0
   */
  lateUsers?: number;
  /**
   * Opens the server store the run uses, in place of a new memory store: one store for the whole
   * run, shared by every node and kept across engine crashes (a crash abandons an engine, never
   * the store). It must start empty. Faults are injected around it (a failed call never reaches
   * it), and it is closed at the end of the run.
   */
  serverStore?: () => ServerStore | Promise<ServerStore>;
  /**
   * Opens a device's client store, in place of a memory store. Called at every start of that
   * device's client; a call for the same device after a restart must open the same data again
   * (as an app does after it was killed). Each store is closed when its client stops. Faults are
   * injected around it.
   */
  clientStore?: (device: { user: string; device: string }) => ClientStore | Promise<ClientStore>;
  /**
   * Makes a cluster node for each gateway start (with `nodes` > 1), in place of a node of an
   * in-memory hub; it is given the run's virtual clock. A node with `crash()` is crashed with it,
   * others are stopped. Dropped doorbells are injected only with the built-in hub.
   */
  cluster?: (clock: VirtualClock) => SimClusterNode | Promise<SimClusterNode>;
  /**
   * Retention expiry as one more fault: the servers keep undelivered entries for a retention
   * drawn from the seed (60–120 s of virtual time, far beyond any other fault's recovery), and at
   * seeded steps devices down from a restart come back, some devices with nothing unsent go
   * away, time moves past the retention, and a running node expires what was not acked. Checked
   * as well: every message entry dropped for a device was shown there or is covered there by a
   * `gap` with reason `expired`, never both; every gap has a reason and covers only what was
   * dropped; a 1:1 message dropped for every device of its recipient ends `expired`. Its draws
   * come from a stream of their own. @default false
   */
  expiry?: boolean;
}

/** A cluster node the simulator can start, stop and (when it can) crash. */
export type SimClusterNode = ClusterAdapter & { crash?(): Promise<void> };

/** What a run found. `violations` is empty when every invariant held. */
export interface SimulationResult {
  seed: number;
  violations: string[];
  stats: {
    sent: number;
    acked: number;
    /** Group messages sent (included in `sent`). */
    groupSent: number;
    /** Membership changes committed while messages flowed. */
    membershipChanges: number;
    deliveries: number;
    reads: number;
    clientRestarts: number;
    serverRestarts: number;
    /** Periods in which doorbells between nodes were dropped (several nodes only). */
    doorbellOutages: number;
    /** Expiry steps run (with `expiry`). */
    expiries: number;
    /** Message entries the server dropped at those steps, over all devices. */
    expiredEntries: number;
    /**
     * Group views left behind the server's at the end on devices that lost group events to
     * expiry (a known limit: expiry drops group events like any entry, with nothing carried).
     */
    staleGroupViews: number;
    cuts: number;
    halfOpens: number;
    virtualMs: number;
  };
}

/** The list under `key`, created empty when missing. */
function listIn<V>(map: Map<string, V[]>, key: string): V[] {
  let list = map.get(key);
  if (!list) map.set(key, (list = []));
  return list;
}

interface SimDevice {
  user: string;
  device: string;
  name: string;
  /** The device's store while its client runs (opened at each start, closed at each stop). */
  store: ClientStore | undefined;
  client: PostboxClient | undefined;
  /** (from/fd/id) → count of `message` events, across engine restarts. */
  seen: Map<string, number>;
  /** stream key → seqs in event order. */
  order: Map<string, number[]>;
  /** conversation → (from/fd/id) of `message` events in event order, across engine restarts. */
  shownIn: Map<string, string[]>;
  /** conversation → ids of this device's sends, in the order they resolved (were stored). */
  sentIn: Map<string, string[]>;
  gaps: number;
  /** The `reason` of each `gap` event, in order (undefined: it gave none). */
  gapReasons: Array<string | undefined>;
  /** stream key → its `gap` events, in order. */
  gapLog: Map<string, LoggedGap[]>;
  late: number;
  offlineUntilStep: number;
}

interface SentRecord {
  id: string;
  from: SimDevice;
  to: string;
  /** Set for a group message: `to` is the group id. */
  group?: boolean;
  statuses: MessageStatus[];
  /** The `reason` of its `failed` / `expired` status event, if one came. */
  reason?: ErrorCode;
}

/** The servers' retention in a run (the default, named for the gap-reason check). */
const retentionMs = 30 * 24 * 3600 * 1000;
const GAP_REASON_SET: ReadonlySet<string> = new Set(GAP_REASONS);
/** The clients' gap timeout in a run: never reached, but after a lost request to send again. */
const gapTimeoutMs = 3_600_000;

/**
 * Runs one seeded scenario: a server engine and several multi-device users over the faulty
 * in-memory transport, with random sends, reads, cuts, half-open links, client restarts and
 * server crashes, then a quiet phase; and checks the invariants of ARCHITECTURE.md §1.
 * Deterministic: the same seed replays the same run.
 */
export async function runSimulation(options: SimulationOptions): Promise<SimulationResult> {
  const { seed } = options;
  const rnd = seededRandom(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)]!;
  const chance = (p: number) => rnd() < p * (options.faultLevel ?? 1);
  const trace = options.trace ?? (() => {});
  const clock = new VirtualClock(1_700_000_000_000);
  const startedAt = clock.now();
  /**
   * Moves virtual time, then lets stores that do real I/O finish what the step started (memory
   * stores never have a call in flight here, so their runs stay exactly replayable).
   */
  const advance = async (ms: number): Promise<void> => {
    await clock.advance(ms);
    while (await ioSettled(io)) await clock.tick();
  };
  const steps = options.steps ?? 250;
  const userCount = options.users ?? 3 + Math.floor(rnd() * 3);
  const maxDev = options.maxDevicesPerUser ?? 3;
  const violations: string[] = [];
  const stats: SimulationResult['stats'] = {
    sent: 0,
    acked: 0,
    groupSent: 0,
    membershipChanges: 0,
    deliveries: 0,
    reads: 0,
    clientRestarts: 0,
    serverRestarts: 0,
    doorbellOutages: 0,
    expiries: 0,
    expiredEntries: 0,
    staleGroupViews: 0,
    cuts: 0,
    halfOpens: 0,
    virtualMs: 0,
  };

  const level = options.faultLevel ?? 1;
  // Some runs put every device on a slow (2G-like) link, so bufferedAmount and the delivery
  // window matter.
  const slow = rnd() < 0.3 ? { bytesPerMs: 2 + Math.floor(rnd() * 40) } : {};
  const nodeCount = Math.max(1, Math.floor(options.nodes ?? 1));
  // One network per node (a node's listener); node 0's draws are those of a one-node run.
  const nets: MemoryNetwork[] = Array.from({ length: nodeCount }, (_, i) =>
    memoryNetwork({
      clock,
      random: seededRandom(i === 0 ? seed ^ 0x9e3779b9 : (seed ^ 0x9e3779b9) + i * 0x632be5ab),
      faults: { latency: { min: 1, max: 40 }, cutProbability: 0.004 * level, ...slow },
    }),
  );
  const hub = nodeCount > 1 ? memoryClusterHub({ clock, ttlMs: 3000 }) : undefined;
  // Which node each connect goes to: its own stream, so a one-node run draws as before.
  const nodeRnd = seededRandom(seed ^ 0x2545f491);
  // Store faults: a failed operation changes nothing, and the engines recover by closing the
  // connection (server) or dropping it (client) and starting again from what the store holds.
  const faultRnd = seededRandom(seed ^ 0x5bd1e995);
  let storeFaults = level > 0;
  const serverFaultOps = new Set(['append', 'ack', 'readInbox']);
  const clientFaultOps = new Set(['applyInbound', 'streamNext', 'setStatus', 'pending', 'held']);
  // With encryption a key upload is some 17 KB a frame (Kyber keys are 1.6 KB): on the slowest
  // simulated links (2 bytes/ms) a 1 s heartbeat would call every uploading device dead.
  const heartbeatMs = options.crypto ? 10_000 : 1000;
  const deliveryWindow = 1 + Math.floor(rnd() * 16);
  // Expiry draws from its own stream: a run without it draws exactly as before it existed.
  const expiryRnd = seededRandom(seed ^ 0x27d4eb2f);
  const expiry = options.expiry ? new ExpiryOracle() : undefined;
  const retention = expiry ? 60_000 + Math.floor(expiryRnd() * 60_000) : retentionMs;
  // A crashed server's engine may still have commits in flight; from the crash on, nothing it
  // does reaches the store, so what it never committed it never acked.
  const engineAlive = nets.map(() => ({ value: true }));
  // One store for the whole run (every node shares it; a crash abandons an engine, not the
  // store), with the oracle that records each group message's audience at its commit.
  const audience: GroupAudienceRecord = { commits: new Map(), changes: 0, committedAt: new Map() };
  const groupCommits = audience.commits;
  const baseServerStore: ServerStore = options.serverStore
    ? await options.serverStore()
    : memoryServerStore({ state: createMemoryServerState() });
  // Store calls in flight, waited for (in real time) after each step: see `advance`.
  const io: InflightCalls = { count: 0 };
  const oracleStore = (alive: { value: boolean }): ServerStore =>
    groupAudienceOracle(
      withInjectedFaults(
        baseServerStore,
        (op) =>
          !alive.value ||
          (storeFaults && op !== 'append' && serverFaultOps.has(op) && faultRnd() < 0.003 * level),
        'simulated server store',
        io,
      ),
      audience,
      // Appends fail as a whole batch, never item by item.
      () => !alive.value || (storeFaults && faultRnd() < 0.003 * level),
    );
  const clusterNodes: Array<SimClusterNode | undefined> = nets.map(() => undefined);
  let incarnation = 0;
  const makeServer = async (i: number): Promise<PostboxServer> => {
    let cluster: SimClusterNode | undefined;
    if (hub) {
      cluster = clusterNodes[i] = options.cluster ? await options.cluster(clock) : hub.node();
      await cluster.start(`n${i}.${incarnation++}`);
    }
    const maxCommitBatch = 1 + Math.floor(rnd() * 64);
    return createServer({
      store: oracleStore(engineAlive[i]!),
      authenticate: (cred) => cred as { user: string; device: string },
      clock,
      heartbeatMs,
      deliveryWindow,
      maxCommitBatch,
      // 128–1,024 rows: items of more than 1–8 rows are large, so group messages (and some 1:1
      // ones) commit in batches of their own, taking turns with small ones, in batches of 32–256
      // rows while small ones are around (commit-batch.ts). Derived from the same draw, so every
      // seed keeps the rest of its random stream.
      maxCommitRows: 128 * (1 + (maxCommitBatch % 8)),
      linking: 'open',
      retentionMs: retention,
      // Only the seeded expiry steps expire, so the oracle sees every one.
      ...(expiry ? { expiryIntervalMs: 365 * 24 * 3600_000 } : {}),
      ...(cluster ? { cluster, inboxPollMs: 5000 } : {}),
    });
  };
  const servers: PostboxServer[] = [];
  for (let i = 0; i < nodeCount; i++) {
    servers.push(await makeServer(i));
    await servers[i]!.listen(nets[i]!.server);
  }
  const serverDown = nets.map(() => false);
  const serverUpAtStep = nets.map(() => 0);
  /** A running node, for setup and checks (they read the one shared store). */
  const server = (): PostboxServer => servers[serverDown.indexOf(false)]!;
  const net = nets[0]!;
  const transportFor = (name: string): ClientTransport =>
    nodeCount === 1
      ? net.client(name)
      : {
          name: 'simulated gateways',
          connect: () => nets[Math.floor(nodeRnd() * nodeCount)]!.client(name).connect(),
        };

  const users = Array.from({ length: userCount }, (_, i) => `user${i}`);
  const lateCount = Math.min(userCount, options.lateUsers ?? 0);
  if (lateCount > 0 && options.crypto) throw new RangeError('lateUsers cannot run with crypto');
  const devices: SimDevice[] = [];
  const addDevice = (user: string, device: string, offlineUntilStep: number): void => {
    devices.push({
      user,
      device,
      name: `${user}/${device}`,
      store: undefined,
      client: undefined,
      seen: new Map(),
      order: new Map(),
      shownIn: new Map(),
      sentIn: new Map(),
      gaps: 0,
      gapReasons: [],
      gapLog: new Map(),
      late: 0,
      offlineUntilStep,
    });
  };
  for (const [u, user] of users.entries()) {
    if (u >= userCount - lateCount) {
      // Registered, deviceless: its one device registers by its first hello, at a later step,
      // and takes over what waited. It is in `devices` from the start, so in every audience.
      await server().registerUser(user);
      addDevice(user, 'd0', 1 + Math.floor(rnd() * (steps / 2)));
      continue;
    }
    const n = 1 + Math.floor(rnd() * maxDev);
    for (let d = 0; d < n; d++) {
      addDevice(user, `d${d}`, -1);
      // Every device exists before the first send, so every message has a fixed audience.
      await server().registerDevice(user, `d${d}`);
    }
  }
  const sent = new Map<string, SentRecord>();

  // Groups, created before the first send by a random member, with a random half of the users.
  const groupIds: string[] = [];
  const groupCount = options.groups ?? 1 + Math.floor(rnd() * 2);
  const faultsWere = storeFaults;
  storeFaults = false; // the setup itself is not under test
  for (let g = 0; g < groupCount; g++) {
    const id = `#g${g}`;
    const creator = pick(users);
    const members = users.filter((u) => u !== creator && rnd() < 0.6);
    await server().changeGroup(
      { user: creator, device: 'd0' },
      id,
      { op: 'create', name: id, members },
      `create-${g}`,
    );
    groupIds.push(id);
    trace(`group ${id} by ${creator}: ${members.join(',')}`);
  }
  storeFaults = faultsWere;

  // Each device's memory state outlives its store: a new store over it is an app restart.
  const memoryStates = new Map<string, MemoryClientState>();
  const openClientStore =
    options.clientStore ??
    ((d: { user: string; device: string }) => {
      const key = `${d.user}/${d.device}`;
      let state = memoryStates.get(key);
      if (!state) memoryStates.set(key, (state = createMemoryClientState()));
      return memoryClientStore({ state });
    });
  const everStarted = new Set<SimDevice>();
  const startClient = async (dev: SimDevice): Promise<PostboxClient> => {
    everStarted.add(dev);
    const random: Random = seededRandom(Math.floor(rnd() * 2 ** 32));
    const opened = await openClientStore({ user: dev.user, device: dev.device });
    dev.store = opened;
    const client = createClient({
      transport: transportFor(dev.name),
      store: withInjectedFaults(
        opened,
        (op) => storeFaults && clientFaultOps.has(op) && faultRnd() < 0.002 * level,
        `simulated client store of ${dev.name}`,
        io,
      ),
      credentials: { user: dev.user, device: dev.device },
      device: dev.device,
      clock,
      random,
      backoffBaseMs: 50,
      backoffMaxMs: 2000,
      gapTimeoutMs,
      maxInflight: 1 + Math.floor(rnd() * 32),
      ...(options.crypto ? { crypto: options.crypto(), preKeySupply: 10 } : {}),
    });
    client.on('message', (m) => {
      const k = `${m.from}/${m.fromDevice}/${m.id}`;
      dev.seen.set(k, (dev.seen.get(k) ?? 0) + 1);
      const sk = `${m.conv}|${m.from}|${m.fromDevice}`;
      let o = dev.order.get(sk);
      if (!o) dev.order.set(sk, (o = []));
      o.push(m.seq);
      listIn(dev.shownIn, m.conv).push(k);
      if (m.late) dev.late++;
      stats.deliveries++;
    });
    client.on('gap', (g) => {
      dev.gaps++;
      dev.gapReasons.push(g.reason);
      const sk = `${g.conv}|${g.from}|${g.fromDevice}`;
      const after = dev.order.get(sk)?.length ?? 0;
      listIn(dev.gapLog, sk).push({ fromSeq: g.fromSeq, toSeq: g.toSeq, reason: g.reason, after });
    });
    client.on('status', (s) => {
      const rec = sent.get(s.id);
      if (!rec) return;
      rec.statuses.push(s.status);
      if (s.reason !== undefined) rec.reason = s.reason;
    });
    client.on('error', () => {});
    client.on('connection', (state, error) => {
      if (state === 'closed' && error) trace(`${dev.name} closed: ${error.code} ${error.message}`);
    });
    dev.client = client;
    return client;
  };
  for (const d of devices) if (d.offlineUntilStep < 0) await startClient(d);
  if (options.crypto) {
    // Every device publishes its keys before the first send, so every message has a fixed
    // audience (a device without keys gets nothing: it could not decrypt it).
    storeFaults = false;
    for (let t = 0; t < 120_000; t += 50) {
      const counts = await Promise.all(
        devices.map((d) => server().store.keyCount({ user: d.user, device: d.device })),
      );
      if (counts.every((c) => c && c.preKeys > 0)) break;
      await advance(50);
    }
    storeFaults = faultsWere;
  }

  /**
   * Records a send once the client has stored it, as an app would (without holding up the
   * scenario: awaiting here could wait on store work that waits on the network). A refused send
   * was never stored: there is nothing to check for it.
   */
  const track = (step: number, what: Omit<SentRecord, 'id' | 'statuses'>, send: Promise<string>) => {
    const name = what.group ? 'group send' : 'send';
    stats.sent++;
    if (what.group) stats.groupSent++;
    send.then(
      (id) => {
        sent.set(id, { id, statuses: [], ...what });
        listIn(what.from.sentIn, what.to).push(id);
        trace(`${step} ${name} ${what.from.name} -> ${what.to} ${id}`);
      },
      (e: unknown) => trace(`${step} ${name} ${what.from.name} -> ${what.to} refused: ${String(e)}`),
    );
  };

  const stopClient = async (dev: SimDevice) => {
    const c = dev.client;
    const store = dev.store;
    dev.client = undefined;
    dev.store = undefined;
    await c?.close();
    await store?.close();
  };

  const crashServer = async (i: number) => {
    // A crash: every connection dies at once (acks in flight are lost), queued commits that
    // had not reached the store are dropped with their sessions, and the engine is abandoned
    // (its cluster node dies first: nothing is cleaned up, its entries linger until the TTL).
    engineAlive[i]!.value = false;
    const node = clusterNodes[i];
    await (node?.crash ? node.crash() : node?.stop());
    nets[i]!.cutAll();
    await servers[i]!.close();
    serverDown[i] = true;
  };
  const restartServer = async (i: number) => {
    engineAlive[i] = { value: true };
    servers[i] = await makeServer(i);
    await servers[i]!.listen(nets[i]!.server);
    serverDown[i] = false;
  };
  /**
   * Retention expiry while some devices are away: they go offline, time moves past the
   * retention, and a running node expires what they (and devices behind slow or half-open links)
   * had not acked; they hear of it by gap notices once back. The oracle reads what was dropped.
   */
  const expiryStep = async (oracle: ExpiryOracle, step: number): Promise<void> => {
    // Devices down from a restart come back first, so what they had unsent goes out well within
    // the retention (a late user's first device still waits for its step).
    for (const d of devices) if (!d.client && everStarted.has(d)) await startClient(d);
    const away: SimDevice[] = [];
    for (const d of devices) {
      if (!d.client || expiryRnd() >= 0.4) continue;
      // Only devices with nothing unsent go away: a send left unacked would be sent again after
      // its dedupe record expired, and the server takes it as new (docs/engines.md), which is
      // outside what the checks here hold.
      if (d.client.unsent > 0 || (await d.store!.pending()).length > 0) continue;
      away.push(d);
    }
    for (const d of away) {
      await stopClient(d);
      d.offlineUntilStep = step + 1 + Math.floor(expiryRnd() * 20);
    }
    await advance(retention + Math.floor(expiryRnd() * retention));
    const i = serverDown.indexOf(false);
    const n = await oracle.around(
      baseServerStore,
      devices,
      clock.now() - retention,
      () => servers[i]!.expireNow(),
      violations,
    );
    stats.expiries++;
    stats.expiredEntries += n;
    trace(`${step} expiry with ${away.map((d) => d.name).join(',') || 'nobody'} away: ${n} entries dropped`);
  };
  const allConnections = () => nets.flatMap((n) => n.connections()).filter((c) => c.isOpen);
  let doorbellsBackAtStep = -1;

  for (let step = 0; step < steps; step++) {
    await advance(Math.floor(rnd() * 60));
    for (const d of devices) {
      if (!d.client && d.offlineUntilStep <= step) {
        trace(`${step} restart ${d.name}`);
        await startClient(d);
      }
    }
    for (let i = 0; i < nodeCount; i++) {
      if (serverDown[i] && step >= serverUpAtStep[i]!) {
        trace(`${step} server ${i} up`);
        await restartServer(i);
      }
    }
    if (hub?.faults.dropDoorbells && step >= doorbellsBackAtStep) {
      trace(`${step} doorbells back`);
      hub.faults.dropDoorbells = false;
    }
    if (expiry && serverDown.includes(false) && expiryRnd() < 0.02) await expiryStep(expiry, step);
    const r = rnd();
    const dev = pick(devices);
    if (r < 0.12 && groupIds.length > 0) {
      // A group message, from a member (by the device's own view, which may be stale: the
      // server then refuses it and the client reports failed).
      const group = pick(groupIds);
      if (dev.client?.group(group)?.member) {
        const body = new TextEncoder().encode(`${dev.name}#${stats.sent}`);
        track(step, { from: dev, to: group, group: true }, dev.client.sendToGroup(group, body));
      }
    } else if (r < 0.16 && groupIds.length > 0) {
      // A membership change, concurrent with the messages in flight.
      const group = pick(groupIds);
      const view = dev.client?.group(group);
      if (dev.client && view) {
        const inGroup = view.members.map((m) => m.user);
        const outside = users.filter((u) => !inGroup.includes(u));
        const x = rnd();
        let p: Promise<void> | undefined;
        if (x < 0.45 && outside.length > 0) {
          const u = pick(outside);
          trace(`${step} ${dev.name} adds ${u} to ${group}`);
          p = dev.client.addMembers(group, [u]);
        } else if (x < 0.85 && inGroup.length > 1) {
          const u = pick(inGroup.filter((m) => m !== dev.user));
          trace(`${step} ${dev.name} removes ${u} from ${group}`);
          p = dev.client.removeMembers(group, [u]);
        } else if (x < 0.95 && view.member) {
          trace(`${step} ${dev.name} leaves ${group}`);
          p = dev.client.leaveGroup(group);
        } else if (view.member) {
          const u = pick(inGroup);
          trace(`${step} ${dev.name} promotes ${u} in ${group}`);
          p = dev.client.promoteMembers(group, [u]);
        }
        p?.catch(() => {});
      }
    } else if (r < 0.55) {
      const others = users.filter((u) => u !== dev.user);
      const to = pick(others);
      if (dev.client) {
        const body = new TextEncoder().encode(`${dev.name}#${stats.sent}`);
        track(step, { from: dev, to }, dev.client.send(to, body));
      }
    } else if (r < 0.65) {
      if (dev.client) {
        const conv =
          groupIds.length > 0 && rnd() < 0.3 ? pick(groupIds) : pick(users.filter((u) => u !== dev.user));
        trace(`${step} read ${dev.name} ${conv}`);
        dev.client.markRead(conv).catch(() => {});
        stats.reads++;
      }
    } else if (r < 0.7 && chance(0.6)) {
      const conns = allConnections();
      if (conns.length) {
        trace(`${step} cut`);
        pick(conns).cut();
        stats.cuts++;
      }
    } else if (r < 0.73 && chance(0.6)) {
      const conns = allConnections();
      if (conns.length) {
        trace(`${step} half-open`);
        pick(conns).halfOpen();
        stats.halfOpens++;
      }
    } else if (r < 0.77 && chance(0.6)) {
      if (dev.client) {
        trace(`${step} client restart ${dev.name}`);
        await stopClient(dev);
        stats.clientRestarts++;
        dev.offlineUntilStep = step + (rnd() < 0.5 ? 0 : Math.floor(rnd() * 40));
      }
    } else if (r < 0.785 && chance(0.6)) {
      const up = serverDown.flatMap((down, i) => (down ? [] : [i]));
      if (up.length > 0) {
        const i = nodeCount === 1 ? 0 : pick(up);
        trace(`${step} server ${i} crash`);
        await crashServer(i);
        stats.serverRestarts++;
        serverUpAtStep[i] = step + Math.floor(rnd() * 20);
      }
    } else if (hub && r < 0.8 && chance(0.6) && !hub.faults.dropDoorbells) {
      trace(`${step} doorbells dropped`);
      hub.faults.dropDoorbells = true;
      stats.doorbellOutages++;
      doorbellsBackAtStep = step + Math.floor(rnd() * 30);
    }
  }

  // Quiet phase: no new faults, everyone online, run until nothing is left to do.
  trace('quiet');
  for (const n of nets) n.setFaults({ latency: { min: 1, max: 40 }, ...slow });
  storeFaults = false;
  if (hub) hub.faults.dropDoorbells = false;
  for (let i = 0; i < nodeCount; i++) if (serverDown[i]) await restartServer(i);
  for (const d of devices) if (!d.client) await startClient(d);
  let quiet = false;
  for (let i = 0; i < 2000 && !quiet; i++) {
    await advance(200);
    quiet = await isQuiet();
  }
  if (quiet && expiry && expiry.lostControl.size > 0) {
    // A request to send again that expired on its way leaves a hole only the gap timeout ends:
    // let it run out, so the checks see the `undecryptable` gap the app gets.
    trace('gap timeout');
    await advance(gapTimeoutMs + 1000);
  }
  stats.virtualMs = clock.now() - 1_700_000_000_000;
  if (!quiet) violations.push('liveness: the system did not settle within the quiet phase');

  async function isQuiet(): Promise<boolean> {
    for (const d of devices) {
      const c = d.client!;
      if (c.state !== 'open' || c.unsent > 0) return false;
      if ((await c.store.pending()).length > 0) return false;
      const inbox = await server().store.readInbox({ user: d.user, device: d.device }, 0, 1);
      if (inbox.length > 0) return false;
    }
    return true;
  }

  // ---------------------------------------------------------------- invariants
  const byUser = new Map<string, SimDevice[]>();
  for (const d of devices) {
    let l = byUser.get(d.user);
    if (!l) byUser.set(d.user, (l = []));
    l.push(d);
  }
  stats.membershipChanges = audience.changes;
  /**
   * Whether `rec` missing on `d` is what expiry explains: the server dropped it for `d`, or `d`
   * could not decrypt it and its request to send again expired on the sender's device, and `d`
   * then reported the hole `undecryptable`.
   */
  const expiredFor = (rec: SentRecord, d: SimDevice): boolean => {
    if (!expiry) return false;
    if (expiry.droppedOn(rec.id, d.name)) return true;
    if (!expiry.lostRequest(rec.from.name, d.name)) return false;
    const conv = rec.group || d.user === rec.from.user ? rec.to : rec.from.user;
    const gaps = d.gapLog.get(`${conv}|${rec.from.user}|${rec.from.device}`) ?? [];
    return gaps.some((g) => g.reason === 'undecryptable');
  };
  const everyone = devices;
  for (const rec of sent.values()) {
    if (!rec.group) continue;
    const commit = groupCommits.get(rec.id);
    const key = `${rec.from.user}/${rec.from.device}/${rec.id}`;
    const final = rec.statuses[rec.statuses.length - 1];
    if (!commit) {
      violations.push(`liveness: group message ${rec.id} from ${rec.from.name} never committed or refused`);
      continue;
    }
    if (!commit.ok) {
      // Refused (the sender was no longer a member at commit): failed, and shown nowhere.
      if (final !== 'failed') violations.push(`group refusal: ${rec.id} refused but its status is ${final}`);
      // … saying why, on its status event and in the sender's store (across its restarts).
      const stored = (await rec.from.client!.store.outgoing(rec.id))?.reason;
      if (rec.reason !== commit.code || stored !== commit.code) {
        violations.push(
          `group refusal: ${rec.id} refused with ${commit.code}, its reason is ${rec.reason} (stored ${stored})`,
        );
      }
      for (const d of everyone) {
        if (d.seen.has(key)) violations.push(`group refusal: refused ${rec.id} reached ${d.name}`);
      }
      continue;
    }
    stats.acked++;
    if (final === 'failed' || final === undefined || final === 'pending') {
      violations.push(`liveness: group message ${rec.id} committed but its status is ${final}`);
    }
    // Exactly the members at commit: every device of each (but the sending one) once, no one else.
    const audience = new Set(commit.members);
    for (const d of everyone) {
      const n = d.seen.get(key) ?? 0;
      const should = audience.has(d.user) && d !== rec.from;
      // One expiry explains is checked by the expiry oracle instead.
      if (should && n === 0 && !expiredFor(rec, d))
        violations.push(`no loss: group ${rec.id} never reached ${d.name}`);
      if (!should && n > 0)
        violations.push(`group audience: ${rec.id} reached ${d.name}, not a member at commit`);
      if (n > 1) violations.push(`no duplicates: ${rec.id} shown ${n} times on ${d.name}`);
    }
    for (let i = 1; i < rec.statuses.length; i++) {
      if (STATUS_RANK[rec.statuses[i]!] <= STATUS_RANK[rec.statuses[i - 1]!]) {
        violations.push(`monotone receipts: ${rec.id} went ${rec.statuses.join(' → ')}`);
        break;
      }
    }
  }
  // Every device of every current member converges on the server's view of each group. A device
  // that lost group events to expiry (away past the retention) is outside that promise today: its
  // view may stay behind, counted in `staleGroupViews` instead (docs/guarantees.md).
  for (const id of groupIds) {
    const g = await server().store.group(id);
    const want = JSON.stringify({ ver: g!.ver, name: g!.name, members: g!.members });
    for (const d of devices) {
      const v = d.client!.group(id);
      const isMember = g!.members.some((m) => m.user === d.user);
      let wrong: string | undefined;
      if (isMember) {
        const got = v && JSON.stringify({ ver: v.ver, name: v.name, members: v.members });
        if (got !== want) wrong = `group views converge: ${d.name} has ${got}, server ${want}`;
      } else if (v?.member) {
        wrong = `group views converge: ${d.name} thinks it is in ${id}, the server does not`;
      }
      if (wrong && expiry?.lostGroupEvents.has(d.name)) stats.staleGroupViews++;
      else if (wrong) violations.push(wrong);
    }
  }
  /**
   * The statuses a 1:1 message may end in: read iff a recipient device read it, else delivered.
   * With expiry: `expired` when the server dropped it for every device of the recipient (or
   * `read`, from a receipt committed before that); and a receipt for a message committed before
   * an expiry's cutoff may come after its dedupe record is gone, when it no longer counts.
   */
  function expectedFinal(rec: SentRecord, read: boolean): MessageStatus[] {
    if (!expiry) return [read ? 'read' : 'delivered'];
    if (byUser.get(rec.to)!.every((d) => expiry.droppedOn(rec.id, d.name)))
      return read ? ['expired', 'read'] : ['expired'];
    const aged = (audience.committedAt!.get(rec.id) ?? Infinity) < expiry.lastCutoff;
    return read ? (aged ? ['read', 'delivered'] : ['read']) : ['delivered'];
  }
  for (const rec of sent.values()) {
    if (rec.group) continue;
    const acked = rec.statuses.some((s) => STATUS_RANK[s] >= STATUS_RANK.sent && s !== 'failed');
    if (acked) stats.acked++;
    else
      violations.push(
        `liveness: ${rec.id} from ${rec.from.name} never reached sent (${rec.statuses.join(',')})`,
      );
    // 1. No loss: every recipient device and every other device of the sender has it.
    const audience = [...byUser.get(rec.to)!, ...byUser.get(rec.from.user)!.filter((d) => d !== rec.from)];
    const key = `${rec.from.user}/${rec.from.device}/${rec.id}`;
    for (const d of audience) {
      const n = d.seen.get(key) ?? 0;
      if (acked && n === 0 && !expiredFor(rec, d))
        violations.push(`no loss: ${rec.id} (acked) never reached ${d.name}`);
      // 2. No duplicates.
      if (n > 1) violations.push(`no duplicates: ${rec.id} shown ${n} times on ${d.name}`);
    }
    // 4. Receipts are monotone.
    for (let i = 1; i < rec.statuses.length; i++) {
      const a = rec.statuses[i - 1]!;
      const b = rec.statuses[i]!;
      if (STATUS_RANK[b] <= STATUS_RANK[a]) {
        violations.push(`monotone receipts: ${rec.id} went ${rec.statuses.join(' → ')}`);
        break;
      }
    }
    // Final status is right: delivered to someone, and read iff a recipient device read it.
    const final = rec.statuses[rec.statuses.length - 1];
    const readByRecipient = await Promise.all(
      byUser
        .get(rec.to)!
        .map(async (d) =>
          (await d.client!.store.inbound(rec.from.user)).some((m) => m.id === rec.id && m.read),
        ),
    );
    const read = readByRecipient.some(Boolean);
    const expected = expectedFinal(rec, read);
    // A sender device away past the retention lost the receipts that waited for it.
    if (!expected.includes(final!) && !expiry?.lostStatus(rec.from.name, rec.id))
      violations.push(`final status: ${rec.id} is ${final}, expected ${expected.join(' or ')}`);
    const stored = (await rec.from.client!.store.outgoing(rec.id))?.status;
    if (stored !== final)
      violations.push(`final status: ${rec.id} stored as ${stored} but last event was ${final}`);
  }
  for (const d of devices) {
    // 3. Per-sender order: within each (conversation, sender device) stream, 1, 2, 3, … with no
    // holes; in a group, strictly increasing (a member sees a sender's stream only while it is in
    // the group, and refused sends leave holes; the exact-audience check above already proves no
    // message a member should have is missing).
    // With expiry, a 1:1 stream's `expired` gaps take the place of the numbers they cover: the
    // messages and gaps, in event order, must still count 1, 2, 3, … (what a gap may cover is
    // the expiry oracle's check).
    for (const [stream, seqs] of d.order) {
      const inGroup = stream.startsWith('#');
      const gaps = inGroup ? [] : (d.gapLog.get(stream) ?? []);
      let expect = 1;
      let g = 0;
      for (let i = 0; i < seqs.length; i++) {
        for (; g < gaps.length && gaps[g]!.after <= i; g++) {
          if (gaps[g]!.fromSeq === expect) expect = gaps[g]!.toSeq + 1;
        }
        if (inGroup ? i > 0 && seqs[i]! <= seqs[i - 1]! : seqs[i] !== expect) {
          violations.push(
            `per-sender order: ${d.name} saw stream ${stream} as ${seqs.slice(0, i + 1).join(',')}`,
          );
          break;
        }
        expect = seqs[i]! + 1;
      }
    }
    if (d.gaps > 0 && !expiry) violations.push(`per-sender order: ${d.name} reported ${d.gaps} gaps`);
    // Every gap says why, and the why matches the run: no entry outlives the server's retention
    // here (the clock never gets that far), so none may say `expired`; the gap timeout is an hour
    // and the reorder bound is never reached, so any gap at all is already a violation above.
    for (const r of d.gapReasons) {
      if (r === undefined || !GAP_REASON_SET.has(r))
        violations.push(`gap reasons: ${d.name} reported a gap without a reason`);
      else if (r === 'expired' && !expiry && clock.now() - startedAt < retentionMs)
        violations.push(`gap reasons: ${d.name} reported an expired gap, but nothing outlived the retention`);
    }
    if (d.late > 0) violations.push(`per-sender order: ${d.name} got ${d.late} late messages`);
  }
  // What expiry dropped was shown or reported expired on its device, and gaps cover only that.
  expiry?.check(devices, violations);
  // Nothing unexpected was shown: every seen message was one we sent.
  for (const d of devices) {
    for (const k of d.seen.keys()) {
      const id = k.split('/').pop()!;
      if (!sent.has(id)) violations.push(`no phantom: ${d.name} saw unknown message ${k}`);
    }
  }

  // History reads back what the events showed: every message once, received ones in event order,
  // sent ones in the order they were stored (paged, so the cursor is exercised too).
  for (const d of devices) {
    for (const conv of new Set([...d.shownIn.keys(), ...d.sentIn.keys()])) {
      const got = { in: [] as string[], out: [] as string[] };
      let before: string | undefined;
      for (;;) {
        const page = await d.client!.history(conv, { before, limit: 100 });
        for (const m of page) {
          if (m.outgoing) got.out.unshift(m.id);
          else got.in.unshift(`${m.from}/${m.fromDevice}/${m.id}`);
        }
        if (page.length < 100) break;
        before = page[page.length - 1]!.cursor;
      }
      const want = { in: d.shownIn.get(conv) ?? [], out: d.sentIn.get(conv) ?? [] };
      for (const dir of ['in', 'out'] as const) {
        if (got[dir].join() !== want[dir].join()) {
          violations.push(
            `history: ${d.name} ${conv} ${dir} is ${got[dir].length} messages, not the ${want[dir].length} ${dir === 'in' ? 'shown' : 'sent'} in that order`,
          );
        }
      }
    }
  }

  for (const d of devices) await stopClient(d);
  for (const s of servers) await s.close();
  for (const c of clusterNodes) await c?.stop();
  if (options.serverStore) await baseServerStore.close();
  return { seed, violations, stats };
}
