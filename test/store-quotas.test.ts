// The storage-quota conformance (src/testing/server-store-quotas.ts) on every built-in store.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, it } from 'vitest';
import type { StoreQuotas } from '../src/server/quotas.js';
import type { ServerStore } from '../src/server/store.js';
import {
  createMemoryServerState,
  memoryServerStore,
  type MemoryServerState,
} from '../src/server/stores/memory.js';
import { openPostgresServerStore } from '../src/server/stores/postgres.js';
import { sqliteServerStore } from '../src/server/stores/sqlite.js';
import { registerCases, serverStoreQuotaConformance } from '../src/testing/index.js';
import { describeWithServices, PG_URL, pgUnreachable, scratchSchemas } from './fixtures/services.js';

/** Where each store's data is, and the quotas it was opened with: a reopen uses both again. */
const opened = new WeakMap<ServerStore, { quotas: Partial<StoreQuotas>; data: unknown }>();
function remember<S extends ServerStore>(store: S, quotas: Partial<StoreQuotas>, data: unknown): S {
  opened.set(store, { quotas, data });
  return store;
}

describe('memory store quotas', () => {
  const make = (quotas: Partial<StoreQuotas>, state: MemoryServerState) =>
    remember(memoryServerStore({ state, quotas }), quotas, state);
  registerCases(
    serverStoreQuotaConformance({
      name: 'memory',
      capabilities: { pushTokens: true, inboxSize: true, ping: true, atomicBatch: true },
      open: async (quotas) => make(quotas, createMemoryServerState()),
      async reopen(old) {
        const { quotas, data } = opened.get(old)!;
        await old.close();
        return make(quotas, data as MemoryServerState);
      },
      share: async (store) => {
        const { quotas, data } = opened.get(store)!;
        return make(quotas, data as MemoryServerState);
      },
    }),
    it,
  );
});

describe('sqlite store quotas', () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'postbox-quotas-'));
  afterAll(() => fs.rmSync(root, { recursive: true, force: true }));
  let n = 0;
  const make = (quotas: Partial<StoreQuotas>, file: string) =>
    remember(sqliteServerStore({ path: file, quotas }), quotas, file);
  registerCases(
    serverStoreQuotaConformance({
      name: 'sqlite',
      capabilities: { pushTokens: true, inboxSize: true, ping: true, atomicBatch: true },
      open: async (quotas) => make(quotas, path.join(root, `q-${++n}.sqlite`)),
      async reopen(old) {
        const { quotas, data } = opened.get(old)!;
        await old.close();
        return make(quotas, data as string);
      },
      share: async (store) => {
        const { quotas, data } = opened.get(store)!;
        return make(quotas, data as string);
      },
    }),
    it,
  );
});

const reason = await pgUnreachable();
describeWithServices('postgres store quotas', reason, () => {
  const fresh = scratchSchemas('pbq');
  const make = async (quotas: Partial<StoreQuotas>, schema: string) =>
    remember(
      await openPostgresServerStore({ connectionString: PG_URL, schema, poolSize: 4, quotas }),
      quotas,
      schema,
    );
  registerCases(
    serverStoreQuotaConformance({
      name: 'postgres',
      capabilities: { pushTokens: true, inboxSize: true, ping: true, atomicBatch: true },
      open: (quotas) => make(quotas, fresh()),
      async reopen(old) {
        const { quotas, data } = opened.get(old)!;
        await old.close();
        return make(quotas, data as string);
      },
      share: (store) => {
        const { quotas, data } = opened.get(store)!;
        return make(quotas, data as string);
      },
    }),
    it,
  );
});
