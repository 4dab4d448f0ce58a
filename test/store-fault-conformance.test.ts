// The conformance suite's fault hook has teeth: its atomicity cases fail a store that writes a
// batch item by item while declaring it one transaction, and one that acks entry by entry, and
// they fail every write of a call in turn. The real stores run the cases in stores-*.test.ts.
import { describe, expect, it } from 'vitest';
import type { ServerStore, StoreCapabilities } from '../src/server/store.js';
import { memoryServerStore } from '../src/server/stores/memory.js';
import { registerCases, serverStoreConformance, type WriteFaults } from '../src/testing/index.js';

const CAPS: StoreCapabilities = { pushTokens: true, inboxSize: true, ping: true, atomicBatch: true };

/** The fault cases of the suite for a subject opening `open`, by name. */
function faultCases(open: (faults: WriteFaults) => ServerStore, capabilities: StoreCapabilities = CAPS) {
  const cases = serverStoreConformance({
    name: 'under test',
    open: async () => memoryServerStore(),
    reopen: async (s) => s,
    capabilities,
    openWithFaults: async (faults) => open(faults),
  });
  const find = (part: string) => cases.find((c) => c.name.includes(part))!;
  return {
    prefix: find('commits a prefix of its batch'),
    whole: find('(atomicBatch) commits none of it'),
    ack: find('a failed ack deletes nothing'),
  };
}

/** The memory store, but append commits item by item, the fault hook asked between items. */
function itemByItem(faults: WriteFaults): ServerStore {
  const inner = memoryServerStore({ beforeWrite: faults.hook });
  return {
    ...inner,
    async append(batch, now) {
      const out = [];
      for (const item of batch) out.push(...(await inner.append([item], now)));
      return out;
    },
  };
}

/** The memory store, but ack deletes entry by entry, each its own call. */
function entryByEntry(faults: WriteFaults): ServerStore {
  const inner = memoryServerStore({ beforeWrite: faults.hook });
  return {
    ...inner,
    async ack(device, offsets, now) {
      const res = { count: 0, notify: [] as Array<{ user: string; device: string }> };
      for (const o of offsets) {
        const r = await inner.ack(device, [o], now);
        res.count += r.count;
        res.notify.push(...r.notify);
      }
      return res;
    },
  };
}

describe('the fault cases of the server store suite', () => {
  it('fail every write of the call in turn, until the call makes fewer writes than the fault number', async () => {
    const fired: number[] = [];
    const { prefix } = faultCases((faults) => {
      const store = memoryServerStore({
        beforeWrite: (w) => {
          const before = faults.fired;
          try {
            faults.hook(w);
          } finally {
            if (!before && faults.fired) fired.push(1);
          }
        },
      });
      return store;
    });
    await prefix.run();
    // 4 items: 3 messages (dedupe, message, 2-3 entries each) and a receipt: well over 10 writes.
    expect(fired.length).toBeGreaterThan(10);
  });

  it('pass a store that commits a batch item by item when it does not declare atomicBatch', async () => {
    const { prefix, whole } = faultCases(itemByItem, { ...CAPS, atomicBatch: false });
    await prefix.run();
    expect(whole.skip).toContain('does not declare atomicBatch');
  });

  it('fail a store that commits a batch item by item while declaring atomicBatch', async () => {
    await expect(faultCases(itemByItem).whole.run()).rejects.toThrow(/commits none of its items/);
  });

  it('fail a store whose ack deletes entry by entry', async () => {
    await expect(faultCases(entryByEntry).ack.run()).rejects.toMatchObject({ name: 'AssertionError' });
  });

  it('skip, saying why, every case that needs what the subject does not declare', () => {
    const names: string[] = [];
    const run = Object.assign(() => expect.unreachable(), { skip: (name: string) => void names.push(name) });
    const cases = serverStoreConformance({
      name: 'bare',
      open: async () => memoryServerStore(),
      reopen: async (s) => s,
    }).filter((c) => c.needs);
    registerCases(cases, run);
    expect(names.length).toBe(cases.length);
    expect(
      names.every((n) =>
        /\[skipped: subject bare does not declare (faults|capabilities|actionCounts|slicedAppend)/.test(n),
      ),
    ).toBe(true);
  });
});
