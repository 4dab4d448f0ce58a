/**
 * The gap-notice rules of the {@link ServerStore} contract ("Expiry"): every device that lost
 * message entries to expiry is told which, by stream and sequence number, once. Part of
 * `serverStoreConformance`; kept apart so each file stays readable.
 * @internal
 */
import assert from 'node:assert/strict';
import { MAX_GAP_RANGES } from '../protocol/frames.js';
import type { DeviceAddress, GapNotice, InboxEntry, MessageInput, ServerStore } from '../server/store.js';
import { storeCaseBuilder, type ConformanceCase } from './conformance.js';

const ann: DeviceAddress = { user: 'ann', device: 'n1' };
const ben1: DeviceAddress = { user: 'ben', device: 'e1' };
const ben2: DeviceAddress = { user: 'ben', device: 'e2' };
const cat: DeviceAddress = { user: 'cat', device: 't1' };

const note = (from: DeviceAddress, id: string, to: string, seq: number, group = false): MessageInput => {
  const m: MessageInput = { kind: 'msg', from, id, to, seq, body: new TextEncoder().encode(id) };
  if (group) m.group = true;
  return m;
};

async function everything(store: ServerStore, d: DeviceAddress): Promise<InboxEntry[]> {
  return store.readInbox(d, 0, Number.MAX_SAFE_INTEGER);
}

const noticesOf = (entries: InboxEntry[]): GapNotice[] =>
  entries.filter((e): e is GapNotice => e.kind === 'gap');

/**
 * A device's notices as `from/device → to: seq seq …` lines (every named sequence number, in
 * order, so a number named twice shows twice), sorted.
 */
function named(notices: GapNotice[]): string[] {
  const byStream = new Map<string, number[]>();
  for (const n of notices) {
    assert.equal(n.reason, 'expired', 'the reason');
    for (const s of n.streams) {
      const k = `${s.from.user}/${s.from.device} → ${s.to}${s.group ? ' (group)' : ''}`;
      const seqs = byStream.get(k) ?? [];
      for (const [first, last] of s.ranges) for (let q = first; q <= last; q++) seqs.push(q);
      byStream.set(k, seqs);
    }
  }
  return [...byStream].map(([k, seqs]) => `${k}: ${seqs.sort((a, b) => a - b).join(' ')}`).sort();
}

/** The gap-notice cases, for {@link ServerStore} adapters (run by `serverStoreConformance`). */
export function gapNoticeCases(subject: {
  open(): Promise<ServerStore>;
  reopen(store: ServerStore): Promise<ServerStore>;
}): ConformanceCase[] {
  const cases: ConformanceCase[] = [];
  const test = storeCaseBuilder(subject, cases);

  test('expire tells every recipient device which of its undelivered messages expired, once', async ({
    store,
  }) => {
    for (const d of [ann, ben1, ben2, cat]) await store.registerDevice(d, 1);
    await store.append(
      [
        {
          kind: 'group',
          from: ann,
          id: 'mk',
          group: '#g',
          change: { op: 'create', name: 'G', members: ['ben', 'cat'] },
          maxMembers: 8,
        },
      ],
      500,
    );
    await store.append(
      [
        note(ann, 'a1', 'ben', 1),
        note(ann, 'a2', 'ben', 2),
        note(ann, 'a3', 'ben', 3),
        note(ann, 'g1', '#g', 1, true),
        note(ann, 'g2', '#g', 2, true),
        note(cat, 'c1', 'ben', 1),
        { ...note(cat, 'ctl', 'ben', 0) }, // an encryption-layer control message: in no sequence
      ],
      1000,
    );
    await store.append([note(cat, 'c2', 'ben', 2), note(ann, 'a4', 'ben', 4)], 3000); // young: stays
    const a2 = (await everything(store, ben1)).find((e) => e.kind === 'msg' && e.id === 'a2')!;
    await store.ack(ben1, [a2.offset], 1500); // ben1 has a2: not lost there
    const res = await store.expire(2000, 9000);
    for (const d of [ben1, ben2, cat]) {
      assert.ok(
        res.notify.some((n) => n.user === d.user && n.device === d.device),
        `${d.device} is notified`,
      );
    }
    const b1 = await everything(store, ben1);
    assert.deepEqual(named(noticesOf(b1)), [
      'ann/n1 → #g (group): 1 2',
      'ann/n1 → ben: 1 3',
      'cat/t1 → ben: 1',
    ]);
    assert.deepEqual(named(noticesOf(await everything(store, ben2))), [
      'ann/n1 → #g (group): 1 2',
      'ann/n1 → ben: 1 2 3',
      'cat/t1 → ben: 1',
    ]);
    assert.deepEqual(named(noticesOf(await everything(store, cat))), ['ann/n1 → #g (group): 1 2']);
    assert.deepEqual(noticesOf(await everything(store, ann)), [], 'the sender lost nothing');
    // One notice per device, after the entries it already had (the young messages).
    const [n] = noticesOf(b1);
    assert.equal(noticesOf(b1).length, 1, 'one notice');
    assert.equal(n!.ts, 9000, 'at the time of the expiry');
    assert.equal(b1[b1.length - 1], n, 'after every entry the device had');
    // Once: a later expiry names only what it removes then.
    await store.append([note(ann, 'a5', 'ben', 5)], 9500);
    await store.expire(4000, 10_000);
    assert.deepEqual(named(noticesOf(await everything(store, ben2))), [
      'ann/n1 → #g (group): 1 2',
      'ann/n1 → ben: 1 2 3 4',
      'cat/t1 → ben: 1 2',
    ]);
    assert.equal(noticesOf(await everything(store, ben2)).length, 2, 'a second notice for the second expiry');
  });

  test('a device with more dropped ranges than one notice may name gets several, each within the bound', async ({
    store,
  }) => {
    for (const d of [ann, ben1]) await store.registerDevice(d, 1);
    const count = MAX_GAP_RANGES * 2 + 10;
    // Every other number: each dropped message is a range of its own.
    await store.append(
      Array.from({ length: count }, (_, i) => note(ann, `m${i}`, 'ben', 2 * i + 1)),
      1000,
    );
    await store.expire(2000, 9000);
    const notices = noticesOf(await everything(store, ben1));
    assert.equal(notices.length, 3, 'split in three');
    for (const n of notices) {
      const ranges = n.streams.reduce((k, s) => k + s.ranges.length, 0);
      assert.ok(ranges <= MAX_GAP_RANGES, `a notice names ${ranges} ranges`);
    }
    const all = Array.from({ length: count }, (_, i) => 2 * i + 1).join(' ');
    assert.deepEqual(named(notices), [`ann/n1 → ben: ${all}`], 'every number once');
  });

  test('a notice that expires before its device fetched it is carried into the next: nothing it named is lost', async ({
    store,
  }) => {
    for (const d of [ann, ben1]) await store.registerDevice(d, 1);
    const create = { op: 'create' as const, name: 'G', members: ['ben'] };
    await store.append(
      [{ kind: 'group', from: ann, id: 'mk', group: '#g', change: create, maxMembers: 8 }],
      500,
    );
    await store.append([note(ann, 'a1', 'ben', 1)], 1000);
    await store.expire(2000, 3000); // a notice at 3000 names 1
    await store.append([note(ann, 'a2', 'ben', 2), note(ann, 'g1', '#g', 1, true)], 3500);
    await store.expire(4000, 9000); // the notice itself is past the cutoff now, with a2
    let notices = noticesOf(await everything(store, ben1));
    assert.equal(notices.length, 1, 'the old notice is gone, its numbers are in the new one');
    assert.equal(notices[0]!.ts, 9000);
    assert.deepEqual(named(notices), ['ann/n1 → #g (group): 1', 'ann/n1 → ben: 1 2']);
    // Carried alone when nothing else expires with it, and its device is told.
    const res = await store.expire(9500, 10_000);
    assert.ok(
      res.notify.some((n) => n.user === 'ben' && n.device === 'e1'),
      'ben1 is notified',
    );
    notices = noticesOf(await everything(store, ben1));
    assert.equal(notices.length, 1);
    assert.equal(notices[0]!.ts, 10_000);
    assert.deepEqual(named(notices), ['ann/n1 → #g (group): 1', 'ann/n1 → ben: 1 2']);
  });

  test('a gap notice survives a re-open and is deleted by its ack like any entry', async (h) => {
    for (const d of [ann, ben1]) await h.store.registerDevice(d, 1);
    await h.store.append([note(ann, 'm1', 'ben', 1), note(ann, 'm2', 'ben', 2)], 1000);
    await h.store.expire(2000, 9000);
    const before = noticesOf(await everything(h.store, ben1));
    assert.equal(before.length, 1);
    await h.reopen();
    const after = noticesOf(await everything(h.store, ben1));
    assert.deepEqual(after, before, 'the same notice, at the same offset');
    assert.deepEqual(named(after), ['ann/n1 → ben: 1 2']);
    assert.deepEqual(await h.store.ack(ben1, [after[0]!.offset], 9100), { count: 1, notify: [] });
    assert.deepEqual(await everything(h.store, ben1), [], 'gone, producing nothing');
  });

  return cases;
}
