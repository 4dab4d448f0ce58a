import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { localCluster, memoryClusterHub, type MemoryClusterNode } from '../src/server/cluster/local.js';
import { redisCluster, type RedisClusterAdapter } from '../src/server/cluster/redis.js';
import { clusterConformance, registerCases } from '../src/testing/index.js';
import { REDIS_URL, redisUnreachable } from './fixtures/redis.js';

// Small TTLs keep the waits for a dead node short; heartbeats are a third of them, and reaping
// runs in batches of 100 so the bounded case needs several steps.
const TTL_MS = 400;

describe('memory cluster hub conformance', () => {
  registerCases(
    clusterConformance({
      name: 'memory',
      ttlMs: TTL_MS,
      async open() {
        const hub = memoryClusterHub({ ttlMs: TTL_MS, reapBatch: 100 });
        return {
          node: () => hub.node(),
          crash: (n) => (n as MemoryClusterNode).crash(),
          size: async () => {
            const s = hub.size();
            return s.nodes + s.devices + s.users;
          },
          close: async () => {},
        };
      },
    }),
    it,
  );
});

describe('memory cluster faults and the local cluster', () => {
  it('a dropped doorbell is lost silently (the inbox still holds the entries)', async () => {
    const hub = memoryClusterHub({ ttlMs: TTL_MS });
    const [a, b] = [hub.node(), hub.node()];
    const got: unknown[] = [];
    b.onDoorbell((d) => got.push(d));
    await a.start('A');
    await b.start('B');
    await b.register({ user: 'u', device: 'd' });
    hub.faults.dropDoorbells = true;
    await a.ring([{ user: 'u', device: 'd' }]);
    await new Promise((r) => setTimeout(r, 20));
    expect(got).toEqual([]);
    hub.faults.dropDoorbells = false;
    await a.ring([{ user: 'u', device: 'd' }]);
    await new Promise((r) => setTimeout(r, 20));
    expect(got).toEqual([[{ user: 'u', device: 'd' }]]);
    await a.stop();
    await b.stop();
  });

  it('localCluster is one node: every registered device is here and rings locally', async () => {
    const c = localCluster();
    expect(c.name).toBe('local');
    const got: unknown[] = [];
    c.onDoorbell((d) => got.push(d));
    await c.start('only');
    const r = await c.register({ user: 'u', device: 'd' });
    expect(r).toMatchObject({ replaced: undefined, cameOnline: true });
    expect(await c.locate([{ user: 'u', device: 'd' }])).toEqual(['only']);
    await c.ring([{ user: 'u', device: 'd' }]);
    expect(got).toEqual([[{ user: 'u', device: 'd' }]]);
    await c.stop();
  });

  it('a node paused past its TTL re-registers what it holds under a new incarnation', async () => {
    let now = 1_000;
    const timers: Array<{ at: number; fn: () => void }> = [];
    const clock = {
      now: () => now,
      setTimeout: (fn: () => void, ms: number) => {
        const t = { at: now + ms, fn };
        timers.push(t);
        return t;
      },
      clearTimeout: (h: unknown) => {
        const i = timers.indexOf(h as (typeof timers)[number]);
        if (i >= 0) timers.splice(i, 1);
      },
    };
    const hub = memoryClusterHub({ ttlMs: 300, heartbeatMs: 100, clock });
    const a = hub.node();
    await a.start('A');
    await a.register({ user: 'u', device: 'd' });
    now += 1_000; // a long pause: the heartbeat did not run
    expect(await a.locate([{ user: 'u', device: 'd' }])).toEqual([undefined]);
    timers.shift()!.fn();
    expect(await a.locate([{ user: 'u', device: 'd' }])).toEqual(['A']);
    expect((await a.presence(['u']))[0]!.online).toBe(true);
    expect(hub.size()).toEqual({ nodes: 1, devices: 1, users: 1, links: 0 });
    await a.stop();
  });
});

const unreachable = await redisUnreachable();
if (unreachable !== undefined && !process.env.POSTBOX_REQUIRE_SERVICES)
  console.warn(`cluster.test.ts: Redis suite SKIPPED: ${unreachable}`);

describe.skipIf(unreachable !== undefined && !process.env.POSTBOX_REQUIRE_SERVICES)('redis cluster', () => {
  it('Redis is reachable (POSTBOX_REQUIRE_SERVICES makes its absence a failure)', () => {
    expect(unreachable, 'start Redis (see .ci/run)').toBeUndefined();
  });

  const admin = new Redis(REDIS_URL, { lazyConnect: true, maxRetriesPerRequest: 1 });
  admin.on('error', () => {});
  afterAll(() => admin.disconnect());

  /** Keys under `prefix`, but the presence version counter (the one key a cluster keeps). */
  const keys = async (prefix: string): Promise<string[]> => {
    const out: string[] = [];
    let cursor = '0';
    do {
      const [next, batch] = await admin.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500);
      cursor = next;
      out.push(...batch);
    } while (cursor !== '0');
    return out;
  };

  registerCases(
    clusterConformance({
      name: 'redis',
      ttlMs: TTL_MS,
      async open() {
        const prefix = `postbox-test:${Math.random().toString(36).slice(2)}:`;
        return {
          node: () => redisCluster({ redis: REDIS_URL, prefix, ttlMs: TTL_MS, reapBatch: 100 }),
          crash: (n) => (n as RedisClusterAdapter).crash(),
          size: async () => (await keys(prefix)).filter((k) => k !== `${prefix}v`).length,
          close: async () => {
            const left = await keys(prefix);
            if (left.length > 0) await admin.del(...left);
          },
        };
      },
    }),
    it,
  );

  it('when Redis loses everything, each node re-registers what it holds within a heartbeat', async () => {
    const prefix = `postbox-test:${Math.random().toString(36).slice(2)}:`;
    const [a, b] = [0, 1].map(() => redisCluster({ redis: REDIS_URL, prefix, ttlMs: TTL_MS }));
    try {
      await a!.start('A');
      await b!.start('B');
      const before = await a!.register({ user: 'u', device: 'd' });
      await admin.del(...(await keys(prefix))); // a Redis restart without persistence
      expect(await b!.locate([{ user: 'u', device: 'd' }])).toEqual([undefined]);
      const end = Date.now() + TTL_MS * 4;
      while ((await b!.locate([{ user: 'u', device: 'd' }]))[0] !== 'A' && Date.now() < end)
        await new Promise((r) => setTimeout(r, 20));
      expect(await b!.locate([{ user: 'u', device: 'd' }])).toEqual(['A']);
      expect((await b!.presence(['u']))[0]!).toMatchObject({ online: true });
      // Versions keep growing past those handed out before the loss.
      expect((await b!.presence(['u']))[0]!.v).toBeGreaterThan(before.v);
      // The re-registered node still gets its doorbells (on its new incarnation's channel).
      const got: unknown[] = [];
      a!.onDoorbell((d) => got.push(d));
      await b!.ring([{ user: 'u', device: 'd' }]);
      await new Promise((r) => setTimeout(r, 60));
      expect(got).toEqual([[{ user: 'u', device: 'd' }]]);
    } finally {
      await a!.stop();
      await b!.stop();
      const left = await keys(prefix);
      if (left.length > 0) await admin.del(...left);
    }
  });

  it("an app's own ioredis client is reused through duplicate(), and stays open and unchanged after close", async () => {
    const prefix = `postbox-test:${Math.random().toString(36).slice(2)}:`;
    const appClient = new Redis(REDIS_URL, { lazyConnect: true });
    await appClient.connect();
    let duplicated = 0;
    const counting = {
      duplicate: (o?: Record<string, unknown>) => (duplicated++, appClient.duplicate(o)),
    };
    const [a, b] = [
      redisCluster({ redis: counting, prefix, ttlMs: TTL_MS }),
      redisCluster({ redis: REDIS_URL, prefix, ttlMs: TTL_MS }),
    ];
    try {
      await a.start('A');
      await b.start('B');
      expect(duplicated).toBe(2); // commands and subscriber
      await a.register({ user: 'u', device: 'd' });
      expect(await b.locate([{ user: 'u', device: 'd' }])).toEqual(['A']);
      const got: unknown[] = [];
      a.onDoorbell((d) => got.push(d));
      await b.ring([{ user: 'u', device: 'd' }]);
      const end = Date.now() + 2000;
      while (got.length === 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
      expect(got).toEqual([[{ user: 'u', device: 'd' }]]);
    } finally {
      await a.stop();
      await b.stop();
    }
    expect(appClient.status).toBe('ready');
    expect(await appClient.ping()).toBe('PONG');
    const left = await keys(prefix);
    if (left.length > 0) await admin.del(...left);
    await appClient.quit();
  });

  it('nothing connects before start, and a node that cannot reach Redis fails to start', async () => {
    const errors: unknown[] = [];
    const c = redisCluster({
      redis: { port: 1, host: '127.0.0.1', retryStrategy: () => null, maxRetriesPerRequest: 0 },
      onError: (e) => errors.push(e),
    });
    expect(c.nodeId).toBeUndefined();
    await expect(c.start('A')).rejects.toThrow();
    expect(c.nodeId).toBeUndefined();
    await c.ring([{ user: 'u', device: 'd' }]); // not started: a hint to nowhere, no throw
  });
});
