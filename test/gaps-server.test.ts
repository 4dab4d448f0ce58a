import { afterEach, describe, expect, it } from 'vitest';
import { SECRET, makeWorld, text, type World } from './helpers.js';

let world: World | undefined;
afterEach(async () => {
  await world?.close();
  world = undefined;
});

const retention = { retentionMs: 60_000, expiryIntervalMs: 10_000 };

describe('gap notices on the wire', () => {
  it('a version-2 session gets a gap frame naming the expired messages of each stream, after what it already had', async () => {
    world = await makeWorld({ server: retention });
    const alice = await world.device('alice');
    await world.server.registerDevice('bob', 'phone');
    await alice.client.send('bob', text('one'));
    await alice.client.send('bob', text('two'));
    await world.advance(40_000);
    await alice.client.send('bob', text('three')); // young: still there after the expiry
    await world.advance(35_000);
    const raw = await world.raw();
    raw.send({ t: 'hello', v: [1, 2], cred: `bob/phone:${SECRET}` });
    await world.advance(100);
    const entries = raw.frames.filter((f) => f.t === 'msg' || f.t === 'gap');
    expect(entries.map((f) => f.t)).toEqual(['msg', 'gap']);
    expect(entries[1]).toMatchObject({ why: 'x', s: [['alice', 'phone', 'bob', 1, 2]] });
    // Acked like any entry: gone from the inbox.
    raw.send({ t: 'ack', o: entries.map((f) => (f as { o: number }).o) });
    await world.advance(100);
    const again = await world.raw('again');
    raw.conn.close(1000, 'done');
    await world.advance(100);
    again.send({ t: 'hello', v: [1, 2], cred: `bob/phone:${SECRET}` });
    await world.advance(100);
    expect(again.frames.filter((f) => f.t === 'msg' || f.t === 'gap')).toEqual([]);
  });

  it('a version-1 session never gets a gap frame: the server deletes the notice for it', async () => {
    world = await makeWorld({ server: retention });
    const alice = await world.device('alice');
    await world.server.registerDevice('bob', 'phone');
    await alice.client.send('bob', text('one'));
    await world.advance(75_000);
    const raw = await world.raw();
    await raw.hello('bob', 'phone'); // speaks version 1 only
    await world.advance(100);
    expect(raw.frames.map((f) => f.t)).toEqual(['welcome']);
    raw.conn.close(1000, 'done');
    await world.advance(100);
    const v2 = await world.raw('v2');
    v2.send({ t: 'hello', v: [1, 2], cred: `bob/phone:${SECRET}` });
    await world.advance(100);
    expect(v2.frames.map((f) => f.t)).toEqual(['welcome']);
  });
});
