import { createClient, type PostboxClient } from '../client/engine.js';
import { STATUS_RANK } from '../client/status.js';
import type { MessageStatus } from '../client/store.js';
import {
  createMemoryClientState,
  memoryClientStore,
  type MemoryClientState,
} from '../client/stores/memory.js';
import { createServer, type PostboxServer } from '../server/engine.js';
import {
  createMemoryServerState,
  memoryServerStore,
  type MemoryServerState,
} from '../server/stores/memory.js';
import { memoryNetwork } from '../transport/memory.js';
import { seededRandom, type Random } from '../util/clock.js';
import { VirtualClock } from './virtual-clock.js';

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
  /** Print each action (for replaying a failing seed). */
  trace?: (line: string) => void;
}

/** What a run found. `violations` is empty when every invariant held. */
export interface SimulationResult {
  seed: number;
  violations: string[];
  stats: {
    sent: number;
    acked: number;
    deliveries: number;
    reads: number;
    clientRestarts: number;
    serverRestarts: number;
    cuts: number;
    halfOpens: number;
    virtualMs: number;
  };
}

interface SimDevice {
  user: string;
  device: string;
  name: string;
  state: MemoryClientState;
  client: PostboxClient | undefined;
  /** (from/fd/id) → count of `message` events, across engine restarts. */
  seen: Map<string, number>;
  /** stream key → seqs in event order. */
  order: Map<string, number[]>;
  gaps: number;
  late: number;
  offlineUntilStep: number;
}

interface SentRecord {
  id: string;
  from: SimDevice;
  to: string;
  statuses: MessageStatus[];
}

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
  const steps = options.steps ?? 250;
  const userCount = options.users ?? 3 + Math.floor(rnd() * 3);
  const maxDev = options.maxDevicesPerUser ?? 3;
  const violations: string[] = [];
  const stats: SimulationResult['stats'] = {
    sent: 0,
    acked: 0,
    deliveries: 0,
    reads: 0,
    clientRestarts: 0,
    serverRestarts: 0,
    cuts: 0,
    halfOpens: 0,
    virtualMs: 0,
  };

  const level = options.faultLevel ?? 1;
  // Some runs put every device on a slow (2G-like) link, so bufferedAmount and the delivery
  // window matter.
  const slow = rnd() < 0.3 ? { bytesPerMs: 2 + Math.floor(rnd() * 40) } : {};
  const net = memoryNetwork({
    clock,
    random: seededRandom(seed ^ 0x9e3779b9),
    faults: { latency: { min: 1, max: 40 }, cutProbability: 0.004 * level, ...slow },
  });
  // Store faults: a failed operation changes nothing, and the engines recover by closing the
  // connection (server) or dropping it (client) and starting again from what the store holds.
  const faultRnd = seededRandom(seed ^ 0x5bd1e995);
  let storeFaults = level > 0;
  const serverFaultOps = new Set(['append', 'ack', 'readInbox']);
  const clientFaultOps = new Set(['applyInbound', 'streamNext', 'setStatus', 'pending', 'held']);
  const serverState: MemoryServerState = createMemoryServerState();
  const heartbeatMs = 1000;
  const deliveryWindow = 1 + Math.floor(rnd() * 16);
  // A crashed server's engine may still have commits in flight; from the crash on, nothing it
  // does reaches the store, so what it never committed it never acked.
  let engineAlive = { value: true };
  const makeServer = () =>
    createServer({
      store: memoryServerStore({
        state: serverState,
        failWhen: (
          (alive) => (op: string) =>
            !alive.value || (storeFaults && serverFaultOps.has(op) && faultRnd() < 0.003 * level)
        )(engineAlive),
      }),
      authenticate: (cred) => cred as { user: string; device: string },
      clock,
      heartbeatMs,
      deliveryWindow,
      maxCommitBatch: 1 + Math.floor(rnd() * 64),
      linking: 'open',
    });
  let server: PostboxServer = makeServer();
  await server.listen(net.server);

  const users = Array.from({ length: userCount }, (_, i) => `user${i}`);
  const devices: SimDevice[] = [];
  for (const user of users) {
    const n = 1 + Math.floor(rnd() * maxDev);
    for (let d = 0; d < n; d++) {
      devices.push({
        user,
        device: `d${d}`,
        name: `${user}/d${d}`,
        state: createMemoryClientState(),
        client: undefined,
        seen: new Map(),
        order: new Map(),
        gaps: 0,
        late: 0,
        offlineUntilStep: -1,
      });
      // Every device exists before the first send, so every message has a fixed audience.
      await server.registerDevice(user, `d${d}`);
    }
  }
  const sent = new Map<string, SentRecord>();

  const startClient = (dev: SimDevice): PostboxClient => {
    const random: Random = seededRandom(Math.floor(rnd() * 2 ** 32));
    const client = createClient({
      transport: net.client(dev.name),
      store: memoryClientStore({
        state: dev.state,
        failWhen: (op) => storeFaults && clientFaultOps.has(op) && faultRnd() < 0.002 * level,
      }),
      credentials: { user: dev.user, device: dev.device },
      device: dev.device,
      clock,
      random,
      backoffBaseMs: 50,
      backoffMaxMs: 2000,
      gapTimeoutMs: 3_600_000,
      maxInflight: 1 + Math.floor(rnd() * 32),
    });
    client.on('message', (m) => {
      const k = `${m.from}/${m.fromDevice}/${m.id}`;
      dev.seen.set(k, (dev.seen.get(k) ?? 0) + 1);
      const sk = `${m.conv}|${m.from}|${m.fromDevice}`;
      let o = dev.order.get(sk);
      if (!o) dev.order.set(sk, (o = []));
      o.push(m.seq);
      if (m.late) dev.late++;
      stats.deliveries++;
    });
    client.on('gap', () => dev.gaps++);
    client.on('status', (s) => {
      const rec = sent.get(s.id);
      if (rec) rec.statuses.push(s.status);
    });
    client.on('error', () => {});
    client.on('connection', (state, error) => {
      if (state === 'closed' && error) trace(`${dev.name} closed: ${error.code} ${error.message}`);
    });
    dev.client = client;
    return client;
  };
  for (const d of devices) startClient(d);

  const stopClient = async (dev: SimDevice) => {
    const c = dev.client;
    dev.client = undefined;
    await c?.close();
  };

  let serverDown = false;
  let serverUpAtStep = 0;
  const crashServer = async () => {
    // A crash: every connection dies at once (acks in flight are lost), queued commits that
    // had not reached the store are dropped with their sessions, and the engine is abandoned.
    engineAlive.value = false;
    net.cutAll();
    await server.close();
    serverDown = true;
  };
  const restartServer = async () => {
    engineAlive = { value: true };
    server = makeServer();
    await server.listen(net.server);
    serverDown = false;
  };

  for (let step = 0; step < steps; step++) {
    await clock.advance(Math.floor(rnd() * 60));
    for (const d of devices) {
      if (!d.client && d.offlineUntilStep <= step) {
        trace(`${step} restart ${d.name}`);
        startClient(d);
      }
    }
    if (serverDown && step >= serverUpAtStep) {
      trace(`${step} server up`);
      await restartServer();
    }
    const r = rnd();
    const dev = pick(devices);
    if (r < 0.55) {
      const others = users.filter((u) => u !== dev.user);
      const to = pick(others);
      if (dev.client) {
        const id = dev.client.send(to, new TextEncoder().encode(`${dev.name}#${stats.sent}`));
        sent.set(id, { id, from: dev, to, statuses: [] });
        stats.sent++;
        trace(`${step} send ${dev.name} -> ${to} ${id}`);
      }
    } else if (r < 0.65) {
      if (dev.client) {
        const conv = pick(users.filter((u) => u !== dev.user));
        trace(`${step} read ${dev.name} ${conv}`);
        dev.client.markRead(conv).catch(() => {});
        stats.reads++;
      }
    } else if (r < 0.7 && chance(0.6)) {
      const conns = net.connections().filter((c) => c.isOpen);
      if (conns.length) {
        trace(`${step} cut`);
        pick(conns).cut();
        stats.cuts++;
      }
    } else if (r < 0.73 && chance(0.6)) {
      const conns = net.connections().filter((c) => c.isOpen);
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
    } else if (r < 0.785 && chance(0.6) && !serverDown) {
      trace(`${step} server crash`);
      await crashServer();
      stats.serverRestarts++;
      serverUpAtStep = step + Math.floor(rnd() * 20);
    }
  }

  // Quiet phase: no new faults, everyone online, run until nothing is left to do.
  trace('quiet');
  net.setFaults({ latency: { min: 1, max: 40 }, ...slow });
  storeFaults = false;
  if (serverDown) await restartServer();
  for (const d of devices) if (!d.client) startClient(d);
  let quiet = false;
  for (let i = 0; i < 2000 && !quiet; i++) {
    await clock.advance(200);
    quiet = await isQuiet();
  }
  stats.virtualMs = clock.now() - 1_700_000_000_000;
  if (!quiet) violations.push('liveness: the system did not settle within the quiet phase');

  async function isQuiet(): Promise<boolean> {
    for (const d of devices) {
      const c = d.client!;
      if (c.state !== 'open' || c.unsent > 0) return false;
      if ((await c.store.pending()).length > 0) return false;
      const inbox = await server.store.readInbox({ user: d.user, device: d.device }, 0, 1);
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
  for (const rec of sent.values()) {
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
      if (acked && n === 0) violations.push(`no loss: ${rec.id} (acked) never reached ${d.name}`);
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
    const expected: MessageStatus = readByRecipient.some(Boolean) ? 'read' : 'delivered';
    if (final !== expected) violations.push(`final status: ${rec.id} is ${final}, expected ${expected}`);
    const stored = (await rec.from.client!.store.outgoing(rec.id))?.status;
    if (stored !== final)
      violations.push(`final status: ${rec.id} stored as ${stored} but last event was ${final}`);
  }
  for (const d of devices) {
    // 3. Per-sender order: within each (conversation, sender device) stream, 1, 2, 3, … with no holes.
    for (const [stream, seqs] of d.order) {
      for (let i = 0; i < seqs.length; i++) {
        if (seqs[i] !== i + 1) {
          violations.push(
            `per-sender order: ${d.name} saw stream ${stream} as ${seqs.slice(0, i + 1).join(',')}`,
          );
          break;
        }
      }
    }
    if (d.gaps > 0) violations.push(`per-sender order: ${d.name} reported ${d.gaps} gaps`);
    if (d.late > 0) violations.push(`per-sender order: ${d.name} got ${d.late} late messages`);
  }
  // Nothing unexpected was shown: every seen message was one we sent.
  for (const d of devices) {
    for (const k of d.seen.keys()) {
      const id = k.split('/').pop()!;
      if (!sent.has(id)) violations.push(`no phantom: ${d.name} saw unknown message ${k}`);
    }
  }

  for (const d of devices) await stopClient(d);
  await server.close();
  return { seed, violations, stats };
}
