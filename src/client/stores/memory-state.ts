/**
 * How the memory client store keeps what it is given (the memory client store's state): the
 * records, the indexes over them, and the few rules that build and read them. Every message a
 * store is given stays for as long as it lives, so the layout is chosen for what a garbage
 * collector has to mark: one object per message, nothing per message that is not needed.
 * Browser-safe: no Node built-ins.
 * @packageDocumentation
 */
import type { InboundMessage, MessageStatus, OutboxDraft, OutboxEntry, SendFailure } from '../store.js';
import { ByteSlab } from './memory-bytes.js';

/**
 * Opaque durable state of a memory client store; a new store over the same state is a "re-open
 * after a crash". Its contents are private to the memory client store and may change between versions.
 */
export interface MemoryClientState {
  /** Brand that keeps other objects from passing as a state; nothing else is public. */
  readonly kind: 'postbox.memory-client-state';
}

/** What a {@link MemoryClientState} is inside: the records and their indexes. Not part of the package's API. */
export interface ClientData extends MemoryClientState {
  /** conversation → last sequence number handed out. */
  seqs: Map<string, number>;
  /** outgoing id → entry, in enqueue order. */
  outbox: Map<string, StoredOutgoing>;
  /** conversation → outgoing entries in enqueue order. */
  outByConv: Map<string, StoredOutgoing[]>;
  /** conversation → inbound messages in arrival order. */
  inByConv: Map<string, StoredInbound[]>;
  /**
   * message id → the inbound message(s) with that id: the dedupe index (a message is the same one
   * when its id, sender and sender device match) and how release and markRead find messages. One
   * message as itself, the rare several (one id from several senders) as a list, so that the
   * common case keeps no array per message.
   */
  byId: Map<string, StoredInbound | StoredInbound[]>;
  /** Held messages, in arrival order. */
  held: Set<StoredInbound>;
  /** stream key → next expected sequence. */
  streams: Map<string, number>;
  /** namespace → key → value. */
  kv: Map<string, Map<string, Uint8Array>>;
  /** The last history position handed out. */
  pos: number;
  /** conversation → its shown messages in position order. */
  hist: Map<string, HistoryList>;
  /** conversation → its shown inbound messages that are not read. */
  unread: Map<string, Set<StoredInbound>>;
  /** Every message body, packed (see memory-bytes.ts). */
  bodies: ByteSlab;
  /** One instance of each peer, device and conversation name the stored records repeat. */
  names: Map<string, string>;
}

// The stored records: the contract's shapes with the body as an address in `bodies` (no typed
// array per message), built as literals with every field so each has one hidden class and all its
// fields in the object itself (no separate property array), and names interned. Every message a
// store is given stays, so these are most of what an app's collector marks: a record is one
// object, and the indexes hold the records themselves (no key string per message).

/** A body's place in {@link ClientData.bodies}: `at` undefined when there is none. */
interface StoredBody {
  at: number | undefined;
  size: number;
}

/** An outbox entry as stored. */
export interface StoredOutgoing extends Omit<OutboxEntry, 'body'>, StoredBody {}

/** An inbound message as stored. */
export interface StoredInbound extends Omit<InboundMessage, 'body'>, StoredBody {}

/**
 * A conversation's shown messages as two parallel arrays, not one object per message: `pos[i]`
 * is the i-th message's history position, negated for an outgoing message; `ref[i]` is the
 * message.
 */
export interface HistoryList {
  pos: number[];
  ref: Array<StoredInbound | StoredOutgoing>;
}

/** Creates an empty state for the memory client store (`memoryClientStore({ state })`). */
export function createMemoryClientState(): MemoryClientState {
  const data: ClientData = {
    kind: 'postbox.memory-client-state',
    seqs: new Map(),
    outbox: new Map(),
    outByConv: new Map(),
    inByConv: new Map(),
    byId: new Map(),
    held: new Set(),
    streams: new Map(),
    kv: new Map(),
    pos: 0,
    hist: new Map(),
    unread: new Map(),
    bodies: new ByteSlab(),
    names: new Map(),
  };
  return data;
}

// What this store copies, and only there. As the contract's reference and a test double it never
// keeps a buffer (or array) a caller owns and never hands out an object whose mutation changes
// what it stores; as every engine's store it runs several times per message (and the bench's load
// process, 200 engines, is GC-bound), so it copies where those two rules need it and nowhere else:
// - `enqueue` copies the draft's body and ids once, into the stored entry, and returns a fresh
//   entry carrying the draft's own body and ids back: the caller's, not kept here, so changing them
//   changes nothing stored (the engine's draft body is already its own copy, taken in `send`).
//   It copied the body three times before.
// - `applyInbound` copies the message and body once; every read copies them again.
// - Copies are literals of one shape (not spreads: cheaper, and one hidden class); bodies are
//   copied into the store's slab and out of it as fresh arrays.

/** An entry with `e`'s fields and the given status, number, body and ids (copied or not: the caller's choice). */
export function outboxEntry(
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

/** The stored form of a draft: its ids and body copied, its names interned. */
export function storedOutgoing(d: OutboxDraft, seq: number | undefined, data: ClientData): StoredOutgoing {
  return {
    id: d.id,
    kind: d.kind,
    to: intern(data, d.to),
    conv: intern(data, d.conv),
    createdAt: d.createdAt,
    status: 'pending',
    seq,
    ids: d.ids?.slice(),
    reason: undefined,
    detail: undefined,
    at: d.body && data.bodies.put(d.body),
    size: d.body?.length ?? 0,
  };
}

/** The stored form of an inbound message: its body copied, its names interned. */
export function storedInbound(m: InboundMessage, data: ClientData): StoredInbound {
  return {
    id: m.id,
    conv: intern(data, m.conv),
    from: intern(data, m.from),
    fromDevice: intern(data, m.fromDevice),
    to: intern(data, m.to),
    seq: m.seq,
    ts: m.ts,
    held: m.held,
    read: m.read,
    at: data.bodies.put(m.body),
    size: m.body.length,
  };
}

/** A fresh public entry (body and ids its own) of a stored one. */
export function outgoingOf(e: StoredOutgoing, data: ClientData): OutboxEntry {
  const body = e.at === undefined ? undefined : data.bodies.read(e.at, e.size);
  return outboxEntry(e, e.status, e.seq, body, e.ids?.slice());
}

/** A fresh public message (body its own) of a stored one. */
export function inboundOf(m: StoredInbound, data: ClientData): InboundMessage {
  return {
    id: m.id,
    conv: m.conv,
    from: m.from,
    fromDevice: m.fromDevice,
    to: m.to,
    seq: m.seq,
    ts: m.ts,
    body: data.bodies.read(m.at!, m.size),
    held: m.held,
    read: m.read,
  };
}

/** The one stored instance of a name (a peer, a device, a conversation). */
function intern(data: ClientData, name: string): string {
  const known = data.names.get(name);
  if (known !== undefined) return known;
  data.names.set(name, name);
  return name;
}

/** The list under `key`, made empty when there is none. */
export function listIn<K, V>(map: Map<K, V[]>, key: K): V[] {
  let list = map.get(key);
  if (!list) map.set(key, (list = []));
  return list;
}

/** Appends a shown message to its conversation's history (an outgoing one's position negated). */
export function showIn(
  data: ClientData,
  conv: string,
  m: StoredInbound | StoredOutgoing,
  outgoing: boolean,
): void {
  let list = data.hist.get(conv);
  if (!list) data.hist.set(conv, (list = { pos: [], ref: [] }));
  const pos = ++data.pos;
  list.pos.push(outgoing ? -pos : pos);
  list.ref.push(m);
}

/** The stored messages with one of `ids` (from any sender). */
export function eachById(data: ClientData, ids: string[], fn: (m: StoredInbound) => void): void {
  for (const id of ids) {
    const found = data.byId.get(id);
    if (found === undefined) continue;
    if (Array.isArray(found)) found.forEach(fn);
    else fn(found);
  }
}

/** Whether the same message (id, sender, sender device: the dedupe rule) is stored. */
export function isStored(data: ClientData, m: InboundMessage): boolean {
  const same = (o: StoredInbound): boolean => o.from === m.from && o.fromDevice === m.fromDevice;
  const known = data.byId.get(m.id);
  return known !== undefined && (Array.isArray(known) ? known.some(same) : same(known));
}

/** Indexes a new stored message by id and conversation. */
export function indexInbound(data: ClientData, m: StoredInbound): void {
  const known = data.byId.get(m.id);
  if (known === undefined) data.byId.set(m.id, m);
  else if (Array.isArray(known)) known.push(m);
  else data.byId.set(m.id, [known, m]);
  listIn(data.inByConv, m.conv).push(m);
}

/** The index of the first message at or after history position `pos` (they are in position order). */
export function firstAtOrAfter(list: HistoryList, pos: number): number {
  let lo = 0;
  let hi = list.pos.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (Math.abs(list.pos[mid]!) < pos) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
