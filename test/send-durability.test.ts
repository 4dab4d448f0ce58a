// `send()` resolves only once the message is committed in the client store, and a send that
// rejects was never stored; the `message` event fires once per id, after the store commit, and
// never again, so an app that missed it reconciles with history. (The real-process kill -9
// versions of these are in crash.test.ts.)
import { afterEach, describe, expect, it } from 'vitest';
import { memoryClientStore, type ClientStoreOp } from '../src/client/stores/memory.js';
import { decodeClientFrame, isPostboxError } from '../src/protocol/index.js';
import { makeWorld, settled, text, type World } from './helpers.js';

let world: World | undefined;
afterEach(async () => {
  await world?.close();
  world = undefined;
});

const codeOf = (e: unknown) => (isPostboxError(e) ? e.code : String(e));

describe('send() resolves at the durability point', () => {
  it('a resolved send is already in the outbox with its sequence number, before any time passes', async () => {
    world = await makeWorld();
    const alice = await world.device('alice');
    await world.device('bob');
    // Just restarted: the client is busy loading its store when the app sends.
    await alice.restart();
    const first = await alice.client.send('bob', text('one'));
    // No clock advance, no other await in between: the commit happened before the id came back.
    const stored = await alice.client.store.outgoing(first);
    expect(stored).toMatchObject({ id: first, kind: 'msg', to: 'bob', seq: 1 });
    const second = await alice.client.sendToGroup('#nosuchgroup', text('two'));
    expect((await alice.client.store.outgoing(second))?.seq).toBe(1);
    expect(alice.statusOf(first)).toBe('pending');
  });

  it('a send that rejects was never stored and will never be sent: too large, bad recipient or body, closed, store failure', async () => {
    world = await makeWorld({ server: { maxBodyBytes: 100 } });
    let failEnqueue = false;
    const alice = await world.device('alice', 'phone', {
      client: {
        store: memoryClientStore({ failWhen: (op: ClientStoreOp) => failEnqueue && op === 'enqueue' }),
      },
    });
    const bob = await world.device('bob');
    const outcomes: string[] = [];
    const attempt = (p: Promise<string>) =>
      p.then(
        () => outcomes.push('resolved'),
        (e: unknown) => outcomes.push(codeOf(e)),
      );
    await attempt(alice.client.send('bob', new Uint8Array(200)));
    await attempt(alice.client.send('', text('to no one')));
    await attempt(alice.client.send('#group', text('not a user')));
    await attempt(alice.client.sendToGroup('bob', text('not a group')));
    await attempt(alice.client.send('bob', 'not bytes' as unknown as Uint8Array));
    failEnqueue = true;
    const refused = await alice.client.send('bob', text('the disk is full')).catch((e: unknown) => e);
    failEnqueue = false;
    outcomes.push(codeOf(refused));
    expect((refused as { cause?: Error }).cause?.message).toMatch(/injected failure in enqueue/);
    await alice.client.close();
    await attempt(alice.client.send('bob', text('after close')));
    await attempt(alice.client.sendToGroup('#g', text('after close')));
    expect(outcomes).toEqual([
      'too_large',
      'invalid_frame',
      'invalid_frame',
      'invalid_frame',
      'invalid_frame',
      'unavailable',
      'closed',
      'closed',
    ]);
    // Nothing of them is stored, queued or announced; nothing arrives.
    expect(await alice.client.store.pending()).toEqual([]);
    expect(alice.statuses).toEqual([]);
    alice.client.start();
    await world.advance(500);
    expect(bob.messages).toEqual([]);
  });

  it('a send with an id already stored stores nothing and resolves with it: a repeated hand-off is one message', async () => {
    world = await makeWorld();
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    const id = '01JBROWSERTAB0000000000001';
    // The same hand-off three times (a tab retrying, a new leader retrying), one after a restart.
    expect(await alice.client.send('bob', text('once'), { id })).toBe(id);
    expect(await alice.client.send('bob', text('once'), { id })).toBe(id);
    await alice.restart();
    expect(await alice.client.send('bob', text('once'), { id })).toBe(id);
    await settled(world, alice.client.settled());
    await world.advance(500);
    expect(bob.messages.map((m) => [m.id, m.seq])).toEqual([[id, 1]]);
    expect(alice.statuses.filter((s) => s.status === 'pending').map((s) => s.id)).toEqual([id]);
    expect((await alice.client.store.outgoingIn('bob')).map((e) => e.id)).toEqual([id]);
    // A bad given id is refused before anything is stored.
    await expect(alice.client.send('bob', text('x'), { id: 'not an id!' })).rejects.toMatchObject({
      code: 'invalid_frame',
    });
  });

  it('the body is copied when send is called, a Node Buffer too: the caller may reuse its buffer at once', async () => {
    world = await makeWorld();
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    // A Buffer's own `slice` is a view of the same memory: it must not be what `send` keeps.
    const reused = Buffer.from('first');
    const fromBuffer = alice.client.send('bob', reused);
    reused.write('XXXXX');
    const plain = new TextEncoder().encode('second');
    const fromArray = alice.client.send('bob', plain);
    plain.fill(0);
    const ids = [await fromBuffer, await fromArray];
    await world.advance(500);
    expect(bob.messages.map((m) => [m.id, new TextDecoder().decode(m.body)])).toEqual([
      [ids[0], 'first'],
      [ids[1], 'second'],
    ]);
    const stored = await alice.client.store.outgoingIn('bob');
    expect(stored.map((e) => new TextDecoder().decode(e.body))).toEqual(['first', 'second']);
  });

  it('a send called before close() is stored: close waits for it', async () => {
    world = await makeWorld();
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    const sending = alice.client.send('bob', text('just in time'));
    await alice.client.close();
    const id = await sending;
    expect((await alice.client.store.pending()).map((e) => e.id)).toEqual([id]);
    alice.client.start();
    await world.advance(500);
    expect(bob.messages.map((m) => m.id)).toEqual([id]);
  });

  it('a group message is stored with its recipients in one write: a crash between the two cannot cost its ✓✓', async () => {
    world = await makeWorld();
    // The store refuses every state write while `broken`: a crash right after the outbox write.
    let broken = false;
    const alice = await world.device('alice', 'phone', {
      client: { store: memoryClientStore({ failWhen: (op: ClientStoreOp) => broken && op === 'putState' }) },
    });
    const bob = await world.device('bob');
    const carol = await world.device('carol');
    const group = await settled(world, alice.client.createGroup('g', ['bob', 'carol']));
    await world.advance(200);
    broken = true;
    const id = await alice.client.sendToGroup(group, text('hi all'));
    await alice.client.settled();
    broken = false;
    await alice.restart();
    await world.advance(1000);
    expect(bob.messages.map((m) => m.id)).toEqual([id]);
    expect(carol.messages.map((m) => m.id)).toEqual([id]);
    expect(alice.statusOf(id)).toBe('delivered');
    expect((await alice.client.messageInfo(id))?.recipients).toEqual(['bob', 'carol']);
  });
});

describe('the message event', () => {
  it('fires once per id after the store commit and never again across a restart; history has the message', async () => {
    world = await makeWorld();
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    // Bob's acks never reach the server: after his restart the server delivers the message again.
    let dropAcks = true;
    world.net.intercept((frame, dir, link) =>
      dropAcks && dir === 'toServer' && link.name === 'bob/phone' && decodeClientFrame(frame).t === 'ack'
        ? 'drop'
        : 'pass',
    );
    const committed: boolean[] = [];
    bob.client.on('message', (m) => {
      // The store holds the message by the time the handler runs.
      void bob.client.store.inbound('alice').then((list) => committed.push(list.some((x) => x.id === m.id)));
    });
    const id = await alice.client.send('bob', text('once'));
    await world.advance(300);
    expect(bob.messages.map((m) => m.id)).toEqual([id]);
    // The app "crashes" here: it never handled the message. Bob restarts on the same store.
    await bob.restart();
    dropAcks = false;
    await world.advance(1000);
    // Delivered again by the server, deduped by the store: no second event.
    expect(await world.server.store.readInbox({ user: 'bob', device: 'phone' }, 0, 10)).toEqual([]);
    expect(bob.messages.map((m) => m.id)).toEqual([id]);
    expect(committed).toEqual([true]);
    // What the app reconciles with at start.
    const history = await bob.client.history('alice');
    expect(history.map((m) => [m.id, m.from, m.outgoing, new TextDecoder().decode(m.body)])).toEqual([
      [id, 'alice', false, 'once'],
    ]);
    expect((await bob.client.conversations()).map((c) => [c.conv, c.last.id, c.unread])).toEqual([
      ['alice', id, 1],
    ]);
  });
});
