// One device across many tabs, in Node: the tabs of a device are TabClients on one
// BroadcastChannel name (Node has BroadcastChannel), with a stand-in Web Locks manager or the
// lease fallback, around a stand-in client that records what reached it. The real thing, in
// Chromium against a real server, is test/browser/tabs.test.ts.
import { EventEmitter } from 'eventemitter3';
import { randomUUID } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import type { PostboxClient } from '../src/client/engine.js';
import { tabClient, type LockManagerLike, type TabClient } from '../src/client/tabs/index.js';

/** A Web Locks manager for one "browser": exclusive locks granted in request order. */
function fakeLocks(): LockManagerLike {
  const queues = new Map<string, Array<() => void>>();
  const held = new Set<string>();
  const grant = (name: string) => {
    if (held.has(name)) return;
    const next = queues.get(name)?.shift();
    if (next) next();
  };
  return {
    request(name, { signal }, fn) {
      return new Promise((resolve, reject) => {
        const start = () => {
          held.add(name);
          fn().finally(() => {
            held.delete(name);
            grant(name);
            resolve(undefined);
          });
        };
        const q = queues.get(name) ?? [];
        queues.set(name, q);
        q.push(start);
        signal?.addEventListener('abort', () => {
          const i = q.indexOf(start);
          if (i >= 0) {
            q.splice(i, 1);
            reject(new Error('AbortError'));
          }
        });
        grant(name);
      });
    },
  };
}

/** What reached "the" client (one per device; a new leader opens it again over the same data). */
interface Device {
  /** Message ids stored, in order: the outbox. */
  stored: string[];
  /** How many clients are open now (must never be more than one). */
  open: number;
  /** Most clients ever open at once. */
  maxOpen: number;
  clients: Array<EventEmitter & { state: string }>;
}

function fakeOpen(device: Device) {
  return async (): Promise<PostboxClient> => {
    device.open++;
    device.maxOpen = Math.max(device.maxOpen, device.open);
    let closed = false;
    const client = Object.assign(new EventEmitter(), {
      state: 'open',
      async send(_to: string, _body: Uint8Array, options: { id: string }) {
        if (!device.stored.includes(options.id)) device.stored.push(options.id);
        return options.id;
      },
      async history() {
        return device.stored.map((id) => ({ id }));
      },
      async watchPresence() {},
      async close() {
        if (!closed) device.open--;
        closed = true;
        client.state = 'closed';
      },
      store: { async close() {} },
    });
    device.clients.push(client);
    return client as unknown as PostboxClient;
  };
}

const tabs: TabClient[] = [];
afterEach(async () => {
  for (const t of tabs.splice(0)) await t.close();
});

/** Resolves when `cond` holds, polling (no time limit of its own: the test's timeout bounds it). */
async function until(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 5));
}

for (const mode of ['web locks', 'broadcastchannel lease'] as const) {
  describe(`tabs of one device (${mode})`, () => {
    const locks = mode === 'web locks' ? fakeLocks() : null;
    const open = (name: string, device: Device) => {
      const tab = tabClient({
        name,
        open: fakeOpen(device),
        locks,
        heartbeatMs: 100,
        leaseMs: 300,
        retryMs: 30,
      });
      tabs.push(tab);
      return tab;
    };
    const leaders = (list: TabClient[]) => list.filter((t) => t.role === 'leader');

    it('one tab leads and opens the one client; sends from every tab are stored once, under the sender tab’s id', async () => {
      const name = randomUUID();
      const device: Device = { stored: [], open: 0, maxOpen: 0, clients: [] };
      const list = [open(name, device), open(name, device), open(name, device)];
      await until(() => leaders(list).length === 1 && device.open === 1);
      const ids = await Promise.all(list.map((t, i) => t.send('bob', new Uint8Array([i]))));
      expect(new Set(ids).size).toBe(3);
      expect(device.stored.sort()).toEqual([...ids].sort());
      // Web Locks never open two clients; the lease may for a moment (two claims crossing), and
      // settles on one (the later leader steps down).
      if (mode === 'web locks') expect(device.maxOpen).toBe(1);
      await until(() => leaders(list).length === 1 && device.open === 1);
    });

    it('every tab gets each message event once, the leader’s own included', async () => {
      const name = randomUUID();
      const device: Device = { stored: [], open: 0, maxOpen: 0, clients: [] };
      const list = [open(name, device), open(name, device)];
      await until(() => leaders(list).length === 1 && device.open === 1);
      const got = list.map(() => [] as string[]);
      list.forEach((t, i) => t.on('message', (m) => got[i]!.push(m.id)));
      // Let the follower learn who leads before the events flow.
      await list.find((t) => t.role === 'follower')!.history('bob');
      // The client open now: with the lease, two claims that crossed may have opened a second
      // one for a moment, and the tab that stepped down closed its own (maybe the first).
      const client = device.clients.find((c) => c.state === 'open')!;
      for (const id of ['m1', 'm2', 'm3'])
        client.emit('message', { id, conv: 'bob', body: new Uint8Array() });
      client.emit('message', { id: 'm2', conv: 'bob', body: new Uint8Array() }); // a replay
      await until(() => got.every((g) => g.length >= 3));
      await new Promise((r) => setTimeout(r, 50));
      expect(got[list.indexOf(leaders(list)[0]!)]).toEqual(['m1', 'm2', 'm3', 'm2']); // the engine's own dedupe is upstream
      expect(got[list.findIndex((t) => t.role === 'follower')]).toEqual(['m1', 'm2', 'm3']);
    });

    it('when the leader tab closes another takes over, and a send in flight is stored once', async () => {
      const name = randomUUID();
      const device: Device = { stored: [], open: 0, maxOpen: 0, clients: [] };
      const list = [open(name, device), open(name, device)];
      await until(() => leaders(list).length === 1 && device.open === 1);
      const leader = leaders(list)[0]!;
      const follower = list.find((t) => t !== leader)!;
      await follower.history('bob');
      const resyncs: number[] = [];
      follower.on('resync', () => resyncs.push(1));
      // The leader goes while the follower's send is on its way: the hand-off is retried with
      // the same id to the new leader (itself), and stored once whoever got it first.
      const sending = follower.send('bob', new Uint8Array([7]));
      await leader.close();
      const id = await sending;
      await until(() => follower.role === 'leader' && device.open === 1);
      expect(device.stored.filter((s) => s === id)).toHaveLength(1);
      expect(resyncs).toEqual([1]);
      if (mode === 'web locks') expect(device.maxOpen).toBe(1);
      expect(await follower.send('bob', new Uint8Array([8]))).toMatch(/^[0-9A-Z]{26}$/);
    });
  });
}
