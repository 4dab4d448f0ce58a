// Push wake-ups: a device with no connection is woken (content-free) when something lands in its
// inbox, at most once per interval; a connected device never is; tokens survive in the store.
import { createServer as createHttpServer } from 'node:http';
import { once } from 'node:events';
import { afterEach, describe, expect, it } from 'vitest';
import type { DeviceAddress } from '../src/server/store.js';
import type { PushProvider, PushToken } from '../src/server/push/types.js';
import { webhookPush } from '../src/server/push/webhook.js';
import { memoryServerStore } from '../src/server/stores/memory.js';
import { sqliteServerStore } from '../src/server/stores/sqlite.js';
import { tempDirs } from './fixtures/util.js';
import { makeWorld, settled, text, type World } from './helpers.js';

let world: World | undefined;
const dirs = tempDirs('push');
afterEach(async () => {
  await world?.close();
  world = undefined;
  dirs.removeAll();
});

function recorder(): PushProvider & {
  calls: Array<{ device: DeviceAddress; token: PushToken; ts: number }>;
} {
  const calls: Array<{ device: DeviceAddress; token: PushToken; ts: number }> = [];
  return {
    name: 'recorder',
    calls,
    async wake(device, token, reason) {
      calls.push({ device, token, ts: reason.ts });
    },
  };
}

describe('push wake-ups', () => {
  it('an offline device with a token is woken once per interval however many messages land; a connected one never', async () => {
    const push = recorder();
    world = await makeWorld({ server: { push, pushIntervalMs: 10_000 } });
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    await world.advance(200);
    await settled(world, bob.client.setPushToken({ kind: 'fcm', token: 'bob-token' }));
    // Connected: messages arrive over the connection, no wake-up.
    for (let i = 0; i < 3; i++) await alice.client.send('bob', text(`online ${i}`));
    await world.advance(500);
    expect(bob.messages).toHaveLength(3);
    expect(push.calls).toEqual([]);
    // Offline: one wake-up for a burst, another only after the interval.
    await bob.client.close();
    await world.advance(3000);
    for (let i = 0; i < 5; i++) await alice.client.send('bob', text(`offline ${i}`));
    await world.advance(500);
    expect(push.calls).toHaveLength(1);
    expect(push.calls[0]).toMatchObject({
      device: { user: 'bob', device: 'phone' },
      token: { kind: 'fcm', token: 'bob-token' },
    });
    await alice.client.send('bob', text('still within the interval'));
    await world.advance(500);
    expect(push.calls).toHaveLength(1);
    await world.advance(10_000);
    await alice.client.send('bob', text('after the interval'));
    await world.advance(500);
    expect(push.calls).toHaveLength(2);
    // The payload carries nothing of the message.
    expect(JSON.stringify(push.calls)).not.toContain('offline');
  });

  it('a device without a token, or one that removed it, is not woken', async () => {
    const push = recorder();
    world = await makeWorld({ server: { push, pushIntervalMs: 1000 } });
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    const carol = await world.device('carol');
    await world.advance(200);
    await settled(world, carol.client.setPushToken({ kind: 'apns', token: 'c' }));
    await settled(world, carol.client.setPushToken(undefined));
    await bob.client.close();
    await carol.client.close();
    await world.advance(3000);
    await alice.client.send('bob', text('hi'));
    await alice.client.send('carol', text('hi'));
    await world.advance(500);
    expect(push.calls).toEqual([]);
  });

  it.each([
    ['memory', () => memoryServerStore()],
    ['SQLite', () => sqliteServerStore({ path: `${dirs.make()}/server.sqlite` })],
  ])(
    'the %s store keeps tokens per registered device, replaced, removed, and gone with the device',
    async (_n, open) => {
      const store = open();
      const bob: DeviceAddress = { user: 'bob', device: 'phone' };
      expect(await store.pushToken(bob)).toBeUndefined();
      await store.setPushToken(bob, { kind: 'fcm', token: 'x' });
      expect(await store.pushToken(bob)).toBeUndefined(); // not registered: nothing stored
      await store.registerDevice(bob, 1);
      await store.setPushToken(bob, { kind: 'fcm', token: 'x' });
      await store.setPushToken(bob, { kind: 'apns', token: 'y' });
      expect(await store.pushToken(bob)).toEqual({ kind: 'apns', token: 'y' });
      expect(await store.pushToken({ user: 'bob', device: 'tablet' })).toBeUndefined();
      await store.setPushToken(bob, undefined);
      expect(await store.pushToken(bob)).toBeUndefined();
      await store.setPushToken(bob, { kind: 'fcm', token: 'z' });
      await store.unregisterDevice(bob);
      await store.registerDevice(bob, 2);
      expect(await store.pushToken(bob)).toBeUndefined();
      await store.close();
    },
  );

  it('the webhook provider posts a content-free JSON body, and a failing endpoint rejects', async () => {
    const bodies: unknown[] = [];
    let status = 204;
    const http = createHttpServer((req, res) => {
      let data = '';
      req.on('data', (c: Buffer) => (data += c.toString()));
      req.on('end', () => {
        bodies.push(JSON.parse(data));
        res.statusCode = status;
        res.end();
      });
    });
    http.listen(0, '127.0.0.1');
    await once(http, 'listening');
    const { port } = http.address() as { port: number };
    const push = webhookPush({
      url: `http://127.0.0.1:${port}/wake`,
      headers: { authorization: 'Bearer s' },
    });
    await push.wake({ user: 'bob', device: 'phone' }, { kind: 'fcm', token: 't' }, { ts: 42 });
    expect(bodies).toEqual([{ user: 'bob', device: 'phone', kind: 'fcm', token: 't', ts: 42 }]);
    status = 500;
    await expect(
      push.wake({ user: 'bob', device: 'phone' }, { kind: 'fcm', token: 't' }, { ts: 43 }),
    ).rejects.toThrow('500');
    http.close();
  });
});
