// What the server engine does while its store fails (issue 15), on a virtual clock over the
// memory store's fault switch: the sessions a failure touches are told to try again later
// (1013) instead of being acked, the engine reports the store failing until a commit or a probe
// succeeds, clients back off and resend, and nothing a store failure causes rejects unhandled.
import { afterEach, describe, expect, it } from 'vitest';
import type { StoreHealth } from '../src/server/index.js';
import {
  createMemoryServerState,
  memoryServerStore,
  type ServerStoreOp,
} from '../src/server/stores/memory.js';
import { CLOSE_CODES } from '../src/protocol/index.js';
import { makeWorld, settled, text, untext, type World } from './helpers.js';

let world: World | undefined;
afterEach(async () => {
  await world?.close();
  world = undefined;
});

/** A world whose store fails the operations in `failing` (all of them with `'*'`). */
async function worldWithFaults(failing: Set<ServerStoreOp | '*'>, probeMs = 1000) {
  const state = createMemoryServerState();
  const store = memoryServerStore({ state, failWhen: (op) => failing.has('*') || failing.has(op) });
  return makeWorld({ openStore: () => store, server: { storeProbeMs: probeMs } });
}

describe('the engine while its store fails', () => {
  it('a failed commit is not acked: the sender is told to try again later (1013), backs off, and resends once the store answers, delivered once', async () => {
    const failing = new Set<ServerStoreOp | '*'>();
    world = await worldWithFaults(failing);
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    const drops: string[] = [];
    alice.client.on('connection', (state, error) => {
      if (state === 'backoff' && error) drops.push(error.code);
    });
    failing.add('*');
    const id = await alice.client.send('bob', text('while the store fails'));
    await world.advance(500);
    expect(alice.statusOf(id)).toBe('pending');
    expect(drops[0]).toBe('unavailable');
    // It keeps retrying, and is never given up on.
    await world.advance(3000);
    expect(alice.client.state).not.toBe('closed');
    failing.clear();
    await world.advance(3000);
    expect(bob.messages.map((m) => untext(m.body))).toEqual(['while the store fails']);
    expect(alice.statusOf(id)).toBe('delivered');
  });

  it('the store counts as failing from a failed call until a probe answers, with an event at each change', async () => {
    const failing = new Set<ServerStoreOp | '*'>();
    world = await worldWithFaults(failing);
    const changes: StoreHealth[] = [];
    world.server.on('storeHealth', (h) => changes.push(h));
    const alice = await world.device('alice');
    await world.device('bob');
    expect(world.server.storeHealth().ok).toBe(true);
    failing.add('append');
    failing.add('ping');
    alice.client.send('bob', text('x'));
    await world.advance(100);
    const since = world.clock.now();
    expect(world.server.storeHealth().ok).toBe(false);
    // No client traffic from here: only the probe can find the store back.
    await alice.client.close();
    // Probes keep failing while the store does; the health stays failing, counting.
    await world.advance(2500);
    expect(world.server.storeHealth().ok).toBe(false);
    expect(world.server.storeHealth().failures).toBeGreaterThan(1);
    // The store answers again: the next probe says so, with no send needed.
    failing.delete('ping');
    await world.advance(1100);
    const h = world.server.storeHealth();
    expect(h.ok).toBe(true);
    expect(h.since).toBeGreaterThanOrEqual(since);
    expect(changes.map((c) => c.ok)).toEqual([false, true]);
  });

  it('a raw client whose send hits a failing store gets no ack and a 1013 close', async () => {
    const failing = new Set<ServerStoreOp | '*'>();
    world = await worldWithFaults(failing);
    await world.server.registerDevice('bob', 'phone');
    const raw = await world.raw();
    await raw.hello('alice', 'phone');
    failing.add('append');
    raw.send({ t: 'send', r: 1, id: '01HZZZZZZZZZZZZZZZZZZZZZZZ', to: 'bob', seq: 1, b: text('hi') });
    await world.advance(50);
    expect(raw.frames.some((f) => f.t === 'ok')).toBe(false);
    expect(raw.closed?.code).toBe(CLOSE_CODES.tryAgainLater);
  });

  it('a group typing notice while the store cannot read the group is dropped, and nothing rejects unhandled', async () => {
    const failing = new Set<ServerStoreOp | '*'>();
    world = await worldWithFaults(failing);
    const alice = await world.device('alice');
    await world.device('bob');
    const group = await settled(world, alice.client.createGroup('G', ['bob']));
    failing.add('group');
    const unhandled: unknown[] = [];
    const onUnhandled = (e: unknown) => unhandled.push(e);
    process.on('unhandledRejection', onUnhandled);
    try {
      const raw = await world.raw();
      await raw.hello('alice', 'laptop');
      raw.send({ t: 'typ', to: group, g: true, on: true });
      await world.advance(100);
      await new Promise((r) => setImmediate(r));
      expect(raw.closed).toBeUndefined();
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
    expect(unhandled).toEqual([]);
  });
});
