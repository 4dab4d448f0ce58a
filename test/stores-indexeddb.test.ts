// The IndexedDB client store on fake-indexeddb (the fast run; test/browser runs the same suite in
// real Chromium): the whole client-store conformance suite, and what a browser adds to it.
import 'fake-indexeddb/auto';
import { IDBFactory, IDBObjectStore, forceCloseDatabase } from 'fake-indexeddb';
import { afterEach, describe, expect, it } from 'vitest';
import {
  INDEXEDDB_CLIENT_SCHEMA_VERSION,
  openIndexedDbClientStore,
  type IndexedDbClientStoreOptions,
} from '../src/client/stores/indexeddb.js';
import type { ClientStore } from '../src/client/store.js';
import { clientStoreConformance, registerCases } from '../src/testing/index.js';
import { draft } from '../src/testing/client-store-fixtures.js';

// A store's factory and name are its "disk": a new store over the same pair is a reload.
const disks = new WeakMap<ClientStore, IndexedDbClientStoreOptions>();

async function open(options: IndexedDbClientStoreOptions): Promise<ClientStore> {
  const store = await openIndexedDbClientStore(options);
  disks.set(store, options);
  return store;
}

describe('indexeddb client store conformance (fake-indexeddb)', () => {
  registerCases(
    clientStoreConformance({
      name: 'indexeddb',
      open: () => open({ indexedDB: new IDBFactory(), name: 'conformance' }),
      async reopen(old) {
        await old.close();
        return open(disks.get(old)!);
      },
    }),
    it,
  );
});

describe('indexeddb client store in a browser', () => {
  const restore: Array<() => void> = [];
  afterEach(() => restore.splice(0).forEach((f) => f()));

  it('a write over the quota rejects with storage_full and keeps nothing', async () => {
    const store = await open({ indexedDB: new IDBFactory() });
    expect((await store.enqueue(draft('m1', 'bob'), true)).seq).toBe(1);
    const add = IDBObjectStore.prototype.add;
    IDBObjectStore.prototype.add = function () {
      throw new DOMException('quota', 'QuotaExceededError');
    };
    restore.push(() => (IDBObjectStore.prototype.add = add));
    await expect(store.enqueue(draft('m2', 'bob'), true)).rejects.toMatchObject({
      name: 'PostboxError',
      code: 'storage_full',
      retryable: false,
    });
    restore.pop()!();
    // The refused write took no sequence number and left no entry.
    expect((await store.enqueue(draft('m3', 'bob'), true)).seq).toBe(2);
    expect((await store.pending()).map((e) => e.id)).toEqual(['m1', 'm3']);
    await store.close();
  });

  it('a database the browser closed (site data cleared) makes every call reject with unavailable', async () => {
    const factory = new IDBFactory();
    // Keep the connections the store opens, to close one as the browser would.
    const conns: IDBDatabase[] = [];
    const openRaw = factory.open.bind(factory);
    factory.open = (...args: Parameters<IDBFactory['open']>) => {
      const req = openRaw(...args);
      req.addEventListener('success', () => conns.push(req.result));
      return req;
    };
    const store = await open({ indexedDB: factory, name: 'evicted' });
    await store.enqueue(draft('m1', 'bob'), true);
    forceCloseDatabase(conns[0] as never);
    for (const call of [
      store.pending(),
      store.enqueue(draft('m2', 'bob'), true),
      store.getState('e2ee', 'k'),
    ]) {
      await expect(call).rejects.toMatchObject({ code: 'unavailable', message: /site data cleared/ });
    }
    await store.close();
  });

  it('a newer schema opened in another tab closes this tab’s store, which then says to reload', async () => {
    const factory = new IDBFactory();
    const store = await open({ indexedDB: factory, name: 'upgrade' });
    await store.enqueue(draft('m1', 'bob'), true);
    // Another tab runs a newer app: its upgrade must not wait on this tab.
    const newer = await new Promise<IDBDatabase>((resolve, reject) => {
      const req = factory.open('upgrade', INDEXEDDB_CLIENT_SCHEMA_VERSION + 1);
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
      req.onblocked = () => reject(new Error('the upgrade waited on the old tab'));
    });
    await expect(store.pending()).rejects.toMatchObject({ code: 'unavailable', message: /reload this tab/ });
    // And this (older) app cannot open the newer database: a typed error, not a crash.
    await expect(open({ indexedDB: factory, name: 'upgrade' })).rejects.toMatchObject({
      code: 'misconfigured',
      message: /newer version of the app/,
    });
    newer.close();
    await store.close();
  });

  it('without IndexedDB, opening says what to do', async () => {
    const g = globalThis as { indexedDB?: IDBFactory };
    const saved = g.indexedDB;
    delete g.indexedDB;
    restore.push(() => (g.indexedDB = saved));
    await expect(openIndexedDbClientStore({})).rejects.toMatchObject({ code: 'misconfigured' });
  });
});
