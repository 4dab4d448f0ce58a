/**
 * The history cases of the {@link ClientStore} conformance suite: positions, paging, the
 * conversation list and unread counts. Registered by `clientStoreConformance`.
 * @internal
 * @packageDocumentation
 */
import assert from 'node:assert/strict';
import type { ClientStore, HistoryRecord } from '../client/store.js';
import type { StoreHarness } from './conformance.js';
import { assertBytes, draft, encoder, inbound, readDraft } from './client-store-fixtures.js';

type Test = (name: string, body: (h: StoreHarness<ClientStore>) => Promise<void>) => void;

/** A record as `in:id` or `out:id`, so whole pages compare in one assertion. */
const tag = (r: HistoryRecord): string => (r.inbound ? `in:${r.inbound.id}` : `out:${r.outgoing.id}`);

/** Every shown message of `conv`, newest first, read in pages of `size` through the cursor. */
async function allPages(store: ClientStore, conv: string, size: number): Promise<HistoryRecord[]> {
  const all: HistoryRecord[] = [];
  let before: number | undefined;
  for (;;) {
    const page = await store.history(conv, before, size);
    assert.ok(page.length <= size, `a page holds at most ${size}`);
    all.push(...page);
    if (page.length < size) return all;
    before = page[page.length - 1]!.pos;
  }
}

/**
 * Fills a store with two conversations of received and sent messages, with the items history
 * leaves out in between: receipts, a membership change, a held message.
 */
async function chat(store: ClientStore): Promise<string[]> {
  await store.applyInbound({ insert: inbound('b1', 'bob', 1) });
  await store.enqueue(draft('o1', 'bob'), true);
  await store.applyInbound({ insert: inbound('c1', 'carol', 1) });
  await store.enqueue(readDraft('r1', 'bob', ['b1']), false);
  await store.applyInbound({ insert: inbound('b2', 'bob', 2) });
  await store.applyInbound({ insert: inbound('b4', 'bob', 4, { held: true }) });
  await store.enqueue({ ...draft('g1', 'bob'), kind: 'group', body: encoder.encode('change') }, false);
  await store.enqueue(draft('o2', 'bob'), true);
  await store.enqueue(draft('o3', 'carol'), true);
  await store.enqueue(draft('o4', 'bob'), true);
  // Newest first, as history serves bob's conversation.
  return ['out:o4', 'out:o2', 'in:b2', 'out:o1', 'in:b1'];
}

/** Registers the history cases with the suite's case builder. */
export function historyCases(test: Test): void {
  test('history pages a conversation newest first, each message once, without receipts or held ones', async (h) => {
    const expected = await chat(h.store);
    for (const size of [1, 2, 3, 5, 50]) {
      assert.deepEqual((await allPages(h.store, 'bob', size)).map(tag), expected, `pages of ${size}`);
    }
    const all = await h.store.history('bob', undefined, 50);
    const pos = all.map((r) => r.pos);
    assert.deepEqual(
      pos,
      [...pos].sort((a, b) => b - a),
      'positions fall strictly',
    );
    assert.equal(new Set(pos).size, pos.length, 'no position twice');
    assert.deepEqual(
      (await h.store.history('bob', all[2]!.pos, 50)).map(tag),
      expected.slice(3),
      'below a cursor',
    );
    assert.deepEqual(
      await h.store.history('bob', all[all.length - 1]!.pos, 50),
      [],
      'nothing below the oldest',
    );
    assert.deepEqual(await h.store.history('dave', undefined, 10), [], 'an unknown conversation is empty');
    await h.reopen();
    assert.deepEqual((await allPages(h.store, 'bob', 2)).map(tag), expected, 'the same after a re-open');
    assert.deepEqual((await h.store.history('carol', undefined, 10)).map(tag), ['out:o3', 'in:c1']);
  });

  test('history records carry the whole message: sender, sequence, time, body, and an outgoing status', async (h) => {
    const body = encoder.encode('hello bob');
    await h.store.applyInbound({ insert: inbound('b1', 'bob', 7, { ts: 4242, body, fromDevice: 'bd' }) });
    await h.store.enqueue({ ...draft('o1', 'bob', body), createdAt: 5151 }, true);
    await h.store.setStatus('o1', 'delivered');
    await h.reopen();
    const [out, inb] = await h.store.history('bob', undefined, 10);
    assert.ok(out?.outgoing && inb?.inbound);
    assert.deepEqual(
      [out.outgoing.id, out.outgoing.seq, out.outgoing.createdAt, out.outgoing.status, out.outgoing.to],
      ['o1', 1, 5151, 'delivered', 'bob'],
    );
    assertBytes(out.outgoing.body, body, 'outgoing body');
    const m = inb.inbound;
    assert.deepEqual(
      [m.id, m.from, m.fromDevice, m.seq, m.ts, m.held, m.read],
      ['b1', 'bob', 'bd', 7, 4242, false, false],
    );
    assertBytes(m.body, body, 'inbound body');
  });

  test('a held message takes its history position when released, after the message that released it', async (h) => {
    await h.store.applyInbound({ insert: inbound('b1', 'bob', 1) });
    await h.store.applyInbound({ insert: inbound('b3', 'bob', 3, { held: true }) });
    await h.store.applyInbound({ insert: inbound('b4', 'bob', 4, { held: true }) });
    await h.store.enqueue(draft('o1', 'bob'), true);
    await h.reopen();
    assert.deepEqual((await h.store.history('bob', undefined, 10)).map(tag), ['out:o1', 'in:b1']);
    await h.store.applyInbound({ insert: inbound('b2', 'bob', 2), release: ['b3', 'b4'] });
    assert.deepEqual(
      (await h.store.history('bob', undefined, 10)).map(tag),
      ['in:b4', 'in:b3', 'in:b2', 'out:o1', 'in:b1'],
      'shown order: per-sender order, not arrival order',
    );
    // A release of a message that is not held (or not stored) moves nothing.
    await h.store.applyInbound({ release: ['b2', 'nope'] });
    await h.reopen();
    assert.deepEqual((await h.store.history('bob', undefined, 10)).map(tag), [
      'in:b4',
      'in:b3',
      'in:b2',
      'out:o1',
      'in:b1',
    ]);
  });

  test('history positions are store-wide and keep rising across re-opens', async (h) => {
    await h.store.enqueue(draft('o1', 'bob'), true);
    await h.store.applyInbound({ insert: inbound('c1', 'carol', 1) });
    const first = [
      ...(await h.store.history('bob', undefined, 10)),
      ...(await h.store.history('carol', undefined, 10)),
    ].map((r) => r.pos);
    await h.reopen();
    await h.store.applyInbound({ insert: inbound('b1', 'bob', 1) });
    await h.store.enqueue(draft('o2', 'carol'), true);
    const bob = await h.store.history('bob', undefined, 10);
    const carol = await h.store.history('carol', undefined, 10);
    assert.deepEqual(bob.map(tag), ['in:b1', 'out:o1']);
    assert.deepEqual(carol.map(tag), ['out:o2', 'in:c1']);
    assert.ok(first[0]! < first[1]!, 'the carol message was shown after the bob one');
    assert.ok(bob[0]!.pos > Math.max(...first), 'a position after a re-open is above every earlier one');
    assert.ok(carol[0]!.pos > bob[0]!.pos);
  });

  test('conversations: latest activity first, each with its last message and its unread count', async (h) => {
    assert.deepEqual(await h.store.conversations(), []);
    await chat(h.store);
    await h.store.applyInbound({ insert: inbound('d1', 'dave', 1) });
    await h.store.applyInbound({ insert: inbound('d2', 'dave', 2, { read: true }) });
    await h.store.applyInbound({ insert: inbound('e5', 'erin', 5, { held: true }) });
    const list = (await h.store.conversations()).map((c) => [c.conv, tag(c.last), c.unread]);
    // bob: b1 and b2 unread (the sent ones never count, the held b4 is not shown);
    // dave: d2 came in read (say, a copy of this user's own message); erin shows nothing yet.
    assert.deepEqual(list, [
      ['dave', 'in:d2', 1],
      ['bob', 'out:o4', 2],
      ['carol', 'out:o3', 1],
    ]);
    await h.store.markRead(['b1', 'c1']);
    await h.store.applyInbound({ release: ['e5'] });
    await h.reopen();
    assert.deepEqual(
      (await h.store.conversations()).map((c) => [c.conv, tag(c.last), c.unread]),
      [
        ['erin', 'in:e5', 1],
        ['dave', 'in:d2', 1],
        ['bob', 'out:o4', 1],
        ['carol', 'out:o3', 0],
      ],
      'reads lower the counts, a released message counts and moves its conversation up',
    );
    await h.store.enqueue(draft('o9', 'carol'), true);
    await h.store.markRead(['d1', 'b2', 'e5']);
    const after = await h.store.conversations();
    assert.deepEqual(
      after.map((c) => [c.conv, c.unread]),
      [
        ['carol', 0],
        ['erin', 0],
        ['dave', 0],
        ['bob', 0],
      ],
    );
    assert.equal(after[0]!.last.outgoing?.id, 'o9');
    assert.equal(after[0]!.last.pos, (await h.store.history('carol', undefined, 1))[0]!.pos);
  });

  test('an enqueue and its state writes commit together, or not at all', async (h) => {
    const rcpt = encoder.encode('bob,carol');
    await h.store.enqueue(draft('o1', '#g'), true, [{ ns: 'gsend', key: 'o1', value: rcpt }]);
    await h.reopen();
    assert.equal((await h.store.outgoing('o1'))?.seq, 1);
    assertBytes(await h.store.getState('gsend', 'o1'), rcpt, 'the state written with the entry');
    // A second enqueue of the same id is refused, and its state writes with it.
    await assert.rejects(
      h.store.enqueue(draft('o1', '#g'), true, [
        { ns: 'gsend', key: 'o1', value: encoder.encode('mallory') },
        { ns: 'gsend', key: 'other', value: encoder.encode('x') },
      ]),
    );
    await h.reopen();
    assertBytes(await h.store.getState('gsend', 'o1'), rcpt, 'unchanged by the refused enqueue');
    assert.equal(await h.store.getState('gsend', 'other'), undefined, 'nothing of the refused enqueue');
    assert.deepEqual((await h.store.history('#g', undefined, 10)).map(tag), ['out:o1'], 'shown once');
    assert.equal((await h.store.enqueue(draft('o2', '#g'), true)).seq, 2, 'no number was taken');
  });
}
