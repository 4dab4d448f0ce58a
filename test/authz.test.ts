// Who may act on whom: every frame that names another user's id is checked against what that
// user did (received the message, consented to the relation), and every limit is held per
// authenticated device or user, so reconnecting resets none of them. Each test is named after
// the guarantee it proves and would have caught the attack it is about.
import { afterEach, describe, expect, it } from 'vitest';
import { libsignalCrypto } from '../src/crypto/libsignal.js';
import { isPostboxError, type ServerFrame } from '../src/protocol/index.js';
import type { DeviceAddress, InboxEntry } from '../src/server/index.js';
import {
  clientOfFakeServer,
  makeWorld,
  settled,
  text,
  until,
  type RawConnection,
  type World,
} from './helpers.js';

let world: World | undefined;
afterEach(async () => {
  await world?.close();
  world = undefined;
});

const codeOf = async (p: Promise<unknown>): Promise<string> => {
  try {
    await settled(world!, p);
    return 'ok';
  } catch (e) {
    return isPostboxError(e) ? e.code : String(e);
  }
};

/** Read statuses waiting in a device's inbox, as `by: ids`. */
async function readStatuses(w: World, d: DeviceAddress): Promise<string[]> {
  const entries: InboxEntry[] = await w.server.store.readInbox(d, 0, 1000);
  return entries.flatMap((e) =>
    e.kind === 'status' && e.status === 'read' ? [`${e.by}: ${e.ids.join(',')}`] : [],
  );
}

/** A raw connection that said hello as `user`/`device`. */
async function rawAs(w: World, user: string, device: string): Promise<RawConnection> {
  const raw = await w.raw(`${user}/${device}`);
  await raw.hello(user, device);
  return raw;
}

const errors = (raw: RawConnection) =>
  raw.frames.flatMap((f) => (f.t === 'err' ? [(f as { c: string }).c] : []));

describe('read statuses come only from a recipient of the message', () => {
  it('a read status from a user who is not a recipient is refused by the server: the sender never gets it', async () => {
    const w = (world = await makeWorld());
    const alice = await w.device('alice');
    const bob = await w.device('bob');
    // A device of alice that stays offline keeps every status sent to her user in its inbox.
    const shelf = { user: 'alice', device: 'shelf' };
    await w.server.registerDevice(shelf.user, shelf.device);
    const id = await alice.client.send('bob', text('for bob only'));
    await w.advance(200);
    const mallory = await rawAs(w, 'mallory', 'm1');
    mallory.send({ t: 'rcpt', r: 1, id: 'forged', to: 'alice', ids: [id, 'made-up'] });
    await w.advance(200);
    expect(await readStatuses(w, shelf)).toEqual([]);
    expect(alice.statusOf(id)).toBe('delivered');
    // The forged frame is answered as any receipt (nothing tells mallory the id exists) …
    expect(mallory.frames.filter((f) => f.t === 'ok' || f.t === 'err')).toEqual([{ t: 'ok', r: 1 }]);
    // … and the recipient's own read still counts, ids it may not name left out.
    await bob.client.markRead('alice');
    await w.advance(200);
    expect(await readStatuses(w, shelf)).toEqual([`bob: ${id}`]);
    expect(alice.statusOf(id)).toBe('read');
  });

  it('a group read status counts only from a user who was a member when the message committed', async () => {
    const w = (world = await makeWorld());
    const alice = await w.device('alice');
    const bob = await w.device('bob');
    await w.device('carol');
    const shelf = { user: 'alice', device: 'shelf' };
    await w.server.registerDevice(shelf.user, shelf.device);
    const g = await settled(w, alice.client.createGroup('team', ['bob']));
    await w.advance(100);
    const id = await alice.client.sendToGroup(g, text('before carol'));
    await w.advance(200);
    await settled(w, alice.client.addMembers(g, ['carol']));
    await w.advance(100);
    const carol = await rawAs(w, 'carol', 'raw');
    carol.send({ t: 'rcpt', r: 1, id: 'late', to: 'alice', ids: [id] });
    const mallory = await rawAs(w, 'mallory', 'm1');
    mallory.send({ t: 'rcpt', r: 1, id: 'never', to: 'alice', ids: [id] });
    await w.advance(200);
    expect(await readStatuses(w, shelf)).toEqual([]);
    await bob.client.markRead(g);
    await w.advance(200);
    expect(await readStatuses(w, shelf)).toEqual([`bob: ${id}`]);
    expect(alice.statusOf(id)).toBe('read');
  });

  it('a client ignores a status about its message from anyone but a recipient, even if a server forwards it', async () => {
    const { clock, server, client } = await clientOfFakeServer('alice');
    const seen: string[] = [];
    client.on('status', (s) => seen.push(`${s.status}${s.by ? ` by ${s.by}` : ''}`));
    client.start();
    await clock.advance(100);
    const id = await client.send('bob', text('hi bob'));
    await clock.advance(100);
    // A read and a delivered "by mallory" about alice's message to bob: mallory never got it.
    server.push({ t: 'st', o: 1, s: 'r', ids: [id], by: 'mallory', ts: 1 });
    server.push({ t: 'st', o: 2, s: 'd', ids: [id], by: 'mallory', ts: 1 });
    await clock.advance(100);
    expect(seen).toEqual(['pending', 'sent']);
    // Still acked, so the server does not deliver it again.
    const acked = server.received.flatMap((f) => (f.t === 'ack' ? f.o : []));
    expect(acked).toEqual(expect.arrayContaining([1, 2]));
    server.push({ t: 'st', o: 3, s: 'r', ids: [id], by: 'bob', ts: 2 } satisfies ServerFrame);
    await clock.advance(100);
    expect(seen).toEqual(['pending', 'sent', 'read by bob']);
    // In a group: only a member the message may have reached counts.
    const members: string[] = [];
    client.on('memberStatus', (m) => members.push(`${m.status} by ${m.user}`));
    server.push({
      t: 'gev',
      o: 4,
      g: '#team',
      v: 1,
      op: 'create',
      by: 'alice',
      m: ['bob'],
      ts: 3,
      n: 'team',
      s: [
        ['alice', 1],
        ['bob', 0],
      ],
    });
    await clock.advance(100);
    const gid = await client.sendToGroup('#team', text('hi team'));
    await clock.advance(100);
    server.push({ t: 'st', o: 5, s: 'r', ids: [gid], by: 'mallory', ts: 4 });
    server.push({ t: 'st', o: 6, s: 'r', ids: [gid], by: 'bob', ts: 4 });
    await clock.advance(100);
    expect(members).toEqual(['read by bob']);
    await client.close();
  });
});

describe('one-time prekeys cannot be drained, and a session can always be made', () => {
  it("an attacker's kget cannot take a device's one-time keys past its budget, and still gets a usable bundle", async () => {
    const w = (world = await makeWorld({ crypto: () => libsignalCrypto(), server: { keyLowWater: 0 } }));
    const bob = await w.device('bob', 'phone', { client: { preKeySupply: 20 } });
    const bobPhone = { user: 'bob', device: 'phone' };
    await until(w, async () => (await w.server.store.keyCount(bobPhone)) !== undefined);
    expect(await w.server.store.keyCount(bobPhone)).toEqual({ preKeys: 20, kyberPreKeys: 20 });
    await bob.client.close(); // offline: nothing tops the supply up while the attack runs
    // Six connections, each claiming bob's bundle 64 times in one frame, several frames each.
    let bundles = 0;
    for (let c = 0; c < 6; c++) {
      const raw = await rawAs(w, 'mallory', 'm1');
      for (let r = 1; r <= 4; r++) raw.send({ t: 'kget', r, u: Array.from({ length: 64 }, () => 'bob') });
      await w.advance(100);
      bundles += raw.frames.flatMap((f) => (f.t === 'kb' ? f.b : [])).length;
    }
    expect(bundles).toBeGreaterThan(0);
    const left = await w.server.store.keyCount(bobPhone);
    const budget = w.server.opts.maxOneTimeKeyClaimsPerDay;
    expect(left).toEqual({ preKeys: 20 - budget, kyberPreKeys: 20 - budget });
    // Mallory's own client still makes a session with bob (from the last-resort bundle) …
    const mallory = await w.device('mallory', 'phone');
    await mallory.client.send('bob', text('hello from mallory'));
    bob.client.start();
    await until(w, () => bob.messages.length === 1);
    expect(bob.messages.map((m) => m.from)).toEqual(['mallory']);
    expect(await w.server.store.keyCount(bobPhone)).toEqual(left);
    // … and anyone else still gets a one-time key.
    const carol = await w.device('carol', 'phone');
    await carol.client.send('bob', text('hello from carol'));
    await until(w, () => bob.messages.length === 2);
    expect(bob.messages.map((m) => m.from)).toEqual(['mallory', 'carol']);
    expect((await w.server.store.keyCount(bobPhone))?.preKeys).toBe(left!.preKeys - 1);
  });
});

describe('typing and presence reach only users who consented', () => {
  it("a stranger's typing never reaches a user; once she messaged him, his typing does", async () => {
    const w = (world = await makeWorld());
    const alice = await w.device('alice');
    const mallory = await w.device('mallory');
    mallory.client.setTyping('alice', true);
    await w.advance(100);
    // Even a message from him is no consent: it is his, not hers.
    await mallory.client.send('alice', text('hi, remember me?'));
    await w.advance(4000);
    mallory.client.setTyping('alice', true);
    await w.advance(100);
    expect(alice.typing).toEqual([]);
    await alice.client.send('mallory', text('who is this?'));
    await w.advance(4000);
    mallory.client.setTyping('alice', true);
    await w.advance(100);
    expect(alice.typing).toEqual([{ conv: 'mallory', user: 'mallory', device: 'phone', on: true }]);
  });

  it('one unsolicited message does not let its sender see the recipient’s presence; her reply does', async () => {
    const w = (world = await makeWorld());
    const alice = await w.device('alice');
    const mallory = await w.device('mallory');
    await mallory.client.send('alice', text('hi'));
    await w.advance(200);
    expect(await codeOf(mallory.client.watchPresence('alice'))).toBe('forbidden');
    expect(await codeOf(alice.client.watchPresence('mallory'))).toBe('ok');
    await alice.client.send('mallory', text('hi back'));
    await w.advance(200);
    expect(await codeOf(mallory.client.watchPresence('alice'))).toBe('ok');
  });

  it('adding a user to a group does not let the adder see her presence; her taking part in it does', async () => {
    const w = (world = await makeWorld());
    const alice = await w.device('alice');
    const mallory = await w.device('mallory');
    const g = await settled(w, mallory.client.createGroup('free prizes', ['alice']));
    await w.advance(200);
    expect(await codeOf(mallory.client.watchPresence('alice'))).toBe('forbidden');
    expect(await codeOf(alice.client.watchPresence('mallory'))).toBe('ok');
    await alice.client.sendToGroup(g, text('please remove me'));
    await w.advance(200);
    expect(await codeOf(mallory.client.watchPresence('alice'))).toBe('ok');
  });
});

describe('limits are held per device or user: reconnecting resets none of them', () => {
  it('the key-claim rate limit holds across reconnects', async () => {
    const w = (world = await makeWorld({ server: { maxKeyClaimsPer10s: 20 } }));
    await w.device('bob');
    await w.server.store.putKeys(
      { user: 'bob', device: 'phone' },
      {
        registrationId: 1,
        identityKey: new Uint8Array([1]),
        signedPreKey: { id: 1, key: new Uint8Array([1]), signature: new Uint8Array([1]) },
        lastResortKyber: { id: 2, key: new Uint8Array([2]), signature: new Uint8Array([2]) },
      },
    );
    const answered: number[] = [];
    for (let c = 0; c < 5; c++) {
      const raw = await rawAs(w, 'mallory', 'm1');
      for (let r = 1; r <= 30; r++) raw.send({ t: 'kget', r, u: ['bob'] });
      await w.advance(50);
      answered.push(raw.frames.filter((f) => f.t === 'kb').length);
    }
    // The first connection used the whole window's allowance; reconnecting gave no more.
    expect(answered[0]).toBeGreaterThan(0);
    expect(answered.slice(1)).toEqual([0, 0, 0, 0]);
  });

  it('the typing limit holds across reconnects', async () => {
    const w = (world = await makeWorld({ server: { maxTypingPer10s: 5 } }));
    const alice = await w.device('alice');
    await w.server.registerDevice('mallory', 'm1');
    await alice.client.send('mallory', text('hi')); // consent: she wrote to him
    await w.advance(200);
    for (let c = 0; c < 4; c++) {
      const raw = await rawAs(w, 'mallory', 'm1');
      for (let i = 0; i < 5; i++) raw.send({ t: 'typ', to: 'alice', on: i % 2 === 0 });
      await w.advance(100);
    }
    expect(alice.typing.length).toBe(5);
  });

  it('the frame rate limit holds across reconnects', async () => {
    const w = (world = await makeWorld({ server: { maxFramesPerSecond: 30 } }));
    const first = await rawAs(w, 'mallory', 'm1');
    for (let i = 0; i < 25; i++) first.send({ t: 'ping' });
    await w.advance(10);
    expect(first.closed).toBeUndefined();
    const second = await rawAs(w, 'mallory', 'm1');
    for (let i = 0; i < 25; i++) second.send({ t: 'ping' });
    await w.advance(10);
    expect(errors(second)).toEqual(['rate_limited']);
    expect(second.closed?.code).toBe(4003);
  });
});
