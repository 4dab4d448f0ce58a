/**
 * The in-memory {@link ClientStore}: the reference implementation of the contract and the test
 * double, with a `state` object that outlives a store (a new store over the same state is an app
 * restart after a crash) and a `failWhen` fault switch. Browser-safe: no Node built-ins.
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

/**
 * Opaque durable state of a memory client store; a new store over the same state is a "re-open
 * after a crash". Its contents are private to this module and may change between versions.
 */
export interface MemoryClientState {
  /** Brand that keeps other objects from passing as a state; nothing else is public. */
  readonly kind: 'postbox.memory-client-state';
}

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

interface ClientData extends MemoryClientState {
  /** conversation → last sequence number handed out. */
  seqs: Map<string, number>;
  /** outgoing id → entry, in enqueue order. */
  outbox: Map<string, OutboxEntry>;
  /** conversation → outgoing ids in enqueue order. */
  outByConv: Map<string, string[]>;
  /** dedupe key → inbound message, in arrival order. */
  inbound: Map<string, InboundMessage>;
  /** conversation → inbound dedupe keys in arrival order. */
  inByConv: Map<string, string[]>;
  /**
   * message id → inbound dedupe key(s) (release and markRead address messages by id): one key as
   * a string, the rare several (one id from several senders) as a list, so that the common case
   * keeps no array per message.
   */
  byId: Map<string, string | string[]>;
  /** dedupe keys of held messages, in arrival order. */
  held: Set<string>;
  /** stream key → next expected sequence. */
  streams: Map<string, number>;
  /** namespace → key → value. */
  kv: Map<string, Map<string, Uint8Array>>;
  /** The last history position handed out. */
  pos: number;
  /** conversation → its shown messages in position order (inbound by dedupe key, outgoing by id). */
  hist: Map<string, HistoryRef[]>;
  /** dedupe keys of shown inbound messages (a held one is not shown yet). */
  shown: Set<string>;
  /** conversation → dedupe keys of its shown inbound messages that are not read. */
  unread: Map<string, Set<string>>;
}

/** A shown message in {@link ClientData.hist}. */
interface HistoryRef {
  pos: number;
  key?: string;
  id?: string;
}

/** Creates an empty state for {@link memoryClientStore}. */
export function createMemoryClientState(): MemoryClientState {
  const data: ClientData = {
    kind: 'postbox.memory-client-state',
    seqs: new Map(),
    outbox: new Map(),
    outByConv: new Map(),
    inbound: new Map(),
    inByConv: new Map(),
    byId: new Map(),
    held: new Set(),
    streams: new Map(),
    kv: new Map(),
    pos: 0,
    hist: new Map(),
    shown: new Set(),
    unread: new Map(),
  };
  return data;
}

// Length-prefixed so that no two different tuples share a key.
const inboundKey = (m: { from: string; fromDevice: string; id: string }): string =>
  `${m.from.length}:${m.from}${m.fromDevice.length}:${m.fromDevice}${m.id}`;

// Field by field rather than a spread: this runs several times per message, and a literal of
// one fixed shape is several times cheaper to build than a spread of a varying one.
function copyOutbox(e: OutboxEntry): OutboxEntry {
  const out: OutboxEntry = {
    id: e.id,
    kind: e.kind,
    to: e.to,
    conv: e.conv,
    createdAt: e.createdAt,
    status: e.status,
  };
  if (e.seq !== undefined) out.seq = e.seq;
  if (e.body !== undefined) out.body = e.body.slice();
  if (e.ids !== undefined) out.ids = e.ids.slice();
  if (e.reason !== undefined) out.reason = e.reason;
  if (e.detail !== undefined) out.detail = e.detail;
  return out;
}

function copyInbound(m: InboundMessage): InboundMessage {
  return { ...m, body: new Uint8Array(m.body) };
}

function listIn<K, V>(map: Map<K, V[]>, key: K): V[] {
  let list = map.get(key);
  if (!list) map.set(key, (list = []));
  return list;
}

/** The index of the first ref at or after position `pos` (refs are in position order). */
function firstAtOrAfter(refs: HistoryRef[], pos: number): number {
  let lo = 0;
  let hi = refs.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (refs[mid]!.pos < pos) lo = mid + 1;
    else hi = mid;
  }
  return lo;
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

  function eachById(ids: string[], fn: (key: string, m: InboundMessage) => void): void {
    for (const id of ids) {
      const keys = data.byId.get(id);
      for (const key of typeof keys === 'string' ? [keys] : (keys ?? [])) {
        const m = data.inbound.get(key);
        if (m) fn(key, m);
      }
    }
  }

  /** Gives a message the next history position (see the contract's rule). */
  function show(conv: string, ref: { key: string; read: boolean } | { id: string }): void {
    const pos = ++data.pos;
    if ('key' in ref) {
      listIn(data.hist, conv).push({ pos, key: ref.key });
      data.shown.add(ref.key);
      if (!ref.read) {
        let set = data.unread.get(conv);
        if (!set) data.unread.set(conv, (set = new Set()));
        set.add(ref.key);
      }
    } else listIn(data.hist, conv).push({ pos, id: ref.id });
  }

  function record(ref: HistoryRef): HistoryRecord {
    if (ref.key !== undefined) return { pos: ref.pos, inbound: copyInbound(data.inbound.get(ref.key)!) };
    return { pos: ref.pos, outgoing: copyOutbox(data.outbox.get(ref.id!)!) };
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
      const entry: OutboxEntry = copyOutbox({ ...draft, seq: undefined, status: 'pending' });
      if (sequenced) {
        const seq = (data.seqs.get(draft.conv) ?? 0) + 1;
        data.seqs.set(draft.conv, seq);
        entry.seq = seq;
      }
      data.outbox.set(entry.id, entry);
      listIn(data.outByConv, entry.conv).push(entry.id);
      if (entry.kind === 'msg') show(entry.conv, { id: entry.id });
      if (state) writeState(state);
      return copyOutbox(entry);
    },

    async pending(): Promise<OutboxEntry[]> {
      check('pending');
      const out: OutboxEntry[] = [];
      for (const e of data.outbox.values()) if (e.status === 'pending') out.push(copyOutbox(e));
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
      return e && copyOutbox(e);
    },

    async applyInbound(change: InboundChange): Promise<{ inserted: boolean }> {
      check('applyInbound');
      let inserted = false;
      if (change.insert) {
        const key = inboundKey(change.insert);
        if (data.inbound.has(key)) return { inserted: false };
        const m = copyInbound(change.insert);
        data.inbound.set(key, m);
        listIn(data.inByConv, m.conv).push(key);
        const known = data.byId.get(m.id);
        if (known === undefined) data.byId.set(m.id, key);
        else if (typeof known === 'string') data.byId.set(m.id, [known, key]);
        else known.push(key);
        if (m.held) data.held.add(key);
        else show(m.conv, { key, read: m.read });
        inserted = true;
      }
      if (change.release) {
        eachById(change.release, (key, m) => {
          m.held = false;
          data.held.delete(key);
          if (!data.shown.has(key)) show(m.conv, { key, read: m.read });
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
      for (const key of data.held) {
        const m = data.inbound.get(key);
        if (m) out.push(copyInbound(m));
      }
      return out;
    },

    async inbound(conv: string): Promise<InboundMessage[]> {
      check('inbound');
      const out: InboundMessage[] = [];
      for (const key of data.inByConv.get(conv) ?? []) {
        const m = data.inbound.get(key);
        if (m) out.push(copyInbound(m));
      }
      return out;
    },

    async unreadInbound(conv: string): Promise<InboundMessage[]> {
      check('unreadInbound');
      const unread = data.unread.get(conv);
      const out: InboundMessage[] = [];
      if (!unread?.size) return out;
      // The reference keeps no arrival numbers: it walks the conversation's keys (copying only
      // the unread ones); the SQLite store reads its partial index instead.
      for (const key of data.inByConv.get(conv) ?? []) {
        if (!unread.has(key)) continue;
        const m = data.inbound.get(key);
        if (m) out.push(copyInbound(m));
      }
      return out;
    },

    async outgoingIn(conv: string): Promise<OutboxEntry[]> {
      check('outgoingIn');
      const out: OutboxEntry[] = [];
      for (const id of data.outByConv.get(conv) ?? []) {
        const e = data.outbox.get(id);
        if (e) out.push(copyOutbox(e));
      }
      return out;
    },

    async markRead(ids: string[]): Promise<void> {
      check('markRead');
      eachById(ids, (key, m) => {
        m.read = true;
        data.unread.get(m.conv)?.delete(key);
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
      const refs = data.hist.get(conv) ?? [];
      const out: HistoryRecord[] = [];
      const end = before === undefined ? refs.length : firstAtOrAfter(refs, before);
      for (let i = end - 1; i >= 0 && out.length < limit; i--) out.push(record(refs[i]!));
      return out;
    },

    async conversations(): Promise<ConversationRecord[]> {
      check('conversations');
      const out: ConversationRecord[] = [];
      for (const [conv, refs] of data.hist) {
        const last = refs[refs.length - 1];
        if (last) out.push({ conv, last: record(last), unread: data.unread.get(conv)?.size ?? 0 });
      }
      return out.sort((a, b) => b.last.pos - a.last.pos);
    },

    async close(): Promise<void> {},
  };
}
