/**
 * The in-process cluster: {@link localCluster} for one node (what a single server does), and
 * {@link memoryClusterHub} for several nodes sharing one in-memory "Redis" in tests, with fault
 * switches (a node that dies without cleanup, doorbells that get lost).
 *
 * This is the reference implementation of {@link ClusterAdapter}: the Redis adapter keeps the
 * same layout (liveness per node incarnation, device → incarnation, per-user counts per
 * incarnation) so the two behave alike under the conformance suite.
 * @packageDocumentation
 */
import { systemClock, type Clock, type TimerHandle } from '../../util/clock.js';
import { NodeCore, clusterDeviceKey, entriesFor, incarnationToken } from './common.js';
import type {
  ClusterAdapter,
  DeviceAddress,
  PresenceEvent,
  PresenceState,
  RegisterResult,
  TypingNotice,
} from './types.js';

export type * from './types.js';

/** Options of {@link memoryClusterHub} and {@link localCluster}. */
export interface MemoryClusterOptions {
  /** A node's entries stop counting this long after its last heartbeat. @default 15000 */
  ttlMs?: number;
  /** How often a node heartbeats (and reaps dead nodes). @default ttlMs / 3 */
  heartbeatMs?: number;
  /** Most devices of a dead node reaped per heartbeat. @default 500 */
  reapBatch?: number;
  /** Time source. @default systemClock */
  clock?: Clock;
}

/** Fault switches of a {@link MemoryClusterHub}, for tests. */
export interface MemoryClusterFaults {
  /** Drop every doorbell between nodes (as if the channel lost them). @default false */
  dropDoorbells: boolean;
}

/** A node of a {@link MemoryClusterHub}. */
export interface MemoryClusterNode extends ClusterAdapter {
  /**
   * Dies like `kill -9`: stops heartbeating and listening, cleans nothing up. Its entries stop
   * counting after the TTL and a live node reaps them.
   */
  crash(): Promise<void>;
}

/** Several in-process nodes sharing one in-memory registry. */
export interface MemoryClusterHub {
  /** A new node of this hub (call `start` on it). */
  node(): MemoryClusterNode;
  /** Fault switches, off by default. */
  readonly faults: MemoryClusterFaults;
  /** Sizes of the shared state, to check that nothing leaks. */
  size(): { nodes: number; devices: number; users: number; links: number };
}

/** One node incarnation in the hub (a Redis liveness key + device set + channel). */
interface Incarnation {
  nodeId: string;
  expiresAt: number;
  devices: Set<string>;
  /** Undefined once the node crashed or stopped: messages to it are lost. */
  core: NodeCore | undefined;
}

/**
 * A hub of in-memory cluster nodes, for tests of multi-node behaviour in one process.
 *
 * @example
 * ```ts
 * const hub = memoryClusterHub({ ttlMs: 300 });
 * const a = hub.node(), b = hub.node();
 * await a.start('a'); await b.start('b');
 * ```
 */
export function memoryClusterHub(options: MemoryClusterOptions = {}): MemoryClusterHub {
  const clock = options.clock ?? systemClock;
  const ttlMs = options.ttlMs ?? 15_000;
  const heartbeatMs = options.heartbeatMs ?? Math.max(1, Math.floor(ttlMs / 3));
  const reapBatch = options.reapBatch ?? 500;
  const faults: MemoryClusterFaults = { dropDoorbells: false };

  const incarnations = new Map<string, Incarnation>();
  /** device key → incarnation holding it. */
  const devices = new Map<string, string>();
  /** user → incarnation → that incarnation's devices of the user. */
  const users = new Map<string, Map<string, number>>();
  /** Offered link codes → the waiting device, its incarnation, and when the offer ends. */
  const links = new Map<string, { device: DeviceAddress; inc: string; expiresAt: number }>();
  /** One version counter for all users: monotone per user, and nothing to keep per user. */
  let version = 0;

  const alive = (inc: string | undefined): inc is string => {
    const i = inc === undefined ? undefined : incarnations.get(inc);
    return i !== undefined && i.expiresAt > clock.now();
  };
  const onlineNow = (user: string): boolean => {
    for (const [inc, n] of users.get(user) ?? []) if (n > 0 && alive(inc)) return true;
    return false;
  };
  const count = (user: string, inc: string, delta: number): void => {
    let m = users.get(user);
    if (!m) users.set(user, (m = new Map()));
    const n = (m.get(inc) ?? 0) + delta;
    if (n > 0) m.set(inc, n);
    else m.delete(inc);
    if (m.size === 0) users.delete(user);
  };
  /** Delivers to every listening node, later (as a network would). */
  const broadcast = (fn: (core: NodeCore) => void): void => {
    const cores = [...incarnations.values()].flatMap((i) => (i.core ? [i.core] : []));
    queueMicrotask(() => cores.forEach(fn));
  };
  const toNode = (inc: string, fn: (core: NodeCore) => void): void => {
    const core = incarnations.get(inc)?.core;
    if (core) queueMicrotask(() => fn(core));
  };

  /** The devices registered on a live incarnation, grouped by it (doorbells and closes go there). */
  const byHolder = (list: DeviceAddress[]): Map<string, DeviceAddress[]> => {
    const byNode = new Map<string, DeviceAddress[]>();
    for (const d of list) {
      const i = devices.get(clusterDeviceKey(d));
      if (!alive(i)) continue;
      let l = byNode.get(i);
      if (!l) byNode.set(i, (l = []));
      l.push(d);
    }
    return byNode;
  };

  /** Removes one device of a dead incarnation; the user's offline event when it was its last. */
  const reapOne = (inc: string, key: string, origin: string, originCore: NodeCore): void => {
    const [user] = JSON.parse(key) as [string, string];
    if (devices.get(key) === inc) devices.delete(key);
    count(user, inc, -1);
    version++;
    if (!onlineNow(user)) {
      const event: PresenceEvent = { user, online: false, v: version, at: clock.now(), origin, lost: true };
      broadcast((c) => c.deliverPresence(event));
      queueMicrotask(() => originCore.deliverReaped(event));
    }
  };

  /** One bounded reaping step over the dead incarnations, run by a live node's heartbeat. */
  const reap = (origin: string, originCore: NodeCore): void => {
    let budget = reapBatch;
    for (const [inc, i] of incarnations) {
      if (alive(inc)) continue;
      for (const key of i.devices) {
        if (budget-- <= 0) return;
        i.devices.delete(key);
        reapOne(inc, key, origin, originCore);
      }
      incarnations.delete(inc);
    }
  };

  function node(): MemoryClusterNode {
    const core = new NodeCore();
    let nodeId: string | undefined;
    let inc: string | undefined;
    let timer: TimerHandle | undefined;

    const claim = (): void => {
      inc = `${nodeId!}/${incarnationToken()}`;
      incarnations.set(inc, { nodeId: nodeId!, expiresAt: clock.now() + ttlMs, devices: new Set(), core });
    };
    const registerHere = (d: DeviceAddress): RegisterResult => {
      const key = clusterDeviceKey(d);
      const before = onlineNow(d.user);
      const prev = devices.get(key);
      let replaced: string | undefined;
      if (prev !== inc) {
        if (prev !== undefined) {
          incarnations.get(prev)?.devices.delete(key);
          count(d.user, prev, -1);
          if (alive(prev)) {
            replaced = incarnations.get(prev)!.nodeId;
            toNode(prev, (c) => {
              c.local.delete(key);
              c.replaced.emit([d]);
            });
          }
        }
        devices.set(key, inc!);
        incarnations.get(inc!)!.devices.add(key);
        count(d.user, inc!, 1);
      }
      core.local.set(key, d);
      version++;
      return { replaced, cameOnline: !before, v: version };
    };
    const heartbeat = (): void => {
      timer = undefined;
      if (nodeId === undefined) return;
      const mine = incarnations.get(inc!);
      if (mine && mine.expiresAt > clock.now()) {
        mine.expiresAt = clock.now() + ttlMs;
      } else {
        // Paused past the TTL: others may be reaping the old incarnation; start a new one.
        if (mine) mine.core = undefined;
        claim();
        for (const d of core.local.values()) registerHere(d);
      }
      reap(nodeId, core);
      schedule();
    };
    const schedule = (): void => {
      timer = clock.setTimeout(heartbeat, heartbeatMs);
      (timer as { unref?: () => void } | undefined)?.unref?.();
    };
    const requireStarted = (): void => {
      if (nodeId === undefined) throw new Error('cluster node not started: call start(nodeId) first');
    };

    const adapter: MemoryClusterNode = {
      name: 'memory',
      get nodeId() {
        return nodeId;
      },
      async start(id) {
        if (nodeId !== undefined) throw new Error(`cluster node already started as ${nodeId}`);
        nodeId = id;
        claim();
        reap(id, core);
        schedule();
      },
      async stop() {
        if (nodeId === undefined) return;
        clock.clearTimeout(timer);
        await core.leave(adapter, clock.now());
        incarnations.delete(inc!);
        nodeId = inc = undefined;
        core.watched.clear();
      },
      async crash() {
        if (nodeId === undefined) return;
        clock.clearTimeout(timer);
        const mine = incarnations.get(inc!);
        if (mine) mine.core = undefined;
        nodeId = inc = undefined;
        core.local.clear();
        core.watched.clear();
      },
      async register(d) {
        requireStarted();
        return registerHere(d);
      },
      async unregister(d) {
        requireStarted();
        const key = clusterDeviceKey(d);
        core.local.delete(key);
        if (devices.get(key) !== inc) return { removed: false, wentOffline: false, v: version };
        devices.delete(key);
        incarnations.get(inc!)?.devices.delete(key);
        count(d.user, inc!, -1);
        version++;
        return { removed: true, wentOffline: !onlineNow(d.user), v: version };
      },
      async locate(list) {
        return list.map((d) => {
          const i = devices.get(clusterDeviceKey(d));
          return alive(i) ? incarnations.get(i)!.nodeId : undefined;
        });
      },
      async ring(list, entries) {
        for (const [i, l] of byHolder(list)) {
          const carried = entriesFor(entries, l);
          if (i === inc) core.doorbell.emit(l, carried);
          else if (!faults.dropDoorbells) toNode(i, (c) => c.doorbell.emit(l, carried));
        }
      },
      onDoorbell: (h) => core.doorbell.add(h),
      onReplaced: (h) => core.replaced.add(h),
      async presence(list): Promise<PresenceState[]> {
        return list.map((u) => ({ online: onlineNow(u), v: version }));
      },
      async publishPresence(e) {
        if (nodeId === undefined) return;
        const event: PresenceEvent = { ...e, origin: nodeId };
        broadcast((c) => c.deliverPresence(event));
      },
      async watch(user) {
        core.watch(user);
      },
      async unwatch(user) {
        core.unwatch(user);
      },
      onPresence: (h) => core.presence.add(h),
      async typing(list, notice: TypingNotice) {
        const byNode = new Map<string, string[]>();
        for (const u of list)
          for (const [i, n] of users.get(u) ?? [])
            if (n > 0 && alive(i)) {
              let l = byNode.get(i);
              if (!l) byNode.set(i, (l = []));
              l.push(u);
            }
        for (const [i, l] of byNode) toNode(i, (c) => c.typing.emit(l, notice));
      },
      onTyping: (h) => core.typing.add(h),
      async closeDevices(list, code) {
        for (const [i, l] of byHolder(list)) {
          if (i === inc) core.closed.emit(l, code);
          else toNode(i, (c) => c.closed.emit(l, code));
        }
      },
      onClose: (h) => core.closed.add(h),
      async offerLink(code, device, ttl) {
        requireStarted();
        for (const [k, l] of links) if (l.expiresAt <= clock.now()) links.delete(k);
        links.set(code, { device, inc: inc!, expiresAt: clock.now() + ttl });
      },
      async takeLink(code, user) {
        const l = links.get(code);
        if (!l || l.expiresAt <= clock.now() || l.device.user !== user) return undefined;
        links.delete(code);
        if (l.inc === inc) core.linkApproved.emit(code);
        else toNode(l.inc, (c) => c.linkApproved.emit(code));
        return l.device;
      },
      onLinkApproved: (h) => core.linkApproved.add(h),
    };
    return adapter;
  }

  return {
    node,
    faults,
    size: () => {
      for (const [k, l] of links) if (l.expiresAt <= clock.now()) links.delete(k);
      return { nodes: incarnations.size, devices: devices.size, users: users.size, links: links.size };
    },
  };
}

/**
 * The cluster of one process: every device is on this node. What a single server uses (and the
 * engine's default); a deployment of several nodes uses `redisCluster` from `postbox/server/redis`.
 */
export function localCluster(options: MemoryClusterOptions = {}): ClusterAdapter {
  const n = memoryClusterHub(options).node();
  return Object.defineProperty(n, 'name', { value: 'local' });
}
