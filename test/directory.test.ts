// The user directory through the real engines (memory network, virtual clock), over the memory
// store and the SQLite store: a user the app registered before any of its devices connected can
// be written to and added to groups, and its first device gets what waited, once, in order.
import { afterEach, describe, expect, it } from 'vitest';
import { insecurePlaintextCrypto } from '../src/crypto/plaintext.js';
import { libsignalCrypto } from '../src/crypto/libsignal.js';
import { PENDING_DEVICE, type ServerOptions, type ServerStore } from '../src/server/index.js';
import { sqliteServerStore } from '../src/server/stores/sqlite.js';
import { tempDirs } from './fixtures/util.js';
import { makeWorld, settled, text, until, untext, type TestDevice, type World } from './helpers.js';

let world: World | undefined;
const dirs = tempDirs('directory');
afterEach(async () => {
  await world?.close();
  world = undefined;
  dirs.removeAll();
});

type StoreKind = 'memory' | 'sqlite';

async function worldOn(kind: StoreKind, server: Partial<ServerOptions> = {}): Promise<World> {
  const path = kind === 'sqlite' ? `${dirs.make()}/server.db` : undefined;
  const openStore = path ? (): ServerStore => sqliteServerStore({ path }) : undefined;
  world = await makeWorld(openStore ? { server, openStore } : { server });
  return world;
}

const texts = (d: TestDevice) => d.messages.map((m) => untext(m.body));
const pendingOf = (user: string) => ({ user, device: PENDING_DEVICE });

/** A device that connects for the first time (registered by its hello, as in production). */
const connect = (w: World, user: string, device = 'phone') => w.device(user, device, { register: false });

for (const kind of ['memory', 'sqlite'] as const) {
  describe(`user directory (${kind} store)`, () => {
    it('a message to a user who never connected arrives on their first device once, and the sender sees delivered then read', async () => {
      const w = await worldOn(kind, { linking: 'approval' });
      const alice = await w.device('alice');
      expect(await w.server.registerUser('bob')).toBe(true);
      expect(await w.server.registerUser('bob')).toBe(false);
      const ids = await Promise.all(['hi', 'are you there?'].map((t) => alice.client.send('bob', text(t))));
      await w.advance(200);
      expect(ids.map((id) => alice.statusOf(id))).toEqual(['sent', 'sent']);
      // Bob installs the app: his first device needs no approval and gets what waited, in order.
      const bob = await connect(w, 'bob');
      await w.advance(500);
      expect(bob.client.state).toBe('open');
      expect(texts(bob)).toEqual(['hi', 'are you there?']);
      expect(ids.map((id) => alice.statusOf(id))).toEqual(['delivered', 'delivered']);
      await settled(w, bob.client.markRead('alice'));
      await w.advance(200);
      expect(ids.map((id) => alice.statusOf(id))).toEqual(['read', 'read']);
      expect(alice.statuses.filter((s) => s.id === ids[0]).map((s) => s.status)).toEqual([
        'pending',
        'sent',
        'delivered',
        'read',
      ]);
      // Once: a reconnect and a server restart deliver nothing again.
      await bob.restart();
      await w.restartServer();
      await w.advance(2000);
      expect(texts(bob)).toEqual(['hi', 'are you there?']);
      expect(await w.server.store.readInbox(pendingOf('bob'), 0, 100)).toEqual([]);
    });

    it('a user who never connected can be added to a group; the first device gets the group and its later messages', async () => {
      const w = await worldOn(kind);
      const alice = await w.device('alice');
      const carol = await w.device('carol');
      await w.server.registerUser('bob');
      await w.server.registerUser('dave');
      const g = await settled(w, alice.client.createGroup('trip', ['bob', 'carol']));
      await settled(w, alice.client.addMembers(g, ['dave']));
      await alice.client.sendToGroup(g, text('before bob'));
      await w.advance(500);
      const bob = await connect(w, 'bob');
      await w.advance(500);
      expect(bob.client.group(g)).toMatchObject({
        ver: 2,
        name: 'trip',
        member: true,
        members: [
          { user: 'alice', role: 'admin' },
          { user: 'bob', role: 'member' },
          { user: 'carol', role: 'member' },
          { user: 'dave', role: 'member' },
        ],
      });
      await alice.client.sendToGroup(g, text('after bob'));
      await carol.client.sendToGroup(g, text('hi bob'));
      await w.advance(500);
      // Per-sender order (no order across senders is promised).
      const from = (user: string) => bob.messages.filter((m) => m.from === user).map((m) => untext(m.body));
      expect(from('alice')).toEqual(['before bob', 'after bob']);
      expect(from('carol')).toEqual(['hi bob']);
      expect(bob.messages.every((m) => m.conv === g)).toBe(true);
      // Dave is still pending: his share waits for him.
      const waiting = await w.server.store.readInbox(pendingOf('dave'), 0, 100);
      expect(waiting.filter((e) => e.kind === 'msg')).toHaveLength(3);
    });

    it('a second device gets only what was sent after it exists, so nothing twice', async () => {
      const w = await worldOn(kind);
      const alice = await w.device('alice');
      await w.server.registerUser('bob');
      await alice.client.send('bob', text('early'));
      await w.advance(200);
      const phone = await connect(w, 'bob', 'phone');
      await w.advance(500);
      const laptop = await connect(w, 'bob', 'laptop');
      await w.advance(500);
      expect(texts(phone)).toEqual(['early']);
      expect(texts(laptop)).toEqual([]);
      await alice.client.send('bob', text('later'));
      // The laptop joins alice's stream at her second message: it holds it for `gapTimeoutMs`
      // before giving up on the first (a gap), as any device linked mid-conversation does.
      await w.advance(11_000);
      expect(texts(phone)).toEqual(['early', 'later']);
      expect(texts(laptop)).toEqual(['later']);
      expect(phone.gaps).toEqual([]);
    });

    it('a pending message expires with the normal retention and the sender sees expired', async () => {
      const w = await worldOn(kind, { retentionMs: 60_000, expiryIntervalMs: 10_000 });
      const alice = await w.device('alice');
      await w.server.registerUser('bob');
      const id = await alice.client.send('bob', text('too late'));
      await w.advance(200);
      expect(alice.statusOf(id)).toBe('sent');
      await w.advance(80_000);
      expect(alice.statusOf(id)).toBe('expired');
      const bob = await connect(w, 'bob');
      await w.advance(500);
      expect(texts(bob)).toEqual([]);
    });

    it('an unregistered user is still refused with unknown_recipient, also after unregisterUser', async () => {
      const w = await worldOn(kind);
      const alice = await w.device('alice');
      const nobody = await alice.client.send('nobody', text('x'));
      await w.advance(200);
      expect(alice.statusOf(nobody)).toBe('failed');
      await expect(settled(w, alice.client.createGroup('g', ['nobody']))).rejects.toMatchObject({
        code: 'unknown_recipient',
      });
      await w.server.registerUser('bob');
      const waiting = await alice.client.send('bob', text('waiting'));
      await w.advance(200);
      expect(alice.statusOf(waiting)).toBe('sent');
      expect(await w.server.unregisterUser('bob')).toBe(true);
      expect(await w.server.unregisterUser('bob')).toBe(false);
      const gone = await alice.client.send('bob', text('gone'));
      await w.advance(200);
      expect(alice.statusOf(gone)).toBe('failed');
    });

    it('unregisterUser unlinks every device of the user: sessions close with 4005 and their inboxes go', async () => {
      const w = await worldOn(kind);
      const alice = await w.device('alice');
      const bob = await w.device('bob', 'phone');
      const unlinked: string[] = [];
      w.server.on('unlinked', (d) => unlinked.push(`${d.user}/${d.device}`));
      expect(await w.server.unregisterUser('bob')).toBe(true);
      await w.advance(200);
      expect(bob.client.state).toBe('closed');
      expect(unlinked).toEqual(['bob/phone']);
      expect(await w.server.store.devices('bob')).toEqual([]);
      const id = await alice.client.send('bob', text('x'));
      await w.advance(200);
      expect(alice.statusOf(id)).toBe('failed');
    });

    it('a registered user who never connected shows offline with no last seen', async () => {
      const w = await worldOn(kind, { presence: 'everyone' });
      const alice = await w.device('alice');
      await w.server.registerUser('bob');
      await settled(w, alice.client.watchPresence('bob'));
      await w.advance(200);
      expect(alice.presence).toEqual([{ user: 'bob', online: false }]);
      expect(await w.server.store.lastSeen('bob')).toBeUndefined();
    });
  });
}

describe('user directory with end-to-end encryption', () => {
  // The plaintext adapter keeps the test fast; the libsignal run proves the sender-key path.
  for (const [name, adapter] of [
    ['plaintext (tests only)', insecurePlaintextCrypto],
    ['libsignal', libsignalCrypto],
  ] as const) {
    it(`${name}: a 1:1 message to a user with no device fails with unknown_recipient, and nothing waits`, async () => {
      world = await makeWorld({ crypto: () => adapter() });
      const w = world;
      const alice = await w.device('alice');
      await w.server.registerUser('bob');
      await w.advance(500);
      const id = await alice.client.send('bob', text('secret'));
      await until(w, () => alice.statusOf(id) === 'failed');
      expect(await w.server.store.readInbox(pendingOf('bob'), 0, 100)).toEqual([]);
    });

    it(`${name}: a group message sent before a member's first device existed reaches it through a resend`, async () => {
      world = await makeWorld({ crypto: () => adapter() });
      const w = world;
      const alice = await w.device('alice');
      await w.server.registerUser('bob');
      await w.advance(500);
      const g = await settled(w, alice.client.createGroup('club', ['bob']));
      await alice.client.sendToGroup(g, text('before bob'));
      await w.advance(500);
      const bob = await connect(w, 'bob');
      // Bob's first device has no sender key for the waiting message: it asks Alice again, and
      // her device answers over a fresh pairwise session.
      await until(w, () => texts(bob).includes('before bob'));
      await alice.client.sendToGroup(g, text('after bob'));
      await until(w, () => texts(bob).includes('after bob'));
      expect(texts(bob)).toEqual(['before bob', 'after bob']);
      expect(bob.undecryptable).toEqual([]);
    });
  }
});
