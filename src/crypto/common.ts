/**
 * What the built-in crypto adapters share: the state layout helpers (buffered transactions over a
 * {@link CryptoStateStore}, address keys, id counters) and the identity policy (hooks called once,
 * trust asked before use). Browser-safe: the libsignal adapter builds on it, never the reverse.
 * @packageDocumentation
 */
import type { KeyedLock } from './lock.js';
import {
  UntrustedIdentityError,
  type CryptoAddress,
  type CryptoStateStore,
  type IdentityHooks,
  type IdentityStatus,
} from './types.js';

/**
 * The state namespaces of a client store, as far as crypto needs them: the same methods as
 * `ClientStore` has, declared here so that crypto never imports the client (a lint rule keeps
 * that boundary; any `ClientStore` is one of these).
 */
export interface NamespacedState {
  /** A value of a namespace, or undefined. */
  getState(ns: string, key: string): Promise<Uint8Array | undefined>;
  /** Writes and deletes values, all in one atomic write (`value` undefined deletes). */
  putState(writes: Array<{ ns: string; key: string; value: Uint8Array | undefined }>): Promise<void>;
  /** A namespace's entries whose key starts with `prefix` (all when omitted), in key order. */
  listState(ns: string, prefix?: string): Promise<Array<{ key: string; value: Uint8Array }>>;
}

/**
 * The {@link CryptoStateStore} of a client store: one namespace of its `getState`/`putState`/
 * `listState`, so any client store that passes its conformance suite holds crypto state too.
 *
 * @param ns - the state namespace; @default 'crypto'
 * @example
 * ```ts
 * const identity = await crypto.open(clientCryptoState(store), { user: 'alice', device: 'phone' }, hooks);
 * ```
 */
export function clientCryptoState(store: NamespacedState, ns = 'crypto'): CryptoStateStore {
  return {
    get: (key) => store.getState(ns, key),
    put: (writes) => store.putState(writes.map((w) => ({ ns, key: w.key, value: w.value }))),
    list: (prefix) => store.listState(ns, prefix),
  };
}

/**
 * `encrypt` to a device with no session: fetch its bundle from the key directory, pass it to
 * `processBundle`, then encrypt again. Not retryable as is.
 */
export class NoSessionError extends Error {
  /** Stable code; check it rather than `instanceof` across bundle boundaries. */
  readonly code = 'no_session';
  constructor(readonly peer: CryptoAddress) {
    super(`no session with ${peer.user}/${peer.device}: process a key bundle of it first`);
    this.name = 'NoSessionError';
  }
}

/**
 * Percent-escapes a string so that `.` and `/` never occur in it: safe inside a state key.
 * @internal
 */
export const keyPart = (s: string): string => encodeURIComponent(s).replace(/\./g, '%2E');

/**
 * A collision-free, printable key for a device: `user.device` with both parts escaped, so it
 * contains neither `/` (the state key separator) nor an unescaped `.`.
 * @internal
 */
export function addressKey(a: CryptoAddress): string {
  return `${keyPart(a.user)}.${keyPart(a.device)}`;
}

/** @internal Byte-wise equality. */
export function bytesEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false;
  for (let i = 0; i < a.byteLength; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** @internal Lower-case hex of some bytes. */
export function toHex(b: Uint8Array): string {
  let s = '';
  for (let i = 0; i < b.byteLength; i++) s += b[i]!.toString(16).padStart(2, '0');
  return s;
}

/**
 * One operation's view of the state: reads see the operation's own writes, and nothing reaches
 * the store until {@link StateTxn.commit} writes it all in one atomic `put`. An operation that
 * fails is simply not committed, which is how a failed decrypt changes nothing.
 * @internal
 */
export class StateTxn {
  private readonly cache = new Map<string, Uint8Array | undefined>();
  private readonly writes = new Map<string, Uint8Array | undefined>();
  private readonly committed: Array<() => void> = [];

  constructor(private readonly state: CryptoStateStore) {}

  /** Runs `fn` once the writes are committed (still inside the operation's lock). */
  afterCommit(fn: () => void): void {
    this.committed.push(fn);
  }

  /** The value of `key` as this operation sees it. */
  async get(key: string): Promise<Uint8Array | undefined> {
    if (this.cache.has(key)) return this.cache.get(key);
    const v = await this.state.get(key);
    // A read racing this operation's own write must not overwrite it.
    if (!this.cache.has(key)) this.cache.set(key, v);
    return this.cache.get(key);
  }

  /** Writes (or, with `undefined`, deletes) `key` at commit. */
  set(key: string, value: Uint8Array | undefined): void {
    this.cache.set(key, value);
    this.writes.set(key, value);
  }

  /** Whether the operation wrote anything. */
  get dirty(): boolean {
    return this.writes.size > 0;
  }

  /** Writes everything in one atomic put. */
  async commit(): Promise<void> {
    if (this.writes.size === 0) return void this.committed.splice(0).forEach((fn) => fn());
    const writes = [...this.writes].map(([key, value]) => ({ key, value }));
    this.writes.clear();
    await this.state.put(writes);
    for (const fn of this.committed.splice(0)) fn();
  }
}

/**
 * A small least-recently-used map: adapters keep their hottest parsed state (libsignal session
 * records) in one, so an established session costs no store read and no parse per message.
 * @internal
 */
export class RecentMap<V> {
  private readonly map = new Map<string, V>();

  constructor(private readonly limit: number) {}

  get(key: string): V | undefined {
    const v = this.map.get(key);
    if (v !== undefined) {
      this.map.delete(key);
      this.map.set(key, v);
    }
    return v;
  }

  set(key: string, value: V | undefined): void {
    this.map.delete(key);
    if (value === undefined) return;
    this.map.set(key, value);
    if (this.map.size > this.limit) this.map.delete(this.map.keys().next().value!);
  }
}

/** Largest prekey id handed out; ids then wrap to 1, as Signal's do (24 bits). */
const MAX_KEY_ID = 0xffffff;

/**
 * `count` fresh ids for one kind of key (`pk`, `spk`, `kpk`), from a counter persisted at
 * `ctr/<kind>` (written with the keys, in the same transaction).
 * @internal
 */
export async function nextKeyIds(txn: StateTxn, kind: string, count: number): Promise<number[]> {
  const key = `ctr/${kind}`;
  const stored = await txn.get(key);
  let last =
    stored && stored.byteLength === 4 ? new DataView(stored.buffer, stored.byteOffset).getUint32(0) : 0;
  const ids: number[] = [];
  for (let i = 0; i < count; i++) {
    last = last >= MAX_KEY_ID ? 1 : last + 1;
    ids.push(last);
  }
  const out = new Uint8Array(4);
  new DataView(out.buffer).setUint32(0, last);
  txn.set(key, out);
  return ids;
}

/** The state key of a peer device's stored identity key. @internal */
export const identityKeyOf = (peer: CryptoAddress): string => `idk/${addressKey(peer)}`;

/**
 * The identity policy of an adapter: compares a peer's key with the stored one, reports a change
 * to `hooks.changed` once, and asks `hooks.trust` before the key is used.
 * @internal
 */
export class IdentityGuard {
  /** address → the change last reported, so a failed (uncommitted) operation does not report it twice. */
  private readonly reported = new Map<string, string>();

  constructor(private readonly hooks: IdentityHooks) {}

  /** How `key` compares with the identity stored for `peer` in `txn`. */
  async status(txn: StateTxn, peer: CryptoAddress, key: Uint8Array): Promise<IdentityStatus> {
    const stored = await txn.get(identityKeyOf(peer));
    if (!stored) return 'new';
    if (bytesEqual(stored, key)) return 'same';
    const change = `${toHex(stored)}>${toHex(key)}`;
    const addr = addressKey(peer);
    if (this.reported.get(addr) !== change) {
      this.reported.set(addr, change);
      this.hooks.changed(peer, stored, key);
    }
    return 'changed';
  }

  /** {@link IdentityGuard.status}, then `hooks.trust`; resolves the status and the verdict. */
  async check(
    txn: StateTxn,
    peer: CryptoAddress,
    key: Uint8Array,
  ): Promise<{ status: IdentityStatus; trusted: boolean }> {
    const status = await this.status(txn, peer, key);
    return { status, trusted: await this.trust(peer, key, status) };
  }

  /** Asks `hooks.trust` about a key whose status is known. */
  async trust(peer: CryptoAddress, key: Uint8Array, status: IdentityStatus): Promise<boolean> {
    return this.hooks.trust(peer, key, status);
  }

  /** {@link IdentityGuard.check} that throws an {@link UntrustedIdentityError} for a key not trusted. */
  async require(txn: StateTxn, peer: CryptoAddress, key: Uint8Array): Promise<IdentityStatus> {
    const { status, trusted } = await this.check(txn, peer, key);
    if (!trusted) throw new UntrustedIdentityError(peer);
    return status;
  }

  /** Stores `key` as the identity of `peer` (at commit). */
  save(txn: StateTxn, peer: CryptoAddress, key: Uint8Array): void {
    txn.set(identityKeyOf(peer), key);
  }
}

/**
 * Runs one adapter operation: under `lock` for each of `lockKeys` (the session or sender key it
 * touches; several are taken in the order given, so callers keep one order), on a fresh
 * {@link StateTxn} that is committed only when `fn` resolves.
 * @internal
 */
export function transact<T>(
  lock: KeyedLock,
  state: CryptoStateStore,
  lockKeys: string | string[],
  fn: (txn: StateTxn) => Promise<T>,
): Promise<T> {
  const body = async (): Promise<T> => {
    const txn = new StateTxn(state);
    const result = await fn(txn);
    await txn.commit();
    return result;
  };
  if (typeof lockKeys === 'string') return lock.run(lockKeys, body);
  return lockKeys.reduceRight<() => Promise<T>>((inner, key) => () => lock.run(key, inner), body)();
}

/** State keys and lock keys the built-in adapters share. @internal */
export const keys = {
  /** This device's identity record. */
  identity: 'id',
  /** The session with a peer device. */
  session: (peer: CryptoAddress): string => `sess/${addressKey(peer)}`,
  /** This device's current sender key distribution id for a group. */
  group: (group: string): string => `grp/${keyPart(group)}`,
  /** A member device's sender key, by distribution id. */
  senderKey: (from: CryptoAddress, distributionId: string): string =>
    `sk/${addressKey(from)}/${distributionId}`,
  /** The lock of everything about this device's own prekeys and counters. */
  prekeys: 'keys',
};

/** Throws unless `open` has run. @internal */
export function opened<T>(value: T | undefined): T {
  if (value === undefined) throw new Error('crypto adapter used before open(): call open() first');
  return value;
}

/** @internal The bytes of `parts`, one after the other. */
export function concatBytes(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}

/**
 * This device's identity record as stored at {@link keys.identity}: the registration id (two
 * bytes, big-endian), then the adapter's key bytes.
 * @internal
 */
export const identityRecord = {
  encode: (registrationId: number, key: Uint8Array): Uint8Array =>
    concatBytes(new Uint8Array([registrationId >> 8, registrationId & 0xff]), key),
  decode(b: Uint8Array | undefined): { registrationId: number; key: Uint8Array } | undefined {
    if (!b || b.byteLength <= 2) return undefined;
    return { registrationId: (b[0]! << 8) | b[1]!, key: b.slice(2) };
  },
  /** A registration id (1…16380) from two random bytes. */
  newId: (random2: Uint8Array): number => 1 + (((random2[0]! << 8) | random2[1]!) % 16380),
};
