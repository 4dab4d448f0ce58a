// The inbox depth that /metrics reports (`postbox_inbox_entries`): the stores that count exactly
// count every entry waiting, whoever it waits for, and forget it when its device acks it.
import { afterEach, describe, expect, it } from 'vitest';
import type { DeviceAddress, MessageInput, ServerStore } from '../src/server/store.js';
import { memoryServerStore } from '../src/server/stores/memory.js';
import { sqliteServerStore } from '../src/server/stores/sqlite.js';
import { tempDirs } from './fixtures/util.js';

const dirs = tempDirs('inbox-size');
afterEach(() => dirs.removeAll());

const stores: Array<[string, () => ServerStore]> = [
  ['memory', () => memoryServerStore()],
  ['sqlite', () => sqliteServerStore({ path: `${dirs.make()}/db.sqlite` })],
];

describe.each(stores)('inboxSize on the %s store', (_name, open) => {
  it('counts every entry waiting in any inbox, and drops the acked ones', async () => {
    const store = open();
    try {
      const alice: DeviceAddress = { user: 'alice', device: 'a1' };
      const bob = [
        { user: 'bob', device: 'b1' },
        { user: 'bob', device: 'b2' },
      ];
      for (const d of [alice, ...bob]) await store.registerDevice(d, 1);
      expect(await store.inboxSize!()).toBe(0);
      const msg = (i: number): MessageInput => ({
        kind: 'msg',
        from: alice,
        id: `m${i}`,
        to: 'bob',
        seq: i,
        body: Uint8Array.of(i),
      });
      await store.append([msg(1), msg(2), msg(3)], 2);
      expect(await store.inboxSize!()).toBe(6); // 3 messages × bob's 2 devices
      const [first, second] = await store.readInbox(bob[0]!, 0, 10);
      await store.ack(bob[0]!, [first!.offset, second!.offset], 3);
      // Two entries gone from b1; alice now has a `delivered` status waiting.
      expect(await store.inboxSize!()).toBe(5);
    } finally {
      await store.close();
    }
  });
});
