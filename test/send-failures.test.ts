// A send that does not make it says why: the reason (an error code) and a human message come on
// its `status` event, stay with its outbox entry (messageInfo, history, after a restart), and a
// refused request never shows up as an `error` event, which is for local faults only.
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { createClient } from '../src/client/index.js';
import { MIGRATIONS } from '../src/client/stores/sqlite-schema.js';
import { sqliteClientStore } from '../src/client/stores/sqlite.js';
import { isPostboxError } from '../src/protocol/index.js';
import { migrate } from '../src/util/sqlite.js';
import { tempDirs } from './fixtures/util.js';
import { SECRET, clientOfFakeServer, makeWorld, settled, text, type World } from './helpers.js';

let world: World | undefined;
const dirs = tempDirs('failures');
afterEach(async () => {
  await world?.close();
  world = undefined;
  dirs.removeAll();
});

describe('a failed send says why', () => {
  it('a send to a user with no device fails with unknown_recipient on its status, in messageInfo and in history, and fires no error event', async () => {
    world = await makeWorld();
    const alice = await world.device('alice');
    const id = await alice.client.send('nobody', text('hello?'));
    await world.advance(200);
    const failed = alice.statuses.filter((s) => s.id === id && s.status === 'failed');
    expect(failed).toEqual([
      { id, conv: 'nobody', status: 'failed', reason: 'unknown_recipient', detail: expect.any(String) },
    ]);
    expect(failed[0]!.detail).toMatch(/not registered/);
    expect(await alice.client.messageInfo(id)).toEqual({
      id,
      conv: 'nobody',
      status: 'failed',
      reason: 'unknown_recipient',
      detail: failed[0]!.detail,
    });
    const [shown] = await alice.client.history('nobody');
    expect(shown).toMatchObject({ id, outgoing: true, status: 'failed', reason: 'unknown_recipient' });
    expect(alice.errors).toEqual([]);
    // Statuses that are not failures carry no reason.
    await world.device('bob');
    const ok = await alice.client.send('bob', text('hi'));
    await world.advance(200);
    for (const s of alice.statuses.filter((x) => x.id === ok)) expect(s.reason).toBeUndefined();
    expect((await alice.client.messageInfo(ok))?.reason).toBeUndefined();
  });

  it('the reason survives an app restart from the SQLite store', async () => {
    world = await makeWorld();
    const file = `${dirs.make()}/alice.sqlite`;
    const store = sqliteClientStore({ path: file });
    const alice = await world.device('alice', 'phone', { client: { store } });
    const id = await alice.client.send('nobody', text('hello?'));
    await world.advance(200);
    expect(alice.statusOf(id)).toBe('failed');
    await alice.client.close();
    await store.close();
    // The app starts again offline: what it reads comes from the file.
    const reopened = sqliteClientStore({ path: file });
    const again = createClient({
      transport: world.net.client('alice/phone'),
      store: reopened,
      credentials: `alice/phone:${SECRET}`,
      clock: world.clock,
      autoStart: false,
    });
    expect(await again.messageInfo(id)).toMatchObject({ status: 'failed', reason: 'unknown_recipient' });
    expect((await again.messageInfo(id))?.detail).toMatch(/not registered/);
    expect((await again.history('nobody'))[0]).toMatchObject({
      id,
      status: 'failed',
      reason: 'unknown_recipient',
    });
    expect((await again.conversations())[0]?.last).toMatchObject({ id, reason: 'unknown_recipient' });
    await again.close();
    await reopened.close();
  });

  it('a group send by a non-member fails with not_member, and fires no error event', async () => {
    world = await makeWorld();
    const alice = await world.device('alice');
    await world.device('bob');
    const eve = await world.device('eve');
    const group = await settled(world, alice.client.createGroup('g', ['bob']));
    const id = await eve.client.sendToGroup(group, text('let me in'));
    await world.advance(300);
    expect(eve.statuses.filter((s) => s.id === id).at(-1)).toMatchObject({
      status: 'failed',
      reason: 'not_member',
    });
    expect(await eve.client.messageInfo(id)).toMatchObject({ status: 'failed', reason: 'not_member' });
    expect(eve.errors).toEqual([]);
  });

  it('a body over the server’s limit, queued before the client knew it, fails with too_large', async () => {
    world = await makeWorld({ server: { maxBodyBytes: 1024 } });
    await world.device('bob');
    const alice = await world.device('alice', 'phone', { client: { autoStart: false } });
    const id = await alice.client.send('bob', new Uint8Array(2000));
    alice.client.start();
    await world.advance(300);
    expect(alice.statuses.at(-1)).toMatchObject({ id, status: 'failed', reason: 'too_large' });
    expect(alice.errors).toEqual([]);
  });

  it('any refusal the server answers a send with is its failure reason (forbidden, from a fake server)', async () => {
    const { clock, client } = await clientOfFakeServer('alice', (f) =>
      f.t === 'send' ? { c: 'forbidden', m: 'bob does not take messages from you' } : undefined,
    );
    const errors: unknown[] = [];
    const statuses: unknown[] = [];
    client.on('error', (e) => errors.push(e));
    client.on('status', (s) => statuses.push(s));
    await clock.advance(100);
    const id = await client.send('bob', text('hi bob'));
    await clock.advance(100);
    expect(statuses.at(-1)).toEqual({
      id,
      conv: 'bob',
      status: 'failed',
      reason: 'forbidden',
      detail: 'bob does not take messages from you',
    });
    expect(errors).toEqual([]);
    expect(client.state).toBe('open');
    await client.close();
  });

  it('a refused group request rejects with its code and fires no error event', async () => {
    world = await makeWorld();
    const alice = await world.device('alice');
    await world.device('bob');
    const eve = await world.device('eve');
    const group = await settled(world, alice.client.createGroup('g', ['bob']));
    const refused = await settled(world, eve.client.addMembers(group, ['eve'])).catch((e: unknown) => e);
    expect(isPostboxError(refused) && refused.code).toBe('not_member');
    expect(eve.errors).toEqual([]);
  });

  it('a version 3 SQLite client database migrates: its failed entries stay failed (no reason known), new ones store theirs', async () => {
    const file = `${dirs.make()}/old.sqlite`;
    const db = new Database(file);
    migrate(db, MIGRATIONS.slice(0, 3), 'test');
    db.prepare(
      `INSERT INTO outbox (id, kind, to_user, conv, body, ids, created_at, seq, status, pos)
       VALUES ('o1', 'msg', 'bob', 'bob', x'00', NULL, 1, 1, 'failed', 1),
              ('o2', 'msg', 'bob', 'bob', x'00', NULL, 2, 2, 'pending', 2)`,
    ).run();
    db.exec(`INSERT INTO convs (conv, last) VALUES ('bob', 2)`);
    db.close();
    const store = sqliteClientStore({ path: file });
    const old = await store.outgoing('o1');
    expect(old?.status).toBe('failed');
    expect(old?.reason).toBeUndefined();
    await store.setStatus('o2', 'failed', { reason: 'unknown_recipient', detail: 'no device' });
    expect(await store.outgoing('o2')).toMatchObject({ reason: 'unknown_recipient', detail: 'no device' });
    await store.close();
  });
});
