// Abuse resistance on the server side (issue 22): inbox quotas as the sender sees them, cost
// budgets keyed on the device and user, commit batches bounded by the rows they write, and the
// handshake deadline.
import { afterEach, describe, expect, it } from 'vitest';
import type { AppendInput, ServerStore } from '../src/server/store.js';
import { memoryServerStore } from '../src/server/stores/memory.js';
import { CostBudgets, frameCost } from '../src/server/costs.js';
import { FairCommitQueue } from '../src/server/commit-batch.js';
import { PROTOCOL_VERSION } from '../src/protocol/index.js';
import {
  groupSpam,
  makeWorld,
  settled,
  storeGate,
  text,
  UNLIMITED_BUDGETS,
  type RawConnection,
  type World,
} from './helpers.js';
import { kyberBundle } from './fixtures/keys.js';

let world: World | undefined;
afterEach(async () => {
  await world?.close();
  world = undefined;
});

/**
 * A store that records the ids of every append batch, and can hold appends (a slow disk) so that
 * frames pile up in the engine's commit queue meanwhile.
 */
function recording(inner: ServerStore) {
  const batches: string[][] = [];
  const gate = storeGate();
  const store: ServerStore = Object.create(inner) as ServerStore;
  store.append = async (batch: AppendInput[], now: number) => {
    batches.push(batch.map((i) => i.id));
    await gate.passed();
    return inner.append(batch, now);
  };
  return { store, batches, hold: gate.hold, release: gate.release };
}

describe('inbox quotas as the sender sees them', () => {
  it('an inbox quota refuses with inbox_full and the message is not lost for the sender', async () => {
    const { store, batches } = recording(memoryServerStore({ quotas: { inboxEntries: 3 } }));
    world = await makeWorld({ openStore: () => store });
    const alice = await world.device('alice');
    await world.server.registerDevice('bob', 'phone'); // bob is offline: his inbox fills
    const sent: string[] = [];
    for (let i = 0; i < 4; i++) sent.push(await alice.client.send('bob', text(`m${i}`)));
    await world.advance(500);
    expect(sent.slice(0, 3).map((id) => alice.statusOf(id))).toEqual(['sent', 'sent', 'sent']);
    const refused = sent[3]!;
    expect(alice.statusOf(refused)).toBe('failed');
    // The sender keeps the message, with why it failed: nothing silently dropped.
    expect(await alice.client.messageInfo(refused)).toMatchObject({ status: 'failed', reason: 'inbox_full' });
    const shown = (await alice.client.history('bob')).find((h) => h.id === refused);
    expect(shown).toMatchObject({ id: refused, status: 'failed', reason: 'inbox_full' });
    expect(alice.errors).toEqual([]);
    // And the client does not resend it by itself (no hammering of a full inbox).
    const appended = batches.flat().filter((id) => id === refused).length;
    await world.advance(5000);
    expect(batches.flat().filter((id) => id === refused).length).toBe(appended);
    // Once bob fetched his messages, the app may send it again, and it goes through.
    const bob = await world.device('bob');
    await world.advance(500);
    expect(bob.messages.map((m) => m.id)).toEqual(sent.slice(0, 3));
    const again = await alice.client.send('bob', text('m3 again'));
    await world.advance(500);
    expect(alice.statusOf(again)).toBe('delivered');
  });
});

describe('cost budgets', () => {
  /** A world where a device's budget is 200 units refilled at 10 a second, and alice's phone in it. */
  async function aliceOnTightBudget(): Promise<{ w: World; raw: RawConnection }> {
    const w = await makeWorld({
      server: {
        costBudgets: { device: { perSecond: 10, burst: 200 }, user: { perSecond: 1000, burst: 100_000 } },
      },
    });
    world = w;
    await w.server.registerDevice('alice', 'phone');
    const raw = await w.raw('a1');
    await raw.hello('alice', 'phone');
    return { w, raw };
  }

  it('every frame type has a cost, and a send costs its fan-out', () => {
    const send = { t: 'send', r: 1, id: 'x', to: '#g', seq: 1, b: new Uint8Array(0), g: true } as const;
    expect(frameCost(send, () => 2048)).toBe(2050);
    expect(frameCost({ t: 'ptok', r: 1 }, () => 0)).toBeGreaterThan(
      frameCost({ t: 'typ', to: 'bob', on: true }, () => 0),
    );
    expect(frameCost({ t: 'ack', o: Array.from({ length: 1024 }, (_, i) => i) }, () => 0)).toBe(129);
  });

  it('budgets survive a reconnect: a device in debt is refused at hello, before any store work, until its debt is paid', async () => {
    const { w, raw } = await aliceOnTightBudget();
    // ptok costs 64: three fit in the burst of 200, the fourth is refused with a typed error (and
    // its cost is taken as debt).
    for (let r = 1; r <= 4; r++) raw.send({ t: 'ptok', r, k: 'fcm', tok: `t${r}` });
    await w.advance(10);
    const answers = (p: typeof raw) => p.frames.map((f) => (f.t === 'err' ? f.c : f.t));
    expect(answers(raw)).toEqual(['welcome', 'ok', 'ok', 'ok', 'rate_limited']);
    expect(raw.closed).toBeUndefined();
    raw.conn.close(1000, 'bye');
    // A new connection of the same device finds the debt: refused at hello, 4003 (back off).
    const again = await w.raw('a2');
    await again.hello('alice', 'phone');
    expect(answers(again)).toEqual(['rate_limited']);
    expect(again.closed?.code).toBe(4003);
    // 56 units of debt at 10 a second: paid off within 6 s, and another 64 for a ptok 7 s later.
    await w.advance(13_000);
    const later = await w.raw('a3');
    await later.hello('alice', 'phone');
    later.send({ t: 'ptok', r: 9, k: 'fcm', tok: 'again' });
    await w.advance(10);
    expect(answers(later)).toEqual(['welcome', 'ok']);
  });

  it('a device that keeps sending over its budget is closed with 4003, and other users are unaffected', async () => {
    world = await makeWorld({
      server: { costBudgets: { device: { perSecond: 10, burst: 200 }, user: { perSecond: 10, burst: 200 } } },
    });
    const bob = await world.device('bob');
    await world.server.registerDevice('mallory', 'm');
    const raw = await world.raw('m');
    await raw.hello('mallory', 'm');
    for (let r = 1; r <= 20; r++) raw.send({ t: 'ptok', r, k: 'fcm', tok: `t${r}` });
    await world.advance(10);
    expect(raw.closed?.code).toBe(4003);
    const carol = await world.device('carol');
    const id = await carol.client.send('bob', text('still here'));
    await world.advance(300);
    expect(bob.messages.map((m) => m.id)).toEqual([id]);
  });

  it('a send costs its bytes: a device sending 60 KB messages is throttled with rate_limited and 4003, one sending 100-byte messages is not, and others are unaffected', async () => {
    world = await makeWorld({
      server: {
        costBudgets: { device: { perSecond: 10, burst: 2000 }, user: { perSecond: 10, burst: 2000 } },
      },
    });
    const bob = await world.device('bob');
    // Answers to requests (delivery statuses left out).
    const answers = (p: RawConnection) =>
      p.frames.filter((f) => f.t !== 'st').map((f) => (f.t === 'err' ? f.c : f.t));
    const send = (p: RawConnection, r: number, bytes: number) =>
      p.send({ t: 'send', r, id: `m${r}`, to: 'bob', seq: r, b: new Uint8Array(bytes) });
    // 60 KB is 960 units at 64 bytes a unit: two fit in the burst of 2,000, the third is refused.
    await world.server.registerDevice('mallory', 'm');
    const big = await world.raw('m');
    await big.hello('mallory', 'm');
    for (let r = 1; r <= 3; r++) send(big, r, 60_000);
    await world.advance(10);
    expect(answers(big)).toEqual(['welcome', 'ok', 'ok', 'rate_limited']);
    expect(big.frames.find((f) => f.t === 'err')).toMatchObject({ c: 'rate_limited', r: 3 });
    // Ignoring the refusals runs into a burst of debt: closed with 4003, like any other cost.
    for (let r = 4; r <= 6; r++) send(big, r, 60_000);
    await world.advance(10);
    expect(big.closed?.code).toBe(4003);
    // Twenty 100-byte messages (3-4 units each) from another device under the same budget all go in.
    await world.server.registerDevice('dave', 'd');
    const small = await world.raw('d');
    await small.hello('dave', 'd');
    for (let r = 1; r <= 20; r++) send(small, r, 100);
    await world.advance(10);
    expect(answers(small).filter((a) => a !== 'ok')).toEqual(['welcome']);
    const carol = await world.device('carol');
    const id = await carol.client.send('bob', text('still here'));
    await world.advance(300);
    expect(bob.messages.map((m) => m.id)).toEqual([
      'm1',
      'm2',
      ...Array.from({ length: 20 }, (_, i) => `m${i + 1}`),
      id,
    ]);
  });

  it('a device in debt has its frames refused before they are decoded, answered under their request id', async () => {
    const { w, raw } = await aliceOnTightBudget();
    // A frame the decoder would refuse as invalid (a msgpack extension type in it), 120 bytes:
    // {t: 'send', r: 7, x: ext 8 of 100 bytes}.
    const t = [0xa1, 0x74, 0xa4, ...new TextEncoder().encode('send')];
    const poison = new Uint8Array([
      0x83,
      ...t,
      0xa1,
      0x72,
      0x07,
      0xa1,
      0x78,
      0xc7,
      100,
      1,
      ...new Uint8Array(100),
    ]);
    raw.sendBytes(poison);
    await w.advance(10);
    expect(raw.frames.at(-1)).toMatchObject({ t: 'err', c: 'invalid_frame' }); // decoded: not in debt
    for (let r = 1; r <= 4; r++) raw.send({ t: 'ptok', r, k: 'fcm', tok: `t${r}` }); // the 4th: debt
    await w.advance(10);
    raw.sendBytes(poison);
    await w.advance(10);
    // In debt: refused unread (a decoded frame would have been answered invalid_frame).
    expect(raw.frames.at(-1)).toEqual({ t: 'err', c: 'rate_limited', r: 7, m: expect.any(String) });
    expect(raw.closed).toBeUndefined();
  });

  it('the budget maps are bounded', () => {
    const b = new CostBudgets(
      { device: { perSecond: 1, burst: 10 }, user: { perSecond: 1, burst: 10 } },
      100,
    );
    for (let i = 0; i < 1000; i++) b.charge(`u${i}`, 'd', 1, 0);
    expect(b.size).toBeLessThanOrEqual(200);
  });

  it('past the bound the budget unused longest is forgotten, never one in use: a device in debt keeps its debt', () => {
    const b = new CostBudgets(
      { device: { perSecond: 0.001, burst: 10 }, user: { perSecond: 0.001, burst: 10 } },
      2,
    );
    b.charge('u0', 'd', 10, 0);
    b.charge('u1', 'd', 1, 0);
    expect(b.charge('u0', 'd', 5, 2000)).toBe('over'); // u0 in use again, and in debt
    b.charge('u2', 'd', 1, 2000); // a third key: u1, unused since 0, is the one forgotten
    expect(b.inDebt('u0', 'd', 2000)).toBe(true);
    expect(b.size).toBe(4);
  });
});

describe('readers that do not read', () => {
  it("a session that does not read its answers gets no more key bundles claimed until it drains: a few claims wait, the rest are refused, and another user's claims are unaffected", async () => {
    // A slow link (2 bytes per ms each way) and a 2 KB high-water mark: answers pile up unsent.
    const w = (world = await makeWorld({
      faults: { latency: { min: 1, max: 2 }, bytesPerMs: 2 },
      server: { sendHighWaterBytes: 2048, maxKeyClaimsPer10s: 1000 },
    }));
    const owners = ['bob', 'dave', 'erin', 'frank', 'gina'];
    for (const user of owners) {
      await w.server.registerDevice(user, 'phone');
      await w.server.store.putKeys({ user, device: 'phone' }, kyberBundle());
    }
    let claims = 0;
    const claimKeys = w.server.store.claimKeys.bind(w.server.store);
    w.server.store.claimKeys = (...args) => {
      claims++;
      return claimKeys(...args);
    };
    const mallory = await w.raw('m');
    await mallory.hello('mallory', 'm1');
    /** Lets `s` seconds pass, mallory pinging so that the server keeps its session. */
    const alive = async (s: number) => {
      for (let i = 0; i < s; i++) {
        mallory.send({ t: 'ping' });
        await w.advance(1_000);
      }
    };
    await w.advance(2_000); // the welcome is through
    for (let r = 1; r <= 20; r++) mallory.send({ t: 'kget', r, u: owners });
    await w.advance(500); // every kget is in (~50 bytes each), and the first answer still queues
    // Each answer is some 9 KB: the first passes the high-water mark; the next 4 claims wait,
    // unclaimed, and the others are refused before the store is asked.
    const first = claims;
    expect(first).toBeGreaterThan(0);
    expect(first).toBeLessThanOrEqual(2);
    expect(mallory.frames.filter((f) => f.t === 'kb').length).toBe(0);
    // Another user on its own connection is served meanwhile (mallory is still backlogged).
    const carol = await w.raw('c');
    await carol.hello('carol', 'c1');
    carol.send({ t: 'kget', r: 1, u: ['bob'] });
    await alive(2);
    expect(carol.frames.filter((f) => f.t === 'kb' || f.t === 'err').map((f) => f.t)).toEqual(['kb']);
    expect(claims).toBe(first + 1);
    // Mallory's queue drains: the 4 held claims are served then, each answered once.
    await alive(60);
    expect(mallory.closed).toBeUndefined();
    expect(claims).toBe(first + 1 + 4);
    const answers = mallory.frames.filter((f) => f.t === 'kb' || f.t === 'err');
    expect(answers.length).toBe(20);
    expect(answers.filter((f) => f.t === 'kb').length).toBe(first + 4);
    expect(answers.filter((f) => f.t === 'err' && f.c === 'rate_limited').length).toBe(20 - first - 4);
    expect(new Set(answers.map((f) => f.r)).size).toBe(20);
  });
});

describe('handshake deadline', () => {
  it('a connection that has not opened its session is closed at helloTimeoutMs, not at the next liveness sweep', async () => {
    // Heartbeat 25 s: the liveness sweep runs every 12.5 s, so a sweep-kept deadline would close
    // these at 12.5 s. The hook never answers one of them (a handshake stuck in authentication).
    world = await makeWorld({
      server: {
        heartbeatMs: 25_000,
        helloTimeoutMs: 10_000,
        authenticate: (cred) =>
          cred === 'hang' ? new Promise(() => {}) : { user: 'alice', device: 'phone' },
      },
    });
    const w = world;
    const t0 = w.clock.now();
    const silent = await w.raw('silent');
    const stuck = await w.raw('stuck');
    stuck.send({ t: 'hello', v: [1, PROTOCOL_VERSION], cred: 'hang' });
    const opened = await w.raw('opened');
    await opened.hello('alice', 'phone');
    const accepted = w.clock.now() - t0; // connecting took a few ms of virtual time
    // The memory link's latency is 1-5 ms each way: the close reaches the peer within 10 ms of the
    // deadline, counted from when the server accepted the connection.
    await w.advance(t0 + 10_000 - 10 - w.clock.now());
    expect([silent.closed, stuck.closed]).toEqual([undefined, undefined]);
    await w.advance(accepted + 20);
    expect(silent.closed?.code).toBe(4000);
    expect(stuck.closed?.code).toBe(4000);
    // The deadline ends with the handshake: an opened session is kept (its heartbeat rules now).
    await world.advance(5_000);
    expect(opened.closed).toBeUndefined();
  });
});

describe('commit batches', () => {
  /**
   * A world on a recording store, without cost budgets: a spammer in a group with 1,023 offline
   * members, and alice and bob online.
   */
  async function spamWorld(maxCommitRows?: number) {
    const rec = recording(memoryServerStore());
    world = await makeWorld({
      openStore: () => rec.store,
      server: { ...(maxCommitRows ? { maxCommitRows } : {}), costBudgets: UNLIMITED_BUDGETS },
    });
    return { rec, w: world, ...(await groupSpam(world)) };
  }

  it('a 1,024-member group commit does not stall other senders beyond one batch', async () => {
    const { rec, w, spammer, group, alice: legit } = await spamWorld(4096);
    const { batches } = rec;
    // The disk stalls on the first spam commit while 40 messages to 1,023 members pile up, then
    // a 1:1 message from another user comes.
    rec.hold();
    batches.length = 0;
    for (let i = 0; i < 40; i++) void spammer.client.sendToGroup(group, text(`spam ${i}`));
    await w.advance(200);
    const started = batches.length;
    const id = await legit.client.send('bob', text('hi'));
    await w.advance(50);
    rec.release();
    await w.advance(2000);
    const at = batches.findIndex((b) => b.includes(id));
    // Structure, not time: no batch holds more group messages than fit 4,096 rows, the legit
    // message rides in the first batch after the one running when it came, and most of the spam
    // was still queued then (it did not wait for the spammer's queue to drain).
    expect(started).toBe(1);
    expect(Math.max(...batches.map((b) => b.length))).toBeLessThanOrEqual(3);
    expect(at).toBe(started);
    expect(batches.slice(at + 1).flat().length).toBeGreaterThan(30);
  });

  it('large fan-outs commit one to a transaction while others send, and fill the budget when nobody does', async () => {
    const { rec, w, spammer, group, alice } = await spamWorld();
    const { batches } = rec;
    const spam = async (n: number, during?: () => Promise<unknown>) => {
      rec.hold();
      batches.length = 0;
      const ids = await Promise.all(
        Array.from({ length: n }, (_, i) => spammer.client.sendToGroup(group, text(`spam ${i}`))),
      );
      await w.advance(100);
      await during?.();
      await w.advance(100);
      rec.release();
      await w.advance(2000);
      return batches.map((b) => b.filter((id) => ids.includes(id)).length).filter((n) => n > 0);
    };
    // Once the engine knows the group's fan-out (1,023 rows), and nobody else has sent for a
    // while, the whole budget (8,192 rows) holds 7 of them.
    await settled(w, spammer.client.sendToGroup(group, text('first')));
    await w.advance(5000);
    expect(Math.max(...(await spam(16)))).toBe(7);
    // Alice writes to bob meanwhile: one fan-out to a transaction, her message in a batch of its own.
    let mine = '';
    const perBatch = await spam(16, async () => (mine = await alice.client.send('bob', text('hi'))));
    expect(perBatch.every((n) => n === 1)).toBe(true);
    expect(batches.find((b) => b.includes(mine))).toEqual([mine]);
  });

  it('the commit queue keeps each sender in order and serves senders in turn', () => {
    const q = new FairCommitQueue<string>(64);
    for (let i = 0; i < 5; i++) q.push('a', `a${i}`, 1000);
    q.push('b', 'b0', 1000);
    q.push('b', 'b1', 1000);
    expect(q.take(100, 2000)).toEqual(['a0', 'b0']);
    expect(q.take(100, 2000)).toEqual(['a1', 'b1']);
    expect(q.take(100, 2000)).toEqual(['a2', 'a3']);
    q.push('c', 'c0', 5000);
    expect(q.take(100, 2000)).toEqual(['a4']);
    // An item over the budget goes alone.
    expect(q.take(100, 2000)).toEqual(['c0']);
    expect(q.length).toBe(0);
  });

  it('a small commit never shares a batch with a large fan-out, and waits for at most one', () => {
    const q = new FairCommitQueue<string>(64);
    for (let i = 0; i < 4; i++) q.push('spammer', `g${i}`, 1025);
    expect(q.take(512, 2048)).toEqual(['g0']); // running when the others come
    q.push('alice', 'a0', 3);
    q.push('bob', 'b0', 3);
    // Small and large alternate while both wait: the 1:1 messages go next, on their own.
    expect(q.take(512, 2048)).toEqual(['a0', 'b0']);
    expect(q.take(512, 2048)).toEqual(['g1']);
    q.push('alice', 'a1', 3);
    expect(q.take(512, 2048)).toEqual(['a1']);
    // A sender's small item behind its own large one keeps its place (per-sender order).
    q.push('spammer', 's0', 3);
    q.push('alice', 'a2', 3);
    expect(q.take(512, 2048)).toEqual(['g2']);
    expect(q.take(512, 2048)).toEqual(['a2']);
    expect(q.take(512, 2048)).toEqual(['g3']);
    expect(q.take(512, 2048)).toEqual(['s0']);
    expect(q.length).toBe(0);
  });
});
