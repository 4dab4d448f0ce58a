// Statuses across gateway nodes without a read-back (issue 19, item 3): the small status entries
// an ack wrote for a device on another node ride in that node's doorbell (the engine's side is
// proven in cluster-engine.test.ts). Here: each built-in adapter carries them unchanged.
import { describe, expect, it } from 'vitest';
import { memoryClusterHub } from '../src/server/cluster/local.js';
import { redisCluster } from '../src/server/cluster/redis.js';
import type { ClusterAdapter, DoorbellEntry } from '../src/server/cluster/types.js';
import type { DeviceAddress } from '../src/server/store.js';
import { deleteRedisPrefix, REDIS_URL, redisUnreachable } from './fixtures/redis.js';

const bob: DeviceAddress = { user: 'bob', device: 'phone' };
const status: DoorbellEntry['entry'] = {
  offset: 4,
  kind: 'status',
  status: 'read',
  ids: ['m1', 'm2'],
  by: 'alice',
  ts: 5,
};

/** Rings `bob` from node A with one entry; what node B's doorbell handler got. */
async function ringAcross(a: ClusterAdapter, b: ClusterAdapter): Promise<unknown[]> {
  const got: unknown[] = [];
  b.onDoorbell((devices, entries) => got.push([devices, entries]));
  await a.start('A');
  await b.start('B');
  await b.register(bob);
  await a.ring([bob], [{ device: bob, entry: status }]);
  for (let i = 0; i < 100 && got.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
  await a.stop();
  await b.stop();
  return got;
}

const unreachable = await redisUnreachable();
if (unreachable !== undefined && !process.env.POSTBOX_REQUIRE_SERVICES)
  console.warn(`doorbell-entries.test.ts: the Redis case is SKIPPED: ${unreachable}`);

describe('doorbells that carry entries', () => {
  it('the memory hub hands the entries to the node holding the device', async () => {
    const hub = memoryClusterHub({ ttlMs: 400 });
    expect(await ringAcross(hub.node(), hub.node())).toEqual([[[bob], [{ device: bob, entry: status }]]]);
  });

  it.skipIf(unreachable !== undefined && !process.env.POSTBOX_REQUIRE_SERVICES)(
    `Redis carries them through pub/sub${unreachable ? ` (SKIPPED: ${unreachable})` : ''}`,
    async () => {
      const prefix = `postbox-test:${Math.random().toString(36).slice(2)}:`;
      const node = () => redisCluster({ redis: REDIS_URL, prefix, ttlMs: 400 });
      try {
        expect(await ringAcross(node(), node())).toEqual([[[bob], [{ device: bob, entry: status }]]]);
      } finally {
        await deleteRedisPrefix(prefix);
      }
    },
  );
});
