// Groups, multi-device, presence and typing through the real engines (memory network, virtual
// clock), over the memory store and the SQLite store. Each test is named after the guarantee it
// proves.
import { afterEach, describe, expect, it } from 'vitest';
import { isPostboxError, type PostboxError } from '../src/protocol/index.js';
import type { ServerOptions, ServerStore } from '../src/server/index.js';
import { memoryServerStore } from '../src/server/stores/memory.js';
import { sqliteServerStore } from '../src/server/stores/sqlite.js';
import { tempDirs } from './fixtures/util.js';
import { makeWorld, settled, text, untext, type TestDevice, type World } from './helpers.js';

let world: World | undefined;
const dirs = tempDirs('groups');
afterEach(async () => {
  await world?.close();
  world = undefined;
  dirs.removeAll();
});

type StoreKind = 'memory' | 'sqlite';

function opener(kind: StoreKind): (() => ServerStore) | undefined {
  if (kind === 'memory') return undefined;
  const path = `${dirs.make()}/server.db`;
  return () => sqliteServerStore({ path });
}

async function worldOn(kind: StoreKind, server: Partial<ServerOptions> = {}): Promise<World> {
  const openStore = opener(kind);
  world = await makeWorld(openStore ? { server, openStore } : { server });
  return world;
}

/** Advances the virtual clock until the promise settles; returns its value or its error. */
function settle<T>(w: World, p: Promise<T>, maxMs = 5000): Promise<T | PostboxError> {
  return settled(w, p, maxMs).catch((e: unknown) => {
    if (isPostboxError(e)) return e;
    throw e;
  });
}

const codeOf = (v: unknown): string | undefined =>
  typeof v === 'object' && v !== null && 'code' in v ? String((v as { code: unknown }).code) : undefined;

const viewOf = (d: TestDevice, id: string) => {
  const v = d.client.group(id);
  return v && { ver: v.ver, name: v.name, members: v.members, member: v.member };
};

for (const kind of ['memory', 'sqlite'] as const) {
  describe(`groups (${kind} store)`, () => {
    it('every device of every member gets the group and all converge on one view', async () => {
      const w = await worldOn(kind);
      const alice = await w.device('alice', 'phone');
      const alice2 = await w.device('alice', 'laptop');
      const bob = await w.device('bob');
      const carol = await w.device('carol');
      const g = await settle(w, alice.client.createGroup('trip', ['bob', 'carol']));
      expect(typeof g).toBe('string');
      const id = g as string;
      await settle(
        w,
        alice.client.addMembers(id, ['dave']).catch((e) => e),
      );
      const dave = await w.device('dave');
      expect(codeOf(await settle(w, alice.client.addMembers(id, ['dave'])))).toBeUndefined();
      await settle(w, alice.client.promoteMembers(id, ['bob']));
      await settle(w, bob.client.renameGroup(id, 'road trip'));
      await settle(w, carol.client.leaveGroup(id));
      await w.advance(200);
      const expected = {
        ver: 5,
        name: 'road trip',
        members: [
          { user: 'alice', role: 'admin' },
          { user: 'bob', role: 'admin' },
          { user: 'dave', role: 'member' },
        ],
        member: true,
      };
      for (const d of [alice, alice2, bob, dave]) expect(viewOf(d, id)).toEqual(expected);
      // The leaver's devices learn they left, and the group stops at that version for them.
      expect(viewOf(carol, id)).toMatchObject({ ver: 5, member: false });
      expect(bob.groupChanges.map((c) => c.op)).toEqual(['create', 'add', 'promote', 'rename', 'leave']);
      // The late joiner got one snapshot, not the history.
      expect(dave.groupChanges.map((c) => [c.op, c.ver])).toEqual([
        ['add', 2],
        ['promote', 3],
        ['rename', 4],
        ['leave', 5],
      ]);
    });

    it("a group message reaches every device of every member once, and the sender's other devices", async () => {
      const w = await worldOn(kind);
      const alice = await w.device('alice', 'phone');
      const alice2 = await w.device('alice', 'laptop');
      const bob = await w.device('bob', 'phone');
      const bob2 = await w.device('bob', 'laptop');
      const carol = await w.device('carol');
      const outsider = await w.device('eve');
      const id = (await settle(w, alice.client.createGroup('g', ['bob', 'carol']))) as string;
      const sent = await Promise.all([1, 2, 3].map((i) => alice.client.sendToGroup(id, text(`m${i}`))));
      await w.advance(300);
      for (const d of [alice2, bob, bob2, carol]) {
        expect(d.messages.map((m) => [m.id, m.conv, m.group, untext(m.body)])).toEqual(
          sent.map((s, i) => [s, id, true, `m${i + 1}`]),
        );
      }
      expect(alice.messages).toEqual([]);
      expect(outsider.messages).toEqual([]);
      expect(alice2.messages.every((m) => m.self)).toBe(true);
    });

    it('only members may send: a non-member gets not_member and no one receives it', async () => {
      const w = await worldOn(kind);
      const alice = await w.device('alice');
      const bob = await w.device('bob');
      const eve = await w.device('eve');
      const id = (await settle(w, alice.client.createGroup('g', ['bob']))) as string;
      const m = await eve.client.sendToGroup(id, text('let me in'));
      const unknown = await eve.client.sendToGroup('#nosuchgroup', text('hello?'));
      await w.advance(300);
      expect(eve.statusOf(m)).toBe('failed');
      expect(eve.statusOf(unknown)).toBe('failed');
      expect([...alice.messages, ...bob.messages]).toEqual([]);
    });

    it('a removed member receives nothing sent after the removal, and learns it was removed', async () => {
      const w = await worldOn(kind);
      const alice = await w.device('alice');
      const bob = await w.device('bob');
      const carol = await w.device('carol');
      const id = (await settle(w, alice.client.createGroup('g', ['bob', 'carol']))) as string;
      const before = await alice.client.sendToGroup(id, text('before'));
      await w.advance(200);
      await carol.client.close(); // offline: the removal and later messages meet in its inbox
      await settle(w, alice.client.removeMembers(id, ['carol']));
      const after = await alice.client.sendToGroup(id, text('after'));
      await w.advance(200);
      carol.client.start();
      await w.advance(500);
      expect(bob.messages.map((m) => m.id)).toEqual([before, after]);
      expect(carol.messages.map((m) => m.id)).toEqual([before]);
      expect(viewOf(carol, id)?.member).toBe(false);
      expect(carol.groupChanges.map((c) => c.op)).toEqual(['create', 'remove']);
      // A removed member cannot send either.
      const late = await carol.client.sendToGroup(id, text('still here?'));
      await w.advance(200);
      expect(carol.statusOf(late)).toBe('failed');
    });

    it('admin actions by a non-admin are refused with forbidden and change nothing', async () => {
      const w = await worldOn(kind);
      const alice = await w.device('alice');
      const bob = await w.device('bob');
      await w.device('carol');
      const id = (await settle(w, alice.client.createGroup('g', ['bob']))) as string;
      const before = viewOf(alice, id);
      const attempts = [
        bob.client.addMembers(id, ['carol']),
        bob.client.removeMembers(id, ['alice']),
        bob.client.promoteMembers(id, ['bob']),
        bob.client.renameGroup(id, 'mine now'),
      ].map((p) => p.catch((e: unknown) => e));
      for (const p of attempts) expect(codeOf(await settle(w, p))).toBe('forbidden');
      // The last admin cannot demote itself either.
      expect(codeOf(await settle(w, alice.client.demoteMembers(id, ['alice'])))).toBe('forbidden');
      await w.advance(200);
      expect(viewOf(alice, id)).toEqual(before);
      expect(viewOf(bob, id)).toEqual(before);
    });

    it('an add past the member cap is refused with group_full and changes nothing', async () => {
      const w = await worldOn(kind, { maxGroupMembers: 3 });
      const alice = await w.device('alice');
      for (const u of ['bob', 'carol', 'dave', 'erin']) await w.device(u);
      expect(codeOf(await settle(w, alice.client.createGroup('big', ['bob', 'carol', 'dave'])))).toBe(
        'group_full',
      );
      const id = (await settle(w, alice.client.createGroup('g', ['bob']))) as string;
      expect(codeOf(await settle(w, alice.client.addMembers(id, ['carol', 'dave'])))).toBe('group_full');
      await w.advance(100);
      expect(viewOf(alice, id)?.members.map((m) => m.user)).toEqual(['alice', 'bob']);
      await settle(w, alice.client.addMembers(id, ['carol']));
      await w.advance(100);
      expect(viewOf(alice, id)?.members.map((m) => m.user)).toEqual(['alice', 'bob', 'carol']);
    });

    it('per-member delivered and read reach the sender and aggregate to delivered-to-all and read-by-all', async () => {
      const w = await worldOn(kind);
      const alice = await w.device('alice');
      const bob = await w.device('bob');
      const carol = await w.device('carol');
      const id = (await settle(w, alice.client.createGroup('g', ['bob', 'carol']))) as string;
      await w.advance(100);
      await carol.client.close();
      const m = await alice.client.sendToGroup(id, text('hi all'));
      await w.advance(300);
      expect(alice.statusOf(m)).toBe('sent'); // bob has it, carol not yet
      expect(alice.memberStatuses).toEqual([{ id: m, conv: id, user: 'bob', status: 'delivered' }]);
      carol.client.start();
      await w.advance(500);
      expect(alice.statusOf(m)).toBe('delivered');
      await bob.client.markRead(id);
      await w.advance(300);
      expect(alice.statusOf(m)).toBe('delivered'); // read by one of two
      await carol.client.markRead(id);
      await w.advance(300);
      expect(alice.statusOf(m)).toBe('read');
      const info = await alice.client.messageInfo(m);
      expect(info?.status).toBe('read');
      expect(info?.recipients).toEqual(['bob', 'carol']);
      expect(info?.members).toEqual([
        { user: 'bob', status: 'read' },
        { user: 'carol', status: 'read' },
      ]);
      expect(alice.statuses.filter((s) => s.id === m).map((s) => s.status)).toEqual([
        'pending',
        'sent',
        'delivered',
        'read',
      ]);
    });

    it('membership changes queued while offline survive a restart and commit once on reconnect', async () => {
      const w = await worldOn(kind);
      const alice = await w.device('alice');
      const bob = await w.device('bob');
      await w.device('carol');
      const id = (await settle(w, alice.client.createGroup('g', ['bob']))) as string;
      await alice.client.close();
      alice.client.start();
      const add = alice.client.addMembers(id, ['carol']).catch((e: unknown) => e);
      await alice.restart(); // the request's promise ends; the request itself is durable
      expect(codeOf(await add)).toBe('closed');
      await w.advance(500);
      expect(viewOf(bob, id)?.members.map((m) => m.user)).toEqual(['alice', 'bob', 'carol']);
      expect(bob.groupChanges.filter((c) => c.op === 'add')).toHaveLength(1);
    });

    it('a server restart keeps groups: members, versions and messages carry on', async () => {
      const w = await worldOn(kind);
      const alice = await w.device('alice');
      const bob = await w.device('bob');
      const id = (await settle(w, alice.client.createGroup('g', ['bob']))) as string;
      await w.restartServer();
      await w.advance(2000);
      const m = await alice.client.sendToGroup(id, text('after restart'));
      await settle(w, alice.client.renameGroup(id, 'renamed'));
      await w.advance(500);
      expect(bob.messages.map((x) => x.id)).toEqual([m]);
      expect(viewOf(bob, id)).toMatchObject({ ver: 2, name: 'renamed' });
    });
  });

  describe(`devices (${kind} store)`, () => {
    it('a new device of an existing user needs approval from an existing device, then gets its groups', async () => {
      const w = await worldOn(kind, { linking: 'approval' });
      const alice = await w.device('alice', 'phone');
      await w.device('bob');
      const id = (await settle(w, alice.client.createGroup('g', ['bob']))) as string;
      const laptop = await w.device('alice', 'laptop', { register: false });
      await w.advance(200);
      expect(laptop.client.state).toBe('linking');
      expect(laptop.linkCodes).toHaveLength(1);
      expect(await w.server.store.devices('alice')).toEqual(['phone']);
      // A wrong code and another user's approval link nothing.
      expect(codeOf(await settle(w, alice.client.approveDevice('WRONGCODE123')))).toBe('forbidden');
      const mallory = await w.device('mallory');
      expect(codeOf(await settle(w, mallory.client.approveDevice(laptop.linkCodes[0]!)))).toBe('forbidden');
      expect(await w.server.store.devices('alice')).toEqual(['phone']);
      expect(await settle(w, alice.client.approveDevice(laptop.linkCodes[0]!))).toBeUndefined();
      await w.advance(200);
      expect(laptop.client.state).toBe('open');
      expect(await w.server.store.devices('alice')).toEqual(['phone', 'laptop']);
      expect(viewOf(laptop, id)?.members.map((m) => m.user)).toEqual(['alice', 'bob']);
      // The laptop learns a group its user was already in: no one was added.
      expect(laptop.groupChanges.map((c) => [c.group, c.op, c.by, c.members])).toEqual([
        [id, 'sync', 'alice', []],
      ]);
      const m = await alice.client.sendToGroup(id, text('to my laptop too'));
      await w.advance(200);
      expect(laptop.messages.map((x) => x.id)).toEqual([m]);
    });

    it('an unlinked device loses its inbox and its session, and cannot come back without approval', async () => {
      const w = await worldOn(kind, { linking: 'approval' });
      const alice = await w.device('alice', 'phone');
      const laptop = await w.device('alice', 'laptop');
      const bob = await w.device('bob');
      await laptop.client.close();
      await bob.client.send('alice', text('waiting for the laptop'));
      await w.advance(200);
      expect(await w.server.store.readInbox({ user: 'alice', device: 'laptop' }, 0, 10)).toHaveLength(1);
      await settle(w, alice.client.unlinkDevice('laptop'));
      expect(await w.server.store.devices('alice')).toEqual(['phone']);
      expect(await w.server.store.readInbox({ user: 'alice', device: 'laptop' }, 0, 10)).toEqual([]);
      laptop.client.start();
      await w.advance(300);
      expect(laptop.client.state).toBe('linking');
      expect(laptop.messages).toEqual([]);
    });

    it('a live unlinked device is disconnected for good', async () => {
      const w = await worldOn(kind);
      const alice = await w.device('alice', 'phone');
      const laptop = await w.device('alice', 'laptop');
      await settle(w, alice.client.unlinkDevice('laptop'));
      await w.advance(300);
      expect(laptop.client.state).toBe('closed');
    });

    it('delivered means one recipient device has it; read on one device marks it read on the others', async () => {
      const w = await worldOn(kind);
      const alice = await w.device('alice');
      const bob = await w.device('bob', 'phone');
      const bob2 = await w.device('bob', 'laptop');
      await bob2.client.close();
      const m = await alice.client.send('bob', text('hi'));
      await w.advance(300);
      expect(alice.statusOf(m)).toBe('delivered');
      bob2.client.start();
      await w.advance(300);
      const readElsewhere: string[][] = [];
      bob2.client.on('readElsewhere', (ids) => readElsewhere.push(ids));
      await bob.client.markRead('alice');
      await w.advance(300);
      expect(alice.statusOf(m)).toBe('read');
      expect(readElsewhere).toEqual([[m]]);
      expect((await bob2.client.store.inbound('alice')).map((x) => x.read)).toEqual([true]);
    });
  });

  describe(`presence (${kind} store)`, () => {
    it('a watcher sees online, then offline with a durable last-seen after the debounce', async () => {
      const w = await worldOn(kind, { presenceDebounceMs: 1000 });
      const alice = await w.device('alice');
      const bob = await w.device('bob');
      await bob.client.send('alice', text('we share a chat')); // bob wrote to alice: she may watch him
      await w.advance(200);
      await settle(w, alice.client.watchPresence('bob'));
      expect(alice.presence).toEqual([{ user: 'bob', online: true }]);
      const leftAt = w.clock.now();
      await bob.client.close();
      await w.advance(500);
      expect(alice.presence).toHaveLength(1); // still within the debounce
      await w.advance(1000);
      expect(alice.presence[1]).toEqual({ user: 'bob', online: false, lastSeen: expect.any(Number) });
      expect(alice.presence[1]!.lastSeen! - leftAt).toBeLessThan(50);
      expect(await w.server.store.lastSeen('bob')).toBe(alice.presence[1]!.lastSeen);
      await w.restartServer();
      await w.advance(3000);
      // After a restart the subscription is renewed and the last-seen time came from the store.
      expect(alice.presence.at(-1)).toEqual({
        user: 'bob',
        online: false,
        lastSeen: alice.presence[1]!.lastSeen,
      });
    });

    it('a flapping connection does not storm subscribers', async () => {
      const w = await worldOn(kind, { presenceDebounceMs: 2000 });
      const alice = await w.device('alice');
      const bob = await w.device('bob');
      await bob.client.send('alice', text('hi'));
      await w.advance(200);
      await settle(w, alice.client.watchPresence('bob'));
      expect(alice.presence).toEqual([{ user: 'bob', online: true }]);
      for (let i = 0; i < 10; i++) {
        w.net.cutAll(); // both reconnect within the debounce
        await w.advance(1500);
      }
      expect(bob.client.state).toBe('open');
      expect(alice.presence.every((p) => p.online)).toBe(true);
      expect(alice.presence.length).toBeLessThanOrEqual(11); // one per (re)subscription, never an offline
    });

    it('presence the privacy rule hides is refused with forbidden; last-seen can be hidden alone', async () => {
      const w = await worldOn(kind, {
        presence: (viewer, target, store) =>
          viewer === 'spy' ? false : viewer === 'acquaintance' ? 'online' : store.related(viewer, target),
      });
      const alice = await w.device('alice');
      const stranger = await w.device('stranger');
      const spy = await w.device('spy');
      const acquaintance = await w.device('acquaintance');
      expect(codeOf(await settle(w, stranger.client.watchPresence('alice')))).toBe('forbidden');
      expect(codeOf(await settle(w, spy.client.watchPresence('alice')))).toBe('forbidden');
      expect(stranger.presence).toEqual([]);
      await settle(w, acquaintance.client.watchPresence('alice'));
      await alice.client.close();
      await w.advance(5000);
      expect(acquaintance.presence).toEqual([
        { user: 'alice', online: true },
        { user: 'alice', online: false },
      ]);
    });

    it('with presence "nobody" no one sees anyone', async () => {
      const w = await worldOn(kind, { presence: 'nobody' });
      const alice = await w.device('alice');
      await w.device('bob');
      await alice.client.send('bob', text('hi'));
      await w.advance(200);
      expect(codeOf(await settle(w, alice.client.watchPresence('bob')))).toBe('forbidden');
    });

    it('subscriptions end with unwatch; a reconnect renews the wanted ones', async () => {
      const w = await worldOn(kind, { presenceDebounceMs: 100 });
      const alice = await w.device('alice');
      const bob = await w.device('bob');
      const carol = await w.device('carol');
      await bob.client.send('alice', text('hi'));
      await carol.client.send('alice', text('hi'));
      await w.advance(200);
      await settle(w, alice.client.watchPresence('bob'));
      await settle(w, alice.client.watchPresence('carol'));
      alice.client.unwatchPresence('carol');
      w.net.cutAll();
      await w.advance(3000);
      const seen = alice.presence.length;
      await bob.client.close();
      await carol.client.close();
      await w.advance(1000);
      expect(alice.presence.slice(seen)).toEqual([
        { user: 'bob', online: false, lastSeen: expect.any(Number) },
      ]);
    });
  });

  describe(`typing (${kind} store)`, () => {
    it('typing reaches the online peer, is never stored, and expires without a stop', async () => {
      const w = await worldOn(kind);
      const alice = await w.device('alice');
      const bob = await w.device('bob');
      const carol = await w.device('carol');
      // Typing reaches only users who wrote to the typist.
      await bob.client.send('alice', text('hi'));
      await carol.client.send('alice', text('hi'));
      await w.advance(200);
      await carol.client.close();
      alice.client.setTyping('bob', true);
      alice.client.setTyping('carol', true); // offline: dropped, never queued
      await w.advance(100);
      expect(bob.typing).toEqual([{ conv: 'alice', user: 'alice', device: 'phone', on: true }]);
      expect(await w.server.store.readInbox({ user: 'bob', device: 'phone' }, 0, 10)).toEqual([]);
      await w.advance(7000);
      expect(bob.typing.at(-1)).toEqual({ conv: 'alice', user: 'alice', device: 'phone', on: false });
      carol.client.start();
      await w.advance(500);
      expect(carol.typing).toEqual([]);
      // A message ends the notice at once.
      alice.client.setTyping('bob', true);
      await w.advance(50);
      await alice.client.send('bob', text('done typing'));
      await w.advance(200);
      expect(bob.typing.slice(-2).map((t) => t.on)).toEqual([true, false]);
    });

    it('typing in a group reaches online members; a non-member’s notice is refused and dropped, with no error event', async () => {
      const w = await worldOn(kind);
      const alice = await w.device('alice');
      const bob = await w.device('bob');
      const carol = await w.device('carol');
      const eve = await w.device('eve');
      const id = (await settle(w, alice.client.createGroup('g', ['bob', 'carol']))) as string;
      await w.advance(100);
      alice.client.setTyping(id, true);
      const errors: string[] = [];
      eve.client.on('error', (e: unknown) => errors.push(codeOf(e) ?? 'other'));
      eve.client.setTyping(id, true);
      await w.advance(100);
      for (const d of [bob, carol])
        expect(d.typing).toEqual([{ conv: id, user: 'alice', device: 'phone', on: true }]);
      expect(alice.typing).toEqual([]);
      // The server refused it (not_member); like a notice sent offline it is dropped, not an error.
      expect(errors).toEqual([]);
      expect(eve.client.state).toBe('open');
    });

    it('a typing flood is rate limited: the excess is dropped with rate_limited, the connection stays', async () => {
      const w = await worldOn(kind, { maxTypingPer10s: 5 });
      await w.device('bob');
      const raw = await w.raw();
      await raw.hello('alice', 'phone');
      for (let i = 0; i < 50; i++) raw.send({ t: 'typ', to: 'bob', on: i % 2 === 0 });
      await w.advance(200);
      const errs = raw.frames.filter((f) => f.t === 'err');
      expect(errs.map((f) => (f as { c: string }).c)).toEqual(['rate_limited']);
      expect(raw.closed).toBeUndefined();
    });
  });
}

describe('fan-out scale', () => {
  it('a message to 1,024 members with 2 devices each is one store append of one item: 2,047 inbox entries', async () => {
    const store = memoryServerStore();
    let appends = 0;
    let items = 0;
    const counting: ServerStore = Object.create(store) as ServerStore;
    counting.append = (batch, now) => {
      appends++;
      items += batch.length;
      return store.append(batch, now);
    };
    const w = await makeWorld({ openStore: () => counting });
    world = w;
    const users = Array.from({ length: 1023 }, (_, i) => `u${i}`);
    for (const u of ['alice', ...users]) {
      await store.registerDevice({ user: u, device: 'phone' }, 0);
      await store.registerDevice({ user: u, device: 'laptop' }, 0);
    }
    const alice = await w.device('alice', 'phone');
    const id = (await settle(w, alice.client.createGroup('big', users))) as string;
    expect(alice.client.group(id)?.members).toHaveLength(1024);
    appends = items = 0;
    const m = await alice.client.sendToGroup(id, text('to everyone'));
    await w.advance(200);
    expect(alice.statusOf(m)).toBe('sent');
    expect([appends, items]).toEqual([1, 1]);
    let entries = 0;
    for (const u of ['alice', ...users]) {
      for (const device of ['phone', 'laptop']) {
        const inbox = await store.readInbox({ user: u, device }, 0, 100);
        entries += inbox.filter((e) => e.kind === 'msg' && e.id === m).length;
      }
    }
    expect(entries).toBe(2047);
  });
});
