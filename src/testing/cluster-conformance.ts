/**
 * The {@link ClusterAdapter} conformance suite: one case per rule of the contract, each on a fresh
 * cluster of up to three nodes. Run it against your own adapter with {@link registerCases}.
 */
import assert from 'node:assert/strict';
import type {
  ClusterAdapter,
  DeviceAddress,
  DoorbellEntry,
  PresenceEvent,
  TypingNotice,
} from '../server/cluster/types.js';
import type { ConformanceCase } from './conformance.js';

/** One isolated cluster (its own key prefix, hub, …) that a case builds its nodes in. */
export interface ClusterHarness {
  /** A new node of this cluster, not started. */
  node(): ClusterAdapter;
  /** Kills `node` like `kill -9`: no cleanup, its heartbeat and subscriptions just stop. */
  crash(node: ClusterAdapter): Promise<void>;
  /** How many entries the cluster's backend holds (keys, map entries): to show nothing leaks. */
  size(): Promise<number>;
  /** Deletes whatever the cluster left behind (nodes are stopped first by the suite). */
  close(): Promise<void>;
}

/** How the cluster suite builds the adapter under test. */
export interface ClusterSubject {
  /** Names the adapter in reports. */
  name: string;
  /**
   * The TTL the subject's nodes run with; the suite waits a few of them for a dead node's
   * entries to expire, so keep it small (300–500 ms). Heartbeats should be about a third of it.
   */
  ttlMs: number;
  /** A fresh, empty cluster. */
  open(): Promise<ClusterHarness>;
}

const alice1: DeviceAddress = { user: 'alice', device: 'a1' };
const alice2: DeviceAddress = { user: 'alice', device: 'a2' };
const bob1: DeviceAddress = { user: 'bob', device: 'b1' };
const carol1: DeviceAddress = { user: 'carol', device: 'c1' };
const nobody: DeviceAddress = { user: 'nobody', device: 'n1' };
/** Ids that would collide under naive key joining. */
const odd1: DeviceAddress = { user: 'x:y', device: 'z' };
const odd2: DeviceAddress = { user: 'x', device: 'y:z' };

/** Long enough for a pub/sub message to arrive, short against any TTL. */
const SETTLE_MS = 60;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `check` until it holds, failing after `ms`. */
async function eventually(what: string, ms: number, check: () => Promise<boolean> | boolean): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    if (await check()) return;
    if (Date.now() > end) assert.fail(`${what}: not within ${ms} ms`);
    await sleep(15);
  }
}

/** What a node received through its handlers. */
interface Inbox {
  doorbells: DeviceAddress[][];
  replaced: DeviceAddress[][];
  presence: PresenceEvent[];
  typing: Array<[string[], TypingNotice]>;
}

/** A started node and what it received. */
interface Member {
  node: ClusterAdapter;
  got: Inbox;
}

/** What a case works with: start nodes, crash them, wait for expiry. */
interface Ctx {
  h: ClusterHarness;
  ttlMs: number;
  start(id: string): Promise<Member>;
  /** Waits until `check` holds, for at most a few TTLs. */
  afterTtl(what: string, check: () => Promise<boolean> | boolean): Promise<void>;
}

/**
 * The cluster conformance cases.
 *
 * @example
 * ```ts
 * describe('my cluster', () => registerCases(clusterConformance(subject), it));
 * ```
 */
export function clusterConformance(subject: ClusterSubject): ConformanceCase[] {
  const cases: ConformanceCase[] = [];
  const test = (name: string, body: (c: Ctx) => Promise<void>): void => {
    cases.push({
      name,
      async run() {
        const h = await subject.open();
        const nodes: ClusterAdapter[] = [];
        const ctx: Ctx = {
          h,
          ttlMs: subject.ttlMs,
          async start(id) {
            const node = h.node();
            const got: Inbox = { doorbells: [], replaced: [], presence: [], typing: [] };
            node.onDoorbell((d) => got.doorbells.push(d));
            node.onReplaced((d) => got.replaced.push(d));
            node.onPresence((e) => got.presence.push(e));
            node.onTyping((u, n) => got.typing.push([u, n]));
            await node.start(id);
            nodes.push(node);
            return { node, got };
          },
          afterTtl: (what, check) => eventually(what, subject.ttlMs * 6 + 500, check),
        };
        try {
          await body(ctx);
        } finally {
          for (const n of nodes) if (n.nodeId !== undefined) await n.stop();
          await h.close();
        }
      },
    });
  };

  test('a registered device is located on its node from every node, many in one call', async (c) => {
    const a = await c.start('A');
    const b = await c.start('B');
    const x = await c.start('C');
    await a.node.register(alice1);
    await b.node.register(bob1);
    await a.node.register(odd1);
    for (const n of [a, b, x])
      assert.deepEqual(await n.node.locate([alice1, bob1, nobody, odd1, odd2]), [
        'A',
        'B',
        undefined,
        'A',
        undefined,
      ]);
    assert.deepEqual(await x.node.locate([]), []);
    assert.equal(a.node.nodeId, 'A');
  });

  test('the newest registration wins: the old node is told, and its late unregister changes nothing', async (c) => {
    const a = await c.start('A');
    const b = await c.start('B');
    await a.node.register(alice1);
    const moved = await b.node.register(alice1);
    assert.equal(moved.replaced, 'A');
    await eventually('A hears of the take-over', 1000, () => a.got.replaced.length === 1);
    assert.deepEqual(a.got.replaced[0], [alice1]);
    assert.deepEqual(await a.node.locate([alice1]), ['B']);
    const late = await a.node.unregister(alice1);
    assert.equal(late.removed, false);
    assert.deepEqual(await a.node.locate([alice1]), ['B']);
    assert.equal((await b.node.presence(['alice']))[0]!.online, true);
    // Registering again where it already is changes nothing and tells nobody.
    assert.equal((await b.node.register(alice1)).replaced, undefined);
    await sleep(SETTLE_MS);
    assert.equal(b.got.replaced.length, 0);
  });

  test('unregister forgets the device at once', async (c) => {
    const a = await c.start('A');
    const b = await c.start('B');
    await a.node.register(alice1);
    const r = await a.node.unregister(alice1);
    assert.equal(r.removed, true);
    assert.deepEqual(await b.node.locate([alice1]), [undefined]);
    assert.equal((await a.node.unregister(alice1)).removed, false);
  });

  test("a dead node's entries stop counting after the TTL, without cleanup by it", async (c) => {
    const a = await c.start('A');
    const b = await c.start('B');
    await a.node.register(alice1);
    await a.node.register(bob1);
    await c.h.crash(a.node);
    await c.afterTtl('the dead node expires', async () => {
      const where = await b.node.locate([alice1, bob1]);
      return where[0] === undefined && where[1] === undefined;
    });
    assert.deepEqual(
      (await b.node.presence(['alice', 'bob'])).map((p) => p.online),
      [false, false],
    );
    // The device reconnects elsewhere: a clean registration, nobody "replaced".
    const again = await b.node.register(alice1);
    assert.equal(again.replaced, undefined);
    assert.equal(again.cameOnline, true);
    assert.deepEqual(await b.node.locate([alice1]), ['B']);
  });

  test('a doorbell reaches the node holding each device, and no other', async (c) => {
    const a = await c.start('A');
    const b = await c.start('B');
    const x = await c.start('C');
    await b.node.register(alice1);
    await b.node.register(alice2);
    await x.node.register(bob1);
    await a.node.register(carol1);
    await a.node.ring([alice1, bob1, nobody, alice2, carol1]);
    await eventually(
      'doorbells arrive',
      1000,
      () => b.got.doorbells.length > 0 && x.got.doorbells.length > 0,
    );
    await sleep(SETTLE_MS);
    assert.deepEqual(b.got.doorbells, [[alice1, alice2]]);
    assert.deepEqual(x.got.doorbells, [[bob1]]);
    // A device on the ringing node itself is rung locally.
    assert.deepEqual(a.got.doorbells, [[carol1]]);
    await a.node.ring([]);
    await a.node.ring([nobody]);
    await sleep(SETTLE_MS);
    assert.equal(a.got.doorbells.length + b.got.doorbells.length + x.got.doorbells.length, 3);
  });

  test('entries given to ring go only with their own device, unchanged (an adapter may carry none)', async (c) => {
    const a = await c.start('A');
    const b = await c.start('B');
    await a.node.register(alice1);
    await b.node.register(bob1);
    const carried: Array<[string, DoorbellEntry[] | undefined]> = [];
    a.node.onDoorbell((_, e) => carried.push(['A', e]));
    b.node.onDoorbell((_, e) => carried.push(['B', e]));
    const status = (offset: number, ids: string[]): DoorbellEntry['entry'] => ({
      offset,
      kind: 'status',
      status: 'delivered',
      ids,
      by: 'carol',
      ts: 1,
    });
    // A short message rides too; its body is bytes (every value), which a text channel encodes.
    const message: DoorbellEntry['entry'] = {
      offset: 10,
      kind: 'msg',
      id: 'm4',
      from: { user: 'carol', device: 'laptop' },
      to: 'bob',
      seq: 3,
      ts: 2,
      body: Uint8Array.from({ length: 256 }, (_, i) => i),
    };
    const toBob = [
      { device: bob1, entry: status(7, ['m1']) },
      { device: bob1, entry: status(9, ['m2', 'm3']) },
      { device: bob1, entry: message },
    ];
    await a.node.ring([alice1, bob1], [{ device: alice1, entry: status(3, ['m0']) }, ...toBob]);
    await eventually('doorbells arrive', 1000, () => carried.length >= 2);
    await sleep(SETTLE_MS);
    for (const [node, e] of carried) {
      if (e === undefined) continue; // this adapter carries no entries: every session reads
      assert.deepEqual(e, node === 'A' ? [{ device: alice1, entry: status(3, ['m0']) }] : toBob);
    }
  });

  test('a lost doorbell is harmless: ring resolves, nothing is queued or replayed, the next one arrives', async (c) => {
    // The inbox is the truth: a device whose doorbell is lost gets its entries when it next
    // connects (registers) or polls. What the cluster must guarantee is that losing one neither
    // fails the sender nor leaves a backlog that a later node would be flooded with.
    const a = await c.start('A');
    const b = await c.start('B');
    await b.node.register(alice1);
    await c.h.crash(b.node); // B is not listening, but its registration is still within the TTL
    await a.node.ring([alice1]);
    await sleep(SETTLE_MS);
    assert.equal(a.got.doorbells.length, 0);
    // The device reconnects to a new node: no replay of the lost doorbell...
    const x = await c.start('C');
    await x.node.register(alice1);
    await sleep(SETTLE_MS);
    assert.equal(x.got.doorbells.length, 0);
    // ...and the next doorbell reaches it.
    await a.node.ring([alice1]);
    await eventually('the next doorbell', 1000, () => x.got.doorbells.length === 1);
    assert.deepEqual(x.got.doorbells[0], [alice1]);
  });

  test('a user is online while any device is on any node, and offline after the last one', async (c) => {
    const a = await c.start('A');
    const b = await c.start('B');
    const x = await c.start('C');
    const r1 = await a.node.register(alice1);
    assert.equal(r1.cameOnline, true);
    const r2 = await b.node.register(alice2);
    assert.equal(r2.cameOnline, false);
    assert.ok(r2.v > r1.v, 'versions grow');
    let [p] = await x.node.presence(['alice']);
    assert.equal(p!.online, true);
    const u1 = await a.node.unregister(alice1);
    assert.equal(u1.wentOffline, false);
    assert.equal((await x.node.presence(['alice']))[0]!.online, true);
    const u2 = await b.node.unregister(alice2);
    assert.equal(u2.wentOffline, true);
    assert.ok(u2.v > u1.v && u1.v > r2.v, 'versions grow');
    [p] = await x.node.presence(['alice']);
    assert.equal(p!.online, false);
    assert.ok(p!.v >= u2.v);
    assert.deepEqual(
      (await x.node.presence(['alice', 'nobody'])).map((s) => s.online),
      [false, false],
    );
    assert.deepEqual(await x.node.presence([]), []);
  });

  test('a user whose last device was on a dead node goes offline after the TTL, and watchers are told', async (c) => {
    const a = await c.start('A');
    const b = await c.start('B');
    const registered = await a.node.register(alice1);
    await a.node.register(bob1);
    await b.node.register({ user: 'bob', device: 'b2' });
    await b.node.watch('alice');
    await b.node.watch('bob');
    await c.h.crash(a.node);
    await c.afterTtl('alice offline', async () => !(await b.node.presence(['alice']))[0]!.online);
    await c.afterTtl('the reaper announces it', () => b.got.presence.some((e) => e.user === 'alice'));
    const e = b.got.presence.find((x) => x.user === 'alice')!;
    assert.equal(e.online, false);
    assert.equal(e.lost, true);
    assert.equal(e.origin, 'B');
    assert.ok(e.v > registered.v, 'the reaper versions its event after what it reaped');
    // Bob still has a device on a live node: online, and never announced offline.
    assert.equal((await b.node.presence(['bob']))[0]!.online, true);
    await sleep(SETTLE_MS);
    assert.equal(
      b.got.presence.some((x) => x.user === 'bob'),
      false,
    );
  });

  test('the node that reaps a dead node hears the users it left offline, even unwatched (it records last seen)', async (c) => {
    const a = await c.start('A');
    const b = await c.start('B');
    await a.node.register(carol1);
    await c.h.crash(a.node);
    await c.afterTtl('B reaps carol', () => b.got.presence.some((e) => e.user === 'carol'));
    const e = b.got.presence.find((x) => x.user === 'carol')!;
    assert.equal(e.online, false);
    assert.equal(e.lost, true);
    assert.equal(e.origin, 'B');
    await sleep(SETTLE_MS);
    assert.equal(b.got.presence.filter((x) => x.user === 'carol').length, 1, 'told once');
  });

  test('presence events reach the nodes that watch the user, and only while they watch', async (c) => {
    const a = await c.start('A');
    const b = await c.start('B');
    const x = await c.start('C');
    await b.node.watch('alice');
    await b.node.watch('alice'); // counted: one unwatch leaves it watched
    const r = await a.node.register(alice1);
    await a.node.publishPresence({ user: 'alice', online: true, v: r.v, at: 1 });
    await eventually('B hears it', 1000, () => b.got.presence.length === 1);
    assert.deepEqual(b.got.presence[0], { user: 'alice', online: true, v: r.v, at: 1, origin: 'A' });
    await a.node.publishPresence({ user: 'bob', online: true, v: r.v, at: 1 });
    await b.node.unwatch('alice');
    await a.node.publishPresence({ user: 'alice', online: false, v: r.v + 1, at: 2 });
    await eventually('still watched after one unwatch', 1000, () => b.got.presence.length === 2);
    await b.node.unwatch('alice');
    await a.node.publishPresence({ user: 'alice', online: true, v: r.v + 2, at: 3 });
    await sleep(SETTLE_MS);
    assert.equal(b.got.presence.length, 2);
    assert.equal(x.got.presence.length, 0);
    assert.equal(a.got.presence.length, 0);
  });

  test('typing notices reach the nodes holding devices of the users, for those users only', async (c) => {
    const a = await c.start('A');
    const b = await c.start('B');
    const x = await c.start('C');
    await b.node.register(bob1);
    await x.node.register(carol1);
    await x.node.register({ user: 'bob', device: 'b2' });
    const notice: TypingNotice = { from: alice1, to: 'g1', group: true, on: true };
    await a.node.typing(['bob', 'carol', 'nobody'], notice);
    await eventually('typing arrives', 1000, () => b.got.typing.length === 1 && x.got.typing.length === 1);
    await sleep(SETTLE_MS);
    assert.deepEqual(b.got.typing, [[['bob'], notice]]);
    assert.deepEqual(x.got.typing[0]![0].sort(), ['bob', 'carol']);
    assert.deepEqual(x.got.typing[0]![1], notice);
    assert.equal(a.got.typing.length, 0);
    await a.node.typing([], notice);
    await a.node.typing(['nobody'], notice);
    await sleep(SETTLE_MS);
    assert.equal(b.got.typing.length + x.got.typing.length, 2);
  });

  test('closeDevices closes each device on the node holding it, this one included, and nowhere else', async (c) => {
    const a = await c.start('A');
    const b = await c.start('B');
    const x = await c.start('C');
    const closed = new Map<string, Array<[DeviceAddress[], number]>>();
    for (const [id, m] of [
      ['A', a],
      ['B', b],
      ['C', x],
    ] as const) {
      closed.set(id, []);
      m.node.onClose((d, code) => closed.get(id)!.push([d, code]));
    }
    await a.node.register(alice1);
    await b.node.register(bob1);
    await b.node.register(carol1);
    await a.node.closeDevices([alice1, bob1, carol1, nobody], 4005);
    await eventually(
      'closes arrive',
      1000,
      () => closed.get('A')!.length === 1 && closed.get('B')!.length === 1,
    );
    await sleep(SETTLE_MS);
    assert.deepEqual(closed.get('A'), [[[alice1], 4005]]);
    assert.equal(closed.get('B')!.length, 1);
    assert.deepEqual(
      closed
        .get('B')![0]![0]
        .map((d) => d.device)
        .sort(),
      ['b1', 'c1'],
    );
    assert.equal(closed.get('B')![0]![1], 4005);
    assert.deepEqual(closed.get('C'), []);
  });

  test('a link code offered on one node is taken once, only for its user, from any node; its node is told', async (c) => {
    const a = await c.start('A');
    const b = await c.start('B');
    const approved: string[] = [];
    a.node.onLinkApproved((code) => approved.push(code));
    const waiting: DeviceAddress = { user: 'alice', device: 'new-laptop' };
    await a.node.offerLink('CODE1', waiting, 60_000);
    assert.equal(
      await b.node.takeLink('CODE1', 'mallory'),
      undefined,
      "another user's device cannot take it",
    );
    assert.equal(await b.node.takeLink('NOPE', 'alice'), undefined);
    assert.deepEqual(await b.node.takeLink('CODE1', 'alice'), waiting);
    assert.equal(await b.node.takeLink('CODE1', 'alice'), undefined, 'taken once');
    await eventually('the waiting node is told', 1000, () => approved.length === 1);
    assert.deepEqual(approved, ['CODE1']);
    // An offer lapses after its time.
    await a.node.offerLink('CODE2', waiting, Math.max(50, c.ttlMs / 4));
    await sleep(Math.max(50, c.ttlMs / 4) + SETTLE_MS);
    assert.equal(await b.node.takeLink('CODE2', 'alice'), undefined, 'expired');
  });

  test('stop leaves at once: devices forgotten, users who left with it announced offline', async (c) => {
    const a = await c.start('A');
    const b = await c.start('B');
    await a.node.register(alice1);
    await b.node.watch('alice');
    await a.node.stop();
    assert.equal(a.node.nodeId, undefined);
    assert.deepEqual(await b.node.locate([alice1]), [undefined]);
    await eventually('offline announced', 1000, () => b.got.presence.length === 1);
    assert.equal(b.got.presence[0]!.online, false);
    assert.equal(b.got.presence[0]!.origin, 'A');
    await a.node.stop(); // idempotent
  });

  test('bounded: a dead node is reaped in batches until the backend holds only the live nodes', async (c) => {
    const a = await c.start('A');
    const base = await c.h.size();
    const b = await c.start('B');
    const x = await c.start('C');
    for (let i = 0; i < 300; i++) await b.node.register({ user: `u${i % 120}`, device: `d${i}` });
    for (let i = 0; i < 50; i++) await x.node.register({ user: `u${i}`, device: `x${i}` });
    for (let i = 0; i < 50; i++) await x.node.unregister({ user: `u${i}`, device: `x${i}` });
    assert.ok((await c.h.size()) > base);
    await c.h.crash(b.node);
    await x.node.stop();
    await c.afterTtl('everything of the dead node reaped', async () => (await c.h.size()) <= base);
    // Rings to devices of the dead node go nowhere and leave nothing behind.
    for (let i = 0; i < 100; i++) await a.node.ring([{ user: 'u1', device: `d${i}` }]);
    assert.ok((await c.h.size()) <= base);
    assert.equal(a.got.doorbells.length, 0);
  });

  return cases;
}
