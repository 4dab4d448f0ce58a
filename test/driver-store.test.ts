// The kit's driverStore over two drivers of the test fixtures, each through the whole store
// conformance suite (with the fault hook) and the quota conformance:
// - a copying driver: every record goes in and out as a copy (as bytes would), a unit is an undo
//   journal. The memory store is driverStore over live maps, where a change the kit forgot to
//   write back still shows; here it is lost, so a missing write-back fails here.
// - a remote driver: records live elsewhere, reached after an event-loop turn; a unit runs on a
//   cache, misses what is not loaded, and is run again after the load; a finished unit flushes
//   all or nothing on the condition that the tables it read did not move (one version per
//   table), else it runs again. Several stores over one remote are several nodes.
// - the same remote driver on a real Redis (fixtures/redis-backend.ts): WATCH and MULTI/EXEC
//   are its conditional flush.
import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import type { StoreQuotas } from '../src/server/quotas.js';
import type { ServerStore } from '../src/server/store.js';
import { backendDriver, driverStore, type RemoteBackend } from '../src/server/store-kit.js';
import { registerCases, serverStoreConformance, serverStoreQuotaConformance } from '../src/testing/index.js';
import { EVERY_CAPABILITY } from './helpers.js';
import {
  copyingDriver,
  createCopyingStorage,
  memoryBackend,
  remoteDriver,
  type CopyingStorage,
} from './fixtures/copying-driver.js';
import { redisBackend } from './fixtures/redis-backend.js';
import { deleteRedisPrefix, REDIS_URL, redisUnreachable } from './fixtures/redis.js';
import { describeWithServices } from './fixtures/services.js';

type Driver = typeof copyingDriver;
const opened = new WeakMap<
  ServerStore,
  { driver: Driver; storage: CopyingStorage; quotas?: Partial<StoreQuotas> }
>();
function open(driver: Driver, storage: CopyingStorage, quotas?: Partial<StoreQuotas>): ServerStore {
  const store = driverStore(driver(storage), { name: 'driver', ...(quotas ? { quotas } : {}) });
  opened.set(store, { driver, storage, ...(quotas ? { quotas } : {}) });
  return store;
}
async function reopen(old: ServerStore): Promise<ServerStore> {
  const { driver, storage, quotas } = opened.get(old)!;
  await old.close();
  return open(driver, storage, quotas);
}

// The copying driver (records in and out as copies, a journal for atomicity) and the remote one
// (a cache that misses, loads after an event-loop turn, and flushes a unit all or nothing).
for (const [kind, driver] of [
  ['copying', copyingDriver],
  ['remote', remoteDriver],
] as const) {
  describe(`the store kit over a ${kind} driver: store conformance`, () => {
    registerCases(
      serverStoreConformance({
        name: `driver (${kind})`,
        capabilities: EVERY_CAPABILITY,
        openWithFaults: async (faults) =>
          driverStore(driver(createCopyingStorage(), faults.hook), { name: 'driver' }),
        open: async () => open(driver, createCopyingStorage()),
        reopen,
      }),
      it,
    );
  });

  describe(`the store kit over a ${kind} driver: quota conformance`, () => {
    registerCases(
      serverStoreQuotaConformance({
        name: `driver (${kind})`,
        capabilities: EVERY_CAPABILITY,
        open: async (quotas) => open(driver, createCopyingStorage(), quotas),
        reopen,
        share: async (store) => {
          const { storage, quotas } = opened.get(store)!;
          return open(driver, storage, quotas);
        },
      }),
      it,
    );
  });
}

describe('group events in a driver store', () => {
  it('a change is stored once per form, whatever the member count, every entry shows it, and expiry drops it with its entries', async () => {
    const storage = createCopyingStorage();
    const store = open(copyingDriver, storage);
    const members = Array.from({ length: 20 }, (_, i) => `u${i}`);
    for (const u of members) {
      await store.registerDevice({ user: u, device: 'a' }, 1);
      await store.registerDevice({ user: u, device: 'b' }, 1);
    }
    const [out] = await store.append(
      [
        {
          kind: 'group',
          from: { user: 'u0', device: 'a' },
          id: 'c1',
          group: 'g',
          change: { op: 'create', name: 'G', members: members.slice(1) },
          maxMembers: 1024,
        },
      ],
      2,
    );
    expect(out).toMatchObject({ ok: true, duplicate: false });
    expect(storage.get('events')?.size).toBe(1); // every member is new: the full form alone
    for (const u of members) {
      const [entry] = await store.readInbox({ user: u, device: 'b' }, 0, 10);
      expect(entry).toMatchObject({ kind: 'group', event: { group: 'g', ver: 1 } });
      expect((entry as { event: { snapshot?: unknown[] } }).event.snapshot).toHaveLength(20);
    }
    await store.expire(3, 4);
    expect(storage.get('events')?.size ?? 0).toBe(0);
    expect(await store.readInbox({ user: 'u5', device: 'a' }, 0, 10)).toEqual([]);
  });
});

describe('a backend that fails', () => {
  it('a load or a commit the backend rejects fails that call alone, writing nothing, and the next call starts afresh', async () => {
    const base = memoryBackend(createCopyingStorage());
    let fail: 'get' | 'commit' | undefined;
    const reset = () => Promise.reject(new Error('connection reset'));
    const flaky: RemoteBackend = {
      get: (keys) => (fail === 'get' ? ((fail = undefined), reset()) : base.get(keys)),
      scan: (table, prefix) => base.scan(table, prefix),
      commit: (writes) => (fail === 'commit' ? ((fail = undefined), reset()) : base.commit(writes)),
    };
    const store = driverStore(backendDriver(flaky), { name: 'flaky' });
    const bob = { user: 'bob', device: 'b1' };
    await store.registerDevice({ user: 'alice', device: 'a1' }, 1);
    await store.registerDevice(bob, 1);
    const msg = (at: number) =>
      store.append(
        [
          {
            kind: 'msg',
            from: { user: 'alice', device: 'a1' },
            id: 'm1',
            to: 'bob',
            seq: 1,
            body: new Uint8Array([7]),
          },
        ],
        at,
      );
    fail = 'commit';
    await expect(msg(2)).rejects.toThrow('connection reset');
    expect(await store.readInbox(bob, 0, 10)).toEqual([]);
    fail = 'get';
    await expect(msg(3)).rejects.toThrow('connection reset');
    const [first] = await msg(4);
    expect(first).toMatchObject({ ok: true, duplicate: false, ts: 4 });
    expect((await store.readInbox(bob, 0, 10)).map((e) => e.offset)).toEqual([1]);
    const [again] = await msg(5);
    expect(again).toMatchObject({ ok: true, duplicate: true, ts: 4 });
  });
});

// The remote driver on a real Redis: WATCH on every record and index read, MULTI/EXEC for the
// unit's writes (refused, nothing written, when a watched key changed).
const redisMissing = await redisUnreachable();
describeWithServices('the store kit over a remote driver on Redis', redisMissing, () => {
  const run = `pbdrv:${randomBytes(4).toString('hex')}`;
  const backends: { close(): void }[] = [];
  afterAll(async () => {
    for (const b of backends) b.close();
    await deleteRedisPrefix(run);
  });
  let n = 0;
  /** A fresh namespace, a "database" a store and its reopens and shares use. */
  const fresh = () => `${run}:${n++}`;
  const onRedis = new WeakMap<ServerStore, { ns: string; quotas?: Partial<StoreQuotas> }>();
  function openOn(ns: string, quotas?: Partial<StoreQuotas>, hook?: (w: string) => void): ServerStore {
    const backend = redisBackend(REDIS_URL, ns);
    backends.push(backend);
    const store = driverStore(remoteDriver(backend, hook), { name: 'redis', ...(quotas ? { quotas } : {}) });
    onRedis.set(store, { ns, ...(quotas ? { quotas } : {}) });
    return store;
  }
  async function reopenOn(old: ServerStore): Promise<ServerStore> {
    const { ns, quotas } = onRedis.get(old)!;
    await old.close();
    return openOn(ns, quotas);
  }
  describe('store conformance', () => {
    registerCases(
      serverStoreConformance({
        name: 'driver (redis)',
        capabilities: EVERY_CAPABILITY,
        openWithFaults: async (faults) => openOn(fresh(), undefined, faults.hook),
        open: async () => openOn(fresh()),
        reopen: reopenOn,
      }),
      it,
    );
  });
  describe('quota conformance', () => {
    registerCases(
      serverStoreQuotaConformance({
        name: 'driver (redis)',
        capabilities: EVERY_CAPABILITY,
        open: async (quotas) => openOn(fresh(), quotas),
        reopen: reopenOn,
        share: async (store) => {
          const { ns, quotas } = onRedis.get(store)!;
          return openOn(ns, quotas);
        },
      }),
      it,
    );
  });
});
