/**
 * Group changes that name many users, part of the storage-quota conformance
 * (`serverStoreQuotaConformance` runs it). A store that plans such a change with shortcuts (reads
 * of many users at once, counters written back per transaction rather than per entry, as the
 * SQLite store's writer does) must keep every per-user rule for each of them as for one: devices
 * looked up, the group quota, pending invites, one event per device at its next offset, and the
 * counters right for what comes next.
 */
import assert from 'node:assert/strict';
import type { DeviceAddress, GroupInput, ServerStore } from '../server/store.js';
import { codeOf, one, type QuotaSuite } from './server-store-full-inbox.js';

/** Users named by the cases: more than any bulk threshold, some with two devices. */
const MANY = 40;
const users = Array.from({ length: MANY }, (_, i) => `u${String(i).padStart(2, '0')}`);
/** Every third user has a second device. */
const devicesOf = (u: string): DeviceAddress[] =>
  Number(u.slice(1)) % 3 === 0
    ? [
        { user: u, device: 'd1' },
        { user: u, device: 'd2' },
      ]
    : [{ user: u, device: 'd1' }];
const owner: DeviceAddress = { user: 'owner', device: 'o1' };
const other: DeviceAddress = { user: 'other', device: 'x1' };

const change = (from: DeviceAddress, id: string, g: string, c: GroupInput['change']): GroupInput => ({
  kind: 'group',
  from,
  id,
  group: g,
  change: c,
  maxMembers: 256,
});

/** A device's inbox as `offset:kind[:op or id]`. */
async function inboxOf(store: ServerStore, d: DeviceAddress): Promise<string[]> {
  const entries = await store.readInbox(d, 0, 1_000_000);
  return entries.map((e) =>
    e.kind === 'group' ? `${e.offset}:${e.event.op}` : `${e.offset}:${e.kind === 'msg' ? e.id : e.kind}`,
  );
}

const members = async (store: ServerStore, g: string): Promise<string[]> =>
  ((await store.group(g))?.members ?? []).map((m) => m.user).sort();

/** Registers the large-group cases with the suite's builder. */
export function serverStoreLargeGroupCases({ withQuotas, prefix }: QuotaSuite): void {
  withQuotas({ groupsPerUser: 2 })(
    `${prefix}a change naming ${MANY} users keeps every per-user rule: unknown users and a user at its group quota refuse it whole`,
    async (h) => {
      for (const d of [owner, other, ...users.flatMap(devicesOf)]) await h.store.registerDevice(d, 1);
      // u07 is in two groups already (the quota).
      for (const g of ['#q1', '#q2'])
        assert.equal(
          codeOf(await one(h.store, change(other, `c${g}`, g, { op: 'create', name: g, members: ['u07'] }))),
          'ok',
        );
      const before = await inboxOf(h.store, { user: 'u07', device: 'd1' });
      const create = (id: string, named: string[]) =>
        one(h.store, change(owner, id, '#big', { op: 'create', name: 'big', members: named }));
      assert.equal(codeOf(await create('c1', [...users, 'nobody'])), 'unknown_recipient');
      assert.equal(codeOf(await create('c2', users)), 'quota_exceeded');
      assert.equal(await h.store.group('#big'), undefined, 'nothing of a refused create is written');
      assert.deepEqual(await inboxOf(h.store, { user: 'u07', device: 'd1' }), before);
      for (const u of users.filter((x) => x !== 'u07'))
        for (const d of devicesOf(u)) assert.deepEqual(await inboxOf(h.store, d), [], `${u}/${d.device}`);
      // Without u07 it goes through: the group quota is per user, not per change.
      assert.equal(
        codeOf(
          await create(
            'c3',
            users.filter((x) => x !== 'u07'),
          ),
        ),
        'ok',
      );
      assert.equal((await members(h.store, '#big')).length, MANY);
    },
  );

  withQuotas({})(
    `${prefix}a change naming ${MANY} users writes one event to each of their devices at its next offset, and the counters follow`,
    async (h) => {
      for (const d of [owner, other, ...users.flatMap(devicesOf)]) await h.store.registerDevice(d, 1);
      const first = users.slice(0, 20);
      // Half the users already hold an entry (so their next offsets differ from the others').
      for (const u of first)
        await one(h.store, {
          kind: 'msg',
          from: other,
          id: `pre-${u}`,
          to: u,
          seq: 0,
          body: new Uint8Array(4),
        });
      const created = await one(
        h.store,
        change(owner, 'c1', '#big', { op: 'create', name: 'big', members: users }),
      );
      assert.ok(created.ok, 'created');
      const devices = users.flatMap(devicesOf);
      assert.equal(created.notify.length, devices.length + 1, 'every device rung once, the creator too');
      for (const d of devices) {
        const had = first.includes(d.user) ? [`1:pre-${d.user}`] : [];
        assert.deepEqual(
          await inboxOf(h.store, d),
          [...had, `${had.length + 1}:create`],
          `${d.user}/${d.device}`,
        );
      }
      // A message next lands right after (the counters were written back), and acks free it.
      const sent = await one(h.store, {
        kind: 'msg',
        from: owner,
        id: 'gm1',
        to: '#big',
        seq: 1,
        group: true,
        body: new Uint8Array(8),
      });
      assert.ok(sent.ok, 'sent');
      for (const d of devices) {
        const had = first.includes(d.user) ? 1 : 0;
        const inbox = await inboxOf(h.store, d);
        assert.deepEqual(inbox.slice(-1), [`${had + 2}:gm1`], `${d.user}/${d.device}`);
        await h.store.ack(d, [had + 1, had + 2], 2000);
      }
      const u0 = devicesOf('u00')[0]!;
      assert.deepEqual(await inboxOf(h.store, u0), ['1:pre-u00']);
    },
  );

  withQuotas({})(
    `${prefix}an add naming ${MANY} users takes their pending invites away and tells members and newcomers apart`,
    async (h) => {
      for (const d of [owner, other, ...users.flatMap(devicesOf)]) await h.store.registerDevice(d, 1);
      const g = '#grow';
      const firstHalf = users.slice(0, 20);
      const invited = users.slice(20, 25);
      const c = { op: 'create', name: 'grow', members: firstHalf, invite: invited } as const;
      assert.equal(codeOf(await one(h.store, change(owner, 'c1', g, c))), 'ok');
      assert.equal(
        codeOf(await one(h.store, change(owner, 'a1', g, { op: 'add', members: users.slice(20) }))),
        'ok',
      );
      assert.deepEqual(await members(h.store, g), ['owner', ...users].sort());
      // The invites the add made moot are gone: there is nothing left to decline.
      for (const u of invited)
        assert.equal(
          codeOf(await one(h.store, change({ user: u, device: 'd1' }, `dec-${u}`, g, { op: 'decline' }))),
          'forbidden',
          u,
        );
      // Old members see the add; newcomers the group as a snapshot; invitees their invite first.
      const d00 = { user: 'u00', device: 'd1' };
      const d21 = { user: 'u21', device: 'd1' };
      const d30 = { user: 'u30', device: 'd2' };
      assert.deepEqual(await inboxOf(h.store, d00), ['1:create', '2:add']);
      assert.deepEqual(await inboxOf(h.store, d21), ['1:invite', '2:add']);
      assert.deepEqual(await inboxOf(h.store, d30), ['1:add']);
      const [snap] = await h.store.readInbox(d30, 0, 1);
      assert.ok(
        snap?.kind === 'group' && snap.event.snapshot?.length === MANY + 1,
        'a newcomer gets the whole membership',
      );
      const [delta] = await h.store.readInbox(d00, 1, 1);
      assert.ok(
        delta?.kind === 'group' && delta.event.snapshot === undefined,
        'a member gets the change alone',
      );
    },
  );
}
