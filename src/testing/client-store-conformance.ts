/**
 * The {@link ClientStore} conformance suite: one case per rule of the contract. Run it against
 * your own adapter with {@link registerCases}.
 */
import assert from 'node:assert/strict';
import type { ClientStore, InboundMessage, OutboxEntry } from '../client/store.js';
import {
  assertBytes,
  binaryBody,
  draft,
  encoder,
  ids,
  inbound,
  readDraft,
  shape,
} from './client-store-fixtures.js';
import { historyCases } from './client-history-conformance.js';
import { storeCaseBuilder, type ConformanceCase } from './conformance.js';

/** How the client store suite opens and re-opens the adapter under test. */
export interface ClientStoreSubject {
  /** Names the adapter in reports. */
  name: string;
  /** A store over fresh empty data. */
  open(): Promise<ClientStore>;
  /** Closes `store` and opens a new one over the SAME data (an app restart). */
  reopen(store: ClientStore): Promise<ClientStore>;
}

/**
 * The {@link ClientStore} conformance suite: a list of cases, each named after the guarantee it
 * proves, each on fresh data from `subject.open()`.
 *
 * @example
 * ```ts
 * import { clientStoreConformance, registerCases } from 'postbox/testing';
 * import { describe, it } from 'vitest';
 *
 * describe('my client store', () =>
 *   registerCases(
 *     clientStoreConformance({
 *       name: 'my client store',
 *       open: async () => myClientStore(await freshDatabase()),
 *       reopen: async (store) => { await store.close(); return myClientStore(sameDatabase()); },
 *     }),
 *     it,
 *   ));
 * ```
 */
export function clientStoreConformance(subject: ClientStoreSubject): ConformanceCase[] {
  const cases: ConformanceCase[] = [];
  const test = storeCaseBuilder(subject, cases);

  test('sequence numbers start at 1 and count per conversation', async ({ store }) => {
    const got: Array<[string, number | undefined]> = [];
    for (const [id, conv] of [
      ['m1', 'bob'],
      ['m2', 'bob'],
      ['m3', 'carol'],
      ['m4', 'bob'],
      ['m5', 'carol'],
    ] as const) {
      const d = draft(id, conv);
      const e = await store.enqueue(d, true);
      assert.deepEqual(shape(e), { ...shape(d), seq: e.seq, status: 'pending' }, 'the draft, pending');
      assertBytes(e.body, d.body!, id);
      got.push([id, e.seq]);
    }
    assert.deepEqual(got, [
      ['m1', 1],
      ['m2', 2],
      ['m3', 1],
      ['m4', 3],
      ['m5', 2],
    ]);
    assert.equal((await store.outgoing('m4'))?.seq, 3, 'the stored entry has its number');
  });

  test('a re-opened store continues the sequence, never reusing a number', async (h) => {
    await h.store.enqueue(draft('m1', 'bob'), true);
    await h.store.enqueue(draft('m2', 'bob'), true);
    await h.store.setStatus('m1', 'sent');
    await h.store.setStatus('m2', 'delivered'); // nothing pending: the count must not come from pending()
    await h.reopen();
    assert.equal((await h.store.enqueue(draft('m3', 'bob'), true)).seq, 3);
    assert.equal((await h.store.enqueue(draft('m4', 'carol'), true)).seq, 1);
    await h.reopen();
    assert.equal((await h.store.enqueue(draft('m5', 'bob'), true)).seq, 4);
  });

  test('unsequenced entries (receipts) take no sequence number', async (h) => {
    assert.equal((await h.store.enqueue(draft('m1', 'bob'), true)).seq, 1);
    const r = await h.store.enqueue(readDraft('r1', 'bob', ['x1', 'x2']), false);
    assert.equal(r.seq, undefined);
    assert.equal(r.status, 'pending');
    assert.deepEqual(r.ids, ['x1', 'x2']);
    assert.equal((await h.store.enqueue(draft('m2', 'bob'), true)).seq, 2);
    await h.reopen();
    const stored = await h.store.outgoing('r1');
    assert.ok(stored);
    assert.equal(stored.seq, undefined);
    assert.equal(stored.kind, 'read');
    assert.deepEqual(stored.ids, ['x1', 'x2']);
    assert.equal((await h.store.enqueue(draft('m3', 'bob'), true)).seq, 3);
  });

  test('the outbox survives a re-open, pending in enqueue order', async (h) => {
    const enqueued: OutboxEntry[] = [];
    enqueued.push(await h.store.enqueue(draft('m1', 'bob'), true));
    enqueued.push(await h.store.enqueue(draft('m2', 'carol'), true));
    enqueued.push(await h.store.enqueue(readDraft('r1', 'bob', ['x']), false));
    enqueued.push(await h.store.enqueue(draft('m3', 'bob'), true));
    await h.reopen();
    const pending = await h.store.pending();
    assert.deepEqual(ids(pending), ['m1', 'm2', 'r1', 'm3']);
    for (const [i, e] of pending.entries()) {
      assert.deepEqual(shape(e), shape(enqueued[i]!));
      if (enqueued[i]!.body) assertBytes(e.body, enqueued[i]!.body!, e.id);
    }
  });

  test('a status moves an entry out of pending', async (h) => {
    await h.store.enqueue(draft('m1', 'bob'), true);
    await h.store.enqueue(draft('m2', 'bob'), true);
    await h.store.enqueue(draft('m3', 'bob'), true);
    await h.store.setStatus('m2', 'sent');
    assert.deepEqual(ids(await h.store.pending()), ['m1', 'm3']);
    assert.equal((await h.store.outgoing('m2'))?.status, 'sent');
    await h.store.setStatus('m2', 'read');
    await h.store.setStatus('m3', 'failed');
    await h.reopen();
    assert.deepEqual(ids(await h.store.pending()), ['m1']);
    assert.equal((await h.store.outgoing('m2'))?.status, 'read');
    assert.equal((await h.store.outgoing('m3'))?.status, 'failed');
    assert.equal((await h.store.outgoing('m2'))?.seq, 2, 'the entry keeps its number');
    assert.equal(await h.store.outgoing('unknown'), undefined);
  });

  test('why an entry failed or expired is stored with its status and read back everywhere, across a re-open', async (h) => {
    for (const id of ['m1', 'm2', 'm3', 'm4']) await h.store.enqueue(draft(id, 'bob'), true);
    const why = {
      reason: 'unknown_recipient',
      detail: 'recipient has no registered device: “bob” ✉',
    } as const;
    await h.store.setStatus('m1', 'failed', why);
    await h.store.setStatus('m2', 'expired', { reason: 'expired', detail: 'not fetched in time' });
    await h.store.setStatus('m3', 'sent');
    await h.store.setStatus('m4', 'failed', { reason: 'forbidden', detail: 'x' });
    await h.store.setStatus('m4', 'failed'); // a write without a failure keeps none
    await h.reopen();
    const failureOf = (e: OutboxEntry | undefined) => [e?.status, e?.reason, e?.detail];
    const want = [
      ['failed', why.reason, why.detail],
      ['expired', 'expired', 'not fetched in time'],
      ['sent', undefined, undefined],
      ['failed', undefined, undefined],
    ];
    const byId = await Promise.all(['m1', 'm2', 'm3', 'm4'].map((id) => h.store.outgoing(id)));
    assert.deepEqual(byId.map(failureOf), want, 'outgoing()');
    assert.deepEqual((await h.store.outgoingIn('bob')).map(failureOf), want, 'outgoingIn()');
    const page = await h.store.history('bob', undefined, 10);
    assert.deepEqual(page.map((r) => failureOf(r.outgoing)).reverse(), want, 'history()');
    await h.store.setStatus('m4', 'failed', why);
    const [conv] = await h.store.conversations();
    assert.deepEqual(failureOf(conv?.last.outgoing), ['failed', why.reason, why.detail], 'conversations()');
    assert.deepEqual(ids(await h.store.pending()), []);
  });

  test('an inbound duplicate is stored once and applies nothing else', async (h) => {
    const m1 = inbound('m1', 'bob', 1);
    assert.deepEqual(await h.store.applyInbound({ insert: m1, streams: [{ key: 'k', next: 2 }] }), {
      inserted: true,
    });
    assert.deepEqual(await h.store.applyInbound({ insert: inbound('h3', 'bob', 3, { held: true }) }), {
      inserted: true,
    });
    const dup = await h.store.applyInbound({
      insert: inbound('m1', 'bob', 1, { body: encoder.encode('other'), held: true }),
      release: ['h3'],
      streams: [{ key: 'k', next: 9 }],
    });
    assert.deepEqual(dup, { inserted: false });
    const stored = await h.store.inbound('bob');
    assert.deepEqual(ids(stored), ['m1', 'h3'], 'stored once');
    assert.deepEqual(shape(stored[0]!), shape(m1));
    assertBytes(stored[0]!.body, m1.body, 'the first copy’s body');
    assert.deepEqual(ids(await h.store.held()), ['h3'], 'the release was not applied');
    assert.equal(await h.store.streamNext('k'), 2, 'the stream was not moved');
    await h.reopen();
    assert.deepEqual(
      await h.store.applyInbound({ insert: m1 }),
      { inserted: false },
      'dedupe survives a re-open',
    );
    // The key is (from, fromDevice, id): another device's message with the same id is new.
    assert.deepEqual(await h.store.applyInbound({ insert: inbound('m1', 'bob', 1, { fromDevice: 'd2' }) }), {
      inserted: true,
    });
    assert.equal((await h.store.inbound('bob')).length, 3);
    // A change without a message still applies, and says it inserted nothing.
    assert.deepEqual(await h.store.applyInbound({ streams: [{ key: 'k', next: 4 }] }), { inserted: false });
    assert.equal(await h.store.streamNext('k'), 4);
  });

  test('held messages survive a re-open until released', async (h) => {
    await h.store.applyInbound({ insert: inbound('m1', 'bob', 1) });
    await h.store.applyInbound({ insert: inbound('h3', 'bob', 3, { held: true }) });
    await h.store.applyInbound({ insert: inbound('h4', 'bob', 4, { held: true }) });
    await h.store.applyInbound({ insert: inbound('c5', 'carol', 5, { held: true }) });
    await h.reopen();
    const held = await h.store.held();
    assert.deepEqual(ids(held), ['h3', 'h4', 'c5']);
    assert.ok(held.every((m) => m.held));
    const res = await h.store.applyInbound({
      insert: inbound('m2', 'bob', 2),
      release: ['h3', 'h4'],
      streams: [{ key: 'bob/d1', next: 5 }],
    });
    assert.deepEqual(res, { inserted: true });
    assert.deepEqual(ids(await h.store.held()), ['c5']);
    await h.reopen();
    assert.deepEqual(ids(await h.store.held()), ['c5']);
    const history = await h.store.inbound('bob');
    assert.deepEqual(ids(history), ['m1', 'h3', 'h4', 'm2']);
    assert.ok(
      history.every((m) => !m.held),
      'released messages are no longer held',
    );
    await h.store.applyInbound({ release: ['c5', 'unknown'] });
    assert.deepEqual(await h.store.held(), []);
  });

  test('stream positions survive a re-open', async (h) => {
    assert.equal(await h.store.streamNext('bob/d1'), undefined);
    await h.store.applyInbound({
      streams: [
        { key: 'bob/d1', next: 3 },
        { key: 'carol/d1', next: 7 },
      ],
    });
    await h.reopen();
    assert.equal(await h.store.streamNext('bob/d1'), 3);
    assert.equal(await h.store.streamNext('carol/d1'), 7);
    await h.store.applyInbound({ insert: inbound('m3', 'bob', 3), streams: [{ key: 'bob/d1', next: 4 }] });
    await h.reopen();
    assert.equal(await h.store.streamNext('bob/d1'), 4);
    assert.equal(await h.store.streamNext('carol/d1'), 7);
    assert.equal(await h.store.streamNext('dave/d1'), undefined);
  });

  test('markRead marks only the given ids', async (h) => {
    for (const [i, id] of ['m1', 'm2', 'm3'].entries()) {
      await h.store.applyInbound({ insert: inbound(id, 'bob', i + 1) });
    }
    await h.store.applyInbound({ insert: inbound('c1', 'carol', 1) });
    await h.store.markRead(['m1', 'm3', 'unknown']);
    await h.reopen();
    const read = (list: InboundMessage[]) => list.map((m) => [m.id, m.read]);
    assert.deepEqual(read(await h.store.inbound('bob')), [
      ['m1', true],
      ['m2', false],
      ['m3', true],
    ]);
    assert.deepEqual(read(await h.store.inbound('carol')), [['c1', false]]);
  });

  test('inbound and outgoing history per conversation in order', async (h) => {
    await h.store.applyInbound({ insert: inbound('b2', 'bob', 2, { held: true }) });
    await h.store.applyInbound({ insert: inbound('c1', 'carol', 1) });
    await h.store.applyInbound({ insert: inbound('b1', 'bob', 1), release: ['b2'] });
    await h.store.enqueue(draft('o1', 'bob'), true);
    await h.store.enqueue(draft('o2', 'carol'), true);
    await h.store.enqueue(readDraft('o3', 'bob', ['b1', 'b2']), false);
    await h.store.enqueue(draft('o4', 'bob'), true);
    await h.store.setStatus('o1', 'delivered');
    await h.reopen();
    assert.deepEqual(ids(await h.store.inbound('bob')), ['b2', 'b1'], 'arrival order, not sequence order');
    assert.deepEqual(ids(await h.store.inbound('carol')), ['c1']);
    assert.deepEqual(await h.store.inbound('dave'), []);
    const out = await h.store.outgoingIn('bob');
    assert.deepEqual(ids(out), ['o1', 'o3', 'o4'], 'every status, receipts included, in enqueue order');
    assert.equal(out[0]!.status, 'delivered');
    assert.deepEqual(ids(await h.store.outgoingIn('carol')), ['o2']);
    assert.deepEqual(await h.store.outgoingIn('dave'), []);
  });

  test('bodies are stored byte-exact and copied on the way in', async ({ store }) => {
    const body = binaryBody();
    const expected = body.slice();
    const e = await store.enqueue(draft('o1', 'bob', body), true);
    body.fill(0);
    assertBytes((await store.outgoing('o1'))?.body, expected, 'after the caller reused its buffer');
    e.body!.fill(1);
    const got = await store.outgoing('o1');
    assertBytes(got?.body, expected, 'after the caller changed the returned entry');
    got!.body!.fill(2);
    assertBytes((await store.pending())[0]?.body, expected, 'after a reader changed its copy');

    const ids2 = ['x1'];
    await store.enqueue(readDraft('r1', 'bob', ids2), false);
    ids2.push('x2');
    assert.deepEqual((await store.outgoing('r1'))?.ids, ['x1'], 'receipt ids are copied too');

    const inBody = binaryBody();
    const m = inbound('m1', 'bob', 1, { body: inBody });
    await store.applyInbound({ insert: m });
    inBody.fill(0);
    m.read = true;
    const first = (await store.inbound('bob'))[0]!;
    assertBytes(first.body, expected, 'inbound body after the caller reused its buffer');
    assert.equal(first.read, false, 'the stored message is not the caller’s object');
    first.body.fill(3);
    first.held = true;
    const again = (await store.inbound('bob'))[0]!;
    assertBytes(again.body, expected, 'inbound body after a reader changed its copy');
    assert.equal(again.held, false);
    assert.deepEqual(await store.held(), []);
    assertBytes(
      (await store.enqueue(draft('o2', 'bob', new Uint8Array(0)), true)).body,
      new Uint8Array(0),
      'an empty body',
    );
  });

  test('state namespaces: one atomic write of many keys, read back byte-exact after a re-open', async (h) => {
    const body = binaryBody();
    await h.store.putState([
      { ns: 'group', key: '#g1', value: body },
      { ns: 'group', key: '#g2', value: encoder.encode('two') },
      { ns: 'rcpt', key: 'm1\u0000bob', value: encoder.encode('d') },
    ]);
    body.fill(0);
    await h.reopen();
    const s2 = h.store;
    assertBytes(
      await s2.getState('group', '#g1'),
      binaryBody(),
      'a value after the caller reused its buffer',
    );
    assert.equal(await s2.getState('group', 'm1\u0000bob'), undefined, 'namespaces are separate');
    assert.equal(await s2.getState('nope', '#g1'), undefined, 'an unknown namespace is empty');
    const got = await s2.getState('group', '#g2');
    got!.fill(0);
    assertBytes(await s2.getState('group', '#g2'), encoder.encode('two'), 'after a reader changed its copy');
  });

  test('state namespaces: a write replaces, an undefined value deletes', async ({ store }) => {
    await store.putState([{ ns: 'n', key: 'k', value: encoder.encode('one') }]);
    await store.putState([{ ns: 'n', key: 'k', value: encoder.encode('two') }]);
    assertBytes(await store.getState('n', 'k'), encoder.encode('two'), 'replaced');
    await store.putState([
      { ns: 'n', key: 'k', value: undefined },
      { ns: 'n', key: 'gone-already', value: undefined },
    ]);
    assert.equal(await store.getState('n', 'k'), undefined, 'deleted');
    assert.deepEqual(await store.listState('n'), []);
  });

  test('state namespaces: listState returns exactly the keys with the prefix, in key order', async ({
    store,
  }) => {
    const keys = ['m2\u0000carol', 'm1\u0000bob', 'm1\u0000alice', 'm10\u0000dave', 'm1', 'n1\u0000x'];
    await store.putState(keys.map((key) => ({ ns: 'rcpt', key, value: encoder.encode(key) })));
    await store.putState([{ ns: 'other', key: 'm1\u0000zed', value: encoder.encode('z') }]);
    const listed = await store.listState('rcpt', 'm1\u0000');
    assert.deepEqual(
      listed.map((e) => e.key),
      ['m1\u0000alice', 'm1\u0000bob'],
    );
    assertBytes(listed[1]!.value, encoder.encode('m1\u0000bob'), 'values come with their keys');
    assert.deepEqual(
      (await store.listState('rcpt')).map((e) => e.key),
      [...keys].sort(),
      'without a prefix: the whole namespace, sorted',
    );
  });

  historyCases(test);
  return cases;
}
