/**
 * The in-memory {@link ClientStore}: the reference implementation of the contract and the test
 * double, with a `state` object that outlives a store (a new store over the same state is an app
 * restart after a crash) and a `failWhen` fault switch. Browser-safe: no Node built-ins.
 *
 * A little over 400 lines because it is the reference: every method of the contract is written
 * out here in full, so the SQLite and IndexedDB stores have one readable model to match.
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
    unread: new Map(),
  };
  return data;
}

// Length-prefixed so that no two different tuples share a key.
const inboundKey = (m: { from: string; fromDevice: string; id: string }): string =>
  `${m.from.length}:${m.from}${m.fromDevice.length}:${m.fromDevice}${m.id}`;

// What this store copies, and only there. As the contract's reference and a test double it never
// keeps a buffer (or array) a caller owns and never hands out an object whose mutation changes
// what it stores; as every engine's store it runs several times per message (and the bench's load
// process, 200 engines, is GC-bound), so it copies where those two rules need it and nowhere else:
// - `enqueue` copies the draft's body and ids once, into the stored entry, and returns a fresh
//   entry carrying the draft's own body and ids back: the caller's, not kept here, so changing them
//   changes nothing stored (the engine's draft body is already its own copy, taken in `send`).
//   It copied the body three times before.
// - `applyInbound` copies the message and body once; every read copies them again.
// - Copies are literals of one shape (not spreads: cheaper, and one hidden class), and bodies are
//   copied with `new Uint8Array(b)`: a Node `Buffer`'s `slice` is a view, not a copy.

/** An entry with `e`'s fields and the given status, number, body and ids (copied or not: the caller's choice). */
function outboxEntry(
  e: OutboxDraft & Partial<SendFailure>,
  status: MessageStatus,
  seq: number | undefined,
  body: Uint8Array | undefined,
  ids: string[] | undefined,
): OutboxEntry {
  const out: OutboxEntry = { id: e.id, kind: e.kind, to: e.to, conv: e.conv, createdAt: e.createdAt, status };
  if (seq !== undefined) out.seq = seq;
  if (body !== undefined) out.body = body;
  if (ids !== undefined) out.ids = ids;
  if (e.reason !== undefined) out.reason = e.reason;
  if (e.detail !== undefined) out.detail = e.detail;
  return out;
}

const copyBytes = (b: Uint8Array | undefined): Uint8Array | undefined => b && new Uint8Array(b);

function copyOutbox(e: OutboxEntry): OutboxEntry {
  return outboxEntry(e, e.status, e.seq, copyBytes(e.body), e.ids?.slice());
}

function copyInbound(m: InboundMessage): InboundMessage {
  return {
    id: m.id,
    conv: m.conv,
    from: m.from,
    fromDevice: m.fromDevice,
    to: m.to,
    seq: m.seq,
    ts: m.ts,
    body: new Uint8Array(m.body),
    held: m.held,
    read: m.read,
  };
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

  /** Gives a shown message the next history position (see the contract's rule). */
  function showInbound(conv: string, key: string, read: boolean): void {
    listIn(data.hist, conv).push({ pos: ++data.pos, key });
    if (!read) {
      let set = data.unread.get(conv);
      if (!set) data.unread.set(conv, (set = new Set()));
      set.add(key);
    }
  }

  function showOutgoing(conv: string, id: string): void {
    listIn(data.hist, conv).push({ pos: ++data.pos, id });
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
      const seq = sequenced ? (data.seqs.get(draft.conv) ?? 0) + 1 : undefined;
      if (seq !== undefined) data.seqs.set(draft.conv, seq);
      // The one copy of the body and ids (see the note above `outboxEntry`); the caller gets its own.
      data.outbox.set(
        draft.id,
        outboxEntry(draft, 'pending', seq, copyBytes(draft.body), draft.ids?.slice()),
      );
      listIn(data.outByConv, draft.conv).push(draft.id);
      if (draft.kind === 'msg') showOutgoing(draft.conv, draft.id);
      if (state) writeState(state);
      return outboxEntry(draft, 'pending', seq, draft.body, draft.ids);
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
        else showInbound(m.conv, key, m.read);
        inserted = true;
      }
      if (change.release) {
        eachById(change.release, (key, m) => {
          // A stored message is shown exactly when it is not held (held ones never are; a release
          // shows them): one of another sender with the same id, already shown, stays as it is.
          if (!m.held) return;
          m.held = false;
          data.held.delete(key);
          showInbound(m.conv, key, m.read);
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
