/**
 * The client engine's end-to-end encryption layer (see docs/encryption.md): device lists and
 * sessions from the server's key directory, per-device envelopes, group sender keys, key upload,
 * and the content format inside ciphertexts. The engine owns the connection and the outbox; this
 * module owns everything that touches a {@link CryptoAdapter}.
 *
 * A little over 400 lines for one reason: it is the one place that calls the adapter (device
 * lists, sessions, sender keys, key upload), which is what keeps the rest of the client free of it.
 * @internal
 */
import { Packr } from 'msgpackr';
import { bytesEqual, clientCryptoState } from '../crypto/common.js';
import type {
  CryptoAdapter,
  CryptoAddress,
  CryptoStateStore,
  DeviceIdentity,
  IdentityStatus,
  KeyBundle,
  KeyUpload,
} from '../crypto/types.js';
import type { DeviceListDifference } from '../protocol/index.js';
import type { ClientStore } from './store.js';

const packr = new Packr({ useRecords: false, moreTypes: false });

/** Namespaces of the client store this layer uses. */
const NS_CRYPTO = 'crypto';
const NS_DEVICES = 'devs';
const NS_E2EE = 'e2ee';

/**
 * First byte of a body on the wire: what follows. 1-3 are the adapter's ciphertext kinds, 4 a
 * group (sender-key) ciphertext, 5 the engine's own cleartext (only resend requests).
 */
export const BODY_KIND = { prekey: 1, message: 2, plaintext: 3, group: 4, clear: 5 } as const;

/**
 * What travels inside a ciphertext (a msgpack array, first element the type):
 * - `[0, body]` a message;
 * - `[1, group, distribution]` this sender device's key for a group;
 * - `[2, id, device]` "I could not decrypt your message `id`", for the sender's device `device`
 *   (sent as plaintext: the session it needs is the broken one);
 * - `[3, id, seq, group | null, body, ts]` message `id` sent again over a fresh session;
 * - `[4, id]` message `id` cannot be sent again (no longer in the sender's log).
 */
export type Content =
  | [0, Uint8Array]
  | [1, string, Uint8Array]
  | [2, string, string]
  | [3, string, number, string | null, Uint8Array, number]
  | [4, string];

/** Encodes a content tuple. */
export const encodeContent = (c: Content): Uint8Array => packr.pack(c);

/** Decodes a content tuple; throws on anything that is not one. */
export function decodeContent(data: Uint8Array): Content {
  const c = packr.unpack(data) as unknown;
  if (!Array.isArray(c) || typeof c[0] !== 'number') throw new Error('not a content tuple');
  const ok =
    (c[0] === 0 && c[1] instanceof Uint8Array) ||
    (c[0] === 1 && typeof c[1] === 'string' && c[2] instanceof Uint8Array) ||
    (c[0] === 2 && typeof c[1] === 'string' && typeof c[2] === 'string') ||
    (c[0] === 3 &&
      typeof c[1] === 'string' &&
      Number.isInteger(c[2]) &&
      (c[3] === null || typeof c[3] === 'string') &&
      c[4] instanceof Uint8Array &&
      typeof c[5] === 'number') ||
    (c[0] === 4 && typeof c[1] === 'string');
  if (!ok) throw new Error('malformed content tuple');
  // msgpack hands back Node Buffers; the app gets plain Uint8Arrays.
  return c.map((v) => (v instanceof Uint8Array ? new Uint8Array(v) : v)) as Content;
}

/** A device this layer encrypts for. */
export interface KnownDevice {
  device: string;
  rid: number;
}

/** One device's wire envelope: `[user, device, registration id, body]`. */
export type WireEnvelope = [string, string, number, Uint8Array];

/** What the engine lends this layer. */
export interface E2eeIo {
  /** Claims bundles through the connection (`kget`). */
  claim(users: string[], device?: string): Promise<KeyBundle[]>;
  /** Publishes keys through the connection (`keys`), resolving on `ok`. */
  upload(keys: KeyUpload): Promise<void>;
  /** A peer device's identity key changed. */
  identityChanged(peer: CryptoAddress): void;
  now(): number;
}

/** Options of the layer (from `ClientOptions`). */
export interface E2eeOptions {
  identityPolicy: 'accept' | 'block';
  preKeySupply: number;
  signedPreKeyMaxAgeMs: number;
}

/**
 * Kyber keys are 1.6 KB: at most this many one-time keys of each kind per `keys` frame (~17 KB),
 * each frame answered before the next, so on a 2G link pings still get through between them.
 */
const UPLOAD_CHUNK = 10;

const addrKey = (a: CryptoAddress): string => `${a.user.length}:${a.user}${a.device}`;

/** @internal */
export class E2ee {
  private identity: DeviceIdentity | undefined;
  private opening: Promise<DeviceIdentity> | undefined;
  private me: CryptoAddress | undefined;
  private readonly lists = new Map<string, KnownDevice[]>();
  private readonly local: CryptoStateStore;

  constructor(
    readonly adapter: CryptoAdapter,
    private readonly store: ClientStore,
    private readonly opts: E2eeOptions,
    private readonly io: E2eeIo,
  ) {
    this.local = clientCryptoState(store, NS_E2EE);
  }

  /** Whether {@link open} has succeeded. */
  get opened(): boolean {
    return this.identity !== undefined;
  }

  /** Throws unless the adapter is open (a local fault: the entry is not acked). */
  assertOpen(): void {
    if (!this.identity) throw new Error('crypto adapter is not open');
  }

  /** Opens the adapter for this device (once per client). */
  open(me: CryptoAddress): Promise<DeviceIdentity> {
    if (!this.opening) {
      this.me = me;
      this.opening = this.adapter
        .open(clientCryptoState(this.store, NS_CRYPTO), me, {
          changed: (peer, _old, key) => this.changed(peer, key),
          trust: (peer, key, status) => this.trust(peer, key, status),
        })
        .then((id) => (this.identity = id));
      // A failed open is tried again on the next connection.
      this.opening.catch(() => (this.opening = undefined));
    }
    return this.opening;
  }

  /** The newest identity key seen per peer (a blocked one is not stored by the adapter). */
  private readonly seen = new Map<string, Uint8Array>();

  private changed(peer: CryptoAddress, key: Uint8Array): void {
    const k = addrKey(peer);
    const last = this.seen.get(k);
    if (last && bytesEqual(last, key)) return; // the same change seen again (a blocked retry)
    this.seen.set(k, key);
    this.io.identityChanged(peer);
  }

  private async trust(peer: CryptoAddress, key: Uint8Array, status: IdentityStatus): Promise<boolean> {
    if (this.opts.identityPolicy === 'accept' || status !== 'changed') return true;
    const verified = await this.local.get(`v/${addrKey(peer)}`);
    return verified !== undefined && bytesEqual(verified, key);
  }

  /** Records the peer's newest identity key as verified by the user. */
  async verify(peer: CryptoAddress): Promise<boolean> {
    const key = this.seen.get(addrKey(peer)) ?? (await this.adapter.peerIdentity(peer));
    if (!key) return false;
    await this.local.put([{ key: `v/${addrKey(peer)}`, value: key }]);
    return true;
  }

  // ------------------------------------------------------------------ keys

  /** After each welcome: the first upload, or a signed prekey rotation when it is due. */
  async onConnected(): Promise<void> {
    const id = this.identity!;
    const mark = await this.local.get('uploaded');
    const uploaded = mark && (packr.unpack(mark) as [number, number]);
    if (!uploaded || uploaded[0] !== id.registrationId) {
      await this.uploadAll(await this.adapter.initialKeys(this.opts.preKeySupply));
    } else if (this.io.now() - uploaded[1] > this.opts.signedPreKeyMaxAgeMs) {
      await this.uploadAll(await this.adapter.rotateKeys());
    } else return;
    await this.local.put([{ key: 'uploaded', value: packr.pack([id.registrationId, this.io.now()]) }]);
  }

  /** The directory's supply ran low: top it up. */
  async replenish(preKeys: number, kyberPreKeys: number): Promise<void> {
    const need = this.opts.preKeySupply - Math.min(preKeys, kyberPreKeys);
    if (need > 0) await this.uploadAll(await this.adapter.moreKeys(need));
  }

  private async uploadAll(keys: KeyUpload): Promise<void> {
    const pk = keys.preKeys ?? [];
    const kpk = keys.kyberPreKeys ?? [];
    let first = true;
    for (let i = 0; first || i < Math.max(pk.length, kpk.length); i += UPLOAD_CHUNK) {
      const chunk: KeyUpload = { registrationId: keys.registrationId, identityKey: keys.identityKey };
      if (first) {
        if (keys.signedPreKey) chunk.signedPreKey = keys.signedPreKey;
        if (keys.lastResortKyber) chunk.lastResortKyber = keys.lastResortKyber;
      }
      if (pk.length > i) chunk.preKeys = pk.slice(i, i + UPLOAD_CHUNK);
      if (kpk.length > i) chunk.kyberPreKeys = kpk.slice(i, i + UPLOAD_CHUNK);
      await this.io.upload(chunk);
      first = false;
    }
  }

  // ------------------------------------------------------------------ device lists, sessions

  private async listOf(user: string): Promise<KnownDevice[] | undefined> {
    let list = this.lists.get(user);
    if (!list) {
      const raw = await this.store.getState(NS_DEVICES, user);
      if (!raw) return undefined;
      list = (packr.unpack(raw) as Array<[string, number]>).map(([device, rid]) => ({ device, rid }));
      this.lists.set(user, list);
    }
    return list;
  }

  private async setList(user: string, list: KnownDevice[]): Promise<void> {
    this.lists.set(user, list);
    await this.store.putState([
      { ns: NS_DEVICES, key: user, value: packr.pack(list.map((d) => [d.device, d.rid])) },
    ]);
  }

  /**
   * Whether a device of `user` is known to have keys. This user's own list counts as known even
   * when empty (no other device); another user's empty list is asked for again.
   */
  async hasKeys(user: string): Promise<boolean> {
    const list = await this.listOf(user);
    return list !== undefined && (list.length > 0 || user === this.me?.user);
  }

  /**
   * Takes claimed bundles as the device lists of `users` (starting a session with each device).
   * A user whose list is already known keeps it and its sessions (a second claim raced this one);
   * one with no bundle stays unknown, asked for again next time rather than remembered as nobody.
   */
  async adopt(users: string[], bundles: KeyBundle[]): Promise<void> {
    for (const u of new Set(users)) {
      if (await this.hasKeys(u)) continue;
      const mine = bundles.filter((b) => b.user === u);
      await this.take(mine);
      const list = mine
        .filter((b) => !(u === this.me!.user && b.device === this.me!.device))
        .map((b) => ({ device: b.device, rid: b.registrationId }));
      if (list.length > 0 || u === this.me!.user) await this.setList(u, list);
    }
  }

  private async take(bundles: KeyBundle[]): Promise<void> {
    for (const b of bundles) {
      if (b.user === this.me!.user && b.device === this.me!.device) continue;
      await this.adapter.processBundle(b);
    }
  }

  /**
   * Makes sure every device of each user (this user's other devices included) has a session:
   * unknown users get their whole list from the directory, known devices without a session a
   * fresh bundle.
   */
  async ensure(users: string[]): Promise<void> {
    const unknown: string[] = [];
    for (const u of new Set(users)) if (!(await this.hasKeys(u))) unknown.push(u);
    for (let i = 0; i < unknown.length; i += 64) {
      const batch = unknown.slice(i, i + 64);
      await this.adopt(batch, await this.io.claim(batch));
    }
    for (const u of new Set(users)) {
      const list = (await this.listOf(u)) ?? [];
      let changed = false;
      for (const d of list) {
        if (await this.adapter.hasSession({ user: u, device: d.device })) continue;
        const [b] = await this.io.claim([u], d.device);
        if (!b) {
          // Gone from the directory: the server will say so (extra) if it matters.
          continue;
        }
        await this.take([b]);
        if (b.registrationId !== d.rid) {
          d.rid = b.registrationId;
          changed = true;
        }
      }
      if (changed) await this.setList(u, list);
    }
  }

  /** The envelopes of a 1:1 content for every device of `to` and this user's other devices. */
  async envelopes(to: string, content: Content, plaintext = false): Promise<WireEnvelope[]> {
    const users = to === this.me!.user ? [to] : [to, this.me!.user];
    if (!plaintext) await this.ensure(users);
    else for (const u of users) if (!(await this.listOf(u))) await this.ensure([u]);
    const data = encodeContent(content);
    const out: WireEnvelope[] = [];
    for (const u of users) {
      for (const d of (await this.listOf(u)) ?? []) {
        if (plaintext) {
          out.push([u, d.device, d.rid, prefixed(BODY_KIND.clear, data)]);
          continue;
        }
        const c = await this.adapter.encrypt({ user: u, device: d.device }, data);
        out.push([u, d.device, d.rid, prefixed(BODY_KIND[c.kind], c.body)]);
      }
    }
    return out;
  }

  /** Applies a `mismatched_devices` / `stale_devices` answer to the device lists and sessions. */
  async correct(diff: DeviceListDifference): Promise<void> {
    const touched = new Set<string>();
    for (const a of diff.extra ?? []) {
      const list = (await this.listOf(a.user)) ?? [];
      await this.setList(
        a.user,
        list.filter((d) => d.device !== a.device),
      );
      await this.adapter.archiveSession(a);
    }
    for (const a of diff.stale ?? []) {
      await this.adapter.archiveSession(a);
      touched.add(a.user);
    }
    for (const a of diff.missing ?? []) {
      const list = (await this.listOf(a.user)) ?? [];
      if (!list.some((d) => d.device === a.device))
        await this.setList(a.user, [...list, { device: a.device, rid: 0 }]);
      touched.add(a.user);
    }
    if (touched.size > 0) await this.ensure([...touched]);
  }

  /** Forgets a broken session with a device, so the next message to it starts a fresh one. */
  archive(peer: CryptoAddress): Promise<void> {
    return this.adapter.archiveSession(peer);
  }

  // ------------------------------------------------------------------ receiving

  /** Decrypts a delivered body (1:1 envelope or group ciphertext) into its content. */
  async decrypt(from: CryptoAddress, body: Uint8Array, group: string | undefined): Promise<Content> {
    if (body.byteLength < 1) throw new Error('empty body');
    const kind = body[0];
    const rest = body.subarray(1);
    let plain: Uint8Array;
    if (kind === BODY_KIND.group && group !== undefined)
      plain = await this.adapter.groupDecrypt(from, group, rest);
    else if (kind === BODY_KIND.clear) {
      const c = decodeContent(rest);
      // Only a resend request may travel in the clear; anything else would be a forgery.
      if (c[0] !== 2) throw new Error('plaintext content that is not a resend request');
      return c;
    } else if (kind === BODY_KIND.prekey || kind === BODY_KIND.message || kind === BODY_KIND.plaintext) {
      const k = kind === BODY_KIND.prekey ? 'prekey' : kind === BODY_KIND.message ? 'message' : 'plaintext';
      plain = await this.adapter.decrypt(from, { kind: k, body: rest });
    } else throw new Error(`unknown body kind ${kind}`);
    return decodeContent(plain);
  }

  // ------------------------------------------------------------------ groups

  private async generation(group: string): Promise<number> {
    const raw = await this.local.get(`g/${group}`);
    return raw ? (packr.unpack(raw) as number) : 0;
  }

  /** After a member left or was removed: a new sender key, distributed afresh on the next send. */
  async rotateGroup(group: string): Promise<void> {
    await this.adapter.rotateGroupKey(group);
    await this.local.put([{ key: `g/${group}`, value: packr.pack((await this.generation(group)) + 1) }]);
  }

  /**
   * The member devices (of `users`, this user's other devices included) that lack this device's
   * current sender key for `group`, with the distribution to send them.
   */
  async missingDistribution(
    group: string,
    users: string[],
  ): Promise<{ distribution: Uint8Array; to: Map<string, KnownDevice[]>; gen: number }> {
    const all = [...new Set([...users, this.me!.user])];
    // Only users whose device list is unknown need the directory here; sessions for the devices
    // that lack the key are made when the distribution is encrypted for them.
    const unknown: string[] = [];
    for (const u of all) if (!(await this.listOf(u))) unknown.push(u);
    if (unknown.length > 0) await this.ensure(unknown);
    const gen = await this.generation(group);
    const to = new Map<string, KnownDevice[]>();
    for (const u of all) {
      for (const d of (await this.listOf(u)) ?? []) {
        const has = await this.local.get(`d/${group}/${addrKey({ user: u, device: d.device })}`);
        if (has && (packr.unpack(has) as number) === gen) continue;
        let l = to.get(u);
        if (!l) to.set(u, (l = []));
        l.push(d);
      }
    }
    // Made only when someone lacks it: on most sends everyone has it already.
    const distribution = to.size > 0 ? await this.adapter.groupDistribution(group) : new Uint8Array(0);
    return { distribution, to, gen };
  }

  /** Records that `user`'s devices now have this device's sender key generation `gen`. */
  async distributed(group: string, user: string, devices: KnownDevice[], gen: number): Promise<void> {
    await this.local.put(
      devices.map((d) => ({
        key: `d/${group}/${addrKey({ user, device: d.device })}`,
        value: packr.pack(gen),
      })),
    );
  }

  /** Encrypts a group message once for every member device. */
  async groupEncrypt(group: string, content: Content): Promise<Uint8Array> {
    return prefixed(BODY_KIND.group, await this.adapter.groupEncrypt(group, encodeContent(content)));
  }

  /** Safety number with a peer device. */
  safetyNumber(peer: CryptoAddress): Promise<string | undefined> {
    return this.adapter.safetyNumber(peer);
  }
}

function prefixed(kind: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(body.byteLength + 1);
  out[0] = kind;
  out.set(body, 1);
  return out;
}
