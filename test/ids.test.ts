// The one id rule (src/protocol/ids.ts) at the places an id enters other than frames and the
// authenticate hook (test/protocol.test.ts and test/bad-input.test.ts have those): the server's
// APIs and the client's. A bad id gets `invalid_frame` before anything is stored or queued.
import { afterEach, describe, expect, it } from 'vitest';
import { createClient, isGroupId } from '../src/client/index.js';
import { memoryClientStore } from '../src/client/stores/memory.js';
import { isDeviceId } from '../src/protocol/index.js';
import { PENDING_DEVICE, type GroupChange } from '../src/server/index.js';
import { addressKey, deviceKeyOf } from '../src/server/address.js';
import { seededRandom } from '../src/util/clock.js';
import { badGroupIds, badIds } from './fixtures/ids.js';
import { makeWorld, text, type World } from './helpers.js';

let world: World | undefined;
afterEach(async () => {
  await world?.close();
  world = undefined;
});

const invalid = expect.objectContaining({ code: 'invalid_frame' });
const badUsers = badIds(41, 128);
const badDevices = badIds(42, 64);
const badGroups = badGroupIds(43);

describe('the id rule holds at every API that takes an id', () => {
  it('server APIs refuse an invalid user, device or group id with invalid_frame and change nothing (seeded)', async () => {
    world = await makeWorld();
    const w = world;
    await w.device('alice');
    const alice = { user: 'alice', device: 'phone' };
    const before = {
      alice: await w.server.store.devices('alice'),
      groups: await w.server.store.groupsOf('alice'),
    };
    const add = (members: string[]): GroupChange => ({ op: 'create', name: 'g', members });
    for (const { id, why } of badUsers) {
      await expect(w.server.registerDevice(id, 'phone'), why).rejects.toThrow(invalid);
      await expect(w.server.unlinkDevice(id, 'phone'), why).rejects.toThrow(invalid);
      await expect(w.server.disconnect(id), why).rejects.toThrow(invalid);
      await expect(w.server.registerUser(id), why).rejects.toThrow(invalid);
      await expect(w.server.unregisterUser(id), why).rejects.toThrow(invalid);
      await expect(
        w.server.changeGroup({ user: id, device: 'phone' }, '#g', add([]), 'c1'),
        why,
      ).rejects.toThrow(invalid);
      await expect(w.server.changeGroup(alice, '#g', add([id]), 'c2'), why).rejects.toThrow(invalid);
    }
    // The pending inbox's reserved name is no device id, so no device can pose as it.
    expect(isDeviceId(PENDING_DEVICE)).toBe(false);
    await expect(w.server.registerDevice('alice', PENDING_DEVICE)).rejects.toThrow(invalid);
    for (const { id, why } of badDevices) {
      await expect(w.server.registerDevice('alice', id), why).rejects.toThrow(invalid);
      await expect(w.server.unlinkDevice('alice', id), why).rejects.toThrow(invalid);
      await expect(w.server.disconnect('alice', id), why).rejects.toThrow(invalid);
    }
    for (const { id, why } of badGroups) {
      await expect(w.server.changeGroup(alice, id, add([]), 'c3'), why).rejects.toThrow(invalid);
    }
    expect({
      alice: await w.server.store.devices('alice'),
      groups: await w.server.store.groupsOf('alice'),
    }).toEqual(before);
  });

  it('client APIs refuse an invalid user, device or group id with invalid_frame before queueing anything (seeded)', async () => {
    world = await makeWorld();
    const alice = await world.device('alice');
    await world.device('bob');
    const c = alice.client;
    for (const { id, why } of badUsers) {
      await expect(c.send(id, text('x')), why).rejects.toThrow(invalid);
      // A conversation may be a group: `#g` is a fine one to type in.
      if (!isGroupId(id)) expect(() => c.setTyping(id, true), why).toThrow(invalid);
      await expect(c.watchPresence(id), why).rejects.toThrow(invalid);
      await expect(c.createGroup('g', [id]), why).rejects.toThrow(invalid);
      await expect(c.addMembers('#g', [id]), why).rejects.toThrow(invalid);
    }
    for (const { id, why } of badDevices) {
      await expect(c.unlinkDevice(id), why).rejects.toThrow(invalid);
      expect(
        () =>
          createClient({
            transport: world!.net.client('x'),
            store: memoryClientStore(),
            credentials: 'x',
            device: id,
            autoStart: false,
          }),
        why,
      ).toThrow(invalid);
    }
    for (const { id, why } of badGroups) {
      await expect(c.sendToGroup(id, text('x')), why).rejects.toThrow(invalid);
      await expect(c.createGroup('g', ['bob'], id), why).rejects.toThrow(invalid);
      await expect(c.leaveGroup(id), why).rejects.toThrow(invalid);
      if (id.startsWith('#')) expect(() => c.setTyping(id, true), why).toThrow(invalid);
    }
    await world.advance(200);
    expect(alice.statuses).toEqual([]);
    expect(c.groups()).toEqual([]);
  });
});

describe('the in-process device key (address.ts)', () => {
  it('no two different addresses share a key, whatever characters their ids hold (seeded)', () => {
    // Sessions, budgets and the stores' indexes are keyed by it: a collision would let one
    // device's frames land on another's session or budget.
    const r = seededRandom(7);
    const alphabet = ['a', 'b', ':', '1', '2', '\u0000', '"', ',', '[', ']'];
    const word = () =>
      Array.from({ length: Math.floor(r() * 5) }, () => alphabet[Math.floor(r() * alphabet.length)]).join('');
    const seen = new Map<string, string>();
    for (let i = 0; i < 20_000; i++) {
      const d = { user: word(), device: word() };
      const k = addressKey(d);
      const was = seen.get(k);
      const me = JSON.stringify([d.user, d.device]);
      if (was !== undefined) expect(was, `key ${JSON.stringify(k)}`).toBe(me);
      else seen.set(k, me);
      expect(deviceKeyOf(d.user, d.device)).toBe(k);
    }
    expect(seen.size).toBeGreaterThan(1000);
  });
});
