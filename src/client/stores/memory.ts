/**
 * The in-memory {@link ClientStore}: the reference implementation of the contract and the test
 * double, with a `state` object that outlives a store (a new store over the same state is an app
 * restart after a crash) and a `failWhen` fault switch. Browser-safe: no Node built-ins.
 *
 * Every method of the contract is written out here in full, so the SQLite and IndexedDB stores
 * have one readable model to match; how it keeps what it is given (records, indexes, bodies) is
 * memory-state.ts.
 * @packageDocumentation
 */
import {
  applyEntryStatus,
  type ClientStore,
  type ConversationRecord,
  type HistoryRecord,
  type InboundChange,
  type InboundMessage,
  type MessageStatus,
  type OutboxDraft,
  type OutboxEntry,
  type SendFailure,
  type StateWrite,
} from '../store.js';
import {
  createMemoryClientState,
  eachById,
  firstAtOrAfter,
  indexInbound,
  inboundOf,
  isStored,
  listIn,
  outboxEntry,
  outgoingOf,
  showIn,
  storedInbound,
  storedOutgoing,
  type ClientData,
  type HistoryList,
  type MemoryClientState,
  type StoredInbound,
  type StoredOutgoing,
} from './memory-state.js';

export { createMemoryClientState, type MemoryClientState } from './memory-state.js';

/** The operations the {@link MemoryClientStoreOptions.failWhen} switch can fail (the method names). */
export type ClientStoreOp =
  | 'enqueue'
  | 'pending'
  | 'setStatus'
  | 'outgoing'
  | 'applyInbound'
  | 'streamNext'
  | 'held'
  | 'inbound'
  | 'unreadInbound'
  | 'outgoingIn'
  | 'markRead'
  | 'getState'
  | 'putState'
  | 'listState'
  | 'history'
  | 'conversations';

/** Options of {@link memoryClientStore}. */
export interface MemoryClientStoreOptions {
  /**
   * Share state across store instances to simulate app restarts.
   * @default a fresh state
   */
  state?: MemoryClientState;
  /**
   * Fault switch, asked before every operation: when it returns true the operation rejects with
   * an Error and changes nothing.
   * @default never fail
   */
  failWhen?: (op: ClientStoreOp) => boolean;
}

/**
 * A {@link ClientStore} kept in memory. Every operation runs synchronously inside its promise,
 * so each call is atomic.
 *
 * Choice where the contract is silent: `setStatus` of an unknown id is ignored.
 *
 * @example
 * ```ts
 * const disk = createMemoryClientState();
 * let store = memoryClientStore({ state: disk });
 * // … crash …
 * store = memoryClientStore({ state: disk }); // same outbox, counters, history
 * ```
 */
export function memoryClientStore(
  options: MemoryClientStoreOptions = {},
): ClientStore & { readonly name: 'memory' } {
  const data = (options.state ?? createMemoryClientState()) as ClientData;
  const failWhen = options.failWhen;

  function check(op: ClientStoreOp): void {
    if (failWhen?.(op)) throw new Error(`memory client store: injected failure in ${op}`);
  }

  /** Gives a shown message the next history position (see the contract's rule). */
  function showInbound(m: StoredInbound): void {
    showIn(data, m.conv, m, false);
    if (!m.read) {
      let set = data.unread.get(m.conv);
      if (!set) data.unread.set(m.conv, (set = new Set()));
      set.add(m);
    }
  }

  /** The record of the i-th shown message of a conversation. */
  function record(list: HistoryList, i: number): HistoryRecord {
    const pos = list.pos[i]!;
    const ref = list.ref[i]!;
    if (pos > 0) return { pos, inbound: inboundOf(ref as StoredInbound, data) };
    return { pos: -pos, outgoing: outgoingOf(ref as StoredOutgoing, data) };
  }

  function writeState(writes: StateWrite[]): void {
    for (const w of writes) {
      let space = data.kv.get(w.ns);
      if (w.value === undefined) {
        space?.delete(w.key);
        continue;
      }
      if (!space) data.kv.set(w.ns, (space = new Map()));
      space.set(w.key, new Uint8Array(w.value));
    }
  }

  return {
    name: 'memory',

    async enqueue(draft: OutboxDraft, sequenced: boolean, state?: StateWrite[]): Promise<OutboxEntry> {
      check('enqueue');
      if (data.outbox.has(draft.id)) {
        throw new Error(`memory client store: outbox id ${draft.id} is already enqueued`);
      }
      const seq = sequenced ? (data.seqs.get(draft.conv) ?? 0) + 1 : undefined;
      if (seq !== undefined) data.seqs.set(draft.conv, seq);
      // The one copy of the body and ids (see the note above `outboxEntry`); the caller gets its own.
      const stored = storedOutgoing(draft, seq, data);
      data.outbox.set(draft.id, stored);
      listIn(data.outByConv, stored.conv).push(stored);
      if (draft.kind === 'msg') showIn(data, stored.conv, stored, true);
      if (state) writeState(state);
      return outboxEntry(draft, 'pending', seq, draft.body, draft.ids);
    },

    async pending(): Promise<OutboxEntry[]> {
      check('pending');
      const out: OutboxEntry[] = [];
      for (const e of data.outbox.values()) if (e.status === 'pending') out.push(outgoingOf(e, data));
      return out;
    },

    async setStatus(id: string, status: MessageStatus, failure?: SendFailure): Promise<void> {
      check('setStatus');
      const e = data.outbox.get(id);
      if (e) applyEntryStatus(e, status, failure);
    },

    async outgoing(id: string): Promise<OutboxEntry | undefined> {
      check('outgoing');
      const e = data.outbox.get(id);
      return e && outgoingOf(e, data);
    },

    async applyInbound(change: InboundChange): Promise<{ inserted: boolean }> {
      check('applyInbound');
      let inserted = false;
      if (change.insert) {
        if (isStored(data, change.insert)) return { inserted: false };
        const m = storedInbound(change.insert, data);
        indexInbound(data, m);
        if (m.held) data.held.add(m);
        else showInbound(m);
        inserted = true;
      }
      if (change.release) {
        eachById(data, change.release, (m) => {
          // A stored message is shown exactly when it is not held (held ones never are; a release
          // shows them): one of another sender with the same id, already shown, stays as it is.
          if (!m.held) return;
          m.held = false;
          data.held.delete(m);
          showInbound(m);
        });
      }
      for (const s of change.streams ?? []) data.streams.set(s.key, s.next);
      return { inserted };
    },

    async streamNext(key: string): Promise<number | undefined> {
      check('streamNext');
      return data.streams.get(key);
    },

    async held(): Promise<InboundMessage[]> {
      check('held');
      const out: InboundMessage[] = [];
      for (const m of data.held) out.push(inboundOf(m, data));
      return out;
    },

    async inbound(conv: string): Promise<InboundMessage[]> {
      check('inbound');
      const out: InboundMessage[] = [];
      for (const m of data.inByConv.get(conv) ?? []) out.push(inboundOf(m, data));
      return out;
    },

    async unreadInbound(conv: string): Promise<InboundMessage[]> {
      check('unreadInbound');
      const unread = data.unread.get(conv);
      const out: InboundMessage[] = [];
      if (!unread?.size) return out;
      // The reference keeps no arrival numbers: it walks the conversation's messages (copying
      // only the unread ones); the SQLite store reads its partial index instead.
      for (const m of data.inByConv.get(conv) ?? []) if (unread.has(m)) out.push(inboundOf(m, data));
      return out;
    },

    async outgoingIn(conv: string): Promise<OutboxEntry[]> {
      check('outgoingIn');
      const out: OutboxEntry[] = [];
      for (const e of data.outByConv.get(conv) ?? []) out.push(outgoingOf(e, data));
      return out;
    },

    async markRead(ids: string[]): Promise<void> {
      check('markRead');
      eachById(data, ids, (m) => {
        m.read = true;
        data.unread.get(m.conv)?.delete(m);
      });
    },

    async getState(ns: string, key: string): Promise<Uint8Array | undefined> {
      check('getState');
      const v = data.kv.get(ns)?.get(key);
      return v && new Uint8Array(v);
    },

    async putState(writes: StateWrite[]): Promise<void> {
      check('putState');
      writeState(writes);
    },

    async listState(ns: string, prefix = ''): Promise<Array<{ key: string; value: Uint8Array }>> {
      check('listState');
      const out: Array<{ key: string; value: Uint8Array }> = [];
      for (const [key, value] of data.kv.get(ns) ?? []) {
        if (key.startsWith(prefix)) out.push({ key, value: new Uint8Array(value) });
      }
      return out.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
    },

    async history(conv: string, before: number | undefined, limit: number): Promise<HistoryRecord[]> {
      check('history');
      const list = data.hist.get(conv);
      const out: HistoryRecord[] = [];
      if (!list) return out;
      const end = before === undefined ? list.pos.length : firstAtOrAfter(list, before);
      for (let i = end - 1; i >= 0 && out.length < limit; i--) out.push(record(list, i));
      return out;
    },

    async conversations(): Promise<ConversationRecord[]> {
      check('conversations');
      const out: ConversationRecord[] = [];
      for (const [conv, list] of data.hist) {
        const n = list.pos.length;
        if (n > 0) out.push({ conv, last: record(list, n - 1), unread: data.unread.get(conv)?.size ?? 0 });
      }
      return out.sort((a, b) => b.last.pos - a.last.pos);
    },

    async close(): Promise<void> {},
  };
}
