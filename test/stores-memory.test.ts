import { EVERY_CAPABILITY } from './helpers.js';
import { describe, expect, it } from 'vitest';
import {
  createMemoryClientState,
  memoryClientStore,
  type ClientStoreOp,
} from '../src/client/stores/memory.js';
import type { ClientStore } from '../src/client/store.js';
import {
  createMemoryServerState,
  memoryServerStore,
  type ServerStoreOp,
} from '../src/server/stores/memory.js';
import type { DeviceAddress, KeyUpload, MessageInput, ServerStore } from '../src/server/store.js';
import { clientStoreConformance, registerCases, serverStoreConformance } from '../src/testing/index.js';

// A memory store's state is its "disk": a new store over the same state is a restart.
const serverStates = new WeakMap<ServerStore, ReturnType<typeof createMemoryServerState>>();
const clientStates = new WeakMap<ClientStore, ReturnType<typeof createMemoryClientState>>();

describe('memory server store conformance', () => {
  registerCases(
    serverStoreConformance({
      name: 'memory',
      capabilities: EVERY_CAPABILITY,
      openWithFaults: async (faults) => memoryServerStore({ beforeWrite: faults.hook }),
      async open() {
        const state = createMemoryServerState();
        const store = memoryServerStore({ state });
        serverStates.set(store, state);
        return store;
      },
      async reopen(old) {
        const state = serverStates.get(old)!;
        await old.close();
        const store = memoryServerStore({ state });
        serverStates.set(store, state);
        return store;
      },
    }),
    it,
  );
});

describe('memory client store conformance', () => {
  registerCases(
    clientStoreConformance({
      name: 'memory',
      async open() {
        const state = createMemoryClientState();
        const store = memoryClientStore({ state });
        clientStates.set(store, state);
        return store;
      },
      async reopen(old) {
        const state = clientStates.get(old)!;
        await old.close();
        const store = memoryClientStore({ state });
        clientStates.set(store, state);
        return store;
      },
    }),
    it,
  );
});

const alice1 = { user: 'alice', device: 'a1' };
const bob1 = { user: 'bob', device: 'b1' };
const bob2 = { user: 'bob', device: 'b2' };
const msg = (id: string, seq = 1): MessageInput => ({
  kind: 'msg',
  from: alice1,
  id,
  to: 'bob',
  seq,
  body: new TextEncoder().encode(id),
});
const key = (id: number) => ({ id, key: new Uint8Array([id]), signature: new Uint8Array([id, 0]) });
const keys = (rid: number): KeyUpload => ({
  registrationId: rid,
  identityKey: new Uint8Array([rid]),
  signedPreKey: key(1),
  lastResortKyber: key(2),
  preKeys: [key(3), key(4)],
  kyberPreKeys: [key(5)],
});
/** An end-to-end encrypted message from alice1 to bob, one envelope per device. */
const sealed = (id: string, devices: Array<DeviceAddress & { rid: number }>): MessageInput => ({
  ...msg(id),
  body: new Uint8Array(0),
  envelopes: devices.map((d) => ({ ...d, body: new TextEncoder().encode(`${id} for ${d.device}`) })),
});

describe('memory server store fault switch', () => {
  it('a failing append changes nothing and the next one works', async () => {
    const state = createMemoryServerState();
    let failing: ServerStoreOp | undefined;
    const store = memoryServerStore({ state, failWhen: (op) => op === failing });
    await store.registerDevice(alice1, 1);
    await store.registerDevice(bob1, 1);
    failing = 'append';
    await expect(store.append([msg('m1')], 1000)).rejects.toThrow(/append/);
    failing = undefined;
    expect(await store.readInbox(bob1, 0, 100)).toEqual([]);
    // No dedupe record was left behind: the retry is a first commit, at its own time.
    expect(await store.append([msg('m1')], 2000)).toEqual([
      { ok: true, ts: 2000, duplicate: false, notify: [bob1], offsets: [1] },
    ]);
    const entries = await store.readInbox(bob1, 0, 100);
    expect(entries.map((e) => e.offset)).toEqual([1]);
  });

  it('every operation can be failed without changing the state', async () => {
    const state = createMemoryServerState();
    const ops: ServerStoreOp[] = [
      'registerDevice',
      'unregisterDevice',
      'registerUser',
      'unregisterUser',
      'devices',
      'append',
      'readInbox',
      'ack',
      'expire',
      'group',
      'groupsOf',
      'related',
      'setLastSeen',
      'lastSeen',
      'putKeys',
      'claimKeys',
      'keyCount',
      'setPushToken',
      'pushToken',
      'ping',
      'countActions',
    ];
    let failing: ServerStoreOp | undefined;
    const store = memoryServerStore({ state, failWhen: (op) => op === failing });
    await store.registerDevice(alice1, 1);
    await store.registerDevice(bob1, 1);
    await store.append([msg('m1')], 1000);
    await store.append(
      [
        {
          kind: 'group',
          from: alice1,
          id: 'g1',
          group: 'g',
          change: { op: 'create', name: 'G', members: ['bob'] },
          maxMembers: 10,
        },
      ],
      1000,
    );
    await store.setLastSeen('bob', 1000);
    await store.putKeys(bob1, keys(7));
    const snapshot = JSON.stringify(dump(state));
    for (const op of ops) {
      failing = op;
      const calls: Record<ServerStoreOp, () => Promise<unknown>> = {
        registerDevice: () => store.registerDevice(bob2, 2),
        devices: () => store.devices('bob'),
        append: () => store.append([msg('m2', 2)], 2000),
        readInbox: () => store.readInbox(bob1, 0, 10),
        ack: () => store.ack(bob1, [1], 2000),
        expire: () => store.expire(5000, 6000),
        unregisterDevice: () => store.unregisterDevice(bob1),
        registerUser: () => store.registerUser('carol', 2),
        unregisterUser: () => store.unregisterUser('bob'),
        group: () => store.group('g'),
        groupsOf: () => store.groupsOf('bob'),
        related: () => store.related('alice', 'bob'),
        setLastSeen: () => store.setLastSeen('bob', 5000),
        lastSeen: () => store.lastSeen('bob'),
        putKeys: () => store.putKeys(bob1, keys(8)),
        claimKeys: () => store.claimKeys('bob'),
        keyCount: () => store.keyCount(bob1),
        setPushToken: () => store.setPushToken(bob1, { kind: 'fcm', token: 't2' }),
        pushToken: () => store.pushToken(bob1),
        inboxSize: () => store.inboxSize!(),
        ping: () => store.ping!(),
        countActions: () => store.countActions!('group-create', ['bob'], 1000, 2000),
      };
      await expect(calls[op]()).rejects.toThrow(op);
      expect(JSON.stringify(dump(state))).toBe(snapshot);
    }
    failing = undefined;
    expect((await store.ack(bob1, [1], 3000)).notify).toEqual([alice1]);
  });

  it('a body is stored once and dropped when no inbox entry references it', async () => {
    const state = createMemoryServerState();
    const store = memoryServerStore({ state });
    for (const d of [alice1, { user: 'alice', device: 'a2' }, bob1, bob2]) await store.registerDevice(d, 1);
    await store.append([msg('m1')], 1000);
    expect(messageCount(state)).toBe(1); // three entries, one body
    await store.ack(bob1, [1], 2000);
    await store.ack(bob2, [1], 2000);
    expect(messageCount(state)).toBe(1); // alice2 still references it
    await store.ack({ user: 'alice', device: 'a2' }, [1], 2000);
    expect(messageCount(state)).toBe(0);
    await store.append([msg('m2', 2)], 3000);
    expect(await store.expire(4000, 5000)).toMatchObject({ count: 5 }); // 3 msg entries + 2 delivered statuses
    expect(messageCount(state)).toBe(0);
  });

  it('an end-to-end encrypted message is one record without a shared body, its envelopes going with their entries', async () => {
    const state = createMemoryServerState();
    const store = memoryServerStore({ state });
    for (const [i, d] of [alice1, bob1, bob2].entries()) {
      await store.registerDevice(d, 1);
      await store.putKeys(d, keys(i + 1)); // registration ids 1, 2, 3
    }
    const [out] = await store.append(
      [
        sealed('m1', [
          { ...bob1, rid: 2 },
          { ...bob2, rid: 3 },
        ]),
      ],
      1000,
    );
    expect(out).toMatchObject({ ok: true, notify: [bob1, bob2] });
    expect(messageCount(state)).toBe(1);
    expect(messageBodies(state)).toEqual([0]);
    expect(entryBodies(state)).toEqual(['m1 for b1', 'm1 for b2']);
    expect(await store.unregisterDevice(bob1)).toBe(true);
    expect(entryBodies(state)).toEqual(['m1 for b2']);
    expect(messageCount(state)).toBe(1);
    await store.ack(bob2, [1], 2000);
    expect(entryBodies(state)).toEqual([]);
    expect(messageCount(state)).toBe(0);
  });
});

describe('memory client store fault switch', () => {
  it('a failing enqueue changes nothing and does not burn a sequence number', async () => {
    let failing: ClientStoreOp | undefined;
    const store = memoryClientStore({ failWhen: (op) => op === failing });
    const draft = (id: string) => ({
      id,
      kind: 'msg' as const,
      to: 'bob',
      conv: 'bob',
      body: new Uint8Array([1]),
      createdAt: 1,
    });
    failing = 'enqueue';
    await expect(store.enqueue(draft('m1'), true)).rejects.toThrow(/enqueue/);
    failing = undefined;
    expect(await store.pending()).toEqual([]);
    expect((await store.enqueue(draft('m1'), true)).seq).toBe(1);
  });

  it('a failing applyInbound changes nothing and the retry applies the change', async () => {
    let failing: ClientStoreOp | undefined;
    const store = memoryClientStore({ failWhen: (op) => op === failing });
    const m = {
      id: 'm1',
      conv: 'alice',
      from: 'alice',
      fromDevice: 'a1',
      to: 'bob',
      seq: 1,
      ts: 1,
      body: new Uint8Array([1]),
      held: false,
      read: false,
    };
    failing = 'applyInbound';
    await expect(store.applyInbound({ insert: m, streams: [{ key: 'k', next: 2 }] })).rejects.toThrow();
    failing = undefined;
    expect(await store.inbound('alice')).toEqual([]);
    expect(await store.streamNext('k')).toBeUndefined();
    expect(await store.applyInbound({ insert: m, streams: [{ key: 'k', next: 2 }] })).toEqual({
      inserted: true,
    });
    expect(await store.streamNext('k')).toBe(2);
  });

  it('an id enqueued twice is rejected and does not take a second number', async () => {
    const store = memoryClientStore();
    const d = {
      id: 'm1',
      kind: 'msg' as const,
      to: 'bob',
      conv: 'bob',
      body: new Uint8Array(0),
      createdAt: 1,
    };
    await store.enqueue(d, true);
    await expect(store.enqueue(d, true)).rejects.toThrow(/already/);
    expect((await store.enqueue({ ...d, id: 'm2' }, true)).seq).toBe(2);
  });
});

/** White-box views of the opaque state (this test file only). */
function dump(state: object): unknown {
  return JSON.parse(
    JSON.stringify(state, (_k, v: unknown) =>
      v instanceof Map ? [...v] : v instanceof Uint8Array ? [...v] : v instanceof Set ? [...v] : v,
    ),
  );
}
function messageCount(state: object): number {
  return (state as unknown as { messages: Map<string, unknown> }).messages.size;
}
function messageBodies(state: object): number[] {
  const messages = (state as unknown as { messages: Map<string, { body: Uint8Array }> }).messages;
  return [...messages.values()].map((m) => m.body.byteLength);
}
/** Every per-entry body in every inbox, as text. */
function entryBodies(state: object): string[] {
  const inboxes = (
    state as unknown as { inboxes: Map<string, { entries: Map<number, { body?: Uint8Array }> }> }
  ).inboxes;
  return [...inboxes.values()].flatMap((i) =>
    [...i.entries.values()].flatMap((e) => (e.body ? [new TextDecoder().decode(e.body)] : [])),
  );
}
