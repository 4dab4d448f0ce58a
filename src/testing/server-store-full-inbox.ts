/**
 * The full-inbox part of the storage-quota conformance (`serverStoreQuotaConformance` runs
 * it): a device whose inbox is at its quota does not silence the others. A message skips the full
 * device, which is told in an `inbox_full` gap notice, and is refused only when none of its
 * recipients has room (docs/security.md, "A full member does not silence a group").
 */
import assert from 'node:assert/strict';
import type { StoreQuotas } from '../server/quotas.js';
import type {
  AppendInput,
  AppendOutcome,
  DeviceAddress,
  GapStream,
  GroupInput,
  MessageInput,
  ServerStore,
} from '../server/store.js';
import type { StoreHarness } from './conformance.js';

const alice1: DeviceAddress = { user: 'alice', device: 'a1' };
const alice2: DeviceAddress = { user: 'alice', device: 'a2' };
const bob1: DeviceAddress = { user: 'bob', device: 'b1' };
const bob2: DeviceAddress = { user: 'bob', device: 'b2' };
const carol1: DeviceAddress = { user: 'carol', device: 'c1' };

const msg = (from: DeviceAddress, id: string, to: string, seq: number): MessageInput => ({
  kind: 'msg',
  from,
  id,
  to,
  seq,
  body: new Uint8Array(10).fill(7),
});
const groupMsg = (from: DeviceAddress, id: string, g: string, seq: number): MessageInput => ({
  ...msg(from, id, g, seq),
  group: true,
});
const create = (from: DeviceAddress, g: string, members: string[]): GroupInput => ({
  kind: 'group',
  from,
  id: `create${g}`,
  group: g,
  change: { op: 'create', name: g, members },
  maxMembers: 256,
});

/** Appends one item alone (at `now`) and returns its outcome. */
export async function one(store: ServerStore, item: AppendInput, now = 1000): Promise<AppendOutcome> {
  const [out] = await store.append([item], now);
  return out!;
}

/** An outcome as `ok` or its refusal code. */
export const codeOf = (o: AppendOutcome): string => (o.ok ? 'ok' : o.code);
const keyOf = (d: DeviceAddress): string => `${d.user}/${d.device}`;

/** A device's inbox: message ids, `gap:<reason>` for notices, the kind for the rest. */
async function inboxOf(store: ServerStore, d: DeviceAddress): Promise<string[]> {
  const entries = await store.readInbox(d, 0, 1_000_000);
  return entries.map((e) => (e.kind === 'msg' ? e.id : e.kind === 'gap' ? `gap:${e.reason}` : e.kind));
}

/** The streams of a device's `inbox_full` notices. */
async function fullNoticesOf(store: ServerStore, d: DeviceAddress): Promise<GapStream[][]> {
  const entries = await store.readInbox(d, 0, 1_000_000);
  return entries.flatMap((e) => (e.kind === 'gap' && e.reason === 'inbox_full' ? [e.streams] : []));
}

/**
 * Fills `d`'s inbox with `n` messages from `from` (ids `fill-<d>-<i>`, seq 0); they go to every
 * device of `d`'s user registered by then.
 */
async function fill(store: ServerStore, from: DeviceAddress, d: DeviceAddress, n: number): Promise<void> {
  for (let i = 0; i < n; i++) {
    const out = await one(store, msg(from, `fill-${keyOf(d)}-${i}`, d.user, 0));
    assert.equal(codeOf(out), 'ok', 'filling');
  }
}

/** What the quota suite hands its parts: a case builder over stores with given quotas, and names. */
export interface QuotaSuite {
  /** Registers a case run on a fresh store with `quotas`. */
  withQuotas(
    quotas: Partial<StoreQuotas>,
  ): (name: string, body: (h: StoreHarness<ServerStore>) => Promise<void>) => void;
  /** Prefix of case names (the subject's name). */
  prefix: string;
  /** Another store over the same data, alongside (a second node), when the subject has one. */
  share?: ((store: ServerStore) => Promise<ServerStore>) | undefined;
}

/** Registers devices (at time 1). */
async function register(store: ServerStore, ...ds: DeviceAddress[]): Promise<void> {
  for (const d of ds) await store.registerDevice(d, 1);
}

/** Registers the full-inbox cases with the suite's builder (part of `serverStoreQuotaConformance`). */
export function serverStoreFullInboxCases({ withQuotas, prefix, share }: QuotaSuite): void {
  withQuotas({ inboxEntries: 3 })(
    `${prefix}a group message skips a member whose inbox is full: the others get it, the full device one inbox_full notice naming every message it missed`,
    async (h) => {
      await register(h.store, alice1, bob1, carol1);
      assert.equal(codeOf(await one(h.store, create(alice1, '#g', ['bob', 'carol']))), 'ok');
      await fill(h.store, alice1, carol1, 2); // carol: the group event and two messages
      const out = await one(h.store, groupMsg(alice1, 'gm1', '#g', 1));
      assert.ok(out.ok && !out.duplicate, 'acked to the sender');
      assert.deepEqual(out.notify.map(keyOf).sort(), ['bob/b1', 'carol/c1'], 'the full device is rung too');
      assert.deepEqual(await inboxOf(h.store, bob1), ['group', 'gm1']);
      assert.deepEqual(await inboxOf(h.store, carol1), [
        'group',
        'fill-carol/c1-0',
        'fill-carol/c1-1',
        'gap:inbox_full',
      ]);
      // Later skips extend the one notice (at a new offset, after the device's other entries).
      const offsetBefore = (await h.store.readInbox(carol1, 0, 100)).at(-1)!.offset;
      assert.equal(codeOf(await one(h.store, groupMsg(alice1, 'gm2', '#g', 2))), 'ok');
      assert.equal(codeOf(await one(h.store, groupMsg(alice1, 'gm4', '#g', 4))), 'inbox_full'); // bob full now
      await h.store.ack(bob1, [(await h.store.readInbox(bob1, 0, 1))[0]!.offset], 1500);
      assert.equal(codeOf(await one(h.store, groupMsg(alice1, 'gm4', '#g', 4))), 'ok');
      const entries = await h.store.readInbox(carol1, 0, 100);
      assert.deepEqual(
        entries.map((e) => e.kind),
        ['group', 'msg', 'msg', 'gap'],
      );
      assert.ok(entries.at(-1)!.offset > offsetBefore, 'the extended notice comes after the old one');
      assert.deepEqual(await fullNoticesOf(h.store, carol1), [
        [
          {
            from: alice1,
            to: '#g',
            group: true,
            ranges: [
              [1, 2],
              [4, 4],
            ],
          },
        ],
      ]);
      assert.deepEqual(await inboxOf(h.store, bob1), ['gm1', 'gm2', 'gm4']);
      // Once the notice is acked, the next skip starts a new one.
      await h.store.ack(carol1, [entries.at(-1)!.offset], 2000);
      await h.store.ack(bob1, [(await h.store.readInbox(bob1, 0, 1))[0]!.offset], 2000);
      assert.equal(codeOf(await one(h.store, groupMsg(alice1, 'gm5', '#g', 5))), 'ok');
      assert.deepEqual(await fullNoticesOf(h.store, carol1), [
        [{ from: alice1, to: '#g', group: true, ranges: [[5, 5]] }],
      ]);
    },
  );

  withQuotas({ inboxEntries: 2 })(
    `${prefix}a group message is refused with inbox_full only when no member device but the sender's own has room`,
    async (h) => {
      await register(h.store, alice1, alice2, bob1, carol1);
      assert.equal(codeOf(await one(h.store, create(alice1, '#g', ['bob']))), 'ok');
      await fill(h.store, carol1, bob1, 1); // bob: the group event and one message
      const out = await one(h.store, groupMsg(alice1, 'gm1', '#g', 1));
      assert.equal(codeOf(out), 'inbox_full', "the sender's other device alone does not count");
      assert.deepEqual(await inboxOf(h.store, alice2), ['group'], 'nothing written, not even for a2');
      assert.deepEqual(await inboxOf(h.store, bob1), ['group', 'fill-bob/b1-0']);
    },
  );

  withQuotas({ inboxEntries: 1 })(
    `${prefix}a full device of the recipient does not block its other devices; only when all are full is the message refused`,
    async (h) => {
      await register(h.store, alice1, alice2, carol1, bob2);
      await fill(h.store, carol1, bob2, 1);
      await register(h.store, bob1);
      const out = await one(h.store, msg(alice1, 'm1', 'bob', 1));
      assert.ok(out.ok, 'delivered to b1');
      assert.deepEqual(await inboxOf(h.store, bob1), ['m1']);
      assert.deepEqual(await inboxOf(h.store, bob2), ['fill-bob/b2-0', 'gap:inbox_full']);
      // alice's other device got its copy; now it is full, and it never refuses her message.
      assert.deepEqual(await inboxOf(h.store, alice2), ['m1']);
      await h.store.ack(bob1, [(await h.store.readInbox(bob1, 0, 1))[0]!.offset], 1500);
      assert.equal(codeOf(await one(h.store, msg(alice1, 'm2', 'bob', 2))), 'ok');
      assert.deepEqual(await inboxOf(h.store, bob1), ['m2']);
      assert.deepEqual(await fullNoticesOf(h.store, alice2), [
        [{ from: alice1, to: 'bob', ranges: [[2, 2]] }],
      ]);
      assert.deepEqual(await fullNoticesOf(h.store, bob2), [[{ from: alice1, to: 'bob', ranges: [[1, 2]] }]]);
      // Every device of bob full: refused, nothing written.
      assert.equal(codeOf(await one(h.store, msg(alice1, 'm3', 'bob', 3))), 'inbox_full');
      assert.deepEqual(await fullNoticesOf(h.store, bob2), [[{ from: alice1, to: 'bob', ranges: [[1, 2]] }]]);
    },
  );

  withQuotas({ inboxEntries: 3 })(
    `${prefix}in one batch, a member filled by an earlier item is skipped by a later one`,
    async (h) => {
      await register(h.store, alice1, bob1, carol1);
      assert.equal(codeOf(await one(h.store, create(alice1, '#g', ['bob', 'carol']))), 'ok');
      await fill(h.store, alice1, carol1, 1); // carol: 2 of 3
      const out = await h.store.append(
        [
          groupMsg(alice1, 'gm1', '#g', 1),
          groupMsg(alice1, 'gm2', '#g', 2),
          groupMsg(alice1, 'gm3', '#g', 3),
        ],
        1000,
      );
      assert.deepEqual(out.map(codeOf), ['ok', 'ok', 'inbox_full']);
      assert.deepEqual(await inboxOf(h.store, bob1), ['group', 'gm1', 'gm2']);
      assert.deepEqual(await inboxOf(h.store, carol1), ['group', 'fill-carol/c1-0', 'gm1', 'gap:inbox_full']);
      assert.deepEqual(await fullNoticesOf(h.store, carol1), [
        [{ from: alice1, to: '#g', group: true, ranges: [[2, 2]] }],
      ]);
    },
  );

  withQuotas({ inboxBytes: 1000 })(
    `${prefix}several nodes skipping one full device at once leave it one notice naming every message`,
    async (h) => {
      await register(h.store, alice1, bob1, carol1);
      assert.equal(codeOf(await one(h.store, create(alice1, '#g', ['bob', 'carol']))), 'ok');
      const big = { ...msg(bob1, 'big', 'carol', 0), body: new Uint8Array(995) };
      assert.equal(codeOf(await one(h.store, big)), 'ok'); // carol: 995 of 1,000 bytes
      const nodes = [h.store];
      for (let i = 0; share && i < 2; i++) nodes.push(await share(h.store));
      try {
        const outs = await Promise.all(
          nodes.map((n, i) =>
            n.append(
              [1, 2, 3].map((k) => groupMsg(alice1, `n${i}-${k}`, '#g', 3 * i + k)),
              1000,
            ),
          ),
        );
        assert.ok(
          outs.flat().every((o) => o.ok),
          'every message acked',
        );
        const n = 3 * nodes.length;
        assert.equal((await inboxOf(h.store, bob1)).filter((e) => e.startsWith('n')).length, n);
        assert.deepEqual(await fullNoticesOf(h.store, carol1), [
          [{ from: alice1, to: '#g', group: true, ranges: [[1, n]] }],
        ]);
      } finally {
        for (const node of nodes.slice(1)) await node.close();
      }
    },
  );

  withQuotas({ inboxEntries: 1 })(
    `${prefix}a message in no sequence (a control message) is still refused whole by one full device`,
    async (h) => {
      await register(h.store, alice1, carol1, bob2);
      await fill(h.store, carol1, bob2, 1);
      await register(h.store, bob1);
      assert.equal(codeOf(await one(h.store, msg(alice1, 'c0', 'bob', 0))), 'inbox_full');
      assert.deepEqual(await inboxOf(h.store, bob1), []);
    },
  );
}
