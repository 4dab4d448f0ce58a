// A group message to a full group (1,024 members) is written by the SQLite store in slices when
// the engine asks (`sliceRows`, store capability `slicedAppend`), so a 1:1 send commits between
// them instead of waiting for one 1,023-row transaction (issue 22, group-spam). The message is
// answered only once every slice is durable, each member device gets it exactly once, and a
// failure or a close between slices leaves it pending: a resend or the next open finishes it,
// losing and duplicating nothing.
import Database from 'better-sqlite3';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { AppendInput, AppendOutcome, ServerStore } from '../src/server/store.js';
import { sqliteServerStore } from '../src/server/stores/sqlite.js';
import { MEMBERS, from, fullGroup, members } from './fixtures/full-group.js';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'postbox-fanout-slices-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

const body = new Uint8Array([1, 2, 3]);
const groupMessage = (id: string, seq: number): AppendInput => ({
  kind: 'msg',
  from,
  id,
  to: '#g',
  group: true,
  seq,
  body,
});
const direct: AppendInput = {
  kind: 'msg',
  from: { user: 'alice', device: 'a1' },
  id: 'direct-1',
  to: 'bob',
  seq: 1,
  body,
};

let files = 0;
const file = () => path.join(dir, `db${++files}.sqlite`);

/** How many entries of message `id` each of the other members' devices holds. */
async function copies(store: ServerStore, id: string): Promise<number[]> {
  const out: number[] = [];
  for (const m of members.slice(1)) {
    const entries = await store.readInbox(m, 0, 100);
    out.push(entries.filter((e) => e.kind === 'msg' && e.id === id).length);
  }
  return out;
}

const exactlyOnce = new Array<number>(MEMBERS - 1).fill(1);

describe('SQLite group fan-out in slices', () => {
  it('a 1,024-member group message commits in slices of sliceRows entries, a 1:1 send commits between them, and the group message is answered only once all 1,023 entries are written', async () => {
    const writes: string[] = [];
    const store = await fullGroup(file(), (w) => writes.push(w));
    expect(store.capabilities.slicedAppend).toBe(true);
    writes.length = 0;
    let groupDone = false;
    const group = store.append([groupMessage('big', 1)], 10, { sliceRows: 256 }).then((o) => {
      groupDone = true;
      return o;
    });
    // The first transaction has committed (the call returned): a 1:1 send now commits at once.
    const [one] = await store.append([direct], 11);
    expect(one?.ok).toBe(true);
    expect(groupDone).toBe(false);
    const [out] = (await group) as [AppendOutcome & { ok: true }];
    expect(out.ok && !out.duplicate).toBe(true);
    // Every member device but the sender's, each with its offset, in member order.
    expect(out.notify).toEqual(members.slice(1));
    expect(out.offsets).toHaveLength(MEMBERS - 1);
    // Four transactions of at most 256 entries, the 1:1 message's insert between two of them.
    const inserts = writes.map((w, i) => [w, i] as const).filter(([w]) => w === 'INSERT INTO inbox');
    expect(inserts).toHaveLength(MEMBERS - 1 + 1); // the group's entries and bob's
    const directAt = writes.indexOf('INSERT INTO dedupe', writes.indexOf('INSERT INTO dedupe') + 1);
    const groupInsertsBefore = inserts.filter(([, i]) => i < directAt).length;
    expect(groupInsertsBefore).toBeGreaterThanOrEqual(256);
    expect(groupInsertsBefore).toBeLessThan(MEMBERS - 1);
    expect(await copies(store, 'big')).toEqual(exactlyOnce);
    expect((await store.readInbox({ user: 'bob', device: 'b1' }, 0, 10)).map((e) => e.offset)).toEqual([1]);
    await store.close();
  });

  it('without sliceRows the same group message is one transaction, as before', async () => {
    const store = await fullGroup(file());
    const [out] = await store.append([groupMessage('whole', 1)], 10);
    expect(out?.ok && out.notify.length).toBe(MEMBERS - 1);
    expect(await copies(store, 'whole')).toEqual(exactlyOnce);
    await store.close();
  });

  it('a failure between fan-out slices loses and duplicates nothing: the resend is a duplicate that writes the rest, each device once', async () => {
    let slices = 0;
    let failAt = 0;
    const store = await fullGroup(file(), (w) => {
      if (w !== 'UPDATE fanout_done SET' && w !== 'DELETE FROM fanouts') return;
      if (++slices === failAt) throw new Error('injected: disk full in the second slice');
    });
    failAt = 2; // the first slice after the item's own transaction commits, the next one fails
    await expect(store.append([groupMessage('m1', 1)], 10, { sliceRows: 256 })).rejects.toThrow(/injected/);
    const partial = await copies(store, 'm1');
    expect(partial.filter((n) => n === 1).length).toBe(512);
    expect(partial.every((n) => n <= 1)).toBe(true);
    const [again] = await store.append([groupMessage('m1', 1)], 20, { sliceRows: 256 });
    expect(again).toMatchObject({ ok: true, duplicate: true, ts: 10 });
    expect(await copies(store, 'm1')).toEqual(exactlyOnce);
    // A later message from the same sender comes after it in every inbox.
    const [next] = await store.append([groupMessage('m2', 2)], 30, { sliceRows: 256 });
    expect(next?.ok).toBe(true);
    for (const m of [members[1]!, members[600]!, members[MEMBERS - 1]!]) {
      const ids = (await store.readInbox(m, 0, 10)).flatMap((e) => (e.kind === 'msg' ? [e.id] : []));
      expect(ids).toEqual(['m1', 'm2']);
    }
    await store.close();
  });

  it('a crash between fan-out slices loses and duplicates nothing: the store closed mid-message finishes it when it opens again', async () => {
    const at = file();
    let closing: Promise<void> | undefined;
    let store: ReturnType<typeof sqliteServerStore> | undefined;
    let slices = 0;
    store = await fullGroup(at, (w) => {
      // After the first slice after the item's own transaction, close the store (on the next
      // turn, outside the transaction): its next slice then finds the database gone.
      if (w === 'UPDATE fanout_done SET' && ++slices === 1) setImmediate(() => (closing = store!.close()));
    });
    await expect(store.append([groupMessage('m1', 1)], 10, { sliceRows: 200 })).rejects.toThrow();
    await closing;
    store = sqliteServerStore({ path: at, walFlush: 'background' });
    expect(await copies(store, 'm1')).toEqual(exactlyOnce);
    const [again] = await store.append([groupMessage('m1', 1)], 20, { sliceRows: 200 });
    expect(again).toMatchObject({ ok: true, duplicate: true, ts: 10 });
    expect(await copies(store, 'm1')).toEqual(exactlyOnce);
    // Acking every copy frees the body: the references counted every planned entry.
    for (const m of members.slice(1)) {
      const entries = await store.readInbox(m, 0, 10);
      await store.ack(
        m,
        entries.map((e) => e.offset),
        30,
      );
    }
    await store.close();
    const db = new Database(at, { readonly: true });
    expect(db.prepare('SELECT count(*) AS n FROM messages').get()).toEqual({ n: 0 });
    expect(db.prepare('SELECT count(*) AS n FROM fanouts').get()).toEqual({ n: 0 });
    expect(db.prepare('SELECT count(*) AS n FROM fanout_done').get()).toEqual({ n: 0 });
    db.close();
  });

  it('a device removed between fan-out slices gets nothing and the others get the message once', async () => {
    const store = await fullGroup(file());
    const group = store.append([groupMessage('m1', 1)], 10, { sliceRows: 256 });
    const last = members[MEMBERS - 1]!;
    expect(await store.unregisterDevice(last)).toBe(true);
    const [out] = await group;
    expect(out?.ok && out.notify.length).toBe(MEMBERS - 2);
    expect((await copies(store, 'm1')).slice(0, -1)).toEqual(exactlyOnce.slice(1));
    await store.close();
  });
  it('entries a sliced group message has still to write count against the inbox quota of a send committed between its slices, as when it is written whole', async () => {
    const store = sqliteServerStore({ path: ':memory:', quotas: { inboxEntries: 3 } });
    const users = ['m1', 'm2', 'm3', 'm4', 'm5', 'bob'];
    for (const u of ['u0', 'alice', ...users]) await store.registerDevice({ user: u, device: 'd1' }, 1);
    const change = { op: 'create' as const, name: 'g', members: users };
    await store.append([{ kind: 'group', from, id: 'create', group: '#g', change, maxMembers: 8 }], 2);
    const alice = { user: 'alice', device: 'd1' };
    const note = (id: string, seq: number): AppendInput => ({
      kind: 'msg',
      from: alice,
      id,
      to: 'bob',
      seq,
      body,
    });
    expect((await store.append([note('n1', 1)], 3))[0]?.ok).toBe(true); // bob: the event and n1
    // bob's entry is in the group message's last slice; alice's next note commits before it.
    const group = store.append([groupMessage('big', 1)], 10, { sliceRows: 2 });
    const [refused] = await store.append([note('n2', 2)], 11);
    expect(refused).toEqual({ ok: false, code: 'inbox_full' });
    const [out] = await group;
    expect(out?.ok && out.notify).toEqual(users.map((user) => ({ user, device: 'd1' })));
    const bob = (await store.readInbox({ user: 'bob', device: 'd1' }, 0, 10)).map(
      (e) => e.kind === 'msg' && e.id,
    );
    expect(bob).toEqual([false, 'n1', 'big']);
    // Once it is written the reservation is gone: bob's inbox counts what it holds, no more.
    await store.ack({ user: 'bob', device: 'd1' }, [2], 12);
    expect((await store.append([note('n3', 3)], 13))[0]?.ok).toBe(true);
    await store.close();
  });
});
