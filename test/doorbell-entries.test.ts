// Entries across gateway nodes without a read-back (issue 19, item 3): the small status entries
// an ack wrote, and the short messages a send wrote, for a device on another node ride in that
// node's doorbell (the engine's side is proven in cluster-engine.test.ts). Here: each built-in
// adapter carries them unchanged, a message's body byte for byte.
import { Redis } from 'ioredis';
import { Packr } from 'msgpackr';
import { describe, expect, it } from 'vitest';
import { memoryClusterHub } from '../src/server/cluster/local.js';
import { redisCluster } from '../src/server/cluster/redis.js';
import { DOORBELL_MARK, doorbellMember, readDoorbell } from '../src/server/cluster/redis-doorbell.js';
import type { ClusterAdapter, DoorbellEntry } from '../src/server/cluster/types.js';
import type { DeviceAddress } from '../src/server/store.js';
import { Carried } from '../src/server/routing.js';

/** Entries that ride per device here (the engine passes its delivery window). */
const PER_DEVICE = 64;
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

  it.skipIf(unreachable !== undefined && !process.env.POSTBOX_REQUIRE_SERVICES)(
    `a JSON doorbell from a node older than the binary one still rings its devices, without taking its entries${unreachable ? ` (SKIPPED: ${unreachable})` : ''}`,
    async () => {
      const prefix = `postbox-test:${Math.random().toString(36).slice(2)}:`;
      const b = redisCluster({ redis: REDIS_URL, prefix, ttlMs: 400 });
      const got: unknown[] = [];
      b.onDoorbell((devices, entries) => got.push([devices, entries]));
      const r = new Redis(REDIS_URL);
      try {
        await b.start('B');
        await b.register(bob);
        const [inc] = await r.smembers(`${prefix}nodes`);
        // The form a node before 7 Dec 2026 published: JSON, entries after the device's name.
        const old = JSON.stringify({ t: 'd', d: [['bob', 'phone', { ...status }]] });
        await r.publish(`${prefix}n:${inc}`, old);
        for (let i = 0; i < 100 && got.length === 0; i++) await new Promise((res) => setTimeout(res, 10));
        expect(got).toEqual([[[bob], undefined]]);
      } finally {
        r.disconnect();
        await b.stop();
        await deleteRedisPrefix(prefix);
      }
    },
  );
});

describe("the Redis doorbell's bytes", () => {
  const packr = new Packr({ useRecords: false, moreTypes: false });
  const tab: DeviceAddress = { user: 'bob', device: 'tablet' };
  const payload = (...members: Buffer[]): Buffer => Buffer.concat([Buffer.from(DOORBELL_MARK), ...members]);

  it('a ring of several devices reads back as rung: every device, each with its own entries, a body byte for byte', () => {
    const got = readDoorbell(payload(doorbellMember(bob, carried), doorbellMember(tab, undefined)));
    expect(got).toEqual({ devices: [bob, tab], entries: carried });
    const body = (got.entries![1]!.entry as { body: Uint8Array }).body;
    expect(Object.getPrototypeOf(body)).toBe(Uint8Array.prototype);
  });

  it('an entry that does not read as one a doorbell may carry is dropped, not trusted: the device is still rung, its other entries kept', () => {
    // Each spoils one field of a message or status tuple (see redis-doorbell.ts for the layout).
    const spoilt: unknown[] = [
      [0, 5, 'm3', 'alice', 'laptop', 'g1', 1, 9, 6, 'not bytes'],
      [0, 'five', 'm3', 'alice', 'laptop', 'g1', 1, 9, 6, new Uint8Array(1)],
      [0, 5, 7, 'alice', 'laptop', 'g1', 1, 9, 6, new Uint8Array(1)],
      [1, 4, 'seen', ['m1'], 'alice', 5],
      [1, 4, 'read', [1, 2], 'alice', 5],
      [1, 4, 'read', ['m1'], null, 5],
      [9, 4],
      'not a tuple',
    ];
    for (const bad of spoilt) {
      const member = packr.pack(['bob', 'phone', bad, [1, 4, 'read', ['m1', 'm2'], 'alice', 5]]);
      expect(readDoorbell(payload(member)), JSON.stringify(bad)).toEqual({
        devices: [bob],
        entries: [{ device: bob, entry: status }],
      });
    }
  });

  it('a member that names no device is skipped; bytes that are not msgpack throw (the adapter reports a lost hint)', () => {
    expect(readDoorbell(payload(packr.pack([1, 'phone']), doorbellMember(tab, undefined)))).toEqual({
      devices: [tab],
    });
    expect(() => readDoorbell(payload(Buffer.from([0x92, 0xa3, 0x62])))).toThrow();
  });
});

describe('which entries ride', () => {
  const tab: DeviceAddress = { user: 'bob', device: 'tablet' };
  const msg = (offset: number, size: number): DoorbellEntry['entry'] => ({
    ...message,
    offset,
    body: new Uint8Array(size),
  });

  it('a device whose entries all ride gets them all, in the order written', () => {
    const c = new Carried(PER_DEVICE);
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
      // With the status above, one more than a delivery window's worth.
      [
        'an entry past the cap',
        (c) => Array.from({ length: PER_DEVICE }, (_, i) => c.add(bob, msg(5 + i, 1))),
      ],
    ];
    for (const [what, spoil] of cases) {
      const c = new Carried(PER_DEVICE);
      c.add(tab, status);
      c.add(bob, status);
      spoil(c);
      c.add(bob, msg(20, 1)); // a later short one does not ride either
      expect(c.entries(), what).toEqual([{ device: tab, entry: status }]);
    }
  });
});
