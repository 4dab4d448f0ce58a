// Entries across gateway nodes without a read-back (issue 19, item 3): the small status entries
// an ack wrote, and the short messages a send wrote, for a device on another node ride in that
// node's doorbell (the engine's side is proven in cluster-engine.test.ts). Here: each built-in
// adapter carries them unchanged, a message's body byte for byte.
import { describe, expect, it } from 'vitest';
import { memoryClusterHub } from '../src/server/cluster/local.js';
import { redisCluster } from '../src/server/cluster/redis.js';
import type { ClusterAdapter, DoorbellEntry } from '../src/server/cluster/types.js';
import type { DeviceAddress } from '../src/server/store.js';
import { Carried } from '../src/server/routing.js';
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

const message: DoorbellEntry['entry'] = {
  offset: 5,
  kind: 'msg',
  id: 'm3',
  from: { user: 'alice', device: 'laptop' },
  to: 'g1',
  group: true,
  seq: 9,
  ts: 6,
  body: Uint8Array.from({ length: 256 }, (_, i) => i), // every byte value
};
const carried = [
  { device: bob, entry: status },
  { device: bob, entry: message },
];

/** Rings `bob` from node A with the entries; what node B's doorbell handler got. */
async function ringAcross(a: ClusterAdapter, b: ClusterAdapter): Promise<unknown[]> {
  const got: unknown[] = [];
  b.onDoorbell((devices, entries) => got.push([devices, entries]));
  await a.start('A');
  await b.start('B');
  await b.register(bob);
  await a.ring([bob], carried);
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
    expect(await ringAcross(hub.node(), hub.node())).toEqual([[[bob], carried]]);
  });

  it.skipIf(unreachable !== undefined && !process.env.POSTBOX_REQUIRE_SERVICES)(
    `Redis carries them through pub/sub${unreachable ? ` (SKIPPED: ${unreachable})` : ''}`,
    async () => {
      const prefix = `postbox-test:${Math.random().toString(36).slice(2)}:`;
      const node = () => redisCluster({ redis: REDIS_URL, prefix, ttlMs: 400 });
      try {
        expect(await ringAcross(node(), node())).toEqual([[[bob], carried]]);
      } finally {
        await deleteRedisPrefix(prefix);
      }
    },
  );
});

describe('which entries ride', () => {
  const tab: DeviceAddress = { user: 'bob', device: 'tablet' };
  const msg = (offset: number, size: number): DoorbellEntry['entry'] => ({
    ...message,
    offset,
    body: new Uint8Array(size),
  });

  it('a device whose entries all ride gets them all, in the order written', () => {
    const c = new Carried();
    c.add(bob, status);
    c.add(bob, msg(5, 1024));
    expect(c.entries()).toEqual([
      { device: bob, entry: status },
      { device: bob, entry: msg(5, 1024) },
    ]);
  });

  it('a device with any entry that cannot ride gets none (its node reads its inbox); others are not affected', () => {
    const cases: Array<[string, (c: Carried) => void]> = [
      ['a long message', (c) => c.add(bob, msg(5, 1025))],
      ['a status naming many messages', (c) => c.add(bob, { ...status, ids: Array(33).fill('m') })],
      ['an entry this node does not know', (c) => c.skip(bob)],
      ['a ninth entry', (c) => [5, 6, 7, 8, 9, 10, 11, 12].forEach((o) => c.add(bob, msg(o, 1)))],
    ];
    for (const [what, spoil] of cases) {
      const c = new Carried();
      c.add(tab, status);
      c.add(bob, status);
      spoil(c);
      c.add(bob, msg(20, 1)); // a later short one does not ride either
      expect(c.entries(), what).toEqual([{ device: tab, entry: status }]);
    }
  });
});
