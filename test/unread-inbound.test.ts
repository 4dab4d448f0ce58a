// markRead reads what is unread, not a conversation's whole history: the stores' optional
// unreadInbound is inbound() less the held and the read messages, in arrival order.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { memoryClientStore } from '../src/client/stores/memory.js';
import { sqliteClientStore } from '../src/client/stores/sqlite.js';
import type { ClientStore, InboundMessage } from '../src/client/store.js';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'postbox-unread-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));

const message = (id: string, seq: number, over: Partial<InboundMessage> = {}): InboundMessage => ({
  id,
  conv: 'bob',
  from: 'bob',
  fromDevice: 'b1',
  to: 'alice',
  seq,
  ts: seq,
  body: new Uint8Array([seq]),
  held: false,
  read: false,
  ...over,
});

const stores: Array<[string, () => ClientStore]> = [
  ['memory', () => memoryClientStore()],
  ['sqlite', () => sqliteClientStore({ path: path.join(root, `${Math.random()}.sqlite`) })],
];

describe.each(stores)('%s client store: unread inbound messages', (_name, open) => {
  it('are the shown, unread ones of the conversation, in arrival order', async () => {
    const store = open();
    await store.applyInbound({ insert: message('m1', 1) });
    await store.applyInbound({ insert: message('m3', 3, { held: true }) });
    await store.applyInbound({ insert: message('m2', 2) });
    await store.applyInbound({ insert: message('x1', 1, { conv: 'carol', from: 'carol' }) });
    await store.applyInbound({ insert: message('m4', 4) });
    await store.markRead(['m2']);
    const expected = (await store.inbound('bob')).filter((m) => !m.held && !m.read);
    expect((await store.unreadInbound!('bob')).map((m) => m.id)).toEqual(['m1', 'm4']);
    expect(await store.unreadInbound!('bob')).toEqual(expected);
    // A released message is shown from then on, still in arrival order.
    await store.applyInbound({ release: ['m3'] });
    expect((await store.unreadInbound!('bob')).map((m) => m.id)).toEqual(['m1', 'm3', 'm4']);
    expect(await store.unreadInbound!('nobody')).toEqual([]);
    await store.close();
  });
});
