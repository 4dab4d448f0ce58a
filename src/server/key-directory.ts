/**
 * The key directory's side of the engine: devices publish their keys (`keys`), senders claim
 * bundles (`kget`, limited per claimer and per one-time key), devices whose supply runs low are
 * told (`klow`), and senders that found a user without keys are told when it publishes some
 * (`kr`). The keys themselves live in the store.
 * Internal to the engine: not exported from `postbox/server`.
 * @packageDocumentation
 */
import { isPostboxError, type KeyGetFrame, type KeysFrame } from '../protocol/index.js';
import type { KeyBundle } from '../protocol/keys.js';
import type { Clock } from '../util/clock.js';
import { addressKey as deviceKey } from './address.js';
import type { RateLimitedLog } from './client-log.js';
import { KeyWaiters } from './key-waiters.js';
import type { Limits } from './limits.js';
import type { Logger } from './options.js';
import type { Session } from './session.js';
import type { DeviceAddress, ServerStore } from './store.js';
import { keyBundlesFrame, keyUpload } from './wire.js';

/** What the key directory needs of the engine. */
export interface KeyDirectoryDeps {
  store: ServerStore;
  clock: Clock;
  log: Logger;
  clientLog: RateLimitedLog;
  limits: Limits;
  /** A device is told to upload more one-time keys below this many (0: never). */
  keyLowWater: number;
  /** The open session of a device on this node, by its {@link deviceKey}. */
  session(key: string): Session | undefined;
}

/** Publishing, claiming and watching keys for this node's sessions. */
export class KeyDirectory {
  /** Sessions that claimed a user's keys and got none: told (`kr`) when that user publishes keys. */
  private readonly waiters = new KeyWaiters();

  constructor(private readonly d: KeyDirectoryDeps) {}

  /** Publishes a device's keys (`keys` frame). */
  async put(session: Session, f: KeysFrame): Promise<void> {
    const upload = keyUpload(f);
    try {
      await this.d.store.putKeys(session.addr!, upload);
    } catch (e) {
      if (isPostboxError(e) && e.code === 'quota_exceeded') {
        session.sendError('quota_exceeded', 'too many one-time keys for this device', f.r);
        return;
      }
      // A first upload without a signed prekey, or a store fault: the device retries.
      this.d.clientLog.warn(deviceKey(session.addr!), 'key upload refused', e);
      session.sendError('invalid_frame', 'key upload refused', f.r);
      return;
    }
    session.send({ t: 'ok', r: f.r });
    // A first upload (or a rotation) carries the signed prekey: whoever waited can write now.
    if (f.spk) {
      for (const k of this.waiters.take(session.addr!.user)) {
        this.d.session(k)?.send({ t: 'kr', u: session.addr!.user });
      }
    }
  }

  /**
   * Claims bundles (`kget` frame) and tells devices that run low. The claiming user's bundles per
   * 10 s are limited, so are the claims of all users together on this node
   * (`ServerOptions.maxNodeKeyClaimsPerSecond`) and the one-time keys a claimer takes of each
   * device (`ServerOptions.maxOneTimeKeyClaimsPerDay`). One store call claims the whole frame.
   */
  async claim(session: Session, f: KeyGetFrame): Promise<void> {
    const claimer = session.addr!.user;
    const { store, limits, clock } = this.d;
    // Asking for one user twice in a frame gets nothing a second answer would not.
    const users = [...new Set(f.u)];
    // An answer is up to ~2 KB per device: for a session that does not read what it already has,
    // nothing more is claimed and encoded until it drains (a few claims wait, the rest are refused).
    if (session.backlogged()) {
      if (!session.holdClaim(f))
        session.sendError('rate_limited', 'read the answers already sent first', f.r);
      return;
    }
    if (!limits.claim(claimer, users.length, clock.now())) {
      session.sendError('rate_limited', 'too many key claims', f.r);
      return;
    }
    if (!limits.nodeClaim(users.length, clock.now())) {
      session.sendError('rate_limited', 'too many key claims on this server; retry later', f.r);
      return;
    }
    let bundles: KeyBundle[];
    // Users with registered devices but no keys yet: the sender holds its message for them.
    const keyless: string[] = [];
    try {
      // One store call (one write transaction) for the whole frame, however many users it names.
      const oneTime = (device: string, user: string) => limits.oneTimeKey(claimer, user, device, clock.now());
      bundles = await store.claimKeys(users, users.length === 1 ? f.d : undefined, { oneTime });
      if (f.d === undefined) {
        const got = new Set(bundles.map((b) => b.user));
        for (const user of users) {
          if (got.has(user)) continue;
          this.waiters.add(user, deviceKey(session.addr!));
          if ((await store.devices(user)).length > 0) keyless.push(user);
        }
      }
    } catch (e) {
      this.d.log.error('key claim failed', e);
      session.sendError('unavailable', 'key directory unavailable', f.r);
      return;
    }
    limits.claimed(claimer, bundles.length, clock.now());
    session.send(keyBundlesFrame(f, bundles, keyless));
    // Only a claim that took a one-time EC key can have lowered a supply: a last-resort bundle
    // (a drained device, a claimer past its budget) costs no count and nags no one again.
    for (const b of bundles) if (b.preKey) void this.checkSupply(b);
  }

  /** Tells a connected device whose one-time keys run low to upload more. */
  async checkSupply(device: DeviceAddress): Promise<void> {
    const low = this.d.keyLowWater;
    const s = low > 0 ? this.d.session(deviceKey(device)) : undefined;
    if (!s) return;
    try {
      const n = await this.d.store.keyCount(device);
      if (n && (n.preKeys < low || n.kyberPreKeys < low))
        s.send({ t: 'klow', pk: n.preKeys, kpk: n.kyberPreKeys });
    } catch (e) {
      this.d.log.warn('key count failed', e);
    }
  }
}
