// Runs the client-store conformance suite on the IndexedDB store in the page (real Chromium),
// each case on its own database; the test reads the results from `window.conformance`.
import { clientStoreConformance } from '../../src/testing/client-store-conformance.js';
import { openIndexedDbClientStore } from '../../src/client/stores/indexeddb.js';
import type { ClientStore } from '../../src/client/store.js';

let count = 0;
const names = new WeakMap<ClientStore, string>();
async function open(name: string): Promise<ClientStore> {
  const store = await openIndexedDbClientStore({ name });
  names.set(store, name);
  return store;
}

async function runAll(): Promise<Array<{ name: string; error?: string }>> {
  const cases = clientStoreConformance({
    name: 'indexeddb (chromium)',
    open: () => open(`conformance-${++count}`),
    async reopen(old) {
      await old.close();
      return open(names.get(old)!);
    },
  });
  const results: Array<{ name: string; error?: string }> = [];
  for (const c of cases) {
    try {
      await c.run();
      results.push({ name: c.name });
    } catch (e) {
      results.push({ name: c.name, error: e instanceof Error ? e.message : String(e) });
    }
  }
  return results;
}

(window as unknown as { conformance: typeof runAll }).conformance = runAll;
