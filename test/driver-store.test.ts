// The kit's driverStore over a driver that copies every record in and out (as a key-value engine
// does) and undoes a failed unit from a journal: the whole store conformance suite, with the
// fault hook, and the quota conformance. The memory store is driverStore over live maps; this is
// the same kit where a change the kit forgot to write back is lost, so a missing write-back fails
// here even when the memory store passes.
import { describe, it } from 'vitest';
import type { StoreQuotas } from '../src/server/quotas.js';
import type { ServerStore } from '../src/server/store.js';
import { driverStore } from '../src/server/store-kit.js';
import { registerCases, serverStoreConformance, serverStoreQuotaConformance } from '../src/testing/index.js';
import { EVERY_CAPABILITY } from './helpers.js';
import { copyingDriver, createCopyingStorage, type CopyingStorage } from './fixtures/copying-driver.js';

const opened = new WeakMap<ServerStore, { storage: CopyingStorage; quotas?: Partial<StoreQuotas> }>();
function open(storage: CopyingStorage, quotas?: Partial<StoreQuotas>): ServerStore {
  const store = driverStore(copyingDriver(storage), { name: 'copying', ...(quotas ? { quotas } : {}) });
  opened.set(store, { storage, ...(quotas ? { quotas } : {}) });
  return store;
}
async function reopen(old: ServerStore): Promise<ServerStore> {
  const { storage, quotas } = opened.get(old)!;
  await old.close();
  return open(storage, quotas);
}

describe('the store kit over a copying driver: store conformance', () => {
  registerCases(
    serverStoreConformance({
      name: 'driver (copying)',
      capabilities: EVERY_CAPABILITY,
      openWithFaults: async (faults) =>
        driverStore(copyingDriver(createCopyingStorage(), faults.hook), { name: 'copying' }),
      open: async () => open(createCopyingStorage()),
      reopen,
    }),
    it,
  );
});

describe('the store kit over a copying driver: quota conformance', () => {
  registerCases(
    serverStoreQuotaConformance({
      name: 'driver (copying)',
      capabilities: EVERY_CAPABILITY,
      open: async (quotas) => open(createCopyingStorage(), quotas),
      reopen,
      share: async (store) => {
        const { storage, quotas } = opened.get(store)!;
        return open(storage, quotas);
      },
    }),
    it,
  );
});
