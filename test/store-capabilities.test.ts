// The engine reads what a store can do from its declared `capabilities`, never from which methods
// the store object happens to have: an undeclared method is never called, and a store written
// before `capabilities` existed reads as declaring none.
import { afterEach, describe, expect, it } from 'vitest';
import type { PushProvider, PushToken } from '../src/server/push/types.js';
import type { DeviceAddress, ServerStore, StoreCapabilities } from '../src/server/store.js';
import { memoryServerStore, type ServerStoreOp } from '../src/server/stores/memory.js';
import { makeWorld, settled, text, type World } from './helpers.js';

let world: World | undefined;
afterEach(async () => {
  await world?.close();
  world = undefined;
});

const NONE: StoreCapabilities = { pushTokens: false, inboxSize: false, ping: false, atomicBatch: false };

/**
 * The memory store, with its optional methods still on the object but declared as `declared`
 * (`undefined`: no `capabilities` at all); calls to undeclared optional methods are counted.
 */
function storeDeclaring(declared: StoreCapabilities | undefined, failing: Set<ServerStoreOp> = new Set()) {
  const inner = memoryServerStore({ failWhen: (op) => failing.has(op) });
  const undeclared: string[] = [];
  const store: ServerStore = {
    ...inner,
    capabilities: declared as StoreCapabilities,
    async setPushToken(d: DeviceAddress, t: PushToken | undefined) {
      if (!declared?.pushTokens) undeclared.push('setPushToken');
      return inner.setPushToken(d, t);
    },
    async pushToken(d: DeviceAddress) {
      if (!declared?.pushTokens) undeclared.push('pushToken');
      return inner.pushToken(d);
    },
    async ping() {
      if (!declared?.ping) undeclared.push('ping');
      return inner.ping!();
    },
  };
  if (declared === undefined) delete (store as { capabilities?: unknown }).capabilities;
  return { store, undeclared };
}

function recorder(): PushProvider & { calls: DeviceAddress[] } {
  const calls: DeviceAddress[] = [];
  return { name: 'recorder', calls, wake: async (device) => void calls.push(device) };
}

describe('store capabilities', () => {
  it.each([
    ['declares no push tokens', NONE],
    ['has no capabilities object (an older store)', undefined],
  ])(
    'a store that %s never has its token methods called: the engine keeps tokens in memory and still wakes',
    async (_what, declared) => {
      const { store, undeclared } = storeDeclaring(declared);
      const push = recorder();
      world = await makeWorld({ openStore: () => store, server: { push, pushIntervalMs: 1000 } });
      const alice = await world.device('alice');
      const bob = await world.device('bob');
      await world.advance(200);
      await settled(world, bob.client.setPushToken({ kind: 'fcm', token: 'bob-token' }));
      await bob.client.close();
      await world.advance(3000);
      await alice.client.send('bob', text('wake up'));
      await world.advance(500);
      expect(push.calls).toEqual([{ user: 'bob', device: 'phone' }]);
      expect(undeclared).toEqual([]);
    },
  );

  it('a store that declares push tokens keeps them: the engine reads the token back from the store', async () => {
    const { store } = storeDeclaring({ ...NONE, pushTokens: true });
    const push = recorder();
    world = await makeWorld({ openStore: () => store, server: { push, pushIntervalMs: 1000 } });
    await world.device('alice');
    const bob = await world.device('bob');
    await world.advance(200);
    await settled(world, bob.client.setPushToken({ kind: 'fcm', token: 'bob-token' }));
    expect(await store.pushToken!({ user: 'bob', device: 'phone' })).toEqual({
      kind: 'fcm',
      token: 'bob-token',
    });
  });

  it.each([
    ['without the ping capability, by reading devices (a failing ping method is never asked)', NONE, true],
    [
      'with the ping capability, by ping (still failing: the store stays failing)',
      { ...NONE, ping: true },
      false,
    ],
  ])('the health probe checks a failing store %s', async (_what, declared, healthy) => {
    const failing = new Set<ServerStoreOp>(['append', 'ping']);
    const { store, undeclared } = storeDeclaring(declared, failing);
    world = await makeWorld({ openStore: () => store, server: { storeProbeMs: 1000 } });
    const alice = await world.device('alice');
    await world.device('bob');
    alice.client.send('bob', text('x')).catch(() => {});
    await world.advance(100);
    expect(world.server.storeHealth().ok).toBe(false);
    failing.delete('append');
    await alice.client.close();
    await world.advance(1100);
    expect(world.server.storeHealth().ok).toBe(healthy);
    expect(undeclared).toEqual([]);
  });
});
