/**
 * The {@link ServerStore} conformance suite: one case per rule of the contract. Run it against
 * your own adapter with {@link registerCases}.
 */
import assert from 'node:assert/strict';
import type {
  AppendInput,
  AppendOutcome,
  AppendRefusal,
  DeviceAddress,
  DeviceEnvelope,
  GroupChange,
  GroupEvent,
  GroupInput,
  GroupMember,
  InboxEntry,
  KeyBundle,
  KeyUpload,
  MessageInput,
  ReceiptInput,
  ServerStore,
  StoreCapabilities,
} from '../server/store.js';
import { PENDING_DEVICE } from '../server/users.js';
import { skipUnmet, subjectHas } from './case-needs.js';
import { storeCaseBuilder, type ConformanceCase } from './conformance.js';
import {
  bundleOf,
  bytes,
  describeBundle,
  devKey,
  giveKeys,
  noKeys,
  ridOf,
  signed,
  text,
  upload,
} from './key-fixtures.js';
import { actionCountCases } from './server-store-actions.js';
import { keyClaimCases } from './server-store-claims.js';
import { faultCases, type WriteFaults } from './server-store-faults.js';
import { gapNoticeCases } from './server-store-gap-conformance.js';
import { slicedAppendCases } from './server-store-sliced.js';

/** How the server store suite opens and re-opens the adapter under test. */
export interface ServerStoreSubject {
  /** Names the adapter in reports. */
  name: string;
  /** A store over fresh empty data. */
  open(): Promise<ServerStore>;
  /** Closes `store` and opens a new one over the SAME data (a restart). */
  reopen(store: ServerStore): Promise<ServerStore>;
  /**
   * Opens another store over the same data as `store`, alongside it: a second gateway node (or
   * process) on a shared database. The suite closes it. Optional: without it, the cases about
   * several nodes run their "nodes" on `store` alone.
   */
  share?(store: ServerStore): Promise<ServerStore>;
  /**
   * The capabilities the store declares (its `capabilities` object): the suite runs the cases
   * that need one only when it is declared here, and skips the others saying why; a case checks
   * that the store declares the same. Without it, every case that needs a capability is skipped.
   */
  capabilities?: StoreCapabilities;
  /**
   * Opens a store over fresh empty data whose underlying writes go through `faults.hook` (the
   * store's fault hook, see `BeforeWrite`): the atomicity cases make its Nth write fail, for each
   * N, and check that nothing is left half-done. Without it those cases are skipped, saying so.
   */
  openWithFaults?(faults: WriteFaults): Promise<ServerStore>;
}

const alice1: DeviceAddress = { user: 'alice', device: 'a1' };
const alice2: DeviceAddress = { user: 'alice', device: 'a2' };
const alice3: DeviceAddress = { user: 'alice', device: 'a3' };
const bob1: DeviceAddress = { user: 'bob', device: 'b1' };
const bob2: DeviceAddress = { user: 'bob', device: 'b2' };
const carol1: DeviceAddress = { user: 'carol', device: 'c1' };
const dave1: DeviceAddress = { user: 'dave', device: 'd1' };

const ALL = 1_000_000;
const encoder = new TextEncoder();

function msg(from: DeviceAddress, id: string, to: string, seq = 1, body?: Uint8Array): MessageInput {
  return { kind: 'msg', from, id, to, seq, body: body ?? encoder.encode(`body of ${id}`) };
}

function receipt(from: DeviceAddress, id: string, to: string, ids: string[]): ReceiptInput {
  return { kind: 'receipt', from, id, to, status: 'read', ids };
}

/** A message to group `group`. */
function gmsg(from: DeviceAddress, id: string, group: string, seq = 1, body?: Uint8Array): MessageInput {
  return { ...msg(from, id, group, seq, body), group: true };
}

/** The member cap the group cases run with, unless a case is about the cap. */
const CAP = 256;

function groupChange(
  from: DeviceAddress,
  id: string,
  group: string,
  change: GroupChange,
  maxMembers = CAP,
): GroupInput {
  return { kind: 'group', from, id, group, change, maxMembers };
}

const create = (from: DeviceAddress, id: string, group: string, name: string, members: string[], max = CAP) =>
  groupChange(from, id, group, { op: 'create', name, members }, max);

/** Every byte value, twice, in a non-trivial order. */
function binaryBody(): Uint8Array {
  const b = new Uint8Array(512);
  for (let i = 0; i < b.length; i++) b[i] = (i * 167 + 13) & 0xff;
  return b;
}

function assertBytes(actual: Uint8Array, expected: Uint8Array, what: string): void {
  assert.ok(actual instanceof Uint8Array, `${what}: body is a Uint8Array`);
  assert.equal(actual.byteLength, expected.byteLength, `${what}: body length`);
  for (let i = 0; i < expected.byteLength; i++) {
    if (actual[i] !== expected[i]) assert.fail(`${what}: body differs at byte ${i}`);
  }
}

/** Where a registered user without a device keeps its pending inbox (see "User directory"). */
const pendingOf = (user: string): DeviceAddress => ({ user, device: PENDING_DEVICE });

function assertDevices(actual: DeviceAddress[], expected: DeviceAddress[], what: string): void {
  const keys = actual.map(devKey);
  assert.equal(new Set(keys).size, keys.length, `${what}: each device listed once`);
  assert.deepEqual([...keys].sort(), expected.map(devKey).sort(), what);
}

function ok(outcome: AppendOutcome | undefined, what: string): Extract<AppendOutcome, { ok: true }> {
  assert.ok(outcome, `${what}: an outcome`);
  if (!outcome.ok) assert.fail(`${what}: expected ok, got ${outcome.code}`);
  return outcome;
}

async function appendOne(store: ServerStore, item: AppendInput, now: number) {
  const outcomes = await store.append([item], now);
  assert.equal(outcomes.length, 1, 'one outcome per item');
  return ok(outcomes[0], `append ${item.id}`);
}

async function refused(store: ServerStore, item: AppendInput, now: number, code: AppendRefusal) {
  assert.deepEqual(
    await store.append([item], now),
    [{ ok: false, code }],
    `${item.id} is refused with ${code}`,
  );
}

async function inbox(store: ServerStore, d: DeviceAddress): Promise<InboxEntry[]> {
  return store.readInbox(d, 0, ALL);
}

function msgIds(entries: InboxEntry[]): string[] {
  return entries.flatMap((e) => (e.kind === 'msg' ? [e.id] : []));
}

function statuses(entries: InboxEntry[]) {
  return entries.flatMap((e) =>
    e.kind === 'status' ? [{ status: e.status, ids: [...e.ids].sort(), by: e.by, ts: e.ts }] : [],
  );
}

function events(entries: InboxEntry[]): GroupEvent[] {
  return entries.flatMap((e) => (e.kind === 'group' ? [e.event] : []));
}

/** One line per entry, to compare an inbox's order across kinds. */
function summary(entries: InboxEntry[]): string[] {
  return entries.map((e) =>
    e.kind === 'msg'
      ? `msg ${e.id}`
      : e.kind === 'group'
        ? `${e.event.group} v${e.event.ver} ${e.event.op}${e.event.snapshot ? ' +snapshot' : ''}`
        : e.kind === 'gap'
          ? `gap ${e.reason}`
          : `${e.status} ${[...e.ids].sort().join(',')} by ${e.by}`,
  );
}

const admin = (user: string): GroupMember => ({ user, role: 'admin' });
const member = (user: string): GroupMember => ({ user, role: 'member' });

/** Every inbox of `devices`, for before/after comparisons. */
async function inboxes(store: ServerStore, devices: DeviceAddress[]): Promise<InboxEntry[][]> {
  return Promise.all(devices.map((d) => inbox(store, d)));
}

function offsetOf(entries: InboxEntry[], id: string): number {
  const e = entries.find((x) => x.kind === 'msg' && x.id === id);
  assert.ok(e, `entry ${id} is in the inbox`);
  return e.offset;
}

/** Holds the store of one case, so a case can re-open it and the suite can close it. */

async function register(store: ServerStore, ...devices: DeviceAddress[]): Promise<void> {
  for (const d of devices) await store.registerDevice(d, 1);
}

/** alice1 and carol1 registered, bob in the directory without a device, alice's `m1` waiting for him. */
async function pendingBob(store: ServerStore): Promise<void> {
  await register(store, alice1, carol1);
  assert.equal(await store.registerUser('bob', 500), true);
  await appendOne(store, msg(alice1, 'm1', 'bob'), 1000);
}

const tick = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 0));

/**
 * Reads `d`'s inbox page by page after the last offset seen, as a delivering connection does,
 * checking that each entry comes after that cursor, until a page read after `done()` turned true
 * comes back empty. Returns every entry it read.
 */
async function follow(
  store: ServerStore,
  d: DeviceAddress,
  pageSize: number,
  done: () => boolean,
): Promise<InboxEntry[]> {
  const read: InboxEntry[] = [];
  let cursor = 0;
  for (let round = 0; ; round++) {
    assert.ok(round < 100_000, 'the reader finishes');
    const finished = done(); // taken before the read, so an empty page then means "all read"
    const page = await store.readInbox(d, cursor, pageSize);
    for (const e of page) {
      assert.ok(e.offset > cursor, `offset ${e.offset} is after the cursor ${cursor}`);
      read.push(e);
      cursor = e.offset;
    }
    if (page.length === 0) {
      if (finished) return read;
      await tick();
    }
  }
}

/** Device `d`'s envelope of message `id`, made for registration id `rid` (its first install's by default). */
function envelope(id: string, d: DeviceAddress, rid = ridOf(d, 1)): DeviceEnvelope {
  return { user: d.user, device: d.device, rid, body: bytes(`${id} sealed for ${devKey(d)}`) };
}

/** An end-to-end encrypted message with an envelope for each device (see {@link envelope}). */
function sealed(
  from: DeviceAddress,
  id: string,
  to: string,
  devices: Array<DeviceAddress | DeviceEnvelope>,
  seq = 1,
): MessageInput {
  const envelopes = devices.map((d) => ('rid' in d ? d : envelope(id, d)));
  return { kind: 'msg', from, id, to, seq, body: new Uint8Array(0), envelopes };
}

/** The body of message `id` in an inbox, as text. */
function bodyOf(entries: InboxEntry[], id: string): string {
  const e = entries.find((x) => x.kind === 'msg' && x.id === id);
  assert.ok(e?.kind === 'msg', `entry ${id} is in the inbox`);
  return text(e.body);
}

/** Asserts that the item is refused with `code` and exactly this device difference (in any order). */
async function refusedWith(
  store: ServerStore,
  item: AppendInput,
  now: number,
  code: AppendRefusal,
  devices: { missing?: DeviceAddress[]; extra?: DeviceAddress[]; stale?: DeviceAddress[] },
): Promise<void> {
  const outcomes = await store.append([item], now);
  assert.equal(outcomes.length, 1, 'one outcome per item');
  const o = outcomes[0]!;
  assert.ok(!o.ok, `${item.id} is refused`);
  assert.equal(o.code, code, `${item.id} is refused with ${code}`);
  const names = (list?: DeviceAddress[]) => (list ?? []).map(devKey).sort();
  assert.deepEqual(
    { missing: names(o.devices?.missing), extra: names(o.devices?.extra), stale: names(o.devices?.stale) },
    { missing: names(devices.missing), extra: names(devices.extra), stale: names(devices.stale) },
    `${item.id}: the device difference`,
  );
}

/**
 * The {@link ServerStore} conformance suite: a list of cases, each named after the guarantee it
 * proves, each on fresh data from `subject.open()`.
 *
 * @example
 * ```ts
 * import { registerCases, serverStoreConformance } from 'postbox/testing';
 * import { describe, it } from 'vitest';
 *
 * describe('my store', () =>
 *   registerCases(
 *     serverStoreConformance({
 *       name: 'my store',
 *       open: async () => myStore(await freshDatabase()),
 *       reopen: async (store) => { await store.close(); return myStore(sameDatabase()); },
 *     }),
 *     it,
 *   ));
 * ```
 */
export function serverStoreConformance(subject: ServerStoreSubject): ConformanceCase[] {
  const cases: ConformanceCase[] = [];
  const test = storeCaseBuilder(subject, cases);

  test('devices are listed in registration order and registration is idempotent', async ({ store }) => {
    assert.deepEqual(await store.devices('bob'), []);
    await register(store, bob2, bob1, bob2, alice1);
    await store.registerDevice(bob1, 99);
    assert.deepEqual(await store.devices('bob'), ['b2', 'b1']);
    assert.deepEqual(await store.devices('alice'), ['a1']);
  });

  test('append is atomic across every recipient device', async ({ store }) => {
    await register(store, alice1, alice2, bob1, bob2);
    const body = binaryBody();
    const out = await appendOne(store, msg(alice1, 'm1', 'bob', 7, body), 1000);
    assert.equal(out.ts, 1000, 'commit time is `now`');
    assert.equal(out.duplicate, false);
    assertDevices(out.notify, [alice2, bob1, bob2], 'notify lists every recipient device once');
    for (const d of [alice2, bob1, bob2]) {
      const entries = await inbox(store, d);
      assert.equal(entries.length, 1, `${devKey(d)} has the message`);
      const e = entries[0]!;
      assert.ok(e.kind === 'msg');
      assert.ok(Number.isInteger(e.offset) && e.offset > 0, 'offsets are positive integers');
      const { offset: _o, body: got, ...rest } = e;
      assert.deepEqual(rest, { kind: 'msg', id: 'm1', from: alice1, to: 'bob', seq: 7, ts: 1000 });
      assertBytes(got, body, devKey(d));
    }
    assert.deepEqual(await inbox(store, alice1), [], 'the sending device gets no copy');
  });

  test('bodies are stored byte-exact and independent of the caller’s and readers’ buffers', async ({
    store,
  }) => {
    await register(store, alice1, bob1);
    const body = binaryBody();
    const expected = body.slice();
    await appendOne(store, msg(alice1, 'm1', 'bob', 1, body), 1000);
    body.fill(0); // the caller reuses its buffer
    const first = (await inbox(store, bob1))[0]!;
    assert.ok(first.kind === 'msg');
    assertBytes(first.body, expected, 'after the caller reused its buffer');
    first.body.fill(1); // a reader scribbles on what it got
    const second = (await inbox(store, bob1))[0]!;
    assert.ok(second.kind === 'msg');
    assertBytes(second.body, expected, 'after a reader changed its copy');
    const empty = await appendOne(store, msg(alice1, 'm2', 'bob', 2, new Uint8Array(0)), 1001);
    assert.equal(empty.duplicate, false);
    const e = (await inbox(store, bob1))[1]!;
    assert.ok(e.kind === 'msg');
    assertBytes(e.body, new Uint8Array(0), 'an empty body');
  });

  test('a duplicate id in the same batch or a later one writes nothing and returns the original ts', async ({
    store,
  }) => {
    await register(store, alice1, alice2, bob1);
    const outcomes = await store.append(
      [msg(alice1, 'm1', 'bob', 1), msg(alice1, 'm1', 'bob', 2, encoder.encode('other'))],
      1000,
    );
    assert.equal(outcomes.length, 2);
    const first = ok(outcomes[0], 'first');
    assert.equal(first.duplicate, false);
    assert.deepEqual(ok(outcomes[1], 'second'), { ok: true, ts: 1000, duplicate: true, notify: [] });
    const later = await store.append([msg(alice1, 'm1', 'bob', 3, encoder.encode('again'))], 2000);
    assert.deepEqual(later, [{ ok: true, ts: 1000, duplicate: true, notify: [] }]);
    const entries = await inbox(store, bob1);
    assert.equal(entries.length, 1, 'one entry for the id');
    const e = entries[0]!;
    assert.ok(e.kind === 'msg');
    assert.equal(e.seq, 1);
    assertBytes(e.body, encoder.encode('body of m1'), 'the original body');
    assert.equal((await inbox(store, alice2)).length, 1);
    // The key is (user, device, id): the same id from another device or user is a new message.
    const other = await appendOne(store, msg(alice2, 'm1', 'bob', 1), 3000);
    assert.equal(other.duplicate, false);
    await register(store, carol1);
    const fromCarol = await appendOne(store, msg(carol1, 'm1', 'bob', 1), 3000);
    assert.equal(fromCarol.duplicate, false);
    assert.equal((await inbox(store, bob1)).length, 3);
  });

  test('offsets reported by append, when given, are where each notified device finds the message', async ({
    store,
  }) => {
    await register(store, alice1, alice2, bob1, bob2);
    await store.append([msg(bob1, 'warm', 'alice')], 500); // offsets need not start at 1
    const [out] = await store.append([msg(alice1, 'm1', 'bob')], 1000);
    assert.ok(out?.ok);
    if (!out.offsets) return; // optional: the engine then reads the inbox as usual
    assert.equal(out.offsets.length, out.notify.length, 'one offset per notified device');
    for (let i = 0; i < out.notify.length; i++) {
      const entries = await store.readInbox(out.notify[i]!, out.offsets[i]! - 1, 1);
      assert.equal(entries[0]?.offset, out.offsets[i], `${devKey(out.notify[i]!)}: the offset exists`);
      assert.equal(
        entries[0]?.kind === 'msg' && entries[0].id,
        'm1',
        `${devKey(out.notify[i]!)}: it holds the message`,
      );
    }
  });

  test('recipients are the devices registered at commit time', async ({ store }) => {
    await register(store, alice1, bob1);
    const first = await appendOne(store, msg(alice1, 'm1', 'bob', 1), 1000);
    assertDevices(first.notify, [bob1], 'before bob2 and alice2 exist');
    await register(store, bob2, alice2);
    const second = await appendOne(store, msg(alice1, 'm2', 'bob', 2), 2000);
    assertDevices(second.notify, [bob1, bob2, alice2], 'after they registered');
    assert.deepEqual(msgIds(await inbox(store, bob1)), ['m1', 'm2']);
    assert.deepEqual(msgIds(await inbox(store, bob2)), ['m2']);
    assert.deepEqual(msgIds(await inbox(store, alice2)), ['m2']);
  });

  test('unknown recipient writes nothing', async ({ store }) => {
    await register(store, alice1, alice2, bob1);
    const outcomes = await store.append([msg(alice1, 'm1', 'nobody'), msg(alice1, 'm2', 'bob', 1)], 1000);
    assert.deepEqual(outcomes[0], { ok: false, code: 'unknown_recipient' });
    assert.equal(ok(outcomes[1], 'the other item of the batch').duplicate, false);
    assert.deepEqual(msgIds(await inbox(store, alice2)), ['m2'], 'no copy of m1 for the sender’s devices');
    const r = await store.append([receipt(bob1, 'r1', 'nobody', ['x'])], 1000);
    assert.deepEqual(r, [{ ok: false, code: 'unknown_recipient' }]);
    assert.equal((await inbox(store, alice2)).length, 1);
    // No dedupe record was written: once the user exists, the same id commits.
    await register(store, { user: 'nobody', device: 'n1' });
    const retry = await appendOne(store, msg(alice1, 'm1', 'nobody'), 2000);
    assert.equal(retry.duplicate, false);
    assert.equal(retry.ts, 2000);
  });

  test('offsets strictly increase per device, across acks and re-opens', async (h) => {
    await register(h.store, alice1, bob1);
    const seen: number[] = [];
    const take = async () => {
      const entries = await h.store.readInbox(bob1, seen.at(-1) ?? 0, ALL);
      for (const e of entries) seen.push(e.offset);
      return entries;
    };
    for (let i = 0; i < 5; i++) await appendOne(h.store, msg(alice1, `m${i}`, 'bob', i + 1), 1000 + i);
    await h.store.append(
      [5, 6, 7].map((i) => msg(alice1, `m${i}`, 'bob', i + 1)),
      2000,
    );
    await take();
    await h.store.ack(bob1, [...seen], 3000);
    await appendOne(h.store, msg(alice1, 'm8', 'bob', 9), 3000);
    await take();
    await h.reopen();
    await appendOne(h.store, msg(alice1, 'm9', 'bob', 10), 4000);
    const all = await inbox(h.store, bob1);
    assert.deepEqual(msgIds(all), ['m8', 'm9']);
    for (const e of all) if (!seen.includes(e.offset)) seen.push(e.offset);
    assert.equal(seen.length, 10);
    for (let i = 0; i < seen.length; i++) {
      assert.ok(Number.isInteger(seen[i]) && seen[i]! > 0, 'offsets are positive integers');
      if (i > 0) assert.ok(seen[i]! > seen[i - 1]!, `offset ${seen[i]} after ${seen[i - 1]} (never reused)`);
    }
  });

  test('a batch of 512 items commits in one call', async ({ store }) => {
    await register(store, alice1, bob1);
    const batch = Array.from({ length: 512 }, (_, i) =>
      msg(alice1, `m${String(i).padStart(3, '0')}`, 'bob', i + 1),
    );
    const outcomes = await store.append(batch, 1000);
    assert.equal(outcomes.length, 512);
    for (const [i, o] of outcomes.entries()) {
      const r = ok(o, `item ${i}`);
      assert.equal(r.duplicate, false);
      assert.equal(r.ts, 1000);
    }
    const entries = await inbox(store, bob1);
    assert.deepEqual(
      msgIds(entries),
      batch.map((m) => m.id),
      'one entry per item, in batch order',
    );
  });

  test('readInbox honours after and limit', async ({ store }) => {
    await register(store, alice1, bob1);
    for (let i = 0; i < 10; i++) await appendOne(store, msg(alice1, `m${i}`, 'bob', i + 1), 1000 + i);
    const all = await inbox(store, bob1);
    assert.equal(all.length, 10);
    const first = await store.readInbox(bob1, 0, 3);
    assert.deepEqual(msgIds(first), ['m0', 'm1', 'm2']);
    const rest = await store.readInbox(bob1, first[2]!.offset, 100);
    assert.deepEqual(msgIds(rest), ['m3', 'm4', 'm5', 'm6', 'm7', 'm8', 'm9']);
    const middle = await store.readInbox(bob1, all[4]!.offset, 2);
    assert.deepEqual(msgIds(middle), ['m5', 'm6']);
    assert.deepEqual(await store.readInbox(bob1, all[9]!.offset, 100), []);
    assert.deepEqual(await store.readInbox(bob1, 0, 0), []);
    // `after` need not be an existing offset (e.g. it was acked).
    await store.ack(bob1, [all[3]!.offset], 2000);
    assert.deepEqual(msgIds(await store.readInbox(bob1, all[2]!.offset, 2)), ['m4', 'm5']);
    assert.deepEqual(await store.readInbox(carol1, 0, 10), [], 'an unknown device has an empty inbox');
  });

  test('no reader skips an entry under concurrent appends', async ({ store }) => {
    const senders = Array.from({ length: 50 }, (_, i) => ({ user: `s${i}`, device: 'd' }));
    await register(store, bob1, ...senders);
    const perBatch = 4;
    const total = senders.length * perBatch;
    let done = false;
    const writers = Promise.all(
      senders.map(async (s, i) => {
        for (let k = 0; k < i % 3; k++) await tick(); // stagger
        return store.append(
          Array.from({ length: perBatch }, (_, j) => msg(s, `${s.user}-${j}`, 'bob', j + 1)),
          1000 + i,
        );
      }),
    ).finally(() => {
      done = true;
    });
    const seen = new Map<number, string>();
    for (const e of await follow(store, bob1, 7, () => done)) {
      assert.ok(e.kind === 'msg');
      seen.set(e.offset, e.id);
    }
    const outcomes = (await writers).flat();
    assert.equal(outcomes.length, total);
    for (const o of outcomes) assert.equal(ok(o, 'concurrent append').duplicate, false);
    const all = await inbox(store, bob1);
    assert.equal(all.length, total, 'every item committed');
    for (const e of all) {
      assert.ok(seen.has(e.offset), `entry at offset ${e.offset} appeared behind the reader’s cursor`);
    }
    assert.equal(seen.size, total);
  });

  test('no reader skips an entry while several nodes append to one inbox', async (h) => {
    const others: ServerStore[] = [];
    for (let i = 0; subject.share && i < 3; i++) others.push(await subject.share(h.store));
    // Three writing nodes and one reading node (all `h.store` without `share`), so that reads do
    // not queue behind writes for a connection and poll as fast as the store answers.
    const nodes = [h.store, ...others.slice(0, 2)];
    const reading = others[2] ?? h.store;
    try {
      const senders = Array.from({ length: 40 }, (_, i) => ({ user: `n${i}`, device: 'd' }));
      await register(h.store, bob1, bob2, ...senders);
      // Something of bob's for each sender's receipts to be about (bob2's copies acked away).
      for (const [i, s] of senders.entries()) await appendOne(h.store, msg(bob1, `x${i}`, s.user), 900);
      await h.store.ack(
        bob2,
        (await inbox(h.store, bob2)).map((e) => e.offset),
        950,
      );
      // Each sender commits five batches through "its" node, messages and read receipts mixed,
      // so entries of bob's inbox come from many transactions on every node at once.
      let done = false;
      const writers = Promise.all(
        senders.map(async (s, i) => {
          const node = nodes[i % nodes.length]!;
          const outcomes: AppendOutcome[] = [];
          for (let b = 0; b < 5; b++) {
            for (let k = 0; k < (i + b) % 3; k++) await tick(); // stagger
            const items: AppendInput[] = Array.from({ length: 1 + ((i + b) % 3) }, (_, j) =>
              (i + j) % 4 === 3
                ? receipt(s, `${s.user}-${b}-${j}`, 'bob', [`x${i}`])
                : msg(s, `${s.user}-${b}-${j}`, 'bob', b * 3 + j + 1),
            );
            outcomes.push(...(await node.append(items, 1000 + i)));
          }
          return outcomes;
        }),
      ).finally(() => {
        done = true;
      });
      // Three readers, each polling with its last seen offset.
      const readers = [1, 2, 3].map(async () => {
        const read = await follow(reading, bob1, 3, () => done);
        return new Set(read.map((e) => e.offset));
      });
      const outcomes = await writers;
      const seenBy = await Promise.all(readers);
      const total = outcomes.flat().length;
      for (const o of outcomes.flat()) assert.equal(ok(o, 'append on a node').duplicate, false);
      const all = await inbox(h.store, bob1);
      assert.equal(all.length, total, 'every item committed one entry to b1');
      assert.equal(new Set(all.map((e) => e.offset)).size, total, 'offsets are unique');
      for (const [r, seen] of seenBy.entries()) {
        for (const e of all) {
          assert.ok(
            seen.has(e.offset),
            `reader ${r}: entry at offset ${e.offset} appeared behind its cursor`,
          );
        }
      }
      assert.equal((await inbox(h.store, bob2)).length, total, 'and one to b2');
    } finally {
      for (const n of others) await n.close();
    }
  });

  test('a message sent through several nodes at once commits once, and every node reports its time', async (h) => {
    const others: ServerStore[] = [];
    for (let i = 0; subject.share && i < 2; i++) others.push(await subject.share(h.store));
    const nodes = [h.store, ...others];
    try {
      await register(h.store, alice1, bob1);
      // A client that resends while its first attempt is still committing, through other gateways.
      const ids = Array.from({ length: 20 }, (_, i) => `m${i}`);
      const results = await Promise.all(
        ids.map((id, i) =>
          Promise.all(
            [0, 1, 2].map(async (n) => {
              for (let k = 0; k < (i + n) % 3; k++) await tick();
              return (await nodes[n % nodes.length]!.append([msg(alice1, id, 'bob', i + 1)], 1000 + n))[0];
            }),
          ),
        ),
      );
      for (const [i, tries] of results.entries()) {
        const outs = tries.map((o) => ok(o, `${ids[i]} on a node`));
        assert.equal(outs.filter((o) => !o.duplicate).length, 1, `${ids[i]} committed once`);
        const ts = outs.find((o) => !o.duplicate)!.ts;
        for (const o of outs) assert.equal(o.ts, ts, `${ids[i]}: duplicates report the original time`);
      }
      assert.deepEqual(msgIds(await inbox(h.store, bob1)).sort(), [...ids].sort(), 'one entry per message');
    } finally {
      for (const n of others) await n.close();
    }
  });

  test('acks and expiry racing on several nodes tell the sender once per message and user', async (h) => {
    const others: ServerStore[] = [];
    for (let i = 0; subject.share && i < 2; i++) others.push(await subject.share(h.store));
    const [a, b, c] = [h.store, others[0] ?? h.store, others[1] ?? h.store];
    try {
      await register(h.store, alice1, bob1, bob2, carol1);
      const toBob = Array.from({ length: 30 }, (_, i) => msg(alice1, `b${i}`, 'bob', i + 1));
      const toCarol = Array.from({ length: 30 }, (_, i) => msg(alice1, `c${i}`, 'carol', i + 1));
      await h.store.append([...toBob, ...toCarol], 1000);
      const offsets = async (d: DeviceAddress) => (await inbox(h.store, d)).map((e) => e.offset);
      const [o1, o2, o3] = [await offsets(bob1), await offsets(bob2), await offsets(carol1)];
      // Both of bob's devices ack on two nodes while three nodes expire everything, carol's
      // device acking half of hers meanwhile.
      await Promise.all([
        a.ack(bob1, o1, 3000),
        b.ack(bob2, o2, 3000),
        c.ack(carol1, o3.slice(0, 15), 3000),
        a.expire(2000, 3000),
        b.expire(2000, 3000),
        c.expire(2000, 3000),
      ]);
      const told = new Map<string, string[]>();
      for (const e of await inbox(h.store, alice1)) {
        if (e.kind !== 'status') continue;
        for (const id of e.ids)
          told.set(`${id} by ${e.by}`, [...(told.get(`${id} by ${e.by}`) ?? []), e.status]);
      }
      for (const m of [...toBob, ...toCarol]) {
        const by = m.to;
        const statuses = told.get(`${m.id} by ${by}`) ?? [];
        assert.equal(
          statuses.length,
          1,
          `${m.id}: one status by ${by}, got ${statuses.join(', ') || 'none'}`,
        );
      }
      assert.equal(told.size, toBob.length + toCarol.length, 'no other statuses');
      for (const d of [bob1, bob2, carol1]) {
        const left = (await inbox(h.store, d)).filter((e) => e.kind !== 'gap');
        assert.deepEqual(left, [], `${devKey(d)} emptied but for gap notices`);
      }
    } finally {
      for (const n of others) await n.close();
    }
  });

  test('ack deletes only the acking device’s entries', async ({ store }) => {
    await register(store, alice1, bob1, bob2);
    await appendOne(store, msg(alice1, 'm1', 'bob', 1), 1000);
    await appendOne(store, msg(alice1, 'm2', 'bob', 2), 1000);
    const b1 = await inbox(store, bob1);
    const res = await store.ack(bob1, [offsetOf(b1, 'm1')], 2000);
    assert.equal(res.count, 1);
    assert.deepEqual(msgIds(await inbox(store, bob1)), ['m2']);
    assert.deepEqual(msgIds(await inbox(store, bob2)), ['m1', 'm2'], 'the other device keeps its entries');
    const again = await store.ack(bob1, [offsetOf(b1, 'm1'), 987_654], 2001);
    assert.deepEqual(again, { count: 0, notify: [] }, 'already acked and unknown offsets are ignored');
    const b2 = await inbox(store, bob2);
    const both = await store.ack(
      bob2,
      b2.map((e) => e.offset),
      2002,
    );
    assert.equal(both.count, 2);
    assert.deepEqual(await inbox(store, bob2), []);
    assert.deepEqual(msgIds(await inbox(store, bob1)), ['m2']);
  });

  test('a device cannot ack another device’s entries', async ({ store }) => {
    await register(store, alice1, bob1, bob2, carol1);
    await appendOne(store, msg(alice1, 'm1', 'bob', 1), 1000);
    await appendOne(store, msg(alice1, 'm2', 'bob', 2), 1000);
    const before1 = await inbox(store, bob1);
    const before2 = await inbox(store, bob2);
    const offsets = [...before1, ...before2].map((e) => e.offset);
    assert.deepEqual(await store.ack(carol1, offsets, 2000), { count: 0, notify: [] });
    assert.deepEqual(await store.ack({ user: 'bob', device: 'b9' }, offsets, 2000), { count: 0, notify: [] });
    assert.deepEqual(await inbox(store, bob1), before1);
    assert.deepEqual(await inbox(store, bob2), before2);
    assert.deepEqual(await inbox(store, alice1), [], 'no delivered for acks that deleted nothing');
  });

  test('delivered is queued once, on the first recipient device’s ack', async ({ store }) => {
    await register(store, alice1, alice2, bob1, bob2, carol1);
    await appendOne(store, msg(alice1, 'm1', 'bob', 1), 1000);
    await appendOne(store, msg(alice2, 'm2', 'bob', 1), 1000);
    await appendOne(store, msg(carol1, 'm3', 'bob', 1), 1000);
    const b1 = await inbox(store, bob1);
    assert.deepEqual(msgIds(b1), ['m1', 'm2', 'm3']);
    const res = await store.ack(
      bob1,
      b1.map((e) => e.offset),
      2000,
    );
    assert.equal(res.count, 3);
    assertDevices(res.notify, [alice1, alice2, carol1], 'every device of each sender user');
    const delivered = (ids: string[]) => ({ status: 'delivered', ids, by: 'bob', ts: 2000 });
    assert.deepEqual(
      statuses(await inbox(store, alice1)),
      [delivered(['m1', 'm2'])],
      'grouped per sender user',
    );
    assert.deepEqual(statuses(await inbox(store, alice2)), [delivered(['m1', 'm2'])]);
    assert.deepEqual(statuses(await inbox(store, carol1)), [delivered(['m3'])]);
    // The second recipient device's ack deletes its entries and queues nothing.
    const b2 = await inbox(store, bob2);
    const second = await store.ack(
      bob2,
      b2.map((e) => e.offset),
      3000,
    );
    assert.deepEqual(second, { count: 3, notify: [] });
    assert.equal(statuses(await inbox(store, alice1)).length, 1);
    assert.equal(statuses(await inbox(store, carol1)).length, 1);
  });

  test('statuses an ack reports writing, when it does, are what each notified device reads back', async ({
    store,
  }) => {
    await register(store, alice1, alice2, bob1, carol1);
    await appendOne(store, msg(bob1, 'warm', 'alice', 1), 500); // offsets need not start at 1
    await appendOne(store, msg(alice1, 'm1', 'bob', 1), 1000);
    await appendOne(store, msg(carol1, 'm2', 'bob', 1), 1000);
    const b1 = await inbox(store, bob1);
    const res = await store.ack(
      bob1,
      b1.map((e) => e.offset),
      2000,
    );
    const all = res.entries;
    if (!all) return; // optional: the engine then reads the inbox as usual
    assertDevices(
      [...new Map(all.map((w) => [devKey(w.device), w.device])).values()],
      res.notify,
      'an entry for every notified device',
    );
    for (const d of res.notify) {
      const written: InboxEntry[] = all.filter((w) => devKey(w.device) === devKey(d)).map((w) => w.entry);
      const read = await store.readInbox(d, written[0]!.offset - 1, written.length + 1);
      const fresh = read.filter((e) => e.kind === 'status');
      assert.deepEqual(
        written,
        fresh,
        `${devKey(d)}: the entries as readInbox returns them, in offset order`,
      );
    }
  });

  test('the sender’s other devices’ acks produce no delivered', async ({ store }) => {
    await register(store, alice1, alice2, bob1);
    await appendOne(store, msg(alice1, 'm1', 'bob', 1), 1000);
    const a2 = await inbox(store, alice2);
    assert.deepEqual(await store.ack(alice2, [offsetOf(a2, 'm1')], 2000), { count: 1, notify: [] });
    assert.deepEqual(await inbox(store, alice1), []);
    assert.deepEqual(await inbox(store, alice2), []);
    // The recipient's ack is still the first one that counts.
    const res = await store.ack(bob1, [offsetOf(await inbox(store, bob1), 'm1')], 3000);
    assertDevices(res.notify, [alice1, alice2], 'delivered after the recipient acks');
    assert.deepEqual(statuses(await inbox(store, alice1)), [
      { status: 'delivered', ids: ['m1'], by: 'bob', ts: 3000 },
    ]);
  });

  test('acking a status entry produces nothing', async ({ store }) => {
    await register(store, alice1, bob1, bob2);
    await appendOne(store, msg(alice1, 'm1', 'bob', 1), 1000);
    await store.ack(bob1, [offsetOf(await inbox(store, bob1), 'm1')], 2000);
    const a1 = await inbox(store, alice1);
    assert.equal(a1.length, 1);
    const bobBefore = await inbox(store, bob2);
    assert.deepEqual(
      await store.ack(
        alice1,
        a1.map((e) => e.offset),
        3000,
      ),
      { count: 1, notify: [] },
    );
    assert.deepEqual(await inbox(store, alice1), []);
    assert.deepEqual(await inbox(store, bob1), []);
    assert.deepEqual(await inbox(store, bob2), bobBefore);
  });

  test('a receipt becomes a read status on the reader’s other devices and the sender’s devices', async ({
    store,
  }) => {
    await register(store, alice1, alice2, bob1, bob2);
    await appendOne(store, msg(alice1, 'm1', 'bob', 1), 1000);
    await appendOne(store, msg(alice2, 'm2', 'bob', 1), 1001);
    const [a1, a2, b1, b2] = await inboxes(store, [alice1, alice2, bob1, bob2]);
    const out = await appendOne(store, receipt(bob1, 'r1', 'alice', ['m1', 'm2']), 5000);
    assert.equal(out.ts, 5000);
    assert.equal(out.duplicate, false);
    assertDevices(out.notify, [alice1, alice2, bob2], 'notify');
    const read = { status: 'read', ids: ['m1', 'm2'], by: 'bob', ts: 5000 };
    for (const [d, was] of [
      [alice1, a1],
      [alice2, a2],
      [bob2, b2],
    ] as const) {
      const entries = await inbox(store, d);
      assert.equal(entries.length, was!.length + 1, `${devKey(d)}: one entry more`);
      assert.deepEqual(statuses(entries), [read], devKey(d));
    }
    assert.deepEqual(await inbox(store, bob1), b1, 'not to the reading device');
    const dup = await store.append([receipt(bob1, 'r1', 'alice', ['m1', 'm2'])], 6000);
    assert.deepEqual(dup, [{ ok: true, ts: 5000, duplicate: true, notify: [] }]);
    assert.equal(statuses(await inbox(store, alice1)).length, 1, 'a duplicate receipt writes nothing');
  });

  test('dedupe survives a re-open', async (h) => {
    await register(h.store, alice1, bob1);
    await appendOne(h.store, msg(alice1, 'm1', 'bob', 1), 1000);
    await appendOne(h.store, receipt(bob1, 'r1', 'alice', ['x']), 1100);
    await h.store.ack(bob1, [offsetOf(await inbox(h.store, bob1), 'm1')], 1500);
    await h.reopen();
    assert.deepEqual(await h.store.append([msg(alice1, 'm1', 'bob', 1)], 2000), [
      { ok: true, ts: 1000, duplicate: true, notify: [] },
    ]);
    assert.deepEqual(await h.store.append([receipt(bob1, 'r1', 'alice', ['x'])], 2000), [
      { ok: true, ts: 1100, duplicate: true, notify: [] },
    ]);
    assert.deepEqual(await inbox(h.store, bob1), [], 'the acked message is not written again');
  });

  test('inbox and undelivered bodies survive a re-open', async (h) => {
    await register(h.store, alice1, bob1, bob2);
    const body = binaryBody();
    await appendOne(h.store, msg(alice1, 'm1', 'bob', 1, body), 1000);
    await appendOne(h.store, msg(alice1, 'm2', 'bob', 2), 1001);
    await h.store.ack(bob1, [offsetOf(await inbox(h.store, bob1), 'm1')], 2000);
    const before = {
      alice1: await inbox(h.store, alice1),
      bob1: await inbox(h.store, bob1),
      bob2: await inbox(h.store, bob2),
    };
    await h.reopen();
    assert.deepEqual(await h.store.devices('bob'), ['b1', 'b2'], 'devices survive');
    assert.deepEqual(await inbox(h.store, alice1), before.alice1, 'the delivered status survives');
    assert.deepEqual(await inbox(h.store, bob1), before.bob1, 'acked entries stay deleted');
    const b2 = await inbox(h.store, bob2);
    assert.deepEqual(b2, before.bob2, 'the unacked entries survive with their offsets');
    const e = b2[0]!;
    assert.ok(e.kind === 'msg' && e.id === 'm1');
    assertBytes(e.body, body, 'the body another device still needs');
  });

  test('expiry removes old entries and tells the sender expired once per undelivered message', async ({
    store,
  }) => {
    await register(store, alice1, alice2, bob1, bob2, carol1);
    await appendOne(store, msg(alice1, 'old1', 'bob', 1), 1000); // → bob1, bob2, alice2
    await appendOne(store, msg(alice1, 'old2', 'carol', 1), 1100); // → carol1, alice2
    await appendOne(store, msg(alice2, 'old3', 'bob', 1), 1200); // → bob1, bob2, alice1
    await appendOne(store, receipt(bob1, 'r1', 'alice', ['old1']), 1300); // → alice1, alice2, bob2
    await appendOne(store, msg(alice1, 'new1', 'bob', 2), 2000); // at the cutoff: not before it, stays
    // The sender's other device acking does not make a message delivered.
    await store.ack(alice2, [offsetOf(await inbox(store, alice2), 'old1')], 1400);
    const res = await store.expire(2000, 9000);
    assert.equal(res.count, 2 + 2 + 3 + 3, 'every entry committed before the cutoff');
    assertDevices(
      res.notify,
      [alice1, alice2, bob1, bob2, carol1],
      'the sender user’s devices, and every device that lost a message (gap notices)',
    );
    const expected = [
      { status: 'expired', ids: ['old1', 'old3'], by: 'bob', ts: 9000 },
      { status: 'expired', ids: ['old2'], by: 'carol', ts: 9000 },
    ];
    const byWho = (a: { by: string }, b: { by: string }) => a.by.localeCompare(b.by);
    assert.deepEqual(
      statuses(await inbox(store, alice1)).sort(byWho),
      expected,
      'once per message, per recipient',
    );
    assert.deepEqual(statuses(await inbox(store, alice2)).sort(byWho), expected);
    assert.deepEqual(msgIds(await inbox(store, alice2)), ['new1']);
    assert.deepEqual(msgIds(await inbox(store, bob1)), ['new1']);
    assert.deepEqual(msgIds(await inbox(store, bob2)), ['new1']);
    assert.deepEqual(statuses(await inbox(store, bob2)), [], 'old status entries are removed too');
    assert.deepEqual(summary(await inbox(store, carol1)), ['gap expired']);
    // A second pass finds nothing more to remove or tell.
    assert.deepEqual(await store.expire(2000, 9500), { count: 0, notify: [] });
  });

  test('a delivered message that expires on another device produces no expired', async ({ store }) => {
    await register(store, alice1, bob1, bob2);
    await appendOne(store, msg(alice1, 'm1', 'bob', 1), 1000);
    await store.ack(bob1, [offsetOf(await inbox(store, bob1), 'm1')], 3000);
    const res = await store.expire(2000, 9000);
    assert.deepEqual(res, { count: 1, notify: [bob2] }, 'bob2’s copy goes; only bob2 is told (a gap notice)');
    assert.deepEqual(summary(await inbox(store, bob2)), ['gap expired']);
    assert.deepEqual(statuses(await inbox(store, alice1)), [
      { status: 'delivered', ids: ['m1'], by: 'bob', ts: 3000 },
    ]);
  });

  test('a message to the sender’s own user never produces delivered or expired', async ({ store }) => {
    await register(store, alice1, alice2, alice3);
    const out = await appendOne(store, msg(alice1, 'note', 'alice', 1), 1000);
    assert.ok(
      out.notify.some((d) => devKey(d) === devKey(alice2)) &&
        out.notify.some((d) => devKey(d) === devKey(alice3)),
      'the user’s other devices get it',
    );
    const res = await store.ack(alice2, [offsetOf(await inbox(store, alice2), 'note')], 1500);
    assert.deepEqual(res, { count: 1, notify: [] });
    const exp = await store.expire(2000, 9000);
    assert.deepEqual(exp.notify, [alice3], 'only the device that lost its copy (a gap notice)');
    assert.deepEqual(await inbox(store, alice2), []);
    assert.deepEqual(statuses(await inbox(store, alice1)), []);
    assert.deepEqual(statuses(await inbox(store, alice3)), []);
  });

  test('expiry drops old dedupe records', async ({ store }) => {
    await register(store, alice1, bob1);
    await appendOne(store, msg(alice1, 'old', 'bob', 1), 1000);
    await appendOne(store, msg(alice1, 'young', 'bob', 2), 2500);
    await store.ack(
      bob1,
      (await inbox(store, bob1)).map((e) => e.offset),
      2600,
    );
    await appendOne(store, msg(alice1, 'edge', 'bob', 3), 2000);
    await store.expire(2000, 3000);
    const edge = await store.append([msg(alice1, 'edge', 'bob', 3)], 4000);
    assert.deepEqual(
      edge,
      [{ ok: true, ts: 2000, duplicate: true, notify: [] }],
      'a record at the cutoff stays',
    );
    const again = await appendOne(store, msg(alice1, 'old', 'bob', 1), 4000);
    assert.equal(again.duplicate, false, 'a resend after the cutoff is accepted as new');
    assert.equal(again.ts, 4000);
    assert.deepEqual(msgIds(await inbox(store, bob1)), ['edge', 'old']);
    const young = await store.append([msg(alice1, 'young', 'bob', 2)], 4000);
    assert.deepEqual(young, [{ ok: true, ts: 2500, duplicate: true, notify: [] }], 'newer records stay');
  });

  test('reads return copies that callers cannot use to change stored state', async ({ store }) => {
    await register(store, alice1, bob1);
    await appendOne(store, msg(alice1, 'm1', 'bob'), 900);
    await appendOne(store, receipt(bob1, 'r1', 'alice', ['m1']), 1000);
    const first = await inbox(store, alice1);
    const e = first[0]!;
    assert.ok(e.kind === 'status');
    e.ids.push('mutated');
    e.by = 'mallory';
    const devices = await store.devices('alice');
    devices.push('x');
    const again = await inbox(store, alice1);
    assert.deepEqual(statuses(again), [{ status: 'read', ids: ['m1'], by: 'bob', ts: 1000 }]);
    assert.deepEqual(await store.devices('alice'), ['a1']);
  });

  // ---- Groups -------------------------------------------------------------------------------

  test('creating a group makes the creator admin and gives every member device, the acting one included, the event with a snapshot', async ({
    store,
  }) => {
    await register(store, alice1, alice2, bob1, bob2, carol1, dave1);
    const out = await appendOne(store, create(alice1, 'r1', 'g1', 'Team', ['bob', 'carol', 'bob']), 1000);
    assert.equal(out.ts, 1000);
    assert.equal(out.duplicate, false);
    assertDevices(
      out.notify,
      [alice1, alice2, bob1, bob2, carol1],
      'every member device, the acting one included',
    );
    const members = [admin('alice'), member('bob'), member('carol')];
    assert.deepEqual(await store.group('g1'), { id: 'g1', name: 'Team', ver: 1, members });
    const expected: GroupEvent = {
      group: 'g1',
      ver: 1,
      op: 'create',
      by: 'alice',
      members: ['bob', 'carol'],
      name: 'Team',
      snapshot: members,
    };
    for (const d of [alice1, alice2, bob1, bob2, carol1]) {
      const entries = await inbox(store, d);
      assert.equal(entries.length, 1, `${devKey(d)} has the event`);
      const e = entries[0]!;
      assert.ok(e.kind === 'group', `${devKey(d)}: a group entry`);
      assert.ok(Number.isInteger(e.offset) && e.offset > 0, 'offsets are positive integers');
      assert.deepEqual({ ts: e.ts, event: e.event }, { ts: 1000, event: expected }, devKey(d));
    }
    assert.deepEqual(await inbox(store, dave1), [], 'not to users outside the group');
    for (const u of ['alice', 'bob', 'carol']) assert.deepEqual(await store.groupsOf(u), ['g1'], u);
    assert.deepEqual(await store.groupsOf('dave'), []);
    assert.equal(await store.group('nope'), undefined);
    const dup = await store.append([create(alice1, 'r1', 'g1', 'Other', ['dave'])], 2000);
    assert.deepEqual(
      dup,
      [{ ok: true, ts: 1000, duplicate: true, notify: [] }],
      'a resent create is a duplicate',
    );
    assert.equal((await inbox(store, alice1)).length, 1);
    assert.equal((await store.group('g1'))?.name, 'Team');
  });

  test('creating a group is refused for an existing id, an unknown member or past the cap, writing nothing', async ({
    store,
  }) => {
    await register(store, alice1, bob1, carol1);
    await appendOne(store, create(alice1, 'r1', 'g1', 'One', ['bob']), 1000);
    const devices = [alice1, bob1, carol1];
    const before = await inboxes(store, devices);
    await refused(store, create(carol1, 'r2', 'g1', 'Mine', []), 1100, 'forbidden');
    await refused(store, create(alice1, 'r3', 'g2', 'Two', ['bob', 'nobody']), 1100, 'unknown_recipient');
    await refused(store, create(alice1, 'r4', 'g3', 'Three', ['bob', 'carol'], 2), 1100, 'group_full');
    assert.deepEqual(await store.group('g1'), {
      id: 'g1',
      name: 'One',
      ver: 1,
      members: [admin('alice'), member('bob')],
    });
    assert.equal(await store.group('g2'), undefined);
    assert.equal(await store.group('g3'), undefined);
    assert.deepEqual(await store.groupsOf('carol'), []);
    assert.deepEqual(await inboxes(store, devices), before, 'no inbox changed');
    // No dedupe record was written: the same request commits once it fits (the creator counts).
    const retry = await appendOne(store, create(alice1, 'r4', 'g3', 'Three', ['bob', 'carol'], 3), 1200);
    assert.equal(retry.duplicate, false);
    assert.equal(retry.ts, 1200);
    assert.deepEqual((await store.group('g3'))?.members, [admin('alice'), member('bob'), member('carol')]);
  });

  test('only admins add, remove, promote, demote and rename: members get forbidden, non-members not_member', async ({
    store,
  }) => {
    await register(store, alice1, bob1, carol1, dave1);
    await appendOne(store, create(alice1, 'r1', 'g', 'G', ['bob']), 1000);
    const devices = [alice1, bob1, carol1, dave1];
    const before = await inboxes(store, devices);
    const adminOnly: GroupChange[] = [
      { op: 'add', members: ['carol'] },
      { op: 'remove', members: ['alice'] },
      { op: 'promote', members: ['bob'] },
      { op: 'demote', members: ['alice'] },
      { op: 'rename', name: 'Bob’s' },
    ];
    for (const [i, c] of adminOnly.entries()) {
      await refused(store, groupChange(bob1, `b${i}`, 'g', c), 1100, 'forbidden');
    }
    for (const [i, c] of [...adminOnly, { op: 'leave' } as const].entries()) {
      await refused(store, groupChange(carol1, `c${i}`, 'g', c), 1100, 'not_member');
    }
    await refused(
      store,
      groupChange(alice1, 'a1', 'nope', { op: 'add', members: ['bob'] }),
      1100,
      'not_member',
    );
    assert.deepEqual(await store.group('g'), {
      id: 'g',
      name: 'G',
      ver: 1,
      members: [admin('alice'), member('bob')],
    });
    assert.equal(await store.group('nope'), undefined, 'a change to an unknown group creates nothing');
    assert.deepEqual(await inboxes(store, devices), before, 'no inbox changed');
    // Refusals leave no dedupe record: once bob is an admin, his earlier request commits.
    await appendOne(store, groupChange(alice1, 'r2', 'g', { op: 'promote', members: ['bob'] }), 1200);
    const retry = await appendOne(
      store,
      groupChange(bob1, 'b0', 'g', { op: 'add', members: ['carol'] }),
      1300,
    );
    assert.equal(retry.duplicate, false);
    assert.deepEqual((await store.group('g'))?.members, [admin('alice'), admin('bob'), member('carol')]);
  });

  test('each change raises the version by one, reaching members as a delta and new members with a snapshot', async ({
    store,
  }) => {
    await register(store, alice1, alice2, bob1, carol1, dave1);
    await appendOne(store, create(alice1, 'r1', 'g', 'G', ['bob']), 1000);
    const add = await appendOne(
      store,
      groupChange(alice1, 'r2', 'g', { op: 'add', members: ['carol', 'bob', 'carol'] }),
      2000,
    );
    assertDevices(add.notify, [alice1, alice2, bob1, carol1], 'every member device, the acting one included');
    await appendOne(store, groupChange(alice2, 'r3', 'g', { op: 'promote', members: ['carol'] }), 3000);
    await appendOne(store, groupChange(carol1, 'r4', 'g', { op: 'rename', name: 'H' }), 4000);
    await appendOne(store, groupChange(carol1, 'r5', 'g', { op: 'demote', members: ['alice'] }), 5000);
    assert.deepEqual(await store.group('g'), {
      id: 'g',
      name: 'H',
      ver: 5,
      members: [member('alice'), member('bob'), admin('carol')],
    });
    const deltas: GroupEvent[] = [
      { group: 'g', ver: 2, op: 'add', by: 'alice', members: ['carol'] },
      { group: 'g', ver: 3, op: 'promote', by: 'alice', members: ['carol'] },
      { group: 'g', ver: 4, op: 'rename', by: 'carol', members: [], name: 'H' },
      { group: 'g', ver: 5, op: 'demote', by: 'carol', members: ['alice'] },
    ];
    for (const d of [alice1, alice2, bob1]) {
      const evs = events(await inbox(store, d));
      assert.deepEqual(
        evs.map((e) => e.ver),
        [1, 2, 3, 4, 5],
        `${devKey(d)}: versions 1, 2, 3, … in commit order`,
      );
      assert.deepEqual(evs.slice(1), deltas, `${devKey(d)}: deltas, without a snapshot`);
    }
    const c = await inbox(store, carol1);
    assert.deepEqual(
      events(c),
      [
        { ...deltas[0]!, name: 'G', snapshot: [admin('alice'), member('bob'), member('carol')] },
        ...deltas.slice(1),
      ],
      'the new member starts from a snapshot',
    );
    assert.deepEqual(
      c.map((e) => e.ts),
      [2000, 3000, 4000, 5000],
      'each entry carries its commit time',
    );
    assert.deepEqual(await inbox(store, dave1), []);
  });

  test('adding past the cap is group_full and adding a user without devices unknown_recipient; neither adds anyone', async ({
    store,
  }) => {
    await register(store, alice1, bob1, carol1, dave1);
    await appendOne(store, create(alice1, 'r1', 'g', 'G', ['bob'], 3), 1000);
    const devices = [alice1, bob1, carol1, dave1];
    const before = await inboxes(store, devices);
    const add = (id: string, members: string[]) => groupChange(alice1, id, 'g', { op: 'add', members }, 3);
    await refused(store, add('r2', ['carol', 'dave']), 1100, 'group_full');
    await refused(store, add('r3', ['nobody']), 1100, 'unknown_recipient');
    assert.deepEqual(await store.group('g'), {
      id: 'g',
      name: 'G',
      ver: 1,
      members: [admin('alice'), member('bob')],
    });
    assert.deepEqual(await inboxes(store, devices), before, 'no inbox changed');
    // Users already in do not count twice against the cap.
    const out = await appendOne(store, add('r4', ['bob', 'carol']), 1200);
    assertDevices(out.notify, [alice1, bob1, carol1], 'members after the add');
    assert.deepEqual((await store.group('g'))?.members, [admin('alice'), member('bob'), member('carol')]);
  });

  test('a change with nothing to do succeeds, writing only its dedupe record', async ({ store }) => {
    await register(store, alice1, bob1, carol1);
    await appendOne(store, create(alice1, 'r1', 'g', 'G', ['bob']), 1000);
    const devices = [alice1, bob1, carol1];
    const before = await inboxes(store, devices);
    const noops: GroupChange[] = [
      { op: 'add', members: ['bob'] },
      { op: 'add', members: [] },
      { op: 'remove', members: ['carol'] },
      { op: 'remove', members: ['alice'] },
      { op: 'promote', members: ['alice', 'carol'] },
      { op: 'demote', members: ['bob'] },
      { op: 'rename', name: 'G' },
    ];
    const outcomes = await store.append(
      noops.map((c, i) => groupChange(alice1, `n${i}`, 'g', c)),
      2000,
    );
    assert.deepEqual(
      outcomes,
      noops.map(() => ({ ok: true, ts: 2000, duplicate: false, notify: [] })),
    );
    assert.deepEqual(await store.group('g'), {
      id: 'g',
      name: 'G',
      ver: 1,
      members: [admin('alice'), member('bob')],
    });
    assert.deepEqual(await inboxes(store, devices), before, 'no event, no version');
    const again = await store.append(
      [groupChange(alice1, 'n0', 'g', { op: 'add', members: ['carol'] })],
      3000,
    );
    assert.deepEqual(
      again,
      [{ ok: true, ts: 2000, duplicate: true, notify: [] }],
      'the dedupe record was written',
    );
    assert.deepEqual(await store.groupsOf('carol'), []);
  });

  test('a removed member gets the remove event but nothing committed after it', async ({ store }) => {
    await register(store, alice1, bob1, bob2, carol1);
    await appendOne(store, create(alice1, 'r1', 'g', 'G', ['bob', 'carol']), 1000);
    await appendOne(store, gmsg(alice1, 'm1', 'g', 1), 1100);
    const out = await appendOne(
      store,
      groupChange(alice1, 'r2', 'g', { op: 'remove', members: ['bob'] }),
      1200,
    );
    assertDevices(out.notify, [alice1, bob1, bob2, carol1], 'members after the change and the removed user');
    const removal: GroupEvent = { group: 'g', ver: 2, op: 'remove', by: 'alice', members: ['bob'] };
    for (const d of [alice1, bob1, bob2, carol1]) {
      assert.deepEqual(events(await inbox(store, d)).at(-1), removal, `${devKey(d)}: the event, no snapshot`);
    }
    await appendOne(store, gmsg(alice1, 'm2', 'g', 2), 1300);
    await appendOne(store, groupChange(alice1, 'r3', 'g', { op: 'rename', name: 'H' }), 1400);
    for (const d of [bob1, bob2]) {
      assert.deepEqual(
        summary(await inbox(store, d)),
        ['g v1 create +snapshot', 'msg m1', 'g v2 remove'],
        `${devKey(d)} gets nothing after its removal`,
      );
    }
    assert.deepEqual(summary(await inbox(store, carol1)), [
      'g v1 create +snapshot',
      'msg m1',
      'g v2 remove',
      'msg m2',
      'g v3 rename',
    ]);
    await refused(store, gmsg(bob1, 'b1', 'g'), 1500, 'not_member');
    await refused(store, groupChange(bob1, 'b2', 'g', { op: 'leave' }), 1500, 'not_member');
    assert.deepEqual(await store.groupsOf('bob'), []);
    assert.deepEqual((await store.group('g'))?.members, [admin('alice'), member('carol')]);
  });

  test('a member can leave, and when the last admin leaves the longest-standing member becomes admin', async ({
    store,
  }) => {
    await register(store, alice1, alice2, bob1, carol1, dave1);
    await appendOne(store, create(alice1, 'r1', 'g', 'G', ['bob', 'carol', 'dave']), 1000);
    const out = await appendOne(store, groupChange(alice1, 'r2', 'g', { op: 'leave' }), 2000);
    assertDevices(out.notify, [alice1, alice2, bob1, carol1, dave1], 'the leaver’s devices and the members’');
    const leave: GroupEvent = { group: 'g', ver: 2, op: 'leave', by: 'alice', members: ['alice'] };
    for (const d of [alice1, alice2, bob1, carol1, dave1]) {
      assert.deepEqual(events(await inbox(store, d)).at(-1), leave, devKey(d));
    }
    assert.deepEqual(await store.group('g'), {
      id: 'g',
      name: 'G',
      ver: 2,
      members: [admin('bob'), member('carol'), member('dave')],
    });
    assert.deepEqual(await store.groupsOf('alice'), []);
    // A member leaving changes no role.
    await appendOne(store, groupChange(carol1, 'r3', 'g', { op: 'leave' }), 3000);
    assert.deepEqual(await store.group('g'), {
      id: 'g',
      name: 'G',
      ver: 3,
      members: [admin('bob'), member('dave')],
    });
    // An admin leaving while another admin stays promotes nobody.
    await appendOne(store, create(alice1, 'r4', 'g2', 'G2', ['bob', 'carol', 'dave']), 4000);
    await appendOne(store, groupChange(alice1, 'r5', 'g2', { op: 'promote', members: ['dave'] }), 4100);
    await appendOne(store, groupChange(alice1, 'r6', 'g2', { op: 'leave' }), 4200);
    assert.deepEqual((await store.group('g2'))?.members, [member('bob'), member('carol'), admin('dave')]);
  });

  test('a demote that would leave the group without an admin is forbidden', async ({ store }) => {
    await register(store, alice1, bob1);
    await appendOne(store, create(alice1, 'r1', 'g', 'G', ['bob']), 1000);
    await refused(
      store,
      groupChange(alice1, 'r2', 'g', { op: 'demote', members: ['alice'] }),
      1100,
      'forbidden',
    );
    await appendOne(store, groupChange(alice1, 'r3', 'g', { op: 'promote', members: ['bob'] }), 1200);
    await refused(
      store,
      groupChange(alice1, 'r4', 'g', { op: 'demote', members: ['alice', 'bob'] }),
      1300,
      'forbidden',
    );
    assert.deepEqual(await store.group('g'), {
      id: 'g',
      name: 'G',
      ver: 2,
      members: [admin('alice'), admin('bob')],
    });
    const out = await appendOne(
      store,
      groupChange(bob1, 'r5', 'g', { op: 'demote', members: ['alice'] }),
      1400,
    );
    assertDevices(out.notify, [alice1, bob1], 'both members');
    assert.deepEqual(await store.group('g'), {
      id: 'g',
      name: 'G',
      ver: 3,
      members: [member('alice'), admin('bob')],
    });
  });

  test('refused group items in a batch change nothing: the group and every inbox stay as they were', async ({
    store,
  }) => {
    await register(store, alice1, bob1, carol1, dave1);
    await appendOne(store, create(alice1, 'r1', 'g', 'G', ['bob'], 3), 1000);
    const devices = [alice1, bob1, carol1, dave1];
    const look = async () => ({
      group: await store.group('g'),
      groupsOf: await Promise.all(['alice', 'bob', 'carol', 'dave'].map((u) => store.groupsOf(u))),
      inboxes: await inboxes(store, devices),
    });
    const before = await look();
    const batch: AppendInput[] = [
      create(bob1, 'x1', 'g', 'Again', ['carol']),
      groupChange(bob1, 'x2', 'g', { op: 'remove', members: ['alice'] }),
      groupChange(alice1, 'x3', 'g', { op: 'demote', members: ['alice'] }),
      groupChange(carol1, 'x4', 'g', { op: 'rename', name: 'Carol’s' }),
      groupChange(alice1, 'x5', 'g', { op: 'add', members: ['carol', 'dave'] }, 3),
      groupChange(alice1, 'x6', 'g', { op: 'add', members: ['nobody'] }),
      gmsg(carol1, 'x7', 'g'),
      gmsg(alice1, 'x8', 'nope'),
    ];
    const outcomes = await store.append(batch, 2000);
    assert.deepEqual(
      outcomes.map((o) => (o.ok ? 'ok' : o.code)),
      [
        'forbidden',
        'forbidden',
        'forbidden',
        'not_member',
        'group_full',
        'unknown_recipient',
        'not_member',
        'not_member',
      ],
    );
    assert.deepEqual(await look(), before);
  });

  test('a group message reaches every device of every member except the sending one, its body stored once', async ({
    store,
  }) => {
    await register(store, alice1, alice2, bob1, bob2, carol1, dave1);
    await appendOne(store, create(bob1, 'r1', 'g', 'G', ['alice', 'carol']), 1000);
    const body = binaryBody();
    const out = await appendOne(store, gmsg(alice1, 'm1', 'g', 5, body), 2000);
    assert.equal(out.ts, 2000);
    assertDevices(out.notify, [alice2, bob1, bob2, carol1], 'notify lists every recipient device once');
    for (const d of [alice2, bob1, bob2, carol1]) {
      const msgs = (await inbox(store, d)).filter((e) => e.kind === 'msg');
      assert.equal(msgs.length, 1, `${devKey(d)} has the message`);
      const e = msgs[0]!;
      assert.ok(e.kind === 'msg');
      const { offset: _o, body: got, ...rest } = e;
      assert.deepEqual(rest, { kind: 'msg', id: 'm1', from: alice1, to: 'g', group: true, seq: 5, ts: 2000 });
      assertBytes(got, body, devKey(d));
    }
    assert.deepEqual(msgIds(await inbox(store, alice1)), [], 'the sending device gets no copy');
    assert.deepEqual(await inbox(store, dave1), [], 'nor does a non-member');
    // Store once, reference many: the body outlives every ack but the last.
    for (const d of [alice2, bob1, bob2]) await store.ack(d, [offsetOf(await inbox(store, d), 'm1')], 3000);
    const last = (await inbox(store, carol1)).find((e) => e.kind === 'msg');
    assert.ok(last?.kind === 'msg');
    assertBytes(last.body, body, 'the last reference');
    const dup = await store.append([gmsg(alice1, 'm1', 'g', 5)], 4000);
    assert.deepEqual(dup, [{ ok: true, ts: 2000, duplicate: true, notify: [] }]);
  });

  test('a group message from a non-member or to an unknown group is not_member and writes nothing', async ({
    store,
  }) => {
    await register(store, alice1, bob1, carol1);
    await appendOne(store, create(alice1, 'r1', 'g', 'G', ['bob']), 1000);
    const devices = [alice1, bob1, carol1];
    const before = await inboxes(store, devices);
    await refused(store, gmsg(carol1, 'm1', 'g'), 1100, 'not_member');
    await refused(store, gmsg(alice1, 'm2', 'nope'), 1100, 'not_member');
    assert.deepEqual(await inboxes(store, devices), before);
    // No dedupe record was written: once carol is a member, the same id commits.
    await appendOne(store, groupChange(alice1, 'r2', 'g', { op: 'add', members: ['carol'] }), 1200);
    const retry = await appendOne(store, gmsg(carol1, 'm1', 'g'), 1300);
    assert.equal(retry.duplicate, false);
    assert.equal(retry.ts, 1300);
    assertDevices(retry.notify, [alice1, bob1], 'the other members');
  });

  test('membership changes and messages in one batch take effect in batch order', async ({ store }) => {
    await register(store, alice1, bob1, carol1);
    const outcomes = await store.append(
      [
        create(alice1, 'r1', 'g', 'G', ['bob']),
        gmsg(alice1, 'm1', 'g', 1),
        groupChange(alice1, 'r2', 'g', { op: 'add', members: ['carol'] }),
        gmsg(carol1, 'm2', 'g', 1),
        groupChange(alice1, 'r3', 'g', { op: 'remove', members: ['bob'] }),
        gmsg(alice1, 'm3', 'g', 2),
        gmsg(bob1, 'm4', 'g', 1),
      ],
      1000,
    );
    assert.equal(outcomes.length, 7);
    assert.deepEqual(outcomes[6], { ok: false, code: 'not_member' }, 'bob is out by then');
    assertDevices(ok(outcomes[1], 'm1').notify, [bob1], 'm1 before carol joined');
    assertDevices(ok(outcomes[3], 'm2').notify, [alice1, bob1], 'm2 after carol joined');
    assertDevices(ok(outcomes[5], 'm3').notify, [carol1], 'm3 after bob left');
    assert.deepEqual(summary(await inbox(store, alice1)), [
      'g v1 create +snapshot',
      'g v2 add',
      'msg m2',
      'g v3 remove',
    ]);
    assert.deepEqual(summary(await inbox(store, bob1)), [
      'g v1 create +snapshot',
      'msg m1',
      'g v2 add',
      'msg m2',
      'g v3 remove',
    ]);
    assert.deepEqual(summary(await inbox(store, carol1)), ['g v2 add +snapshot', 'g v3 remove', 'msg m3']);
  });

  test('delivered is queued once per member user of a group message; the sender’s own devices produce none', async ({
    store,
  }) => {
    await register(store, alice1, alice2, bob1, bob2, carol1);
    await appendOne(store, create(alice1, 'r1', 'g', 'G', ['bob', 'carol']), 1000);
    await appendOne(store, gmsg(alice1, 'm1', 'g'), 1100);
    const entry = async (d: DeviceAddress) => [offsetOf(await inbox(store, d), 'm1')];
    assert.deepEqual(await store.ack(alice2, await entry(alice2), 2000), { count: 1, notify: [] });
    const byBob = await store.ack(bob1, await entry(bob1), 3000);
    assert.equal(byBob.count, 1);
    assertDevices(byBob.notify, [alice1, alice2], 'every device of the sender user');
    assert.deepEqual(
      await store.ack(bob2, await entry(bob2), 3500),
      { count: 1, notify: [] },
      'bob’s second device',
    );
    const byCarol = await store.ack(carol1, await entry(carol1), 4000);
    assertDevices(byCarol.notify, [alice1, alice2], 'carol’s own delivered');
    const expected = [
      { status: 'delivered', ids: ['m1'], by: 'bob', ts: 3000 },
      { status: 'delivered', ids: ['m1'], by: 'carol', ts: 4000 },
    ];
    assert.deepEqual(statuses(await inbox(store, alice1)), expected);
    assert.deepEqual(statuses(await inbox(store, alice2)), expected);
    for (const d of [bob1, bob2, carol1]) {
      assert.deepEqual(statuses(await inbox(store, d)), [], `${devKey(d)}: members are not told`);
    }
  });

  test('expiry tells the sender expired once per (group message, member user) that never got it', async ({
    store,
  }) => {
    await register(store, alice1, alice2, bob1, bob2, carol1, dave1);
    await appendOne(store, create(alice1, 'r1', 'g', 'G', ['bob', 'carol', 'dave']), 500);
    await appendOne(store, gmsg(alice1, 'm1', 'g'), 1000); // → alice2, bob1, bob2, carol1, dave1
    await store.ack(bob1, [offsetOf(await inbox(store, bob1), 'm1')], 1500); // bob has it
    const res = await store.expire(2000, 9000);
    assert.equal(res.count, 6 + 4 + 2, 'the create events, the unacked copies, the delivered statuses');
    assertDevices(
      res.notify,
      [alice1, alice2, bob2, carol1, dave1],
      'the sender user’s devices, and the devices that lost the message (gap notices)',
    );
    const expected = [
      { status: 'expired', ids: ['m1'], by: 'carol', ts: 9000 },
      { status: 'expired', ids: ['m1'], by: 'dave', ts: 9000 },
    ];
    const byWho = (a: { by: string }, b: { by: string }) => a.by.localeCompare(b.by);
    assert.deepEqual(
      statuses(await inbox(store, alice1)).sort(byWho),
      expected,
      'not for bob, once per member',
    );
    assert.deepEqual(statuses(await inbox(store, alice2)).sort(byWho), expected);
    assert.deepEqual(await inbox(store, bob1), [], 'bob1 acked it: no notice');
    for (const d of [bob2, carol1, dave1])
      assert.deepEqual(summary(await inbox(store, d)), ['gap expired'], devKey(d));
    assert.deepEqual(await store.expire(2000, 9500), { count: 0, notify: [] });
  });

  test('a device registered later gets a snapshot of each of its user’s groups', async ({ store }) => {
    await register(store, alice1, bob1, carol1);
    await appendOne(store, create(alice1, 'r1', 'g1', 'One', ['bob']), 1000);
    await appendOne(store, create(carol1, 'r2', 'g2', 'Two', ['bob', 'alice']), 1100);
    await appendOne(store, groupChange(carol1, 'r3', 'g2', { op: 'rename', name: 'Zwei' }), 1200);
    await appendOne(store, create(alice1, 'r4', 'g3', 'Three', []), 1300);
    const res = await store.registerDevice(bob2, 3000);
    assert.deepEqual(res, { count: 2, notify: [bob2] });
    const entries = await inbox(store, bob2);
    assert.deepEqual(
      entries.map((e) => [e.kind, e.ts]),
      [
        ['group', 3000],
        ['group', 3000],
      ],
    );
    assert.deepEqual(
      events(entries).sort((a, b) => a.group.localeCompare(b.group)),
      [
        {
          group: 'g1',
          ver: 1,
          op: 'add',
          by: 'bob',
          members: ['bob'],
          name: 'One',
          snapshot: [admin('alice'), member('bob')],
        },
        {
          group: 'g2',
          ver: 2,
          op: 'add',
          by: 'bob',
          members: ['bob'],
          name: 'Zwei',
          snapshot: [admin('carol'), member('bob'), member('alice')],
        },
      ],
    );
    assert.deepEqual(await store.registerDevice(bob2, 4000), { count: 0, notify: [] }, 'registering again');
    assert.equal((await inbox(store, bob2)).length, 2);
    assert.deepEqual(await store.registerDevice(dave1, 4000), { count: 0, notify: [] }, 'a user in no group');
    assert.deepEqual(await inbox(store, dave1), []);
    const next = await appendOne(store, gmsg(alice1, 'm1', 'g1'), 5000);
    assertDevices(next.notify, [bob1, bob2], 'the new device is a recipient from now on');
  });

  test('unregistering a device deletes its whole inbox without statuses; other devices keep their copies', async ({
    store,
  }) => {
    await register(store, alice1, bob1, bob2);
    const body = binaryBody();
    await appendOne(store, msg(alice1, 'm1', 'bob', 1, body), 1000);
    await appendOne(store, create(alice1, 'r1', 'g', 'G', ['bob']), 1100);
    await appendOne(store, gmsg(alice1, 'm2', 'g', 1), 1200);
    assert.equal(await store.unregisterDevice(bob1), true);
    assert.deepEqual(await store.devices('bob'), ['b2']);
    assert.deepEqual(await inbox(store, bob1), []);
    const b2 = await inbox(store, bob2);
    assert.deepEqual(summary(b2), ['msg m1', 'g v1 create +snapshot', 'msg m2']);
    const m1 = b2[0]!;
    assert.ok(m1.kind === 'msg');
    assertBytes(m1.body, body, 'the other device still reads the body');
    assert.deepEqual(
      statuses(await inbox(store, alice1)),
      [],
      'no delivered or expired for the dropped copies',
    );
    assert.equal(await store.unregisterDevice(bob1), false, 'already gone');
    assert.equal(await store.unregisterDevice({ user: 'zed', device: 'z1' }), false, 'never registered');
    // The user stays in the group; messages go to the devices left.
    assert.deepEqual(await store.groupsOf('bob'), ['g']);
    assertDevices((await appendOne(store, gmsg(alice1, 'm3', 'g', 2), 1300)).notify, [bob2], 'm3');
    // A device linked again starts over: an empty inbox and a snapshot of its groups.
    assert.deepEqual(await store.registerDevice(bob1, 1400), { count: 1, notify: [bob1] });
    assert.deepEqual(summary(await inbox(store, bob1)), ['g v1 add +snapshot']);
    assert.equal(await store.unregisterDevice(bob1), true);
    assert.equal(await store.unregisterDevice(bob2), true);
    assert.deepEqual(await store.devices('bob'), []);
    await refused(store, msg(alice1, 'm4', 'bob', 2), 1500, 'unknown_recipient');
    const exp = await store.expire(10_000, 11_000);
    assert.deepEqual(exp.notify, [], 'nothing left to expire for bob');
    assert.deepEqual(statuses(await inbox(store, alice1)), []);
  });

  test('related(viewer, target) holds once target wrote to viewer 1:1; being written to is no consent', async ({
    store,
  }) => {
    await register(store, alice1, alice2, bob1, carol1);
    assert.equal(await store.related('alice', 'bob'), false);
    assert.equal(await store.related('alice', 'alice'), true, 'a user is related to itself');
    await refused(store, msg(alice1, 'x', 'nobody'), 900, 'unknown_recipient');
    assert.equal(await store.related('nobody', 'alice'), false, 'a refused message relates no one');
    await appendOne(store, msg(alice1, 'm1', 'bob'), 1000);
    assert.equal(await store.related('bob', 'alice'), true, 'alice wrote to bob: bob may see alice');
    assert.equal(await store.related('alice', 'bob'), false, 'but not the other way round');
    await appendOne(store, msg(alice2, 'note', 'alice'), 1050);
    assert.equal(await store.related('alice', 'bob'), false, 'a note to oneself relates no one else');
    await appendOne(store, msg(bob1, 'm2', 'alice'), 1100);
    assert.equal(await store.related('alice', 'bob'), true, 'once bob writes back, both ways');
    assert.equal(await store.related('carol', 'alice'), false);
    await store.expire(5000, 6000);
    assert.equal(await store.related('bob', 'alice'), true, 'a conversation outlives its entries');
    assert.equal(await store.related('alice', 'bob'), true);
  });

  test('in a group, related(viewer, target) holds once target took part (created, changed, sent) while viewer was a member', async ({
    store,
  }) => {
    await register(store, alice1, bob1, carol1, dave1);
    await appendOne(store, create(carol1, 'r1', 'g', 'G', ['dave']), 1000);
    assert.equal(await store.related('dave', 'carol'), true, 'carol created the group with dave in it');
    assert.equal(await store.related('carol', 'dave'), false, 'being added is no consent');
    await appendOne(store, groupChange(carol1, 'r2', 'g', { op: 'add', members: ['bob'] }), 1100);
    assert.equal(await store.related('bob', 'carol'), true, 'carol added bob');
    assert.equal(await store.related('bob', 'dave'), false, 'dave never took part since bob joined');
    assert.equal(await store.related('dave', 'bob'), false);
    await appendOne(store, gmsg(dave1, 'm1', 'g'), 1200);
    assert.equal(await store.related('bob', 'dave'), true, 'dave sent a message with bob in the group');
    assert.equal(await store.related('carol', 'dave'), true);
    await appendOne(store, groupChange(carol1, 'r3', 'g', { op: 'add', members: ['alice'] }), 1300);
    assert.equal(await store.related('alice', 'dave'), false, 'dave spoke before alice joined');
    assert.equal(await store.related('alice', 'carol'), true);
    await appendOne(store, groupChange(carol1, 'r4', 'g', { op: 'remove', members: ['dave'] }), 1400);
    assert.equal(await store.related('bob', 'dave'), false, 'only a group both are in now counts');
    assert.equal(await store.related('dave', 'carol'), false);
    // Removed and added again: a new membership, and consent starts over.
    await appendOne(store, groupChange(carol1, 'r5', 'g', { op: 'add', members: ['dave'] }), 1500);
    assert.equal(await store.related('carol', 'dave'), false, 'dave has not taken part since rejoining');
    await appendOne(store, groupChange(dave1, 'r6', 'g', { op: 'leave' }), 1600);
    assert.equal(await store.related('carol', 'dave'), false, 'leaving is not taking part');
    assert.equal(await store.related('nobody', 'carol'), false);
  });

  test('a receipt counts only the ids of messages that went to its reader; a receipt left with none writes only its dedupe record', async (h) => {
    const store = h.store;
    await register(store, alice1, alice2, bob1, carol1, dave1);
    await appendOne(store, msg(alice1, 'to-bob', 'bob'), 1000);
    await appendOne(store, msg(alice2, 'to-carol', 'carol'), 1001);
    await appendOne(store, create(alice1, 'r1', 'g', 'G', ['bob']), 1002);
    await appendOne(store, gmsg(alice1, 'in-g', 'g', 1), 1003);
    await appendOne(store, groupChange(alice1, 'r2', 'g', { op: 'add', members: ['carol'] }), 1004);
    await appendOne(store, gmsg(alice2, 'in-g-later', 'g', 1), 1005);
    const daveBefore = await inbox(store, dave1);
    const readBy = async (d: DeviceAddress) =>
      statuses(await inbox(h.store, d)).filter((x) => x.status === 'read');
    // Carol joined after 'in-g' and never got 'to-bob'; 'to-carol' and 'in-g-later' count.
    const mixed = ['to-bob', 'in-g', 'to-carol', 'made-up', 'in-g-later', 'r1', 'to-carol'];
    const out = await appendOne(store, receipt(carol1, 'c1', 'alice', mixed), 2000);
    assertDevices(out.notify, [alice1, alice2], 'the sender’s devices');
    const carolRead = { status: 'read', ids: ['in-g-later', 'to-carol'], by: 'carol', ts: 2000 };
    assert.deepEqual(await readBy(alice1), [carolRead], 'only what went to carol, each once');
    // Dave got nothing of alice's: nothing is written, but the receipt is committed (deduped).
    const none = await appendOne(store, receipt(dave1, 'd1', 'alice', ['to-bob', 'in-g', 'nope']), 2100);
    assert.deepEqual(none, { ok: true, ts: 2100, duplicate: false, notify: [] });
    assert.deepEqual(await store.append([receipt(dave1, 'd1', 'alice', ['to-bob'])], 2200), [
      { ok: true, ts: 2100, duplicate: true, notify: [] },
    ]);
    // Ids are looked up under the receipt's `to`: naming alice's ids to someone else is nothing.
    await appendOne(store, receipt(bob1, 'b0', 'carol', ['to-bob']), 2250);
    assert.deepEqual(await readBy(carol1), []);
    // Bob, a member since the start, got both group messages and his own 1:1 one.
    await appendOne(store, receipt(bob1, 'b1', 'alice', ['in-g', 'to-bob', 'in-g-later']), 2300);
    assert.deepEqual(await readBy(alice2), [
      carolRead,
      { status: 'read', ids: ['in-g', 'in-g-later', 'to-bob'], by: 'bob', ts: 2300 },
    ]);
    // A member who left no longer counts for the group's messages, also after a re-open.
    await appendOne(store, groupChange(bob1, 'r3', 'g', { op: 'leave' }), 2400);
    await h.reopen();
    await appendOne(h.store, receipt(bob1, 'b2', 'alice', ['in-g', 'to-bob']), 2500);
    assert.deepEqual((await readBy(alice1)).at(-1), { status: 'read', ids: ['to-bob'], by: 'bob', ts: 2500 });
    assert.deepEqual(await inbox(h.store, dave1), daveBefore, 'dave’s inbox never changed');
  });

  test('a receipt counts the messages its batch committed before it, not the ones after it', async ({
    store,
  }) => {
    await register(store, alice1, bob1);
    await giveKeys(store, alice1, bob1);
    const readBy = async (d: DeviceAddress) =>
      statuses(await inbox(store, d)).filter((x) => x.status === 'read');
    // 1:1 items only: plain and end-to-end encrypted messages on both sides of the receipt.
    const first = await store.append(
      [
        msg(alice1, 'm1', 'bob', 1),
        sealed(alice1, 'e1', 'bob', [bob1], 2),
        receipt(bob1, 'r1', 'alice', ['m1', 'e1', 'm2', 'e2']),
        msg(alice1, 'm2', 'bob', 3),
        sealed(alice1, 'e2', 'bob', [bob1], 4),
      ],
      1000,
    );
    assert.ok(first.every((o) => o.ok && !o.duplicate));
    assert.deepEqual(await readBy(alice1), [{ status: 'read', ids: ['e1', 'm1'], by: 'bob', ts: 1000 }]);
    // After a membership change in the batch: the group's messages count as they come too.
    await store.append(
      [
        create(alice1, 'c1', 'g', 'G', ['bob']),
        gmsg(alice1, 'g1', 'g', 1),
        msg(alice1, 'm3', 'bob', 5),
        receipt(bob1, 'r2', 'alice', ['g1', 'g2', 'm2', 'm3', 'm4']),
        gmsg(alice1, 'g2', 'g', 2),
        msg(alice1, 'm4', 'bob', 6),
      ],
      2000,
    );
    assert.deepEqual((await readBy(alice1)).at(-1), {
      status: 'read',
      ids: ['g1', 'm2', 'm3'],
      by: 'bob',
      ts: 2000,
    });
    // Group messages without a membership change in the batch.
    await store.append(
      [gmsg(alice1, 'g3', 'g', 3), receipt(bob1, 'r3', 'alice', ['g3', 'g4']), gmsg(alice1, 'g4', 'g', 4)],
      3000,
    );
    assert.deepEqual((await readBy(alice1)).at(-1), { status: 'read', ids: ['g3'], by: 'bob', ts: 3000 });
  });

  test('group messages before a membership change in one batch reach the members before it; a non-member’s is refused; a sender takes part', async ({
    store,
  }) => {
    await register(store, alice1, alice2, bob1, carol1, dave1);
    await appendOne(store, create(alice1, 'c1', 'g', 'G', ['bob']), 1000);
    assert.equal(await store.related('alice', 'bob'), false, 'bob has not taken part yet');
    const out = await store.append(
      [
        gmsg(bob1, 'm1', 'g', 1),
        gmsg(carol1, 'x1', 'g', 1),
        gmsg(alice2, 'm2', 'g', 1),
        gmsg(bob1, 'm1', 'g', 1),
        groupChange(alice1, 'c2', 'g', { op: 'add', members: ['carol'] }),
        gmsg(alice2, 'm3', 'g', 2),
      ],
      2000,
    );
    assertDevices(ok(out[0], 'm1').notify, [alice1, alice2], 'm1: the members before carol');
    assert.deepEqual(out[1], { ok: false, code: 'not_member' });
    assertDevices(ok(out[2], 'm2').notify, [alice1, bob1], 'm2: not the sending device');
    assert.deepEqual(out[3], { ok: true, ts: 2000, duplicate: true, notify: [] }, 'a repeat in the batch');
    assertDevices(ok(out[5], 'm3').notify, [alice1, bob1, carol1], 'm3: after carol joined');
    assert.deepEqual(msgIds(await inbox(store, carol1)), ['m3']);
    assert.deepEqual(msgIds(await inbox(store, dave1)), []);
    assert.equal(await store.related('alice', 'bob'), true, 'bob took part by sending m1');
    assert.equal(await store.related('carol', 'bob'), false, 'before carol joined');
  });

  test('what a receipt is checked against expires with the message’s dedupe record', async ({ store }) => {
    await register(store, alice1, bob1);
    await appendOne(store, msg(alice1, 'old', 'bob'), 1000);
    await appendOne(store, msg(alice1, 'young', 'bob', 2), 3000);
    await store.expire(2000, 3500);
    await appendOne(store, receipt(bob1, 'r1', 'alice', ['old', 'young']), 4000);
    assert.deepEqual(
      statuses(await inbox(store, alice1)).filter((x) => x.status === 'read'),
      [{ status: 'read', ids: ['young'], by: 'bob', ts: 4000 }],
    );
  });

  test('lastSeen is durable and never moves back', async (h) => {
    assert.equal(await h.store.lastSeen('alice'), undefined);
    await h.store.setLastSeen('alice', 1000);
    await h.store.setLastSeen('alice', 500);
    assert.equal(await h.store.lastSeen('alice'), 1000, 'an older time is ignored');
    await h.store.setLastSeen('alice', 2000);
    await h.store.setLastSeen('bob', 1500);
    await h.reopen();
    assert.equal(await h.store.lastSeen('alice'), 2000);
    assert.equal(await h.store.lastSeen('bob'), 1500);
    assert.equal(await h.store.lastSeen('carol'), undefined);
    await h.store.setLastSeen('alice', 1999);
    assert.equal(await h.store.lastSeen('alice'), 2000);
  });

  test('a group message to 1,024 members with two devices each is 2,048 entries from one append', async ({
    store,
  }) => {
    const sender: DeviceAddress = { user: 'owner', device: 'o1' };
    const users = Array.from({ length: 1024 }, (_, i) => `u${String(i).padStart(4, '0')}`);
    const devices = users.flatMap((user) => [
      { user, device: 'd1' },
      { user, device: 'd2' },
    ]);
    await register(store, sender, ...devices);
    await appendOne(store, create(sender, 'r1', 'big', 'Big', users, 1025), 1000);
    const out = await appendOne(store, gmsg(sender, 'm1', 'big'), 2000);
    assert.equal(out.notify.length, 2048);
    assertDevices(out.notify, devices, 'every member device');
    for (const d of devices) {
      assert.deepEqual(summary(await inbox(store, d)), ['big v1 create +snapshot', 'msg m1'], devKey(d));
    }
    const first = events(await inbox(store, devices[0]!))[0]!;
    assert.equal(first.snapshot?.length, 1025, 'the snapshot lists every member');
    assert.deepEqual(summary(await inbox(store, sender)), ['big v1 create +snapshot']);
  });

  test('groups, memberships, group entries, contacts and delivered marks survive a re-open', async (h) => {
    await register(h.store, alice1, bob1, bob2, carol1);
    await appendOne(h.store, create(alice1, 'r1', 'g', 'G', ['bob', 'carol']), 1000);
    await appendOne(h.store, groupChange(alice1, 'r2', 'g', { op: 'promote', members: ['carol'] }), 1100);
    await appendOne(h.store, gmsg(alice1, 'm1', 'g', 1, binaryBody()), 1200);
    await appendOne(h.store, msg(bob1, 'm2', 'carol'), 1300);
    await h.store.ack(bob1, [offsetOf(await inbox(h.store, bob1), 'm1')], 1400);
    const devices = [alice1, bob1, bob2, carol1];
    const look = async () => ({
      group: await h.store.group('g'),
      groupsOf: await Promise.all(['alice', 'bob', 'carol'].map((u) => h.store.groupsOf(u))),
      inboxes: await inboxes(h.store, devices),
    });
    const before = await look();
    await h.reopen();
    assert.deepEqual(await look(), before);
    assert.equal(await h.store.related('carol', 'bob'), true, 'bob wrote to carol');
    assert.equal(await h.store.related('bob', 'carol'), false);
    assert.equal(await h.store.related('bob', 'alice'), true, 'alice took part in the group with bob in it');
    assert.equal(await h.store.related('alice', 'bob'), false);
    const dup = await h.store.append(
      [groupChange(alice1, 'r2', 'g', { op: 'promote', members: ['bob'] })],
      2000,
    );
    assert.deepEqual(
      dup,
      [{ ok: true, ts: 1100, duplicate: true, notify: [] }],
      'the change’s dedupe record',
    );
    const second = await h.store.ack(bob2, [offsetOf(await inbox(h.store, bob2), 'm1')], 2100);
    assert.deepEqual(second, { count: 1, notify: [] }, 'bob’s delivered was already queued');
    await appendOne(h.store, groupChange(carol1, 'r3', 'g', { op: 'rename', name: 'H' }), 2200);
    assert.equal((await h.store.group('g'))?.ver, 3, 'versions continue');
  });

  // ---- Key directory --------------------------------------------------------------------------

  test('keys are published only for a registered device, and a first upload needs a signed prekey and a last-resort Kyber key', async ({
    store,
  }) => {
    await register(store, bob1);
    await assert.rejects(store.putKeys(bob2, upload(bob2, { pre: [1] })), 'an unregistered device');
    await assert.rejects(
      store.putKeys(bob1, upload(bob1, { pre: [1], kyber: [101], full: false })),
      'a first upload with one-time keys only',
    );
    const noSigned = upload(bob1, { pre: [1] });
    delete noSigned.signedPreKey;
    await assert.rejects(store.putKeys(bob1, noSigned), 'a first upload without a signed prekey');
    const noKyber = upload(bob1, { pre: [1] });
    delete noKyber.lastResortKyber;
    await assert.rejects(store.putKeys(bob1, noKyber), 'a first upload without a last-resort Kyber key');
    assert.deepEqual(await store.claimKeys('bob'), [], 'a refused upload stores nothing');
    assert.equal(await store.keyCount(bob1), undefined, 'a device that never uploaded has no keys');
    assert.equal(await store.keyCount(bob2), undefined, 'an unregistered device has no keys');
    await store.putKeys(bob1, upload(bob1, { pre: [1, 2, 3], kyber: [101, 102] }));
    assert.deepEqual(await store.keyCount(bob1), { preKeys: 3, kyberPreKeys: 2 });
    await store.putKeys(bob1, upload(bob1, { full: false }));
    assert.deepEqual(await store.keyCount(bob1), { preKeys: 3, kyberPreKeys: 2 }, 'an upload of nothing new');
  });

  test('claimKeys hands out one-time keys oldest first and each once, then the last-resort Kyber key and no EC prekey', async ({
    store,
  }) => {
    await register(store, bob1);
    // Upload order, not key id order, decides which key is the oldest.
    await store.putKeys(bob1, upload(bob1, { pre: [7, 3, 5], kyber: [102, 101] }));
    const claim = async () => (await store.claimKeys('bob', 'b1')).map(describeBundle);
    assert.deepEqual(await claim(), [bundleOf(bob1, 1, 7, 102)]);
    assert.deepEqual(await store.keyCount(bob1), { preKeys: 2, kyberPreKeys: 1 }, 'claimed keys are gone');
    assert.deepEqual(await claim(), [bundleOf(bob1, 1, 3, 101)]);
    assert.deepEqual(
      await claim(),
      [bundleOf(bob1, 1, 5, undefined)],
      'the last-resort Kyber key once the one-time ones ran out',
    );
    assert.deepEqual(
      await claim(),
      [bundleOf(bob1, 1, undefined, undefined)],
      'no EC prekey once those ran out',
    );
    assert.deepEqual(
      await claim(),
      [bundleOf(bob1, 1, undefined, undefined)],
      'the last-resort key is reused',
    );
    assert.deepEqual(await store.keyCount(bob1), noKeys);
    // A replenishment: the same identity, one-time keys only.
    await store.putKeys(bob1, upload(bob1, { pre: [8], kyber: [103], full: false }));
    assert.deepEqual(await store.keyCount(bob1), { preKeys: 1, kyberPreKeys: 1 });
    assert.deepEqual(await claim(), [bundleOf(bob1, 1, 8, 103)]);
  });

  test('a claim that may not take a device’s one-time keys gets its last-resort bundle and leaves them all', async ({
    store,
  }) => {
    await register(store, bob1, bob2);
    await giveKeys(store, bob1, bob2);
    const asked: string[] = [];
    const oneTime = (device: string) => (asked.push(device), device === 'b2');
    const claimed = (await store.claimKeys('bob', undefined, { oneTime })).map(describeBundle);
    assert.deepEqual(claimed, [bundleOf(bob1, 1, undefined, undefined), bundleOf(bob2, 1, 1, 101)]);
    assert.deepEqual(asked, ['b1', 'b2'], 'asked once per device claimed');
    assert.deepEqual(await store.keyCount(bob1), { preKeys: 3, kyberPreKeys: 2 }, 'b1 kept its keys');
    assert.deepEqual(await store.keyCount(bob2), { preKeys: 2, kyberPreKeys: 1 });
    const one = await store.claimKeys('bob', 'b1', { oneTime: () => false });
    assert.deepEqual(one.map(describeBundle), [bundleOf(bob1, 1, undefined, undefined)]);
    assert.deepEqual((await store.claimKeys('bob', 'b1')).map(describeBundle), [bundleOf(bob1, 1, 1, 101)]);
  });

  test('a later upload replaces the signed prekey, last-resort Kyber key and registration id; a re-sent key id replaces that key', async ({
    store,
  }) => {
    await register(store, bob1);
    await store.putKeys(bob1, upload(bob1, { pre: [1, 2], kyber: [101] }));
    const rotation: KeyUpload = {
      ...upload(bob1, { full: false }),
      registrationId: 4321,
      signedPreKey: signed(2, 'signed two'),
      lastResortKyber: signed(9001, 'last resort two'),
      preKeys: [
        { id: 2, key: bytes('pre 2 again') },
        { id: 3, key: bytes('pre 3') },
      ],
    };
    await store.putKeys(bob1, rotation);
    // The caller may reuse its buffers: the store kept its own copies.
    rotation.identityKey.fill(0);
    rotation.signedPreKey!.key.fill(0);
    rotation.preKeys![0]!.key.fill(0);
    assert.deepEqual(await store.keyCount(bob1), { preKeys: 3, kyberPreKeys: 1 }, 'key 2 is not there twice');
    const first = await store.claimKeys('bob');
    assert.equal(first.length, 1);
    const b = describeBundle(first[0]!);
    assert.deepEqual(
      { rid: b.rid, identity: b.identity, signed: b.signed, pre: b.pre, kyber: b.kyber },
      {
        rid: 4321,
        identity: 'identity bob/b1#1',
        signed: '2: signed two (signature of signed two)',
        pre: '1: pre 1 bob/b1#1',
        kyber: '101: kyber 101 bob/b1#1 (signature of kyber 101 bob/b1#1)',
      },
    );
    // A reader may scribble on what it got.
    first[0]!.identityKey.fill(0);
    first[0]!.signedPreKey.key.fill(0);
    const second = (await store.claimKeys('bob')).map(describeBundle);
    assert.deepEqual(
      second.map((x) => [x.identity, x.signed, x.pre, x.kyber]),
      [
        [
          'identity bob/b1#1',
          '2: signed two (signature of signed two)',
          '2: pre 2 again',
          '9001: last resort two (signature of last resort two)',
        ],
      ],
      'the re-sent key in its original place; the new last-resort key',
    );
    assert.deepEqual(
      (await store.claimKeys('bob')).map((x) => describeBundle(x).pre),
      ['3: pre 3'],
    );
  });

  test('a one-time key is never handed out twice, also under 50 concurrent claims', async ({ store }) => {
    await register(store, bob1, bob2);
    const ids = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);
    await store.putKeys(bob1, upload(bob1, { pre: ids(1, 20), kyber: ids(101, 10) }));
    await store.putKeys(bob2, upload(bob2, { pre: ids(1, 20) }));
    // Half the claims ask for the user's every device, half for b1 alone.
    const claims = await Promise.all(
      Array.from({ length: 50 }, (_, i) =>
        i % 2 === 0 ? store.claimKeys('bob') : store.claimKeys('bob', 'b1'),
      ),
    );
    const bundles = claims.flat();
    const forB1 = bundles.filter((b) => b.device === 'b1');
    const forB2 = bundles.filter((b) => b.device === 'b2');
    assert.equal(forB1.length, 50, 'every claim got a bundle for b1');
    assert.equal(forB2.length, 25);
    const handedOut = (list: KeyBundle[]) => list.flatMap((b) => (b.preKey ? [b.preKey.id] : []));
    assert.deepEqual(
      handedOut(forB1).sort((a, b) => a - b),
      ids(1, 20),
      'b1: each EC prekey exactly once',
    );
    assert.deepEqual(
      handedOut(forB2).sort((a, b) => a - b),
      ids(1, 20),
      'b2: each EC prekey exactly once',
    );
    const kyber = forB1.map((b) => b.kyberPreKey.id);
    assert.deepEqual(
      kyber.filter((id) => id !== 9000).sort((a, b) => a - b),
      ids(101, 10),
      'each one-time Kyber key exactly once',
    );
    assert.equal(kyber.filter((id) => id === 9000).length, 40, 'then the last-resort key');
    assert.ok(
      forB2.every((b) => b.kyberPreKey.id === 9000),
      'b2 uploaded no one-time Kyber key: always the last-resort one',
    );
    assert.deepEqual(await store.keyCount(bob1), noKeys);
    assert.deepEqual(await store.keyCount(bob2), noKeys);
  });

  test('a new identity key (a re-install) drops the old one-time keys, and must come with a signed prekey and a last-resort Kyber key', async ({
    store,
  }) => {
    await register(store, bob1);
    await store.putKeys(bob1, upload(bob1, { pre: [1, 2, 3], kyber: [101, 102] }));
    await store.claimKeys('bob');
    await assert.rejects(
      store.putKeys(bob1, upload(bob1, { gen: 2, pre: [1], full: false })),
      'a re-install with one-time keys only',
    );
    assert.deepEqual(
      (await store.claimKeys('bob')).map(describeBundle),
      [bundleOf(bob1, 1, 2, 102)],
      'the refused upload changed nothing',
    );
    // Key ids may start over after a re-install.
    await store.putKeys(bob1, upload(bob1, { gen: 2, pre: [1, 50], kyber: [150] }));
    assert.deepEqual(
      await store.keyCount(bob1),
      { preKeys: 2, kyberPreKeys: 1 },
      'only the new install’s keys',
    );
    assert.deepEqual((await store.claimKeys('bob')).map(describeBundle), [bundleOf(bob1, 2, 1, 150)]);
    assert.deepEqual((await store.claimKeys('bob')).map(describeBundle), [bundleOf(bob1, 2, 50, undefined)]);
    // The same identity key again is no re-install: the one-time keys stay.
    await store.putKeys(bob1, upload(bob1, { gen: 2, pre: [60] }));
    await store.putKeys(bob1, upload(bob1, { gen: 2, pre: [61], full: false }));
    assert.deepEqual(await store.keyCount(bob1), { preKeys: 2, kyberPreKeys: 0 });
  });

  test('unregistering a device drops its keys; linked again, it starts without any', async ({ store }) => {
    await register(store, alice1, bob1, bob2);
    await giveKeys(store, alice1, bob1, bob2);
    await appendOne(store, sealed(alice1, 'm1', 'bob', [bob1, bob2]), 1000);
    assert.equal(await store.unregisterDevice(bob1), true);
    assert.equal(await store.keyCount(bob1), undefined);
    assert.deepEqual(
      (await store.claimKeys('bob')).map((b) => b.device),
      ['b2'],
      'the directory lists the devices left',
    );
    assert.deepEqual(await store.claimKeys('bob', 'b1'), []);
    assert.equal(
      bodyOf(await inbox(store, bob2), 'm1'),
      'm1 sealed for bob/b2',
      'the other device keeps its body',
    );
    await refusedWith(store, sealed(alice1, 'm2', 'bob', [bob1, bob2]), 1100, 'mismatched_devices', {
      extra: [bob1],
    });
    await store.registerDevice(bob1, 2000);
    assert.deepEqual(await store.claimKeys('bob', 'b1'), [], 'a device linked again has no keys');
    await assert.rejects(
      store.putKeys(bob1, upload(bob1, { pre: [9], full: false })),
      'its next upload is a first upload',
    );
    assertDevices(
      (await appendOne(store, sealed(alice1, 'm2', 'bob', [bob2]), 2100)).notify,
      [bob2],
      'it is not expected until it publishes keys',
    );
    // Unlinking the device registered last, too: a store that gives its row to the next device
    // must not hand that device the old keys.
    await giveKeys(store, bob1);
    assert.equal(await store.unregisterDevice(bob1), true);
    await store.registerDevice(bob1, 3000);
    assert.equal(await store.keyCount(bob1), undefined);
    assert.deepEqual(await store.claimKeys('bob', 'b1'), []);
  });

  test('claimKeys(user) covers every device with keys in registration order and skips the others; claimKeys(user, device) only that one', async ({
    store,
  }) => {
    const bob3: DeviceAddress = { user: 'bob', device: 'b3' };
    await register(store, bob2, alice1, bob1, bob3);
    await store.putKeys(bob3, upload(bob3, { pre: [1, 2] }));
    await store.putKeys(bob2, upload(bob2, { pre: [1, 2] }));
    assert.deepEqual(
      (await store.claimKeys('bob')).map(describeBundle),
      [bundleOf(bob2, 1, 1, undefined), bundleOf(bob3, 1, 1, undefined)],
      'registration order; b1 has no keys',
    );
    assert.deepEqual((await store.claimKeys('bob', 'b3')).map(describeBundle), [
      bundleOf(bob3, 1, 2, undefined),
    ]);
    assert.deepEqual(await store.keyCount(bob2), { preKeys: 1, kyberPreKeys: 0 }, 'b2 was not claimed from');
    assert.deepEqual(await store.claimKeys('bob', 'b1'), [], 'a device without keys');
    assert.deepEqual(await store.claimKeys('bob', 'b9'), [], 'an unknown device');
    assert.deepEqual(await store.claimKeys('alice'), [], 'a user without keys');
    assert.deepEqual(await store.claimKeys('nobody'), [], 'an unknown user');
    assert.deepEqual(await store.claimKeys('alice', 'b2'), [], 'another user’s device id');
  });

  // ---- Device lists -----------------------------------------------------------------------------

  test('an end-to-end encrypted message gives each expected device its own envelope', async ({ store }) => {
    await register(store, alice1, alice2, bob1, bob2);
    await giveKeys(store, alice1, alice2, bob1, bob2);
    const out = await appendOne(store, sealed(alice1, 'm1', 'bob', [bob2, alice2, bob1], 7), 1000);
    assert.equal(out.duplicate, false);
    assert.equal(out.ts, 1000);
    assertDevices(out.notify, [bob1, bob2, alice2], 'notify lists the expected devices');
    for (const d of [bob1, bob2, alice2]) {
      const entries = await inbox(store, d);
      assert.equal(entries.length, 1, `${devKey(d)} has the message`);
      const e = entries[0]!;
      assert.ok(e.kind === 'msg');
      const { offset: _o, body, ...rest } = e;
      assert.deepEqual(rest, { kind: 'msg', id: 'm1', from: alice1, to: 'bob', seq: 7, ts: 1000 });
      assert.equal(text(body), `m1 sealed for ${devKey(d)}`, `${devKey(d)} reads its own envelope`);
    }
    assert.deepEqual(await inbox(store, alice1), [], 'the sending device gets no copy');
    if (out.offsets) {
      assert.equal(out.offsets.length, out.notify.length, 'one offset per notified device');
      for (let i = 0; i < out.notify.length; i++) {
        const d = out.notify[i]!;
        const [e] = await store.readInbox(d, out.offsets[i]! - 1, 1);
        assert.equal(e?.offset, out.offsets[i]);
        assert.equal(
          e?.kind === 'msg' && text(e.body),
          `m1 sealed for ${devKey(d)}`,
          `${devKey(d)}’s offset`,
        );
      }
    }
    assert.equal(await store.related('bob', 'alice'), true, 'alice wrote to bob');
    // Bodies are byte-exact, empty ones too.
    const binary = { ...envelope('m2', bob1), body: binaryBody() };
    const empty = { ...envelope('m2', bob2), body: new Uint8Array(0) };
    await appendOne(store, sealed(alice1, 'm2', 'bob', [binary, empty, alice2], 8), 1100);
    const m2 = async (d: DeviceAddress) =>
      (await inbox(store, d)).find((e) => e.kind === 'msg' && e.id === 'm2');
    const b1 = await m2(bob1);
    const b2 = await m2(bob2);
    assert.ok(b1?.kind === 'msg' && b2?.kind === 'msg');
    assertBytes(b1.body, binaryBody(), 'a binary envelope');
    assertBytes(b2.body, new Uint8Array(0), 'an empty envelope');
    // Dedupe is by (sender device, id), whatever the envelopes.
    const before = await inboxes(store, [alice1, alice2, bob1, bob2]);
    assert.deepEqual(await store.append([sealed(alice1, 'm1', 'bob', [bob1])], 2000), [
      { ok: true, ts: 1000, duplicate: true, notify: [] },
    ]);
    assert.deepEqual(await store.append([msg(alice1, 'm1', 'bob')], 2000), [
      { ok: true, ts: 1000, duplicate: true, notify: [] },
    ]);
    assert.deepEqual(
      await inboxes(store, [alice1, alice2, bob1, bob2]),
      before,
      'a duplicate writes nothing',
    );
  });

  test('envelopes that miss an expected device, add another or carry a stale registration id are refused with the difference, writing nothing', async ({
    store,
  }) => {
    await register(store, alice1, alice2, bob1, bob2, carol1);
    await giveKeys(store, alice1, alice2, bob1, bob2, carol1);
    const devices = [alice1, alice2, bob1, bob2, carol1];
    const before = await inboxes(store, devices);
    const send = (list: Array<DeviceAddress | DeviceEnvelope>) => sealed(alice1, 'm1', 'bob', list);
    const mismatched = 'mismatched_devices';
    await refusedWith(store, send([bob1, alice2]), 1000, mismatched, { missing: [bob2] });
    await refusedWith(store, send([bob1, bob2]), 1000, mismatched, { missing: [alice2] });
    await refusedWith(
      store,
      send([bob1, bob2, alice2, carol1, { user: 'bob', device: 'b9' }]),
      1000,
      mismatched,
      {
        extra: [carol1, { user: 'bob', device: 'b9' }],
      },
    );
    await refusedWith(store, send([bob1, bob2, alice2, alice1]), 1000, mismatched, { extra: [alice1] });
    await refusedWith(store, send([bob1, bob1, bob2, alice2]), 1000, mismatched, { extra: [bob1] });
    await refusedWith(store, send([bob1, alice2, carol1]), 1000, mismatched, {
      missing: [bob2],
      extra: [carol1],
    });
    await refusedWith(store, send([]), 1000, mismatched, { missing: [bob1, bob2, alice2] });
    const stale = (d: DeviceAddress) => envelope('m1', d, ridOf(d, 1) + 1);
    await refusedWith(store, send([bob1, stale(bob2), stale(alice2)]), 1000, 'stale_devices', {
      stale: [bob2, alice2],
    });
    await refusedWith(store, send([stale(bob1), alice2]), 1000, mismatched, { missing: [bob2] });
    // A re-install makes the registration id the sender knew stale.
    await store.putKeys(bob1, upload(bob1, { gen: 2 }));
    assert.notEqual(ridOf(bob1, 2), ridOf(bob1, 1));
    await refusedWith(store, send([bob1, bob2, alice2]), 1000, 'stale_devices', { stale: [bob1] });
    assert.deepEqual(await inboxes(store, devices), before, 'no inbox changed');
    assert.equal(await store.related('alice', 'bob'), false, 'a refused message relates no one');
    // No dedupe record was written: the corrected list commits.
    const retry = await appendOne(store, send([envelope('m1', bob1, ridOf(bob1, 2)), bob2, alice2]), 2000);
    assert.equal(retry.duplicate, false);
    assert.equal(retry.ts, 2000);
    assert.equal(bodyOf(await inbox(store, bob1), 'm1'), 'm1 sealed for bob/b1');
  });

  test('an end-to-end encrypted message to a user without keys is unknown_recipient, a group message with envelopes forbidden; neither writes anything', async ({
    store,
  }) => {
    await register(store, alice1, alice2, bob1, carol1);
    await giveKeys(store, alice1, alice2, carol1); // bob1 is registered but has no keys
    await appendOne(store, create(alice1, 'r1', 'g', 'G', ['carol']), 500);
    const devices = [alice1, alice2, bob1, carol1];
    const before = await inboxes(store, devices);
    await refused(store, sealed(alice1, 'm1', 'bob', [alice2]), 1000, 'unknown_recipient');
    await refused(store, sealed(alice1, 'm2', 'nobody', [alice2]), 1000, 'unknown_recipient');
    await refused(store, { ...sealed(alice1, 'm3', 'g', [carol1, alice2]), group: true }, 1000, 'forbidden');
    await refused(store, { ...sealed(alice1, 'm4', 'g', []), group: true }, 1000, 'forbidden');
    assert.deepEqual(await inboxes(store, devices), before, 'no inbox changed');
    assert.equal(await store.related('alice', 'bob'), false);
    // No dedupe records were written.
    await giveKeys(store, bob1);
    const m1 = await appendOne(store, sealed(alice1, 'm1', 'bob', [bob1, alice2]), 2000);
    assert.equal(m1.duplicate, false);
    const m3 = await appendOne(store, gmsg(alice1, 'm3', 'g'), 2000);
    assert.equal(m3.duplicate, false);
  });

  test('the sender’s other devices with keys are expected, and registered devices without keys get nothing', async ({
    store,
  }) => {
    await register(store, alice1, alice2, alice3, bob1, bob2);
    await giveKeys(store, alice1, alice2, bob1); // alice3 and bob2 have no keys
    const out = await appendOne(store, sealed(alice1, 'm1', 'bob', [bob1, alice2]), 1000);
    assertDevices(out.notify, [bob1, alice2], 'the devices with keys');
    assert.deepEqual(await inbox(store, bob2), [], 'a device without keys could not decrypt it');
    assert.deepEqual(await inbox(store, alice3), []);
    await refusedWith(store, sealed(alice1, 'm2', 'bob', [bob1, alice2, bob2]), 1000, 'mismatched_devices', {
      extra: [bob2],
    });
    // A note to oneself goes to one's other devices with keys.
    const note = await appendOne(store, sealed(alice1, 'n1', 'alice', [alice2]), 1100);
    assertDevices(note.notify, [alice2], 'the other device with keys');
    assert.equal(bodyOf(await inbox(store, alice2), 'n1'), 'n1 sealed for alice/a2');
    await refusedWith(store, sealed(alice2, 'n2', 'alice', []), 1100, 'mismatched_devices', {
      missing: [alice1],
    });
    // With no other device with keys, there is nobody to send to, but the user is known.
    await store.unregisterDevice(alice2);
    const alone = await appendOne(store, sealed(alice1, 'n3', 'alice', []), 1200);
    assert.deepEqual(alone.notify, []);
  });

  test('an end-to-end encrypted message is delivered once per user, expires like any other, and each body goes with its entry', async ({
    store,
  }) => {
    await register(store, alice1, alice2, bob1, bob2);
    await giveKeys(store, alice1, alice2, bob1, bob2);
    await appendOne(store, sealed(alice1, 'm1', 'bob', [bob1, bob2, alice2], 1), 1000);
    await appendOne(store, sealed(alice1, 'm2', 'bob', [bob1, bob2, alice2], 2), 1000);
    const entry = async (d: DeviceAddress, id: string) => [offsetOf(await inbox(store, d), id)];
    assert.deepEqual(await store.ack(alice2, await entry(alice2, 'm1'), 1500), { count: 1, notify: [] });
    const byBob = await store.ack(bob1, await entry(bob1, 'm1'), 2000);
    assertDevices(byBob.notify, [alice1, alice2], 'every device of the sender user');
    assert.equal(
      bodyOf(await inbox(store, bob2), 'm1'),
      'm1 sealed for bob/b2',
      'b2 still reads its own body',
    );
    assert.deepEqual(await store.ack(bob2, await entry(bob2, 'm1'), 2100), { count: 1, notify: [] });
    const delivered = { status: 'delivered', ids: ['m1'], by: 'bob', ts: 2000 };
    assert.deepEqual(statuses(await inbox(store, alice1)), [delivered]);
    const exp = await store.expire(1001, 9000);
    assert.equal(exp.count, 3, 'the copies of m2');
    assertDevices(
      exp.notify,
      [alice1, alice2, bob1, bob2],
      'the sender user’s devices, and the devices told of their gap',
    );
    const expired = { status: 'expired', ids: ['m2'], by: 'bob', ts: 9000 };
    assert.deepEqual(statuses(await inbox(store, alice1)), [delivered, expired]);
    for (const d of [alice1, alice2, bob1, bob2])
      assert.deepEqual(msgIds(await inbox(store, d)), [], devKey(d));
  });

  test('keys and every device’s own body survive a re-open', async (h) => {
    await register(h.store, alice1, bob1, bob2);
    await giveKeys(h.store, alice1, bob1, bob2);
    await h.store.claimKeys('bob', 'b1');
    await appendOne(h.store, sealed(alice1, 'm1', 'bob', [bob1, bob2]), 1000);
    const before = await inboxes(h.store, [bob1, bob2]);
    await h.reopen();
    assert.deepEqual(await inboxes(h.store, [bob1, bob2]), before);
    assert.equal(bodyOf(await inbox(h.store, bob2), 'm1'), 'm1 sealed for bob/b2');
    assert.deepEqual(await h.store.keyCount(bob1), { preKeys: 2, kyberPreKeys: 1 });
    assert.deepEqual((await h.store.claimKeys('bob', 'b1')).map(describeBundle), [bundleOf(bob1, 1, 2, 102)]);
    await refusedWith(h.store, sealed(alice1, 'm2', 'bob', [bob1]), 2000, 'mismatched_devices', {
      missing: [bob2],
    });
    assert.deepEqual(await h.store.append([sealed(alice1, 'm1', 'bob', [bob1, bob2])], 2000), [
      { ok: true, ts: 1000, duplicate: true, notify: [] },
    ]);
  });

  // ---- User directory ------------------------------------------------------------------------

  test('a registered user without a device is a recipient: its pending inbox takes messages and group adds, and devices() never lists it', async ({
    store,
  }) => {
    await register(store, alice1, alice2, carol1);
    assert.equal(await store.registerUser('bob', 500), true);
    assert.equal(await store.registerUser('bob', 600), false, 'registering again');
    assert.equal(await store.registerUser('alice', 600), false, 'a user with a device is registered');
    assert.deepEqual(await store.devices('bob'), []);
    const m1 = await appendOne(store, msg(alice1, 'm1', 'bob', 1), 1000);
    assertDevices(m1.notify, [alice2, pendingOf('bob')], 'the sender’s other device and bob’s pending inbox');
    await appendOne(store, create(carol1, 'r1', 'g', 'G', ['bob', 'alice']), 1100);
    await appendOne(store, gmsg(carol1, 'm2', 'g'), 1200);
    await appendOne(store, msg(carol1, 'm3', 'bob'), 1300);
    assert.deepEqual(summary(await inbox(store, pendingOf('bob'))), [
      'msg m1',
      'g v1 create +snapshot',
      'msg m2',
      'msg m3',
    ]);
    assert.deepEqual(await store.groupsOf('bob'), ['g']);
    const toAlice = await appendOne(store, msg(carol1, 'm4', 'alice'), 1400);
    assertDevices(toAlice.notify, [alice1, alice2], 'a user with devices has no pending inbox');
    // Unregistered users are refused as before, also in a group add.
    await refused(store, msg(alice1, 'x1', 'nobody'), 1500, 'unknown_recipient');
    await refused(
      store,
      groupChange(carol1, 'x2', 'g', { op: 'add', members: ['nobody'] }),
      1500,
      'unknown_recipient',
    );
    // A pending inbox has no keys, so nothing can be encrypted to it.
    await giveKeys(store, alice1, alice2);
    await refused(store, sealed(alice1, 'x3', 'bob', [alice2]), 1600, 'unknown_recipient');
    assert.deepEqual(await store.claimKeys('bob'), []);
    await assert.rejects(store.putKeys(pendingOf('bob'), upload(bob1)), 'no keys for a pending inbox');
    await assert.rejects(store.registerDevice(pendingOf('bob'), 1700), 'the reserved id is no device');
    assert.deepEqual(await store.devices('bob'), []);
  });

  test('the first device takes over the pending inbox in order, once, after a restart too; a later device gets none of it', async (h) => {
    await pendingBob(h.store);
    await appendOne(h.store, create(carol1, 'r1', 'g', 'G', ['bob']), 1100);
    await appendOne(h.store, msg(alice1, 'm2', 'bob', 2), 1200);
    await appendOne(h.store, gmsg(carol1, 'm3', 'g'), 1300);
    const pending = await inbox(h.store, pendingOf('bob'));
    await h.reopen();
    assert.deepEqual(await inbox(h.store, pendingOf('bob')), pending, 'the pending inbox survives a restart');
    assert.deepEqual(await h.store.registerDevice(bob1, 2000), { count: 1, notify: [bob1] });
    const b1 = await inbox(h.store, bob1);
    assert.deepEqual(summary(b1), [
      'msg m1',
      'g v1 create +snapshot',
      'msg m2',
      'msg m3',
      'g v1 add +snapshot',
    ]);
    for (let i = 1; i < b1.length; i++) assert.ok(b1[i]!.offset > b1[i - 1]!.offset, 'offsets increase');
    assert.deepEqual(msgIds(b1), msgIds(pending), 'the same messages');
    assert.deepEqual(await inbox(h.store, pendingOf('bob')), [], 'the pending inbox is gone');
    assert.deepEqual(await h.store.devices('bob'), ['b1']);
    assert.deepEqual(await h.store.registerDevice(bob1, 2050), { count: 0, notify: [] }, 'registering again');
    assert.deepEqual(await h.store.registerDevice(bob2, 2100), { count: 1, notify: [bob2] });
    assert.deepEqual(
      summary(await inbox(h.store, bob2)),
      ['g v1 add +snapshot'],
      'only what a new device gets',
    );
    assert.equal(await h.store.registerUser('bob', 2150), false);
    const m4 = await appendOne(h.store, msg(alice1, 'm4', 'bob', 3), 2200);
    assertDevices(m4.notify, [bob1, bob2], 'from now on, the devices');
    // Statuses flow back as for any message: delivered once, then read.
    const acked = await h.store.ack(bob1, [offsetOf(b1, 'm1'), offsetOf(b1, 'm2')], 2300);
    assertDevices(acked.notify, [alice1], 'the sender');
    await appendOne(h.store, receipt(bob1, 'rc1', 'alice', ['m1', 'm2']), 2400);
    assert.deepEqual(statuses(await inbox(h.store, alice1)), [
      { status: 'delivered', ids: ['m1', 'm2'], by: 'bob', ts: 2300 },
      { status: 'read', ids: ['m1', 'm2'], by: 'bob', ts: 2400 },
    ]);
    await h.store.ack(bob1, [offsetOf(b1, 'm3')], 2500);
    assert.deepEqual(statuses(await inbox(h.store, carol1)), [
      { status: 'delivered', ids: ['m3'], by: 'bob', ts: 2500 },
    ]);
  });

  test('pending entries expire like any other and tell the sender expired; the user stays registered', async ({
    store,
  }) => {
    await pendingBob(store);
    await appendOne(store, create(carol1, 'r1', 'g', 'G', ['bob']), 1100);
    await appendOne(store, gmsg(carol1, 'm2', 'g'), 1200);
    const res = await store.expire(1150, 9000);
    assert.equal(res.count, 3, 'm1 and both copies of the create event');
    assertDevices(
      res.notify,
      [alice1, pendingOf('bob')],
      'the sender of the expired message, and bob’s gap notice',
    );
    assert.deepEqual(statuses(await inbox(store, alice1)), [
      { status: 'expired', ids: ['m1'], by: 'bob', ts: 9000 },
    ]);
    assert.deepEqual(summary(await inbox(store, pendingOf('bob'))), ['msg m2', 'gap expired']);
    assert.equal(await store.registerUser('bob', 9100), false, 'still registered');
    await appendOne(store, msg(alice1, 'm3', 'bob', 2), 9200);
    // Its first device still learns the group, from the snapshot every new device gets.
    await store.registerDevice(bob1, 9300);
    assert.deepEqual(summary(await inbox(store, bob1)), [
      'msg m2',
      'gap expired',
      'msg m3',
      'g v1 add +snapshot',
    ]);
  });

  test('unregisterUser takes a user and every device out of the directory; unlinking the last device does too', async ({
    store,
  }) => {
    await pendingBob(store);
    assert.deepEqual(await store.unregisterUser('bob'), [], 'no device, only the pending inbox');
    assert.deepEqual(await inbox(store, pendingOf('bob')), []);
    await refused(store, msg(alice1, 'm2', 'bob'), 1100, 'unknown_recipient');
    assert.equal(await store.unregisterUser('bob'), undefined, 'not in the directory any more');
    await register(store, bob1, bob2);
    await giveKeys(store, bob1);
    await appendOne(store, create(carol1, 'r1', 'g', 'G', ['bob']), 1200);
    await appendOne(store, msg(alice1, 'm3', 'bob'), 1300);
    assert.deepEqual(await store.unregisterUser('bob'), ['b1', 'b2']);
    assert.deepEqual(await store.devices('bob'), []);
    assert.deepEqual(await inboxes(store, [bob1, bob2]), [[], []]);
    assert.equal(await store.keyCount(bob1), undefined, 'keys go with the device');
    await refused(store, msg(alice1, 'm4', 'bob'), 1400, 'unknown_recipient');
    assert.deepEqual(statuses(await inbox(store, alice1)), [], 'no statuses, as for unlinking');
    assert.deepEqual(await store.groupsOf('bob'), ['g'], 'memberships stay');
    // Registered again, its pending inbox starts with a snapshot of its groups, as a device would.
    assert.equal(await store.registerUser('bob', 1500), true);
    assert.deepEqual(summary(await inbox(store, pendingOf('bob'))), ['g v1 add +snapshot']);
    await store.registerDevice(bob1, 1600);
    assert.equal(await store.unregisterDevice(bob1), true);
    await refused(store, msg(alice1, 'm5', 'bob'), 1700, 'unknown_recipient');
    assert.deepEqual(await inbox(store, pendingOf('bob')), [], 'unlinking makes no pending inbox');
  });

  test('first devices registering on several nodes at once: one takes the pending inbox, the other gets only what came after it', async (h) => {
    const others: ServerStore[] = [];
    for (let i = 0; subject.share && i < 2; i++) others.push(await subject.share(h.store));
    const nodes = [h.store, ...others];
    try {
      await register(h.store, alice1);
      await h.store.registerUser('bob', 500);
      const ids = Array.from({ length: 30 }, (_, i) => `m${i}`);
      const node = (i: number) => nodes[i % nodes.length]!;
      // Messages one after another through every node, while two devices register on two others.
      const sending = (async () => {
        for (const [i, id] of ids.entries())
          await appendOne(node(i), msg(alice1, id, 'bob', i + 1), 1000 + i);
      })();
      const registering = [bob1, bob2].map(async (d, i) => {
        for (let k = 0; k < 3 + 4 * i; k++) await tick();
        await node(i + 1).registerDevice(d, 1010 + i);
      });
      await Promise.all([sending, ...registering]);
      assert.deepEqual([...(await h.store.devices('bob'))].sort(), ['b1', 'b2']);
      assert.deepEqual(await inbox(h.store, pendingOf('bob')), [], 'no pending inbox beside devices');
      const [i1, i2] = [msgIds(await inbox(h.store, bob1)), msgIds(await inbox(h.store, bob2))];
      const [taker, other] = i1.length >= i2.length ? [i1, i2] : [i2, i1];
      assert.deepEqual(taker, ids, 'one device has every message, once, in order');
      assert.deepEqual(other, ids.slice(ids.length - other.length), 'the other only those after it');
    } finally {
      for (const n of others) await n.close();
    }
  });

  test('the store declares the capabilities the suite runs by', async ({ store }) => {
    assert.deepEqual({ ...store.capabilities }, { ...subject.capabilities });
  });
  cases[cases.length - 1]!.needs = ['capabilities'];

  cases.push(...keyClaimCases(subject));
  cases.push(...actionCountCases(subject));
  cases.push(...gapNoticeCases(subject));
  cases.push(...slicedAppendCases(subject));
  cases.push(...faultCases(subject));
  skipUnmet(cases, (need) => subjectHas(subject, need), `subject ${subject.name}`);
  return cases;
}
