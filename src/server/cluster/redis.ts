/**
 * `postbox/server/redis`: the {@link ClusterAdapter} for many gateway nodes over one Redis
 * (a single primary, optionally with replicas and Sentinel; see docs/scaling.md for the key
 * layout and why Redis Cluster sharding is not supported yet).
 *
 * Layout, with `P` the prefix and `I` a node incarnation (`nodeId/random`):
 * - `P alive:I` → nodeId, with a TTL the heartbeat refreshes: the ONLY key that expires. A
 *   node's liveness is one key, so a heartbeat costs one command however many devices the node
 *   holds (a TTL per device key would cost a write per device per heartbeat).
 * - `P nodes` (set of incarnations) and `P devs:I` (set of the devices I holds): what reapers walk.
 * - `P d:[user,device]` → I: the registry. Valid only while `alive:I` exists, so a dead node's
 *   entries stop counting at once when its TTL runs out; live nodes then reap them in batches.
 * - `P u:user` (hash I → that incarnation's devices of the user): presence is "some field > 0
 *   whose incarnation is alive", so it survives a node's death without anyone decrementing.
 * - `P v`: one counter that versions every presence change (monotone per user for free),
 *   started from the clock in µs so that it keeps growing across a Redis restart.
 * - channels `P n:I` (doorbells, take-overs, typing for node I) and `P p:user` (presence events
 *   of one user, subscribed only by nodes that watch it): nothing is broadcast to every node.
 *
 * Every multi-key step is one Lua script, so each is atomic and one round trip.
 *
 * Longer than 500 lines: the Lua script of every multi-key step lives in this file beside the key
 * layout above and the adapter that runs it, so each step's keys and its script read together.
 * @packageDocumentation
 */
import { Redis, type RedisOptions } from 'ioredis';
import { addressKey } from '../address.js';
import { NodeCore, clusterDeviceKey, entriesByDevice, entriesFor, incarnationToken } from './common.js';
import { DOORBELL_MARK, doorbellMember, isDoorbell, readDoorbell } from './redis-doorbell.js';
import type {
  ClusterAdapter,
  DeviceAddress,
  PresenceEvent,
  PresenceState,
  RegisterResult,
  TypingNotice,
  UnregisterResult,
} from './types.js';

export type * from './types.js';

/**
 * Connection settings for Redis, handed to ioredis as they are (any ioredis option may be given;
 * the common ones are named here). Typed by postbox, so an app's types never depend on the
 * ioredis version postbox resolved.
 */
export interface RedisConnectionSettings {
  host?: string;
  port?: number;
  username?: string;
  password?: string;
  db?: number;
  /** TLS options (`{}` for TLS with the defaults). */
  tls?: Record<string, unknown>;
  /** Any other ioredis option. */
  [option: string]: unknown;
}

/**
 * An ioredis client the app already has (`new Redis(...)`, or a `Cluster`'s node client): the
 * adapter calls `duplicate()` on it for its own two connections and never closes or changes it.
 * Typed by shape, so any ioredis 5 client fits without importing its types.
 */
export interface RedisClientLike {
  duplicate(override?: Record<string, unknown>): unknown;
}

/** Options of {@link redisCluster}. */
export interface RedisClusterOptions {
  /**
   * A `redis://` URL, connection settings, or an ioredis client the app already has (its settings
   * are reused through `duplicate()`). Either way the adapter opens two connections of its own
   * (commands, subscriber) and closes them on `close()`.
   */
  redis: string | RedisConnectionSettings | RedisClientLike;
  /** Prefix of every key and channel, so deployments (and tests) can share a Redis. @default 'postbox:' */
  prefix?: string;
  /** A node's entries stop counting this long after its last heartbeat. @default 15000 */
  ttlMs?: number;
  /** How often a node heartbeats and reaps dead nodes; well under `ttlMs`. @default ttlMs / 3 */
  heartbeatMs?: number;
  /** Most devices of a dead node reaped per heartbeat (one script run). @default 500 */
  reapBatch?: number;
  /** Background failures (heartbeat, lost hints, connection errors). @default ignored */
  onError?: (error: unknown) => void;
  /**
   * A command unanswered this long fails, and its connection is dropped and opened again: what
   * bounds a call when Redis vanishes without a reset (a partition, a dead host), where the
   * socket stays open and nothing comes back. The subscriber is checked with a `PING` at every
   * heartbeat for the same reason. Ignored for a setting the `redis` options object gives
   * (`commandTimeout`, `socketTimeout`).
   * @default 2000
   */
  commandTimeoutMs?: number;
}

const isClient = (v: unknown): v is RedisClientLike =>
  typeof v === 'object' && v !== null && typeof (v as { duplicate?: unknown }).duplicate === 'function';

/** The Redis adapter, with the crash switch the conformance suite uses. */
export interface RedisClusterAdapter extends ClusterAdapter {
  /**
   * Dies like `kill -9`: drops both connections and the heartbeat, cleans nothing up (for tests).
   */
  crash(): Promise<void>;
}

/** How long opening a connection to Redis may take (unless the `redis` options say otherwise). */
const CONNECT_TIMEOUT_MS = 5000;

/** Devices per script run in `ring`/`locate`, so one call cannot stall Redis. */
const CHUNK = 1000;

const ALIVE = `
local function alive(p, inc) return redis.call('EXISTS', p .. 'alive:' .. inc) == 1 end
local function online(p, uk)
  local all = redis.call('HGETALL', uk)
  for i = 1, #all, 2 do
    if tonumber(all[i + 1]) > 0 and alive(p, all[i]) then return true end
  end
  return false
end
`;

// KEYS: dev, user hash, my devs, version. ARGV: inc, prefix, member.
const REGISTER = `${ALIVE}
local inc, p, m = ARGV[1], ARGV[2], ARGV[3]
local before = online(p, KEYS[2])
local prev = redis.call('GET', KEYS[1])
local replaced = ''
if prev ~= inc then
  if prev then
    redis.call('SREM', p .. 'devs:' .. prev, m)
    if redis.call('HINCRBY', KEYS[2], prev, -1) <= 0 then redis.call('HDEL', KEYS[2], prev) end
    if alive(p, prev) then
      replaced = redis.call('GET', p .. 'alive:' .. prev)
      redis.call('PUBLISH', p .. 'n:' .. prev, '{"t":"r","d":[' .. m .. ']}')
    end
  end
  redis.call('SET', KEYS[1], inc)
  redis.call('SADD', KEYS[3], m)
  redis.call('HINCRBY', KEYS[2], inc, 1)
end
return { replaced, before and 0 or 1, redis.call('INCR', KEYS[4]) }
`;

// KEYS: dev, user hash, my devs, version. ARGV: inc, prefix, member.
const UNREGISTER = `${ALIVE}
local inc, p, m = ARGV[1], ARGV[2], ARGV[3]
if redis.call('GET', KEYS[1]) ~= inc then
  return { 0, 0, tonumber(redis.call('GET', KEYS[4]) or '0') }
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[3], m)
if redis.call('HINCRBY', KEYS[2], inc, -1) <= 0 then redis.call('HDEL', KEYS[2], inc) end
return { 1, online(p, KEYS[2]) and 0 or 1, redis.call('INCR', KEYS[4]) }
`;

// KEYS: dev keys. ARGV: prefix. → node id or '' per device.
const LOCATE = `${ALIVE}
local p, out, seen = ARGV[1], {}, {}
for i, k in ipairs(KEYS) do
  local inc = redis.call('GET', k)
  local node = ''
  if inc then
    if seen[inc] == nil then seen[inc] = redis.call('GET', p .. 'alive:' .. inc) or '' end
    node = seen[inc]
  end
  out[i] = node
end
return out
`;

// KEYS: dev keys. ARGV: prefix, my inc, what a publish starts with, what goes between members,
// what it ends with, members (same order). → indexes (1-based) held by me. Doorbells (binary, see
// redis-doorbell.ts) and closes (JSON) both go to the nodes holding the devices.
const RING = `${ALIVE}
local p, me, open, sep, close, by, mine, live = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], {}, {}, {}
for i, k in ipairs(KEYS) do
  local inc = redis.call('GET', k)
  if inc and inc ~= me and live[inc] == nil then live[inc] = alive(p, inc) end
  if inc == me then
    mine[#mine + 1] = i
  elseif inc and live[inc] then
    if by[inc] == nil then by[inc] = {} end
    table.insert(by[inc], ARGV[i + 5])
  end
end
for inc, list in pairs(by) do
  redis.call('PUBLISH', p .. 'n:' .. inc, open .. table.concat(list, sep) .. close)
end
return mine
`;

// KEYS: user hashes, version. ARGV: prefix. → 0/1 per user, then the version.
const PRESENCE = `${ALIVE}
local out = {}
for i = 1, #KEYS - 1 do out[i] = online(ARGV[1], KEYS[i]) and 1 or 0 end
out[#KEYS] = tonumber(redis.call('GET', KEYS[#KEYS]) or '0')
return out
`;

// KEYS: user hashes. ARGV: prefix, notice JSON, users (same order).
const TYPING = `${ALIVE}
local p, by = ARGV[1], {}
for i, uk in ipairs(KEYS) do
  local all = redis.call('HGETALL', uk)
  for j = 1, #all, 2 do
    local inc = all[j]
    if tonumber(all[j + 1]) > 0 and alive(p, inc) then
      if by[inc] == nil then by[inc] = {} end
      table.insert(by[inc], ARGV[i + 2])
    end
  end
end
for inc, users in pairs(by) do
  redis.call('PUBLISH', p .. 'n:' .. inc, '{"t":"t","u":' .. cjson.encode(users) .. ',"n":' .. ARGV[2] .. '}')
end
return 0
`;

// KEYS: link key. ARGV: prefix, user, code. → the offer's JSON when taken, else false.
// Takes an offered link code once, only for its user, and tells the node where the device waits.
const TAKE_LINK = `
local offer = redis.call('GET', KEYS[1])
if not offer then return false end
local o = cjson.decode(offer)
if o.u ~= ARGV[2] then return false end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1] .. 'n:' .. o.i, '{"t":"l","k":' .. cjson.encode(ARGV[3]) .. '}')
return offer
`;

// KEYS: alive key. ARGV: node id, ttl. → 1 refreshed, 0 lost (expired or never there).
const HEARTBEAT = `
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
`;

// KEYS: devs set of a dead inc, nodes set, version. ARGV: inc, prefix, batch, origin, now.
// Removes up to \`batch\` devices of a dead incarnation and announces users it left offline.
const REAP = `${ALIVE}
local inc, p = ARGV[1], ARGV[2]
if alive(p, inc) then return 0 end
local members = redis.call('SPOP', KEYS[1], tonumber(ARGV[3]))
local events = {}
for _, m in ipairs(members) do
  local dk = p .. 'd:' .. m
  if redis.call('GET', dk) == inc then redis.call('DEL', dk) end
  local user = cjson.decode(m)[1]
  local uk = p .. 'u:' .. user
  if redis.call('HINCRBY', uk, inc, -1) <= 0 then redis.call('HDEL', uk, inc) end
  local v = redis.call('INCR', KEYS[3])
  if not online(p, uk) then
    -- Built by hand: cjson prints numbers with 14 digits, and versions have 16.
    local e = '{"user":' .. cjson.encode(user) .. ',"online":false,"v":' .. string.format('%.0f', v) ..
      ',"at":' .. ARGV[5] .. ',"origin":' .. cjson.encode(ARGV[4]) .. ',"lost":true}'
    redis.call('PUBLISH', p .. 'p:' .. user, e)
    events[#events + 1] = e
  end
end
if redis.call('SCARD', KEYS[1]) == 0 then redis.call('SREM', KEYS[2], inc) end
return events
`;

/** The scripts, as ioredis defines them on the command connection. */
interface Scripts {
  pbRegister(...args: string[]): Promise<[string, number, number]>;
  pbUnregister(...args: string[]): Promise<[number, number, number]>;
  pbLocate(...args: Array<string | number>): Promise<string[]>;
  pbRing(...args: Array<string | number | Buffer>): Promise<number[]>;
  pbPresence(...args: Array<string | number>): Promise<number[]>;
  pbTyping(...args: Array<string | number>): Promise<number>;
  pbHeartbeat(...args: Array<string | number>): Promise<number>;
  pbReap(...args: Array<string | number>): Promise<string[]>;
  pbTakeLink(key: string, prefix: string, user: string, code: string): Promise<string | null>;
}

/** Splits `list` into runs of at most `n`. */
function chunks<T>(list: T[], n: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < list.length; i += n) out.push(list.slice(i, i + n));
  return out;
}

/**
 * The Redis cluster adapter: a device → node registry with liveness, doorbells over pub/sub, and
 * presence and typing across nodes. Nothing connects until {@link ClusterAdapter.start}.
 *
 * Doorbells use pub/sub rather than streams on purpose: a doorbell is a hint whose only value is
 * being early. A stream would keep doorbells for a node that is down (a backlog nobody needs,
 * since the reconnecting devices drain their inboxes anyway) and cost trimming and acks.
 *
 * @example
 * ```ts
 * import { redisCluster } from 'postbox/server/redis';
 * const cluster = redisCluster({ redis: 'redis://10.0.0.5:6379' });
 * await cluster.start(`gw-${hostname()}-${process.pid}`);
 * ```
 */
export function redisCluster(options: RedisClusterOptions): RedisClusterAdapter {
  const prefix = options.prefix ?? 'postbox:';
  const ttlMs = options.ttlMs ?? 15_000;
  const heartbeatMs = options.heartbeatMs ?? Math.max(1, Math.floor(ttlMs / 3));
  const reapBatch = options.reapBatch ?? 500;
  const onError = options.onError ?? (() => {});
  const commandTimeoutMs = options.commandTimeoutMs ?? 2000;
  const core = new NodeCore();
  /**
   * Devices of this node whose registration failed (Redis away): registered again by the next
   * heartbeat that gets through, so their doorbells ring here again without waiting for the
   * engine's inbox poll. Only those: re-registering every device could take one back from a
   * node where it connected since.
   */
  const unregistered = new Map<string, DeviceAddress>();
  /** A command failed since the last heartbeat that got through: repair on the next one. */
  let degraded = false;
  const versionKey = `${prefix}v`;
  const nodesKey = `${prefix}nodes`;
  const devKey = (d: DeviceAddress): string => `${prefix}d:${clusterDeviceKey(d)}`;
  const userKey = (u: string): string => `${prefix}u:${u}`;
  const presenceChannel = (u: string): string => `${prefix}p:${u}`;

  let nodeId: string | undefined;
  let inc: string | undefined;
  let cmd: (Redis & Scripts) | undefined;
  let sub: Redis | undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let beating: Promise<void> | undefined;

  /**
   * Opens a connection. Commands fail at once while Redis is unreachable instead of waiting in
   * ioredis's offline queue: that queue is unbounded, and a hint that waits is worth nothing.
   * (The subscriber keeps ioredis's resubscription on reconnect.)
   */
  const connect = (queue: boolean): Redis => {
    const own = { lazyConnect: true, enableOfflineQueue: queue };
    // A socket that answers nothing within the timeout is destroyed and reconnected (ioredis's
    // socketTimeout), so a black hole costs timeouts, not a connection that hangs forever.
    const bounded = {
      commandTimeout: commandTimeoutMs,
      socketTimeout: commandTimeoutMs,
      connectTimeout: CONNECT_TIMEOUT_MS,
    };
    const given = options.redis;
    const r =
      typeof given === 'string'
        ? new Redis(given, { ...bounded, ...own })
        : isClient(given)
          ? (given.duplicate({ ...bounded, ...own }) as Redis)
          : new Redis({ ...bounded, ...(given as RedisOptions), ...own });
    r.on('error', onError);
    return r;
  };

  /** Connects, failing on the first error rather than retrying forever as ioredis would. */
  const ready = (r: Redis): Promise<void> =>
    new Promise((resolve, reject) => {
      r.once('error', reject);
      r.connect().then(() => {
        r.off('error', reject);
        resolve();
      }, reject);
    });

  const defineScripts = (r: Redis): Redis & Scripts => {
    r.defineCommand('pbRegister', { numberOfKeys: 4, lua: REGISTER });
    r.defineCommand('pbUnregister', { numberOfKeys: 4, lua: UNREGISTER });
    r.defineCommand('pbLocate', { lua: LOCATE });
    r.defineCommand('pbRing', { lua: RING });
    r.defineCommand('pbPresence', { lua: PRESENCE });
    r.defineCommand('pbTyping', { lua: TYPING });
    r.defineCommand('pbHeartbeat', { numberOfKeys: 1, lua: HEARTBEAT });
    r.defineCommand('pbReap', { numberOfKeys: 3, lua: REAP });
    r.defineCommand('pbTakeLink', { numberOfKeys: 1, lua: TAKE_LINK });
    return r as Redis & Scripts;
  };

  const onMessage = (channelBytes: Buffer, payload: Buffer): void => {
    const channel = channelBytes.toString();
    const mine = inc !== undefined && channel === `${prefix}n:${inc}`;
    if (mine && isDoorbell(payload)) {
      let rung: ReturnType<typeof readDoorbell>;
      try {
        rung = readDoorbell(payload);
      } catch (e) {
        onError(e); // a lost hint: the inbox still has the entries
        return;
      }
      if (rung.devices.length > 0) core.doorbell.emit(rung.devices, rung.entries);
      return;
    }
    let m: {
      t?: string;
      d?: Array<[string, string]>;
      u?: string[];
      n?: TypingNotice;
      c?: number;
      k?: string;
    } & Partial<PresenceEvent>;
    try {
      m = JSON.parse(payload.toString()) as typeof m;
    } catch (e) {
      onError(e);
      return;
    }
    if (mine) {
      const devices = (m.d ?? []).map(([user, device]) => ({ user, device }));
      // A JSON doorbell comes from a node older than the binary one (a rolling upgrade): its
      // devices read their inboxes; the entries it may carry are not trusted in that form.
      if (m.t === 'd') core.doorbell.emit(devices);
      else if (m.t === 'r') {
        for (const d of devices) core.local.delete(clusterDeviceKey(d));
        core.replaced.emit(devices);
      } else if (m.t === 't' && m.u && m.n) core.typing.emit(m.u, m.n);
      else if (m.t === 'c' && typeof m.c === 'number') core.closed.emit(devices, m.c);
      else if (m.t === 'l' && typeof m.k === 'string') core.linkApproved.emit(m.k);
    } else if (channel.startsWith(`${prefix}p:`) && typeof m.user === 'string') {
      core.deliverPresence(m as PresenceEvent);
    }
  };

  /** Becomes a new incarnation: listens on its channel first, so no doorbell to it is missed. */
  const claim = async (): Promise<void> => {
    const old = inc;
    inc = `${nodeId!}/${incarnationToken()}`;
    await sub!.subscribe(`${prefix}n:${inc}`);
    if (old !== undefined) await sub!.unsubscribe(`${prefix}n:${old}`);
    await cmd!
      .multi()
      .set(`${prefix}alive:${inc}`, nodeId!, 'PX', ttlMs)
      .sadd(nodesKey, inc)
      // Versions start from the clock in µs, so after Redis lost everything they still grow past
      // the ones receivers hold (unless it had been incremented over a million times a second).
      .set(versionKey, Date.now() * 1000, 'NX')
      .exec();
  };

  /** KEYS and ARGV of the register and unregister scripts. */
  const registryArgs = (d: DeviceAddress, member: string): string[] => [
    devKey(d),
    userKey(d.user),
    `${prefix}devs:${inc!}`,
    versionKey,
    inc!,
    prefix,
    member,
  ];

  const registerHere = async (d: DeviceAddress): Promise<RegisterResult> => {
    const member = clusterDeviceKey(d);
    core.local.set(member, d);
    let reply: [string, number, number];
    try {
      reply = await cmd!.pbRegister(...registryArgs(d, member));
    } catch (e) {
      if (core.local.has(member)) unregistered.set(member, d);
      degraded = true;
      throw e;
    }
    unregistered.delete(member);
    const [replaced, came, v] = reply;
    return { replaced: replaced === '' ? undefined : replaced, cameOnline: came === 1, v };
  };

  /**
   * After Redis was away: registers the devices whose registration failed, and subscribes again
   * to this node's channel and its watched users' (a SUBSCRIBE that failed is not one ioredis
   * repeats on reconnect; subscribing twice is harmless).
   */
  const repair = async (): Promise<void> => {
    for (const d of [...unregistered.values()]) await registerHere(d);
    const channels = [`${prefix}n:${inc!}`, ...[...core.watched.keys()].map(presenceChannel)];
    await sub!.subscribe(...channels);
  };

  /** One bounded reaping step: a batch of every dead incarnation's devices. */
  const reap = async (): Promise<void> => {
    const incs = await cmd!.smembers(nodesKey);
    if (incs.length === 0) return;
    const live = await cmd!.mget(incs.map((i) => `${prefix}alive:${i}`));
    for (let i = 0; i < incs.length; i++) {
      if (live[i] !== null) continue;
      const events = await cmd!.pbReap(
        `${prefix}devs:${incs[i]!}`,
        nodesKey,
        versionKey,
        incs[i]!,
        prefix,
        reapBatch,
        nodeId!,
        Date.now(),
      );
      // The users this reaping left offline, for this node's engine to record their last seen
      // (watchers, this node's included, hear them on the users' channels).
      for (const e of events) core.deliverReaped(JSON.parse(e) as PresenceEvent);
    }
  };

  const heartbeat = async (): Promise<void> => {
    if (nodeId === undefined || !cmd || !sub) return;
    // The subscriber sends nothing on its own: a ping is how a black-holed one is found (its
    // socket timeout then reconnects it). Beside the heartbeat, which must not wait for it.
    const pinged = sub.ping().then(
      () => true,
      (e: unknown) => {
        degraded = true;
        onError(e);
        return false;
      },
    );
    const ok = await cmd.pbHeartbeat(`${prefix}alive:${inc!}`, nodeId, ttlMs);
    if (ok === 0) {
      // Paused past the TTL: reapers may be at the old incarnation; register anew under a new one.
      await claim();
      for (const d of [...core.local.values()]) await registerHere(d);
    }
    if ((await pinged) && degraded) {
      degraded = false;
      await repair();
    }
    await reap();
  };

  const schedule = (): void => {
    timer = setTimeout(() => {
      beating = heartbeat()
        .catch((e: unknown) => {
          degraded = true;
          onError(e);
        })
        .finally(() => {
          beating = undefined;
          if (nodeId !== undefined) schedule();
        });
    }, heartbeatMs);
    timer.unref?.();
  };

  const started = (): Redis & Scripts => {
    if (nodeId === undefined || !cmd) throw new Error('cluster node not started: call start(nodeId) first');
    return cmd;
  };

  const teardown = (): void => {
    if (timer !== undefined) clearTimeout(timer);
    timer = undefined;
    nodeId = inc = undefined;
    core.local.clear();
    core.watched.clear();
    unregistered.clear();
    degraded = false;
  };

  const adapter: RedisClusterAdapter = {
    name: 'redis',
    get nodeId() {
      return nodeId;
    },
    async start(id) {
      if (nodeId !== undefined) throw new Error(`cluster node already started as ${nodeId}`);
      cmd = defineScripts(connect(false));
      sub = connect(true);
      // Bytes, not strings: a doorbell is msgpack (ioredis then skips its own toString).
      sub.on('messageBuffer', onMessage);
      try {
        await Promise.all([ready(cmd), ready(sub)]);
        nodeId = id;
        await claim();
      } catch (e) {
        nodeId = inc = undefined;
        cmd.disconnect();
        sub.disconnect();
        cmd = sub = undefined;
        throw e;
      }
      schedule();
    },
    async stop() {
      if (nodeId === undefined || !cmd || !sub) return;
      if (timer !== undefined) clearTimeout(timer);
      timer = undefined;
      await beating;
      const r = cmd;
      try {
        await core.leave(adapter, Date.now());
        await r.multi().del(`${prefix}alive:${inc!}`, `${prefix}devs:${inc!}`).srem(nodesKey, inc!).exec();
      } finally {
        teardown();
        await Promise.allSettled([r.quit(), sub.quit()]);
        cmd = sub = undefined;
      }
    },
    async crash() {
      if (nodeId === undefined) return;
      teardown();
      cmd?.disconnect();
      sub?.disconnect();
      cmd = sub = undefined;
    },
    register(d) {
      started();
      return registerHere(d);
    },
    async unregister(d): Promise<UnregisterResult> {
      const r = started();
      const member = clusterDeviceKey(d);
      core.local.delete(member);
      unregistered.delete(member);
      const [removed, off, v] = await r.pbUnregister(...registryArgs(d, member));
      return { removed: removed === 1, wentOffline: off === 1, v };
    },
    async locate(list) {
      const r = started();
      const out: Array<string | undefined> = [];
      for (const part of chunks(list, CHUNK)) {
        const nodes = await r.pbLocate(part.length, ...part.map(devKey), prefix);
        for (const n of nodes) out.push(n === '' ? undefined : n);
      }
      return out;
    },
    async ring(list, entries) {
      if (nodeId === undefined || !cmd) return;
      try {
        // Each device's own entries, found once (not by scanning them all per device).
        const byDevice = entriesByDevice(entries);
        for (const part of chunks(list, CHUNK)) {
          const mine = await cmd.pbRing(
            part.length,
            ...part.map(devKey),
            prefix,
            inc!,
            DOORBELL_MARK,
            '',
            '',
            ...part.map((d) => doorbellMember(d, byDevice?.get(addressKey(d)))),
          );
          if (mine.length > 0) {
            const here = mine.map((i) => part[i - 1]!);
            core.doorbell.emit(here, entriesFor(entries, here));
          }
        }
      } catch (e) {
        onError(e); // a lost hint: the inbox still has the entries
      }
    },
    onDoorbell: (h) => core.doorbell.add(h),
    onReplaced: (h) => core.replaced.add(h),
    async presence(list): Promise<PresenceState[]> {
      const r = started();
      if (list.length === 0) return [];
      const out: PresenceState[] = [];
      for (const part of chunks(list, CHUNK)) {
        const reply = await r.pbPresence(part.length + 1, ...part.map(userKey), versionKey, prefix);
        const v = reply[part.length]!;
        for (let i = 0; i < part.length; i++) out.push({ online: reply[i] === 1, v });
      }
      return out;
    },
    async publishPresence(e) {
      if (nodeId === undefined || !cmd) return;
      const event: PresenceEvent = { ...e, origin: nodeId };
      try {
        await cmd.publish(presenceChannel(e.user), JSON.stringify(event));
      } catch (err) {
        onError(err);
      }
    },
    async watch(user) {
      started();
      if (!core.watch(user)) return;
      try {
        await sub!.subscribe(presenceChannel(user));
      } catch (e) {
        degraded = true; // subscribed again by the repair
        throw e;
      }
    },
    async unwatch(user) {
      if (core.unwatch(user) && sub) await sub.unsubscribe(presenceChannel(user));
    },
    onPresence: (h) => core.presence.add(h),
    async typing(list, notice) {
      if (nodeId === undefined || !cmd || list.length === 0) return;
      const n = JSON.stringify(notice);
      try {
        for (const part of chunks(list, CHUNK))
          await cmd.pbTyping(part.length, ...part.map(userKey), prefix, n, ...part);
      } catch (e) {
        onError(e);
      }
    },
    onTyping: (h) => core.typing.add(h),
    async closeDevices(list, code) {
      if (nodeId === undefined || !cmd) return;
      try {
        for (const part of chunks(list, CHUNK)) {
          const mine = await cmd.pbRing(
            part.length,
            ...part.map(devKey),
            prefix,
            inc!,
            `{"t":"c","c":${Math.trunc(code)},"d":[`,
            ',',
            ']}',
            ...part.map(clusterDeviceKey),
          );
          if (mine.length > 0)
            core.closed.emit(
              mine.map((i) => part[i - 1]!),
              code,
            );
        }
      } catch (e) {
        onError(e);
      }
    },
    onClose: (h) => core.closed.add(h),
    async offerLink(code, device, ttl) {
      const r = started();
      const offer = JSON.stringify({ u: device.user, d: device.device, i: inc! });
      await r.set(`${prefix}link:${code}`, offer, 'PX', Math.max(1, Math.ceil(ttl)));
    },
    async takeLink(code, user) {
      const r = started();
      const offer = await r.pbTakeLink(`${prefix}link:${code}`, prefix, user, code);
      if (!offer) return undefined;
      const o = JSON.parse(offer) as { u: string; d: string };
      return { user: o.u, device: o.d };
    },
    onLinkApproved: (h) => core.linkApproved.add(h),
  };
  return adapter;
}
