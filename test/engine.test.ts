import { afterEach, describe, expect, it } from 'vitest';
import { decodeClientFrame, decodeServerFrame } from '../src/protocol/index.js';
import { makeWorld, text, untext, type World } from './helpers.js';

let world: World | undefined;
afterEach(async () => {
  await world?.close();
  world = undefined;
});

const ids = (xs: { id: string }[]) => xs.map((x) => x.id);

describe('the message path', () => {
  it('a sent message moves pending → sent → delivered → read, and the recipient sees it once', async () => {
    world = await makeWorld();
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    const id = await alice.client.send('bob', text('hello bob'));
    await world.advance(200);
    expect(bob.messages.map((m) => [m.id, m.from, m.conv, untext(m.body)])).toEqual([
      [id, 'alice', 'alice', 'hello bob'],
    ]);
    expect(alice.statuses.filter((s) => s.id === id).map((s) => s.status)).toEqual([
      'pending',
      'sent',
      'delivered',
    ]);
    await bob.client.markRead('alice');
    await world.advance(200);
    expect(alice.statuses.filter((s) => s.id === id).map((s) => s.status)).toEqual([
      'pending',
      'sent',
      'delivered',
      'read',
    ]);
    expect(alice.statusOf(id)).toBe('read');
    expect((await alice.client.store.outgoing(id))?.status).toBe('read');
  });

  it('a message to an offline device waits in its inbox and arrives when the device connects', async () => {
    world = await makeWorld();
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    await bob.client.close();
    const sent = [
      await alice.client.send('bob', text('1')),
      await alice.client.send('bob', text('2')),
      await alice.client.send('bob', text('3')),
    ];
    await world.advance(500);
    expect(sent.map((id) => alice.statusOf(id))).toEqual(['sent', 'sent', 'sent']);
    expect(bob.messages).toEqual([]);
    bob.client.start();
    await world.advance(500);
    expect(ids(bob.messages)).toEqual(sent);
    expect(sent.map((id) => alice.statusOf(id))).toEqual(['delivered', 'delivered', 'delivered']);
  });

  it("a message reaches every recipient device and the sender's other devices, once each", async () => {
    world = await makeWorld();
    const alicePhone = await world.device('alice', 'phone');
    const aliceLaptop = await world.device('alice', 'laptop');
    const bobPhone = await world.device('bob', 'phone');
    const bobTablet = await world.device('bob', 'tablet');
    const id = await alicePhone.client.send('bob', text('hi all'));
    await world.advance(300);
    for (const d of [aliceLaptop, bobPhone, bobTablet]) expect(ids(d.messages)).toEqual([id]);
    expect(alicePhone.messages).toEqual([]);
    const copy = aliceLaptop.messages[0]!;
    expect([copy.self, copy.conv, copy.from]).toEqual([true, 'bob', 'alice']);
    // Two recipient devices acked, but delivered is reported once.
    expect(alicePhone.statuses.filter((s) => s.id === id).map((s) => s.status)).toEqual([
      'pending',
      'sent',
      'delivered',
    ]);
  });

  it("a read on one device marks the conversation read on the user's other devices", async () => {
    world = await makeWorld();
    const alice = await world.device('alice');
    const bobPhone = await world.device('bob', 'phone');
    const bobTablet = await world.device('bob', 'tablet');
    const readElsewhere: string[][] = [];
    bobTablet.client.on('readElsewhere', (xs) => readElsewhere.push(xs));
    const id = await alice.client.send('bob', text('read me'));
    await world.advance(300);
    await bobPhone.client.markRead('alice');
    await world.advance(300);
    expect(readElsewhere).toEqual([[id]]);
    expect((await bobTablet.client.store.inbound('alice')).map((m) => m.read)).toEqual([true]);
    expect(alice.statusOf(id)).toBe('read');
  });

  it('markRead(conv, upTo) reads only up to and including upTo', async () => {
    world = await makeWorld();
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    const sent = await Promise.all([1, 2, 3].map((i) => alice.client.send('bob', text(String(i)))));
    await world.advance(300);
    await bob.client.markRead('alice', sent[1]);
    await world.advance(300);
    expect(sent.map((id) => alice.statusOf(id))).toEqual(['read', 'read', 'delivered']);
  });
});

describe('no loss and no duplicates across faults', () => {
  it('a cut between the server commit and its ack: the resend is deduped and shown once', async () => {
    world = await makeWorld();
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    let cutDone = false;
    world.net.intercept((frame, dir) => {
      if (cutDone || dir !== 'toClient') return 'pass';
      if (decodeServerFrame(frame, 1 << 20).t === 'ok') {
        cutDone = true;
        return 'cut';
      }
      return 'pass';
    });
    const id = await alice.client.send('bob', text('once'));
    await world.advance(3000);
    expect(cutDone).toBe(true);
    expect(ids(bob.messages)).toEqual([id]);
    expect(alice.statusOf(id)).toBe('delivered');
  });

  it("a cut between a delivery and the device's ack: redelivered, and shown once", async () => {
    world = await makeWorld();
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    let cuts = 0;
    world.net.intercept((frame, dir) => {
      if (cuts > 0 || dir !== 'toServer') return 'pass';
      if (decodeClientFrame(frame, 1 << 20).t === 'ack') {
        cuts++;
        return 'cut';
      }
      return 'pass';
    });
    const id = await alice.client.send('bob', text('once'));
    await world.advance(3000);
    expect(cuts).toBe(1);
    expect(ids(bob.messages)).toEqual([id]);
    expect(alice.statusOf(id)).toBe('delivered');
    expect(await world.server.store.readInbox({ user: 'bob', device: 'phone' }, 0, 10)).toEqual([]);
  });

  it('an acked message survives a server crash: a new engine over the same store delivers it', async () => {
    world = await makeWorld();
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    await bob.client.close();
    const id = await alice.client.send('bob', text('durable'));
    await world.advance(200);
    expect(alice.statusOf(id)).toBe('sent');
    await world.restartServer();
    bob.client.start();
    await world.advance(3000);
    expect(ids(bob.messages)).toEqual([id]);
    expect(alice.statusOf(id)).toBe('delivered');
  });

  it('a client restarted over its store resends its unacked outbox: nothing lost, nothing doubled', async () => {
    world = await makeWorld();
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    world.net.intercept((_f, dir) => (dir === 'toServer' ? 'drop' : 'pass'));
    const sent = await Promise.all([1, 2, 3].map((i) => alice.client.send('bob', text(`m${i}`))));
    await world.advance(100);
    expect(sent.map((id) => alice.statusOf(id))).toEqual(['pending', 'pending', 'pending']);
    await alice.restart();
    world.net.intercept(undefined);
    await world.advance(3000);
    expect(ids(bob.messages)).toEqual(sent);
    expect(bob.messages.map((m) => m.seq)).toEqual([1, 2, 3]);
  });

  it('a half-open connection is found by heartbeats on both sides, and the client reconnects', async () => {
    world = await makeWorld();
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    const states: string[] = [];
    alice.client.on('connection', (s) => states.push(s));
    const link = world.net.connections().find((l) => l.name === 'alice/phone')!;
    link.halfOpen();
    const id = await alice.client.send('bob', text('through the tunnel'));
    // Heartbeat is 1 s: the client gives up after 2 s of silence and reconnects.
    await world.advance(6000);
    expect(states).toContain('backoff');
    expect(alice.client.state).toBe('open');
    expect(ids(bob.messages)).toEqual([id]);
    expect(alice.statusOf(id)).toBe('delivered');
    // The server also dropped the dead session rather than keep it forever.
    expect(world.server.connectionCount).toBe(2);
  });
});

describe('order and gaps', () => {
  it('messages are shown in the order sent even when a later one is committed first, and history keeps that order', async () => {
    world = await makeWorld();
    const bob = await world.device('bob');
    const raw = await world.raw('alice-raw');
    await world.server.registerDevice('alice', 'raw');
    await raw.hello('alice', 'raw');
    raw.send({ t: 'send', r: 1, id: 'm3', to: 'bob', seq: 3, b: text('3') });
    raw.send({ t: 'send', r: 2, id: 'm1', to: 'bob', seq: 1, b: text('1') });
    await world.advance(100);
    expect(ids(bob.messages)).toEqual(['m1']);
    raw.send({ t: 'send', r: 3, id: 'm2', to: 'bob', seq: 2, b: text('2') });
    await world.advance(100);
    expect(ids(bob.messages)).toEqual(['m1', 'm2', 'm3']);
    expect(bob.gaps).toEqual([]);
    // m3 arrived first but was held: history lists it where it was shown, newest first.
    expect(ids(await bob.client.history('alice'))).toEqual(['m3', 'm2', 'm1']);
  });

  it('a hole that never fills becomes a gap event and the held messages are released in order', async () => {
    // A long heartbeat keeps the raw connection (which never pings) open through the wait.
    world = await makeWorld({ server: { heartbeatMs: 60_000 } });
    const bob = await world.device('bob');
    const raw = await world.raw('alice-raw');
    await raw.hello('alice', 'raw');
    raw.send({ t: 'send', r: 1, id: 'm1', to: 'bob', seq: 1, b: text('1') });
    raw.send({ t: 'send', r: 2, id: 'm4', to: 'bob', seq: 4, b: text('4') });
    raw.send({ t: 'send', r: 3, id: 'm5', to: 'bob', seq: 5, b: text('5') });
    await world.advance(100);
    expect(ids(bob.messages)).toEqual(['m1']);
    await world.advance(11_000); // default gapTimeoutMs is 10 s
    expect(bob.gaps).toEqual([
      { conv: 'alice', from: 'alice', fromDevice: 'raw', fromSeq: 2, toSeq: 3, reason: 'timeout' },
    ]);
    expect(ids(bob.messages)).toEqual(['m1', 'm4', 'm5']);
    // A straggler from inside the gap is still shown once, flagged late.
    raw.send({ t: 'send', r: 4, id: 'm2', to: 'bob', seq: 2, b: text('2') });
    await world.advance(100);
    expect(bob.messages.map((m) => [m.id, m.late])).toEqual([
      ['m1', false],
      ['m4', false],
      ['m5', false],
      ['m2', true],
    ]);
  });
});

describe('flow control', () => {
  it('the server keeps at most deliveryWindow unacked deliveries in flight to one device', async () => {
    world = await makeWorld({ server: { deliveryWindow: 4 } });
    const alice = await world.device('alice');
    await world.server.registerDevice('bob', 'raw');
    for (let i = 0; i < 10; i++) await alice.client.send('bob', text(String(i)));
    await world.advance(300);
    const raw = await world.raw('bob-raw');
    await raw.hello('bob', 'raw');
    await world.advance(500);
    const msgs = raw.frames.filter((f) => f.t === 'msg');
    expect(msgs).toHaveLength(4);
    raw.send({ t: 'ack', o: msgs.map((m) => (m as { o: number }).o) });
    await world.advance(100);
    expect(raw.frames.filter((f) => f.t === 'msg')).toHaveLength(8);
  });
});

describe('retention', () => {
  it('an undelivered message expires after the retention period and its sender sees expired, with reason expired', async () => {
    world = await makeWorld({ server: { retentionMs: 60_000, expiryIntervalMs: 10_000 } });
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    await bob.client.close();
    const id = await alice.client.send('bob', text('too late'));
    await world.advance(200);
    expect(alice.statusOf(id)).toBe('sent');
    await world.advance(75_000);
    expect(alice.statusOf(id)).toBe('expired');
    // Why, on the status event and stored with the message.
    expect(alice.statuses.at(-1)).toMatchObject({ id, status: 'expired', reason: 'expired' });
    expect(alice.statuses.at(-1)?.detail).toMatch(/no device of bob/);
    expect(await alice.client.messageInfo(id)).toMatchObject({ status: 'expired', reason: 'expired' });
    bob.client.start();
    await world.advance(500);
    expect(bob.messages).toEqual([]);
  });

  it('a delivered message never turns expired', async () => {
    world = await makeWorld({ server: { retentionMs: 60_000, expiryIntervalMs: 10_000 } });
    const alice = await world.device('alice');
    await world.device('bob', 'phone');
    const tablet = await world.device('bob', 'tablet');
    await tablet.client.close();
    const id = await alice.client.send('bob', text('seen on the phone'));
    await world.advance(75_000);
    expect(alice.statusOf(id)).toBe('delivered');
  });
});
