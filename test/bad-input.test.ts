import { pack } from 'msgpackr';
import { afterEach, describe, expect, it } from 'vitest';
import { CLOSE_CODES, encodeFrame, type ErrFrame } from '../src/protocol/index.js';
import type { AuthResult } from '../src/server/index.js';
import { seededRandom } from '../src/util/clock.js';
import { badIds } from './fixtures/ids.js';
import { makeWorld, text, type RawConnection, type World } from './helpers.js';

let world: World | undefined;
afterEach(async () => {
  await world?.close();
  world = undefined;
});

const errors = (raw: RawConnection): ErrFrame[] => raw.frames.filter((f): f is ErrFrame => f.t === 'err');

/** Everything the server holds for a user's devices, to show that bad input changed none of it. */
async function snapshot(w: World, user: string, devices: string[]) {
  return {
    devices: await w.server.store.devices(user),
    inboxes: await Promise.all(
      devices.map((device) => w.server.store.readInbox({ user, device }, 0, 10_000)),
    ),
  };
}

describe('bad input gets a typed error and harms no one', () => {
  it('anything before a successful hello gets unauthorized and the connection closes', async () => {
    world = await makeWorld();
    const raw = await world.raw();
    raw.send({ t: 'send', r: 1, id: 'x', to: 'bob', seq: 1, b: text('sneaky') });
    await world.advance(50);
    expect(errors(raw).map((e) => e.c)).toEqual(['unauthorized']);
    expect(raw.closed?.code).toBe(CLOSE_CODES.unauthorized);
  });

  it('a hello with bad credentials gets unauthorized and the connection closes', async () => {
    world = await makeWorld();
    const raw = await world.raw();
    await raw.hello('alice', 'phone', 'wrong-secret');
    expect(errors(raw).map((e) => e.c)).toEqual(['unauthorized']);
    expect(raw.closed?.code).toBe(CLOSE_CODES.unauthorized);
    expect(await world.server.store.devices('alice')).toEqual([]);
  });

  it('a hello with no version in common gets unsupported_version', async () => {
    world = await makeWorld();
    const raw = await world.raw();
    raw.send({ t: 'hello', v: [7, 9], cred: 'alice/phone:letmein' });
    await world.advance(50);
    expect(errors(raw).map((e) => e.c)).toEqual(['unsupported_version']);
    expect(raw.closed?.code).toBe(CLOSE_CODES.unsupportedVersion);
  });

  it('a frame that fails validation gets invalid_frame (echoing its request id) and changes nothing', async () => {
    world = await makeWorld();
    const bob = await world.device('bob');
    const before = await snapshot(world, 'bob', ['phone']);
    const raw = await world.raw();
    await raw.hello('mallory', 'm1');
    raw.send({ t: 'send', r: 5, id: 'x', to: 'bob', seq: -1, b: text('bad seq') });
    raw.send({ t: 'send', r: 6, id: '', to: 'bob', seq: 1, b: text('empty id') });
    raw.send({ t: 'send', r: 7, id: 'y', to: 'bob', seq: 1, b: 'not binary' });
    raw.send({ t: 'nope' });
    raw.sendBytes(new Uint8Array([0xc1, 0xff, 0x00]));
    await world.advance(100);
    expect(errors(raw).map((e) => [e.c, e.r])).toEqual([
      ['invalid_frame', 5],
      ['invalid_frame', 6],
      ['invalid_frame', 7],
      ['invalid_frame', undefined],
      ['invalid_frame', undefined],
    ]);
    expect(raw.closed).toBeUndefined();
    expect(await snapshot(world, 'bob', ['phone'])).toEqual(before);
    expect(bob.messages).toEqual([]);
  });

  it('a client that keeps sending invalid frames is disconnected', async () => {
    world = await makeWorld({ server: { maxInvalidFrames: 3 } });
    const raw = await world.raw();
    await raw.hello('mallory', 'm1');
    for (let i = 0; i < 5; i++) raw.send({ t: 'junk', i });
    await world.advance(100);
    expect(raw.closed?.code).toBe(CLOSE_CODES.protocolError);
  });

  it('a frame over the size limit gets too_large and the connection closes', async () => {
    world = await makeWorld({ server: { maxFrameBytes: 1024 } });
    const raw = await world.raw();
    await raw.hello('mallory', 'm1');
    raw.send({ t: 'send', r: 1, id: 'big', to: 'bob', seq: 1, b: new Uint8Array(4096) });
    await world.advance(50);
    expect(errors(raw).map((e) => e.c)).toEqual(['too_large']);
    expect(raw.closed?.code).toBe(CLOSE_CODES.tooLarge);
  });

  it('a body over the body limit fails that send with too_large; the client shows failed', async () => {
    world = await makeWorld({ server: { maxBodyBytes: 100 } });
    const alice = await world.device('alice');
    await world.device('bob');
    await expect(alice.client.send('bob', new Uint8Array(200))).rejects.toMatchObject({ code: 'too_large' });
    const raw = await world.raw();
    await raw.hello('mallory', 'm1');
    raw.send({ t: 'send', r: 9, id: 'big', to: 'bob', seq: 1, b: new Uint8Array(200) });
    await world.advance(50);
    expect(errors(raw).map((e) => [e.c, e.r])).toEqual([['too_large', 9]]);
    expect(raw.closed).toBeUndefined();
  });

  it('the sender identity comes from the session, never from a frame field', async () => {
    world = await makeWorld();
    const bob = await world.device('bob');
    const raw = await world.raw();
    await raw.hello('mallory', 'm1');
    raw.send({
      t: 'send',
      r: 1,
      id: 'forged',
      to: 'bob',
      seq: 1,
      b: text('I am alice'),
      f: 'alice',
      fd: 'phone',
      from: 'alice',
    });
    await world.advance(100);
    expect(bob.messages.map((m) => [m.from, m.fromDevice])).toEqual([['mallory', 'm1']]);
  });

  it("a device can read and ack only its own inbox: acking another's offsets changes nothing", async () => {
    world = await makeWorld();
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    await bob.client.close();
    for (let i = 0; i < 5; i++) await alice.client.send('bob', text(String(i)));
    await world.advance(200);
    const before = await snapshot(world, 'bob', ['phone']);
    expect(before.inboxes[0]).toHaveLength(5);
    const raw = await world.raw();
    await raw.hello('mallory', 'm1');
    raw.send({ t: 'ack', o: [1, 2, 3, 4, 5, 6, 7, 8] });
    await world.advance(100);
    expect(await snapshot(world, 'bob', ['phone'])).toEqual(before);
    expect(raw.frames.filter((f) => f.t === 'msg')).toEqual([]);
    expect(alice.statuses.filter((s) => s.status === 'delivered')).toEqual([]);
  });

  it('a frame flood is rate limited and closed; other users keep messaging', async () => {
    world = await makeWorld({ server: { maxFramesPerSecond: 100 } });
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    const raw = await world.raw();
    await raw.hello('mallory', 'm1');
    for (let i = 0; i < 300; i++) raw.send({ t: 'ping' });
    await world.advance(100);
    expect(errors(raw).map((e) => e.c)).toContain('rate_limited');
    expect(raw.closed?.code).toBe(CLOSE_CODES.rateLimited);
    const id = await alice.client.send('bob', text('still here'));
    await world.advance(200);
    expect(bob.messages.map((m) => m.id)).toEqual([id]);
  });

  it('a device whose id contains NUL cannot take over another device session', async () => {
    world = await makeWorld();
    // ('a', 'b\0c') and ('a\0b', 'c') once made the same session key: the second replaced the first.
    const victim = await world.raw('victim');
    await victim.hello('a', 'b\u0000c');
    const thief = await world.raw('thief');
    await thief.hello('a\u0000b', 'c');
    expect(victim.closed?.code).not.toBe(CLOSE_CODES.replaced);
    expect(errors(thief).map((e) => e.c)).toEqual(['unauthorized']);
    expect(thief.closed?.code).toBe(CLOSE_CODES.unauthorized);
    expect(world.server.onlineDevices()).toEqual([]);
  });

  it('a #-prefixed user id is refused at hello and in frames: no user poses as a group', async () => {
    world = await makeWorld();
    const poser = await world.raw('poser');
    await poser.hello('#g1', 'phone');
    expect(errors(poser).map((e) => e.c)).toEqual(['unauthorized']);
    expect(await world.server.store.devices('#g1')).toEqual([]);
    const raw = await world.raw();
    await raw.hello('mallory', 'm1');
    raw.send({ t: 'send', r: 1, id: 'x', to: '#g1', seq: 1, b: text('to a group without g') });
    raw.send({ t: 'send', r: 2, id: 'y', to: 'bob', seq: 1, b: text('to a user with g'), g: true });
    raw.send({ t: 'rcpt', r: 3, id: 'z', to: '#g1', ids: ['a'] });
    raw.send({ t: 'sub', r: 4, u: '#g1' });
    raw.send({ t: 'grp', r: 5, id: 'w', g: '#g2', op: 'create', n: 'n', m: ['#g1'] });
    raw.send({ t: 'kget', r: 6, u: ['#g1'] });
    await world.advance(100);
    expect(errors(raw).map((e) => [e.c, e.r])).toEqual([1, 2, 3, 4, 5, 6].map((r) => ['invalid_frame', r]));
    expect(await world.server.store.group('#g2')).toBeUndefined();
  });

  it('an id from the authenticate hook that breaks the id rule is refused at hello and registers nothing (seeded)', async () => {
    // The hook passes on whatever the credentials say, as a careless app's might.
    world = await makeWorld({ server: { authenticate: (cred) => cred as AuthResult } });
    const cases = [
      ...badIds(21, 128).map(({ id, why }) => ({ user: id, device: 'phone', why: `user: ${why}` })),
      ...badIds(22, 64).map(({ id, why }) => ({ user: 'mallory', device: id, why: `device: ${why}` })),
    ];
    for (const [i, { user, device, why }] of cases.entries()) {
      const raw = await world.raw(`r${i}`);
      raw.send({ t: 'hello', v: [1, 1], cred: { user, device } });
      await world.advance(20);
      expect(
        errors(raw).map((e) => e.c),
        why,
      ).toEqual(['unauthorized']);
      expect(raw.closed?.code, why).toBe(CLOSE_CODES.unauthorized);
    }
    expect(world.server.onlineDevices()).toEqual([]);
    expect(await world.server.store.devices('mallory')).toEqual([]);
  });

  it('a send to a user with no device fails with unknown_recipient and writes nothing', async () => {
    world = await makeWorld();
    const alice = await world.device('alice');
    const id = await alice.client.send('nobody', text('hello?'));
    await world.advance(200);
    expect(alice.statusOf(id)).toBe('failed');
  });

  it('seeded garbage never crashes the server nor changes another user (fuzz, replayable by seed)', async () => {
    for (const seed of [1, 2, 3, 4, 5]) {
      world = await makeWorld({ seed });
      const alice = await world.device('alice');
      const bob = await world.device('bob');
      await alice.client.send('bob', text('before'));
      await world.advance(200);
      const before = await snapshot(world, 'bob', ['phone']);
      const bobMessages = bob.messages.length;
      const rnd = seededRandom(seed);
      for (let round = 0; round < 20; round++) {
        const raw = await world.raw(`fuzz${round}`);
        if (rnd() < 0.7) await raw.hello('mallory', `m${round}`);
        for (let i = 0; i < 30 && !raw.closed; i++) raw.sendBytes(garbage(rnd));
        await world.advance(20);
      }
      await world.advance(200);
      expect(await snapshot(world, 'bob', ['phone']), `seed ${seed}`).toEqual(before);
      expect(bob.messages.length, `seed ${seed}`).toBe(bobMessages);
      const id = await alice.client.send('bob', text('after'));
      await world.advance(300);
      expect(bob.messages.at(-1)?.id, `seed ${seed}`).toBe(id);
      await world.close();
      world = undefined;
    }
  });
  it('group abuse (non-member send, non-admin action, add past the cap, hidden presence, a stranger approving a link) gets typed errors and changes nothing', async () => {
    world = await makeWorld({ server: { maxGroupMembers: 3, linking: 'approval' } });
    const w = world;
    const alice = await w.device('alice');
    for (const u of ['bob', 'carol', 'dave']) await w.device(u);
    const create = alice.client.createGroup('g', ['bob'], '#g1');
    await w.advance(200);
    expect(await create).toBe('#g1');
    const users = ['alice', 'bob', 'carol', 'dave'];
    const before = {
      group: await w.server.store.group('#g1'),
      inboxes: await Promise.all(users.map((u) => snapshot(w, u, ['phone']))),
    };
    const pending = await w.raw('pending');
    await pending.hello('alice', 'tablet'); // a new device: waits for approval
    const raw = await w.raw();
    await raw.hello('mallory', 'm1');
    raw.send({ t: 'send', r: 1, id: 'm1', to: '#g1', seq: 1, b: text('let me in'), g: true });
    raw.send({ t: 'grp', r: 2, id: 'm2', g: '#g1', op: 'add', m: ['mallory'] });
    raw.send({ t: 'grp', r: 3, id: 'm3', g: '#g1', op: 'create', n: 'mine', m: ['bob'] });
    raw.send({ t: 'sub', r: 4, u: 'alice' });
    raw.send({
      t: 'lnk',
      r: 5,
      code: (pending.frames.find((f) => f.t === 'lcode') as { code: string }).code,
    });
    raw.send({ t: 'grp', r: 6, id: 'm6', g: '#g1', op: 'add' });
    raw.send({ t: 'typ', to: '#g1', g: true, on: true });
    const bobRaw = await w.raw('bob2');
    await bobRaw.hello('bob', 'phone');
    bobRaw.send({ t: 'grp', r: 1, id: 'b1', g: '#g1', op: 'remove', m: ['alice'] });
    bobRaw.send({ t: 'grp', r: 2, id: 'b2', g: '#g1', op: 'rename', n: 'bob rules' });
    await w.advance(300);
    const aliceRaw = await w.raw('alice2');
    await aliceRaw.hello('alice', 'phone');
    aliceRaw.send({ t: 'grp', r: 1, id: 'a1', g: '#g1', op: 'add', m: ['carol', 'dave'] });
    await w.advance(300);
    expect(errors(raw).map((e) => [e.r, e.c])).toEqual([
      [1, 'not_member'],
      [2, 'not_member'],
      [3, 'forbidden'],
      [4, 'forbidden'],
      [5, 'forbidden'],
      [6, 'invalid_frame'],
      [undefined, 'not_member'],
    ]);
    expect(errors(bobRaw).map((e) => [e.r, e.c])).toEqual([
      [1, 'forbidden'],
      [2, 'forbidden'],
    ]);
    expect(errors(aliceRaw).map((e) => [e.r, e.c])).toEqual([[1, 'group_full']]);
    expect(raw.closed).toBeUndefined();
    expect(pending.frames.some((f) => f.t === 'welcome')).toBe(false);
    expect({
      group: await w.server.store.group('#g1'),
      inboxes: await Promise.all(users.map((u) => snapshot(w, u, ['phone']))),
    }).toEqual(before);
  });
});

/** Ids that break the id rule (NUL, `#`, controls, Unicode look-alikes…), for the id fields. */
const BAD_IDS = badIds(31, 128).map((b) => b.id);

/** Random bytes, random msgpack values, and near-valid frames with one field broken. */
function garbage(rnd: () => number): Uint8Array {
  const kind = Math.floor(rnd() * 4);
  const n = Math.floor(rnd() * 64);
  if (kind === 0) return Uint8Array.from({ length: n }, () => Math.floor(rnd() * 256));
  // No value here names bob: a frame that stays valid after the swap only reaches mallory.
  const values: unknown[] = [
    null,
    -1,
    2 ** 53,
    'zz',
    '',
    'x'.repeat(300),
    [],
    {},
    new Uint8Array(3),
    true,
    1.5,
    ...BAD_IDS,
  ];
  const pickV = () => values[Math.floor(rnd() * values.length)];
  if (kind === 1) return pack(pickV());
  const frames: Record<string, unknown>[] = [
    { t: 'send', r: 1, id: 'f', to: 'mallory', seq: 1, b: new Uint8Array(4) },
    { t: 'ack', o: [1, 2, 3] },
    { t: 'rcpt', r: 2, id: 'g', to: 'mallory', ids: ['a'] },
    { t: 'hello', v: [1, 1], cred: 'bob/phone:wrong' },
    { t: 'sub', r: 3, u: 'mallory' },
    { t: 'typ', to: 'mallory', on: true },
    { t: 'grp', r: 4, id: 'h', g: '#fuzz', op: 'create', n: 'n', m: ['mallory'] },
    { t: 'kget', r: 5, u: ['mallory'], d: 'zz' },
    {
      t: 'send',
      r: 6,
      id: 'e',
      to: 'mallory',
      seq: 0,
      b: new Uint8Array(0),
      e: [['mallory', 'zz', 1, new Uint8Array(2)]],
    },
  ];
  const f = { ...frames[Math.floor(rnd() * frames.length)]! };
  const keys = Object.keys(f);
  f[keys[Math.floor(rnd() * keys.length)]!] = pickV();
  if (kind === 2) return pack(f);
  // kind 3: a valid ack of offsets mallory does not have (bob's inbox uses the same numbers).
  return encodeFrame({ t: 'ack', o: [Math.floor(rnd() * 100) + 1] });
}
