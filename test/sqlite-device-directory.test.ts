// The SQLite server store keeps each user's devices in memory (src/server/stores/sqlite-devices.ts).
// What must hold: a list read once is served without a query until this store changes that user's
// devices, another connection commits (a second store over the same file: several nodes on one
// database), or a write transaction fails; the inbox heads it keeps (offset counter and usage)
// follow the same rules, and the writer's changes to them.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { deviceDirectory, type DeviceRef } from '../src/server/stores/sqlite-devices.js';
import type { ServerStore } from '../src/server/store.js';
import { sqliteServerStore } from '../src/server/stores/sqlite.js';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'postbox-devdir-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const body = new Uint8Array([1, 2, 3]);
const send = (id: string, to: string) =>
  ({ kind: 'msg', from: { user: 'alice', device: 'phone' }, id, to, seq: 0, body }) as const;

describe('SQLite device directory', () => {
  it('reads a user once, in registration order, until forgotten, cleared or the data version moves', () => {
    const rows = new Map<string, DeviceRef[]>([
      [
        'bob',
        [
          { id: 7, device: 'laptop' },
          { id: 3, device: 'phone' },
        ],
      ],
    ]);
    let reads = 0;
    const dir = deviceDirectory(
      (user) => {
        reads++;
        return (rows.get(user) ?? []).map((r) => ({ ...r }));
      },
      () => {
        throw new Error('no head is read here');
      },
    );
    dir.sync(1);
    expect(dir.of('bob').map((r) => r.device)).toEqual(['phone', 'laptop']);
    expect(dir.id('bob', 'laptop')).toBe(7);
    expect(dir.id('bob', 'tablet')).toBeUndefined();
    expect(reads).toBe(1);
    rows.set('bob', [{ id: 3, device: 'phone' }]);
    dir.sync(1); // same version: nothing another connection did
    expect(dir.id('bob', 'laptop')).toBe(7);
    dir.forget('bob');
    expect(dir.id('bob', 'laptop')).toBeUndefined();
    rows.set('bob', [{ id: 9, device: 'tablet' }]);
    dir.clear();
    expect(dir.id('bob', 'tablet')).toBe(9);
    rows.set('bob', []);
    dir.sync(2); // another connection committed
    expect(dir.of('bob')).toEqual([]);
    expect(reads).toBe(4);
  });

  it('keeps an inbox head once read, follows the writer, and drops it by the same rules as the lists', () => {
    const heads = new Map([[3, { last_offset: 10, entries: 2, bytes: 50 }]]);
    let reads = 0;
    const dir = deviceDirectory(
      () => [],
      (dev) => {
        reads++;
        return { ...heads.get(dev)! };
      },
    );
    dir.sync(1);
    expect(dir.head(3)).toEqual({ last_offset: 10, entries: 2, bytes: 50 });
    dir.moved(3, 12, 2, 30); // two entries written
    dir.moved(3, undefined, -1, -20); // one removed, counter unchanged
    dir.moved(4, 1, 1, 1); // a head not kept stays unread
    expect(dir.head(3)).toEqual({ last_offset: 12, entries: 3, bytes: 60 });
    expect(reads).toBe(1);
    for (const drop of [() => dir.forget('bob'), () => dir.clear(), () => dir.sync(2)]) {
      drop();
      expect(dir.head(3)).toEqual({ last_offset: 10, entries: 2, bytes: 50 }); // read again
    }
    expect(reads).toBe(4);
  });

  it('two stores over one file take turns writing one inbox: offsets with no gap, usage and quota exact', async () => {
    const file = path.join(root, 'two-heads.sqlite');
    const quotas = { inboxEntries: 5 };
    const a = sqliteServerStore({ path: file, quotas });
    const b = sqliteServerStore({ path: file, quotas });
    const bob = { user: 'bob', device: 'phone' };
    const offsetsOf = async (store: ServerStore, id: string, now: number) => {
      const [out] = await store.append([send(id, 'bob')], now);
      return out!.ok ? out!.offsets : out!.code;
    };
    try {
      await a.registerDevice({ user: 'alice', device: 'phone' }, 1);
      await a.registerDevice(bob, 1);
      const offsets = [];
      for (let i = 0; i < 4; i++) offsets.push(await offsetsOf(i % 2 === 0 ? a : b, `h${i}`, 2 + i));
      expect(offsets).toEqual([[1], [2], [3], [4]]);
      // B acks two; A, which last saw four entries, must count two, and let three more in.
      await b.ack(bob, [1, 2], 10);
      for (let i = 4; i < 7; i++) offsets.push(await offsetsOf(a, `h${i}`, 10 + i));
      expect(offsets.slice(4)).toEqual([[5], [6], [7]]);
      // Five entries: the inbox is full on either node, and stays as it was.
      expect(await offsetsOf(b, 'h7', 20)).toBe('inbox_full');
      expect(await offsetsOf(a, 'h8', 21)).toBe('inbox_full');
      expect((await a.readInbox(bob, 0, 20)).map((e) => e.offset)).toEqual([3, 4, 5, 6, 7]);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('a device another store registers over the same file is a recipient at once, and one it removes is not', async () => {
    const file = path.join(root, 'two-nodes.sqlite');
    const a = sqliteServerStore({ path: file });
    const b = sqliteServerStore({ path: file });
    try {
      await a.registerDevice({ user: 'alice', device: 'phone' }, 1);
      // Node A reads bob's (empty) device list: a message to him is refused.
      expect(await a.devices('bob')).toEqual([]);
      expect((await a.append([send('m1', 'bob')], 2))[0]).toMatchObject({
        ok: false,
        code: 'unknown_recipient',
      });
      // Node B registers bob's phone: A sees it at once, in a read and in a write.
      await b.registerDevice({ user: 'bob', device: 'phone' }, 3);
      expect(await a.devices('bob')).toEqual(['phone']);
      const sent = (await a.append([send('m2', 'bob')], 4))[0]!;
      expect(sent).toMatchObject({ ok: true });
      // Bob acks on node A; node B removes the phone; A no longer delivers to it.
      const [entry] = await a.readInbox({ user: 'bob', device: 'phone' }, 0, 10);
      expect(entry).toMatchObject({ kind: 'msg', id: 'm2' });
      await a.ack({ user: 'bob', device: 'phone' }, [entry!.offset], 5);
      await b.unregisterDevice({ user: 'bob', device: 'phone' });
      expect((await a.append([send('m3', 'bob')], 6))[0]).toMatchObject({
        ok: false,
        code: 'unknown_recipient',
      });
    } finally {
      await a.close();
      await b.close();
    }
  });
});
