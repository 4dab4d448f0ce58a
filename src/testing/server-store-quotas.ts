/**
 * The storage-quota part of the {@link ServerStore} conformance: every built-in store (memory,
 * SQLite, PostgreSQL) runs it, and so can an integrator's own. Each case opens a store with small
 * quotas and proves one guarantee of docs/security.md, "Storage quotas"; what a full inbox does to
 * the other recipients is in server-store-full-inbox.ts.
 */
import assert from 'node:assert/strict';
import { PostboxError, isPostboxError } from '../protocol/errors.js';
import { capable } from '../server/capabilities.js';
import type { StoreQuotas } from '../server/quotas.js';
import type {
  AppendInput,
  DeviceAddress,
  GroupInput,
  KeyUpload,
  MessageInput,
  ServerStore,
  StoreCapabilities,
} from '../server/store.js';
import { skipUnmet, subjectHas } from './case-needs.js';
import { storeCaseBuilder, type ConformanceCase } from './conformance.js';
import { codeOf, one, serverStoreFullInboxCases } from './server-store-full-inbox.js';
import { serverStoreLargeGroupCases } from './server-store-large-groups.js';

/** How the quota suite opens the adapter under test. */
export interface QuotaStoreSubject {
  /** Names the adapter in reports. */
  name: string;
  /** A store over fresh empty data, enforcing `quotas` (the rest at their defaults). */
  open(quotas: Partial<StoreQuotas>): Promise<ServerStore>;
  /** Closes `store` and opens a new one over the SAME data with the same quotas (a restart). */
  reopen(store: ServerStore): Promise<ServerStore>;
  /** Another store over the same data, alongside (a second node); the suite closes it. Optional. */
  share?(store: ServerStore): Promise<ServerStore>;
  /**
   * The capabilities the store declares: the cases that need one run only when it is declared
   * here, and are skipped, saying why, otherwise.
   */
  capabilities?: StoreCapabilities;
}

const alice1: DeviceAddress = { user: 'alice', device: 'a1' };
const bob1: DeviceAddress = { user: 'bob', device: 'b1' };
const bob2: DeviceAddress = { user: 'bob', device: 'b2' };
const carol1: DeviceAddress = { user: 'carol', device: 'c1' };
const dave1: DeviceAddress = { user: 'dave', device: 'd1' };

const bytes = (n: number): Uint8Array => new Uint8Array(n).fill(7);
const msg = (from: DeviceAddress, id: string, to: string, size = 10, seq = 1): MessageInput => ({
  kind: 'msg',
  from,
  id,
  to,
  seq,
  body: bytes(size),
});
const group = (from: DeviceAddress, id: string, g: string, change: GroupInput['change']): GroupInput => ({
  kind: 'group',
  from,
  id,
  group: g,
  change,
  maxMembers: 256,
});

async function inboxOf(store: ServerStore, d: DeviceAddress): Promise<string[]> {
  const entries = await store.readInbox(d, 0, 1_000_000);
  return entries.map((e) => (e.kind === 'msg' ? e.id : e.kind));
}

async function offsetsOf(store: ServerStore, d: DeviceAddress): Promise<number[]> {
  return (await store.readInbox(d, 0, 1_000_000)).map((e) => e.offset);
}

function keysUpload(pre: number[], kyber: number[] = [], gen = 1): KeyUpload {
  const sig = (id: number) => ({ id, key: bytes(33), signature: bytes(64) });
  return {
    registrationId: gen,
    identityKey: bytes(33).fill(gen),
    signedPreKey: sig(1),
    lastResortKyber: sig(9000),
    preKeys: pre.map((id) => ({ id, key: bytes(33) })),
    kyberPreKeys: kyber.map(sig),
  };
}

async function rejectsWith(p: Promise<unknown>, code: string): Promise<void> {
  try {
    await p;
  } catch (e) {
    assert.ok(isPostboxError(e), `expected a PostboxError, got ${String(e)}`);
    assert.equal((e as PostboxError).code, code);
    return;
  }
  assert.fail(`expected a rejection with ${code}`);
}

/**
 * The storage-quota conformance cases for `subject`: register them with {@link registerCases}.
 *
 * @example
 * ```ts
 * registerCases(serverStoreQuotaConformance({
 *   name: 'mine',
 *   open: (quotas) => myStore({ quotas }),
 *   reopen: async (s) => { await s.close(); return myStore({ quotas, sameData: true }); },
 * }), it);
 * ```
 */
export function serverStoreQuotaConformance(subject: QuotaStoreSubject): ConformanceCase[] {
  const cases: ConformanceCase[] = [];
  const withQuotas = (quotas: Partial<StoreQuotas>) =>
    storeCaseBuilder({ open: () => subject.open(quotas), reopen: (s) => subject.reopen(s) }, cases);
  const prefix = `${subject.name} quotas: `;
  const register = async (store: ServerStore, ...ds: DeviceAddress[]) => {
    for (const d of ds) await store.registerDevice(d, 1);
  };

  withQuotas({ inboxEntries: 3 })(
    `${prefix}an inbox at its entry quota refuses a message with inbox_full, stores nothing of it, and takes it once acked`,
    async (h) => {
      await register(h.store, alice1, bob1);
      for (const id of ['m1', 'm2', 'm3'])
        assert.equal(codeOf(await one(h.store, msg(alice1, id, 'bob'))), 'ok');
      assert.equal(codeOf(await one(h.store, msg(alice1, 'm4', 'bob'))), 'inbox_full');
      assert.deepEqual(await inboxOf(h.store, bob1), ['m1', 'm2', 'm3']);
      // Nothing of the refused item was kept: not even its dedupe record, so the resend commits.
      const offsets = await offsetsOf(h.store, bob1);
      await h.store.ack(bob1, [offsets[0]!], 2000);
      assert.equal(codeOf(await one(h.store, msg(alice1, 'm4', 'bob'))), 'ok');
      const again = await one(h.store, msg(alice1, 'm4', 'bob'));
      assert.ok(again.ok && again.duplicate, 'the accepted resend is now a duplicate');
      assert.deepEqual(await inboxOf(h.store, bob1), ['m2', 'm3', 'm4']);
    },
  );

  withQuotas({ inboxBytes: 1000 })(
    `${prefix}an inbox at its byte quota refuses a message with inbox_full`,
    async (h) => {
      await register(h.store, alice1, bob1);
      assert.equal(codeOf(await one(h.store, msg(alice1, 'm1', 'bob', 600))), 'ok');
      assert.equal(codeOf(await one(h.store, msg(alice1, 'm2', 'bob', 600))), 'inbox_full');
      assert.equal(codeOf(await one(h.store, msg(alice1, 'm3', 'bob', 400))), 'ok');
      assert.deepEqual(await inboxOf(h.store, bob1), ['m1', 'm3']);
    },
  );

  withQuotas({ inboxEntries: 2 })(
    `${prefix}usage is durable: a restarted store still counts what waits in an inbox`,
    async (h) => {
      await register(h.store, alice1, bob1);
      await h.store.append([msg(alice1, 'm1', 'bob'), msg(alice1, 'm2', 'bob')], 1000);
      const store = await h.reopen();
      assert.equal(codeOf(await one(store, msg(alice1, 'm3', 'bob'))), 'inbox_full');
    },
  );

  withQuotas({ inboxEntries: 3 })(
    `${prefix}one batch cannot pass the quota: its items past it are refused, in batch order`,
    async (h) => {
      await register(h.store, alice1, bob1, carol1);
      const out = await h.store.append(
        [
          msg(alice1, 'm1', 'bob'),
          msg(alice1, 'm2', 'bob'),
          msg(carol1, 'c1', 'bob'),
          msg(alice1, 'm3', 'bob'),
          msg(alice1, 'x1', 'carol'),
        ],
        1000,
      );
      assert.deepEqual(out.map(codeOf), ['ok', 'ok', 'ok', 'inbox_full', 'ok']);
      assert.deepEqual(await inboxOf(h.store, bob1), ['m1', 'm2', 'c1']);
    },
  );

  withQuotas({ inboxEntries: 1 })(
    `${prefix}entries the server makes (statuses, group events) are never refused, and count`,
    async (h) => {
      await register(h.store, alice1, bob1, carol1);
      assert.equal(codeOf(await one(h.store, msg(alice1, 'm1', 'bob'))), 'ok');
      assert.equal(codeOf(await one(h.store, msg(bob1, 'r1', 'alice'))), 'ok');
      // alice's inbox is full (r1); bob's ack of m1 still tells her `delivered`.
      await h.store.ack(bob1, await offsetsOf(h.store, bob1), 2000);
      assert.deepEqual(await inboxOf(h.store, alice1), ['r1', 'status']);
      // A group change reaches a full inbox too.
      await one(h.store, group(carol1, 'g1', '#g', { op: 'create', name: 'G', members: ['alice'] }));
      assert.deepEqual(await inboxOf(h.store, alice1), ['r1', 'status', 'group']);
      assert.equal(codeOf(await one(h.store, msg(carol1, 'c1', 'alice'))), 'inbox_full');
    },
  );

  withQuotas({ inboxEntries: 1 })(
    `${prefix}a read receipt to a full inbox is refused with inbox_full`,
    async (h) => {
      await register(h.store, alice1, bob1, carol1);
      await one(h.store, msg(alice1, 'm1', 'bob'));
      await one(h.store, msg(carol1, 'c1', 'alice'));
      const receipt: AppendInput = {
        kind: 'receipt',
        from: bob1,
        id: 'rc1',
        to: 'alice',
        status: 'read',
        ids: ['m1'],
      };
      assert.equal(codeOf(await one(h.store, receipt)), 'inbox_full');
      await h.store.ack(alice1, await offsetsOf(h.store, alice1), 2000);
      assert.equal(codeOf(await one(h.store, receipt)), 'ok');
    },
  );

  withQuotas({ inboxEntries: 2 })(`${prefix}expiry frees inbox quota`, async (h) => {
    await register(h.store, alice1, bob1);
    await h.store.append([msg(alice1, 'm1', 'bob'), msg(alice1, 'm1b', 'bob')], 1000);
    assert.equal(codeOf(await one(h.store, msg(alice1, 'm2', 'bob'), 1500)), 'inbox_full');
    await h.store.expire(1200, 3000);
    assert.equal(codeOf(await one(h.store, msg(alice1, 'm2', 'bob'), 3000)), 'ok');
  });

  withQuotas({ inboxEntries: 4 })(
    `${prefix}several nodes appending to one inbox at once never pass its quota`,
    async (h) => {
      await register(h.store, alice1, bob1, carol1, dave1);
      const nodes = [h.store];
      for (let i = 0; subject.share && i < 2; i++) nodes.push(await subject.share(h.store));
      try {
        const senders = [alice1, carol1, dave1];
        const outs = await Promise.all(
          nodes.map((n, i) =>
            n.append(
              [0, 1, 2].map((k) => msg(senders[i % senders.length]!, `n${i}-${k}`, 'bob')),
              1000,
            ),
          ),
        );
        const ok = outs.flat().filter((o) => o.ok).length;
        assert.equal(ok, Math.min(4, 3 * nodes.length));
        assert.equal((await inboxOf(h.store, bob1)).length, ok);
      } finally {
        for (const n of nodes.slice(1)) await n.close();
      }
    },
  );

  withQuotas({ preKeys: 5 })(
    `${prefix}a key upload past the prekey quota is refused whole and changes nothing`,
    async (h) => {
      await register(h.store, bob1);
      await h.store.putKeys(bob1, keysUpload([1, 2, 3], [11, 12]));
      await rejectsWith(h.store.putKeys(bob1, keysUpload([4, 5, 6])), 'quota_exceeded');
      await rejectsWith(h.store.putKeys(bob1, keysUpload([], [13, 14, 15, 16])), 'quota_exceeded');
      assert.deepEqual(await h.store.keyCount(bob1), { preKeys: 3, kyberPreKeys: 2 });
      // Re-uploading ids it has does not count twice; up to the quota is fine.
      await h.store.putKeys(bob1, keysUpload([1, 2, 3, 4, 5], [11, 12, 13]));
      assert.deepEqual(await h.store.keyCount(bob1), { preKeys: 5, kyberPreKeys: 3 });
      // A re-install (new identity) starts from none.
      await h.store.putKeys(bob1, keysUpload([7, 8, 9, 10, 11], [], 2));
      assert.deepEqual(await h.store.keyCount(bob1), { preKeys: 5, kyberPreKeys: 0 });
    },
  );

  withQuotas({ groupsPerUser: 2 })(
    `${prefix}a create or add past a user's group quota is refused with quota_exceeded and adds no one`,
    async (h) => {
      await register(h.store, alice1, bob1, carol1);
      const create = (id: string, g: string, members: string[]) =>
        one(h.store, group(alice1, id, g, { op: 'create', name: g, members }));
      assert.equal(codeOf(await create('c1', '#g1', ['bob'])), 'ok');
      assert.equal(
        codeOf(
          await one(h.store, group(carol1, 'c2', '#g2', { op: 'create', name: 'g2', members: ['bob'] })),
        ),
        'ok',
      );
      // bob is in two groups: neither a create nor an add may make it three; alice is in one.
      assert.equal(codeOf(await create('c3', '#g3', ['bob', 'carol'])), 'quota_exceeded');
      assert.equal(await h.store.group('#g3'), undefined);
      assert.equal(codeOf(await create('c4', '#g4', ['carol'])), 'ok');
      assert.equal(
        codeOf(await one(h.store, group(alice1, 'a1', '#g4', { op: 'add', members: ['bob'] }))),
        'quota_exceeded',
      );
      assert.deepEqual(
        (await h.store.group('#g4'))!.members.map((m) => m.user),
        ['alice', 'carol'],
      );
      // Leaving one frees a place.
      await one(h.store, group(bob1, 'l1', '#g2', { op: 'leave' }));
      assert.equal(
        codeOf(await one(h.store, group(alice1, 'a2', '#g4', { op: 'add', members: ['bob'] }))),
        'ok',
      );
      // The creator counts too.
      assert.equal(codeOf(await create('c5', '#g5', [])), 'quota_exceeded');
    },
  );

  withQuotas({ invitesPerUser: 2 })(
    `${prefix}invites: an invited user is no member until it accepts; decline and accept take the invite away`,
    async (h) => {
      await register(h.store, alice1, bob1, bob2, carol1);
      const create = group(alice1, 'c1', '#g', {
        op: 'create',
        name: 'G',
        members: [],
        invite: ['bob', 'carol'],
      });
      assert.equal(codeOf(await one(h.store, create)), 'ok');
      assert.deepEqual(
        (await h.store.group('#g'))!.members.map((m) => m.user),
        ['alice'],
      );
      for (const d of [bob1, bob2]) {
        const [e] = await h.store.readInbox(d, 0, 10);
        assert.ok(
          e?.kind === 'group' && e.event.op === 'invite' && e.event.by === 'alice',
          'an invite event',
        );
      }
      // Not a member: its message is refused, it receives nothing of the group.
      assert.equal(codeOf(await one(h.store, { ...msg(bob1, 'b1', '#g'), group: true })), 'not_member');
      assert.equal(codeOf(await one(h.store, { ...msg(alice1, 'a1', '#g'), group: true })), 'ok');
      assert.deepEqual(await inboxOf(h.store, bob1), ['group']);
      assert.equal(codeOf(await one(h.store, group(bob1, 'acc', '#g', { op: 'accept' }))), 'ok');
      assert.deepEqual(
        (await h.store.group('#g'))!.members.map((m) => m.user),
        ['alice', 'bob'],
      );
      assert.ok(await h.store.related('alice', 'bob'), 'accepting is taking part');
      // A second accept changes nothing; carol declines and then cannot accept.
      const again = await one(h.store, group(bob2, 'acc2', '#g', { op: 'accept' }));
      assert.equal(codeOf(again), 'ok');
      assert.equal((await h.store.group('#g'))!.ver, 2);
      assert.equal(codeOf(await one(h.store, group(carol1, 'dec', '#g', { op: 'decline' }))), 'ok');
      assert.equal(codeOf(await one(h.store, group(carol1, 'acc3', '#g', { op: 'accept' }))), 'forbidden');
      assert.equal(codeOf(await one(h.store, group(carol1, 'dec2', '#g', { op: 'decline' }))), 'forbidden');
    },
  );

  withQuotas({ invitesPerUser: 2 })(
    `${prefix}invites: a user holds at most its quota of pending invites; further ones are not made`,
    async (h) => {
      await register(h.store, alice1, carol1);
      for (let i = 0; i < 4; i++) {
        const c = group(alice1, `c${i}`, `#g${i}`, {
          op: 'create',
          name: 'G',
          members: [],
          invite: ['carol'],
        });
        assert.equal(codeOf(await one(h.store, c)), 'ok');
      }
      assert.deepEqual(await inboxOf(h.store, carol1), ['group', 'group']);
      assert.equal(codeOf(await one(h.store, group(carol1, 'a', '#g3', { op: 'accept' }))), 'forbidden');
      assert.equal(codeOf(await one(h.store, group(carol1, 'b', '#g0', { op: 'accept' }))), 'ok');
    },
  );

  withQuotas({ invitesPerUser: 2 })(
    `${prefix}invites: several nodes inviting one user at once never pass its pending-invite quota`,
    async (h) => {
      await register(h.store, alice1, bob1, carol1, dave1);
      const nodes = [h.store];
      for (let i = 0; subject.share && i < 2; i++) nodes.push(await subject.share(h.store));
      try {
        const creators = [alice1, bob1, dave1];
        // Each node creates three groups inviting carol, all at once: nine invites race for two places.
        await Promise.all(
          nodes.flatMap((n, i) =>
            [0, 1, 2].map((k) =>
              one(
                n,
                group(creators[i % creators.length]!, `n${i}-${k}`, `#n${i}-${k}`, {
                  op: 'create',
                  name: 'G',
                  members: [],
                  invite: ['carol'],
                }),
              ),
            ),
          ),
        );
        assert.deepEqual(await inboxOf(h.store, carol1), ['group', 'group'], 'two invites, no more');
      } finally {
        for (const n of nodes.slice(1)) await n.close();
      }
    },
  );

  withQuotas({})(`${prefix}a device holds one push token: registering another replaces it`, async (h) => {
    assert.ok(capable(h.store, 'pushTokens'), 'the store declares pushTokens');
    await register(h.store, bob1);
    for (let i = 0; i < 20; i++) await h.store.setPushToken(bob1, { kind: 'fcm', token: `t${i}` });
    assert.deepEqual(await h.store.pushToken(bob1), { kind: 'fcm', token: 't19' });
  });

  cases[cases.length - 1]!.needs = ['pushTokens'];

  serverStoreFullInboxCases({ withQuotas, prefix, share: subject.share?.bind(subject) });
  serverStoreLargeGroupCases({ withQuotas, prefix });
  skipUnmet(cases, (need) => subjectHas(subject, need), `subject ${subject.name}`);
  return cases;
}
