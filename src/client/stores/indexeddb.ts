/**
 * The IndexedDB {@link ClientStore} (`postbox/client/indexeddb`) for browsers (and web views,
 * Electron renderers): the outbox, counters, inbound state, history and state namespaces
 * (group views, encryption state) of one device, in one IndexedDB database of the origin. Built
 * on `idb` (an optional peer dependency: install it to use this subpath).
 *
 * **Durability.** Every write is one IndexedDB transaction, opened with `durability: 'strict'`
 * (the browser flushes it to disk before it reports completion), and a call resolves only after
 * its transaction completed: once `send()` resolves the message survives a reload, a killed tab
 * or a browser crash, as with the SQLite store's `synchronous=FULL`. The sequence number is taken
 * in the transaction that stores the entry.
 *
 * **Schema** (version {@link INDEXEDDB_CLIENT_SCHEMA_VERSION}, the database's version):
 *
 * | object store | key | indexes | purpose |
 * | --- | --- | --- | --- |
 * | `outbox` | `n` (auto: enqueue order) | `id` (unique), `conv`, `pending` (sparse), `hist` `[conv, pos]` | outgoing items |
 * | `inbound` | `n` (auto: arrival order) | `dedupe` `[from, fromDevice, id]` (unique), `conv`, `id`, `held` (sparse), `hist` `[conv, pos]`, `unread` (sparse) | received messages |
 * | `seqs` | conversation | | last sequence number handed out |
 * | `streams` | stream key | | next expected sequence |
 * | `convs` | `conv` | `last` | each conversation's latest history position |
 * | `state` | `[ns, key]` | | state namespaces |
 * | `meta` | name | | the history position counter |
 *
 * Upgrades run in the browser's `upgradeneeded` transaction, one step per version. A tab still
 * open on the old version closes its connection when a newer tab upgrades (its calls then reject
 * with `unavailable`, "reload this tab"), so the upgrade never waits on a forgotten tab.
 *
 * @packageDocumentation
 */
import type {
  ClientStore,
  ConversationRecord,
  HistoryRecord,
  InboundChange,
  InboundMessage,
  MessageStatus,
  OutboxDraft,
  OutboxEntry,
  SendFailure,
  StateWrite,
} from '../store.js';
import {
  CONVS,
  INBOUND,
  META,
  OUTBOX,
  POS_KEY,
  SEQS,
  STATE,
  STREAMS,
  INDEXEDDB_SCHEMA_VERSION,
  markInbound,
  toInbound,
  toOutbox,
  type ConvRecord,
  type InboundRecord,
  type OutboxRecord,
  type StateRecord,
  type Tx,
} from './indexeddb-schema.js';
import { PostboxError } from '../../protocol/errors.js';
import { lostError, openDatabase, storeError, type Lost } from './indexeddb-open.js';
import { mergePages } from './merge-pages.js';

export { requestPersistentStorage } from './indexeddb-open.js';

/** The database version of a fully upgraded IndexedDB client store. */
export const INDEXEDDB_CLIENT_SCHEMA_VERSION: number = INDEXEDDB_SCHEMA_VERSION;

/** Options of {@link openIndexedDbClientStore}. */
export interface IndexedDbClientStoreOptions {
  /**
   * The database name. One per device: two clients (two signed-in users, say) need two names.
   * @default 'postbox'
   */
  name?: string;
  /**
   * The IndexedDB factory, e.g. a fresh `new IDBFactory()` of `fake-indexeddb` per Node test. The
   * rest of IndexedDB (`IDBKeyRange`, `IDBRequest`, …) is taken from the globals, which `idb`
   * needs too: in Node, import `fake-indexeddb/auto` first.
   * @default globalThis.indexedDB
   */
  indexedDB?: IDBFactory;
  /**
   * `'strict'`: a write is flushed to disk before it resolves (survives power loss).
   * `'relaxed'`: the browser may report a write done once the OS has it (survives a killed tab
   * or browser, not power loss); faster only where the flush to disk dominates (in the bench of
   * docs/benchmarks.md it did not: about 590 sends/s either way). See docs/browser.md.
   * @default 'strict'
   */
  durability?: 'strict' | 'relaxed';
}

const LABEL = 'indexeddb client store';

/** Requests whose failure the transaction reports: their own promise must not be unhandled. */
const quiet = (p: Promise<unknown>): void => void p.catch(() => {});

/** Numbers below every history position: the low end of a conversation's `hist` range. */
const LOWEST = -Infinity;

/**
 * Opens (creating or upgrading) a {@link ClientStore} in IndexedDB; see the module header for
 * the schema and durability. Rejects with `misconfigured` when the database was written by a
 * newer schema, or IndexedDB is missing. A write over the origin's quota rejects with
 * `storage_full` and keeps nothing; a database the browser closed (site data cleared) makes every
 * later call reject with `unavailable`.
 *
 * Choice where the contract is silent, as in the memory store: `setStatus` of an unknown id is
 * ignored.
 *
 * @example
 * ```ts
 * import { createClient } from 'postbox/client';
 * import { openIndexedDbClientStore } from 'postbox/client/indexeddb';
 *
 * const store = await openIndexedDbClientStore({ name: `postbox-${user}` });
 * const client = createClient({ store, transport, credentials });
 * ```
 */
export async function openIndexedDbClientStore(
  options: IndexedDbClientStoreOptions = {},
): Promise<ClientStore & { readonly name: 'indexeddb' }> {
  const g = globalThis as { indexedDB?: IDBFactory; IDBKeyRange?: typeof IDBKeyRange };
  const factory = options.indexedDB ?? g.indexedDB;
  const KeyRange = g.IDBKeyRange;
  if (!factory || !KeyRange) {
    throw new PostboxError(
      'misconfigured',
      `${LABEL}: no IndexedDB here; in Node, import fake-indexeddb/auto first`,
    );
  }
  const Range: typeof IDBKeyRange = KeyRange;
  let lost: Lost | undefined;
  const db = await openDatabase({
    factory,
    name: options.name ?? 'postbox',
    onLost: (why) => (lost ??= why),
  });
  const durability = options.durability ?? 'strict';

  async function run<T>(
    names: string[],
    mode: 'readonly' | 'readwrite',
    body: (tx: Tx) => Promise<T>,
  ): Promise<T> {
    if (lost) throw lostError(lost);
    let tx: Tx;
    try {
      tx = db.transaction(names, mode, { durability }) as unknown as Tx;
    } catch (e) {
      throw lost ? lostError(lost) : storeError(e);
    }
    const done = tx.done;
    quiet(done);
    try {
      const result = await body(tx);
      if (mode === 'readwrite') await done;
      return result;
    } catch (e) {
      try {
        tx.abort();
      } catch {
        // Already committed or aborted: the error below says why.
      }
      throw lost ? lostError(lost) : storeError(e);
    }
  }

  /** History positions handed out inside one transaction (see the contract's rule). */
  function positions(tx: Tx): (conv: string) => Promise<number> {
    let last: number | undefined;
    return async (conv) => {
      last ??= ((await tx.objectStore(META).get(POS_KEY)) as number | undefined) ?? 0;
      const pos = ++last;
      quiet(tx.objectStore(META).put(pos, POS_KEY));
      quiet(tx.objectStore(CONVS).put({ conv, last: pos } satisfies ConvRecord));
      return pos;
    };
  }

  function writeState(tx: Tx, writes: StateWrite[]): void {
    const state = tx.objectStore(STATE);
    for (const w of writes) {
      if (w.value === undefined) quiet(state.delete([w.ns, w.key]));
      else quiet(state.put({ ns: w.ns, key: w.key, value: w.value } satisfies StateRecord));
    }
  }

  /** The `limit` newest records of an index's `[conv, pos]` range below `below`. */
  async function newest<R>(tx: Tx, store: string, conv: string, below: number, limit: number) {
    const rows: R[] = [];
    const range = Range.bound([conv, LOWEST], [conv, below], false, true);
    let cursor = await tx.objectStore(store).index('hist').openCursor(range, 'prev');
    while (cursor && rows.length < limit) {
      rows.push(cursor.value as R);
      cursor = await cursor.continue();
    }
    return rows;
  }

  async function page(tx: Tx, conv: string, before: number | undefined, limit: number) {
    const below = before ?? Number.MAX_SAFE_INTEGER;
    const ins = await newest<InboundRecord & { pos: number }>(tx, INBOUND, conv, below, limit);
    const outs = await newest<OutboxRecord & { pos: number }>(tx, OUTBOX, conv, below, limit);
    return mergePages(ins, outs, limit, toInbound, toOutbox);
  }

  return {
    name: 'indexeddb',

    enqueue(draft: OutboxDraft, sequenced: boolean, state?: StateWrite[]): Promise<OutboxEntry> {
      return run([OUTBOX, SEQS, META, CONVS, STATE], 'readwrite', async (tx) => {
        const outbox = tx.objectStore(OUTBOX);
        if ((await outbox.index('id').getKey(draft.id)) !== undefined) {
          throw new Error(`${LABEL}: outbox id ${draft.id} is already enqueued`);
        }
        const rec: OutboxRecord = {
          id: draft.id,
          kind: draft.kind,
          to: draft.to,
          conv: draft.conv,
          createdAt: draft.createdAt,
          status: 'pending',
          pend: 1,
        };
        if (draft.body !== undefined) rec.body = draft.body;
        if (draft.ids !== undefined) rec.ids = draft.ids;
        // The number is taken in the transaction that stores the entry: a crash keeps both or neither.
        if (sequenced) {
          rec.seq = (((await tx.objectStore(SEQS).get(draft.conv)) as number | undefined) ?? 0) + 1;
          quiet(tx.objectStore(SEQS).put(rec.seq, draft.conv));
        }
        if (draft.kind === 'msg') rec.pos = await positions(tx)(draft.conv);
        quiet(outbox.add(rec)); // structured clone: the caller's buffers are copied here
        if (state) writeState(tx, state);
        const entry = toOutbox(rec);
        if (entry.body) entry.body = entry.body.slice();
        if (entry.ids) entry.ids = [...entry.ids];
        return entry;
      });
    },

    pending(): Promise<OutboxEntry[]> {
      return run([OUTBOX], 'readonly', async (tx) =>
        ((await tx.objectStore(OUTBOX).index('pending').getAll()) as OutboxRecord[]).map(toOutbox),
      );
    },

    setStatus(id: string, status: MessageStatus, failure?: SendFailure): Promise<void> {
      return run([OUTBOX], 'readwrite', async (tx) => {
        const rec = (await tx.objectStore(OUTBOX).index('id').get(id)) as OutboxRecord | undefined;
        if (!rec) return;
        rec.status = status;
        if (status === 'pending') rec.pend = 1;
        else delete rec.pend;
        delete rec.reason;
        delete rec.detail;
        if (failure) {
          rec.reason = failure.reason;
          rec.detail = failure.detail;
        }
        quiet(tx.objectStore(OUTBOX).put(rec));
      });
    },

    outgoing(id: string): Promise<OutboxEntry | undefined> {
      return run([OUTBOX], 'readonly', async (tx) => {
        const rec = (await tx.objectStore(OUTBOX).index('id').get(id)) as OutboxRecord | undefined;
        return rec && toOutbox(rec);
      });
    },

    applyInbound(change: InboundChange): Promise<{ inserted: boolean }> {
      return run([INBOUND, META, CONVS, STREAMS], 'readwrite', async (tx) => {
        const inbound = tx.objectStore(INBOUND);
        const show = positions(tx);
        let inserted = false;
        const m = change.insert;
        if (m) {
          // A duplicate applies nothing of the change: the transaction commits no write.
          if ((await inbound.index('dedupe').getKey([m.from, m.fromDevice, m.id])) !== undefined) {
            return { inserted: false };
          }
          const rec: InboundRecord = { ...m };
          if (!m.held) rec.pos = await show(m.conv);
          quiet(inbound.add(markInbound(rec)));
          inserted = true;
        }
        for (const id of change.release ?? []) {
          for (const rec of (await inbound.index('id').getAll(id)) as InboundRecord[]) {
            if (!rec.held) continue;
            rec.held = false;
            rec.pos = await show(rec.conv);
            quiet(inbound.put(markInbound(rec)));
          }
        }
        for (const s of change.streams ?? []) quiet(tx.objectStore(STREAMS).put(s.next, s.key));
        return { inserted };
      });
    },

    streamNext(key: string): Promise<number | undefined> {
      return run([STREAMS], 'readonly', async (tx) => (await tx.objectStore(STREAMS).get(key)) as number);
    },

    held(): Promise<InboundMessage[]> {
      return run([INBOUND], 'readonly', async (tx) =>
        ((await tx.objectStore(INBOUND).index('held').getAll()) as InboundRecord[]).map(toInbound),
      );
    },

    inbound(conv: string): Promise<InboundMessage[]> {
      return run([INBOUND], 'readonly', async (tx) =>
        ((await tx.objectStore(INBOUND).index('conv').getAll(conv)) as InboundRecord[]).map(toInbound),
      );
    },

    outgoingIn(conv: string): Promise<OutboxEntry[]> {
      return run([OUTBOX], 'readonly', async (tx) =>
        ((await tx.objectStore(OUTBOX).index('conv').getAll(conv)) as OutboxRecord[]).map(toOutbox),
      );
    },

    async markRead(ids: string[]): Promise<void> {
      if (ids.length === 0) return;
      await run([INBOUND], 'readwrite', async (tx) => {
        const inbound = tx.objectStore(INBOUND);
        for (const id of ids) {
          for (const rec of (await inbound.index('id').getAll(id)) as InboundRecord[]) {
            if (rec.read) continue;
            rec.read = true;
            quiet(inbound.put(markInbound(rec)));
          }
        }
      });
    },

    getState(ns: string, key: string): Promise<Uint8Array | undefined> {
      return run([STATE], 'readonly', async (tx) => {
        const rec = (await tx.objectStore(STATE).get([ns, key])) as StateRecord | undefined;
        return rec?.value;
      });
    },

    async putState(writes: StateWrite[]): Promise<void> {
      if (writes.length === 0) return;
      await run([STATE], 'readwrite', async (tx) => writeState(tx, writes));
    },

    listState(ns: string, prefix = ''): Promise<Array<{ key: string; value: Uint8Array }>> {
      return run([STATE], 'readonly', async (tx) => {
        // Keys in [prefix, prefix + U+FFFF): the prefix's range of the primary key.
        const range = Range.bound([ns, prefix], [ns, `${prefix}\uffff`], false, true);
        const rows = (await tx.objectStore(STATE).getAll(range)) as StateRecord[];
        return rows.map((r) => ({ key: r.key, value: r.value }));
      });
    },

    history(conv: string, before: number | undefined, limit: number): Promise<HistoryRecord[]> {
      return run([INBOUND, OUTBOX], 'readonly', (tx) => page(tx, conv, before, limit));
    },

    conversations(): Promise<ConversationRecord[]> {
      return run([CONVS, INBOUND, OUTBOX], 'readonly', async (tx) => {
        const convs: ConvRecord[] = [];
        let cursor = await tx.objectStore(CONVS).index('last').openCursor(null, 'prev');
        while (cursor) {
          convs.push(cursor.value as ConvRecord);
          cursor = await cursor.continue();
        }
        const out: ConversationRecord[] = [];
        for (const c of convs) {
          const last = (await page(tx, c.conv, c.last + 1, 1))[0];
          if (!last) continue;
          const unread = await tx.objectStore(INBOUND).index('unread').count(c.conv);
          out.push({ conv: c.conv, last, unread });
        }
        return out;
      });
    },

    async close(): Promise<void> {
      if (lost) return;
      lost = 'closed';
      db.close();
    },
  };
}
