/**
 * The encrypted stage (docs/encryption.md): outbox items are sealed in outbox order (envelopes
 * per device, group ciphertexts after this device's sender key reached every member), refusals
 * for stale device lists are corrected and resent, and the key directory is kept supplied.
 * Opening what comes in is sealed-open.ts. Everything here touches the crypto adapter only
 * through `E2ee` (e2ee.ts).
 * @packageDocumentation
 */
import {
  PostboxError,
  isGroupId,
  isPostboxError,
  type ClientFrame,
  type KeyBundlesFrame,
  type MsgFrame,
} from '../protocol/index.js';
import type { CryptoAdapter, KeyBundle, KeyUpload } from '../crypto/types.js';
import type { ClientContext, Me } from './context.js';
import { E2ee, decodeContent, encodeContent, type Content } from './e2ee.js';
import type { Inbound } from './inbound.js';
import { DEFAULT_KEY_WAIT_MS, KeyWait } from './key-wait.js';
import type { Outbox } from './outbox.js';
import type { RequestTable } from './requests.js';
import { openSealed } from './sealed-open.js';
import type { Stage } from './stage.js';
import type { OutboxEntry } from './store.js';
import type { ClientOptions } from './types.js';
import { EMPTY, frameOf } from './wire.js';

/** Device-list corrections of one item before it fails with `mismatched_devices`. */
const MAX_CORRECTIONS = 5;
/** Items whose corrections are counted (the count starts again past it). */
const CORRECTION_MEMORY = 1024;

/** A 1:1 item sealed once per recipient device (so it needs a recipient device with keys). */
const perDevice = (e: OutboxEntry): boolean => e.kind === 'ctl' || (e.kind === 'msg' && !isGroupId(e.to));

/** What the sealing stage needs of other parts. */
export interface SealedDeps {
  requests: RequestTable;
  outbox: Pick<Outbox, 'add' | 'settle' | 'unqueue' | 'pump' | 'hold' | 'requeue'>;
  inbound: Pick<Inbound, 'accept' | 'receive' | 'pin' | 'have'>;
  /** Whether this device's message may have reached a user (receipts.ts). */
  reached(e: OutboxEntry, user: string): Promise<boolean>;
  /** The other members of a group as this device knows it. */
  othersIn(group: string, me: string): string[];
}

/** The encrypted stage of one client. */
export class SealedStage implements Stage {
  readonly e2ee: E2ee;
  readonly keyWait: KeyWait;
  /** Outgoing frames that need encrypting leave through this chain, in outbox order. */
  private txChain: Promise<void> = Promise.resolve();
  /** Resolves when the adapter is open for the current connection. */
  private cryptoReady: Promise<void> = Promise.resolve();
  /** Device-list corrections per outgoing id, to give up on one that never settles. */
  private readonly corrections = new Map<string, number>();

  constructor(
    private readonly ctx: ClientContext,
    crypto: CryptoAdapter,
    options: Pick<ClientOptions, 'identityPolicy' | 'preKeySupply' | 'signedPreKeyMaxAgeMs' | 'keyWaitMs'>,
    private readonly deps: SealedDeps,
  ) {
    this.e2ee = new E2ee(
      crypto,
      ctx.store,
      {
        identityPolicy: options.identityPolicy ?? 'accept',
        preKeySupply: Math.max(1, Math.min(200, options.preKeySupply ?? 50)),
        signedPreKeyMaxAgeMs: options.signedPreKeyMaxAgeMs ?? 7 * 24 * 3600_000,
      },
      {
        claim: (users, device) => this.claimKeys(users, device),
        upload: (keys) => this.uploadKeys(keys),
        identityChanged: (peer) => ctx.emit('identityChanged', { user: peer.user, device: peer.device }),
        now: () => ctx.clock.now(),
      },
    );
    this.keyWait = this.keyWaitOf(options.keyWaitMs ?? DEFAULT_KEY_WAIT_MS);
  }

  welcome(me: Me): void {
    const ctx = this.ctx;
    const e2ee = this.e2ee;
    // Inbound messages (serial) and outgoing ones (tx chain) wait for the adapter to open.
    const gen = ctx.generation;
    // Opened once per client (again only after a failure). It is a serial task, and serial
    // tasks never await it — they only check it ran — so no earlier task waits on a later one.
    if (!e2ee.opened) {
      this.cryptoReady = ctx.serial(async () => {
        await e2ee.open(me);
      });
    }
    void this.cryptoReady
      .then(() => (ctx.live(gen) ? e2ee.onConnected() : undefined))
      .catch((e) => {
        if (ctx.live(gen)) ctx.emit('error', e);
      });
  }

  keysLow(preKeys: number, kyberPreKeys: number): void {
    void this.cryptoReady
      .then(() => this.e2ee.replenish(preKeys, kyberPreKeys))
      .catch((e) => this.ctx.emit('error', e));
  }

  async safetyNumber(user: string, device: string): Promise<string | undefined> {
    if (!this.ctx.me) return undefined;
    await this.cryptoReady;
    return this.e2ee.safetyNumber({ user, device });
  }

  async verify(user: string, device: string): Promise<boolean> {
    if (!this.ctx.me) return false;
    await this.cryptoReady;
    const ok = await this.e2ee.verify({ user, device });
    // What waited (unsent items, unacked entries) goes again on a fresh connection.
    if (ok && this.ctx.state === 'open') this.ctx.drop('identity verified');
    return ok;
  }

  async membersLeft(group: string): Promise<void> {
    this.e2ee.assertOpen();
    await this.e2ee.rotateGroup(group);
  }

  open(f: MsgFrame, me: Me): void {
    openSealed(f, me, {
      ctx: this.ctx,
      e2ee: this.e2ee,
      inbound: this.deps.inbound,
      reached: this.deps.reached,
      control: (to, content) => this.enqueueControl(to, content),
    });
  }

  /** Builds (encrypting where needed) and writes an outbox item's frame, in outbox order. */
  send(e: OutboxEntry, r: number): void {
    const ctx = this.ctx;
    const gen = ctx.generation;
    this.txChain = this.txChain.then(async () => {
      if (!ctx.live(gen)) return;
      // Behind a send held for its recipient's keys, a later one to the same user waits too.
      if (perDevice(e) && this.keyWait.behind(e)) return this.deps.outbox.hold(e.id, r);
      let frame: ClientFrame;
      try {
        await this.cryptoReady;
        frame = await this.sealedFrame(e, r);
      } catch (err) {
        // The connection went away mid-way: everything unacked goes out again after reconnecting.
        if (ctx.live(gen)) this.sealFailed(e, r, err);
        return;
      }
      if (ctx.live(gen)) ctx.write(frame);
    });
  }

  private async sealedFrame(e: OutboxEntry, r: number): Promise<ClientFrame> {
    const e2ee = this.e2ee;
    if (e.kind === 'group' || e.kind === 'read') return frameOf(e, r);
    if (e.kind === 'msg' && isGroupId(e.to)) {
      await this.distribute(e.to);
      return frameOf(e, r, await e2ee.groupEncrypt(e.to, [0, e.body!]));
    }
    const content: Content = e.kind === 'ctl' ? decodeContent(e.body!) : [0, e.body!];
    const envelopes = await e2ee.envelopes(e.to, content, content[0] === 2);
    if (envelopes.length === 0) {
      throw new PostboxError('unknown_recipient', `no device of ${e.to} has published keys`);
    }
    return { t: 'send', r, id: e.id, to: e.to, seq: e.kind === 'ctl' ? 0 : e.seq!, b: EMPTY, e: envelopes };
  }

  /** Sends this device's sender key for `group` to every member device that lacks it. */
  private async distribute(group: string): Promise<void> {
    const e2ee = this.e2ee;
    const users = this.deps.othersIn(group, this.ctx.me!.user);
    const { distribution, to, gen } = await e2ee.missingDistribution(group, users);
    for (const [user, devices] of to) {
      const envelopes = await e2ee.envelopes(user, [1, group, distribution]);
      if (envelopes.length === 0) continue;
      const r = this.deps.requests.add({
        kind: 'ctl',
        ok: () => void e2ee.distributed(group, user, devices, gen).catch((x) => this.ctx.emit('error', x)),
        err: (x) => {
          if (x.devices) void e2ee.correct(x.devices).catch((y) => this.ctx.emit('error', y));
        },
      });
      // Committed before the group message that needs it, so every inbox has it first.
      this.ctx.write({ t: 'send', r, id: this.ctx.ulid(), to: user, seq: 0, b: EMPTY, e: envelopes });
    }
  }

  private sealFailed(entry: OutboxEntry, r: number, err: unknown): void {
    const id = entry.id;
    const code = isPostboxError(err) ? err.code : (err as { code?: unknown })?.code;
    if (code === 'disconnected' || code === 'closed') return;
    // No device with keys yet, but the user has devices: held until keys come (key-wait.ts).
    if (code === 'unknown_recipient' && this.keyWait.hold(entry)) return this.deps.outbox.hold(id, r);
    this.deps.requests.remove(r);
    if (code === 'untrusted_identity') {
      // Stays pending in the store: it goes out after verifyIdentity() (which reconnects).
      this.deps.outbox.unqueue(id);
      this.ctx.emit('error', err);
      this.deps.outbox.pump();
      return;
    }
    if (code === 'unknown_recipient' || !this.retryCorrection(id)) {
      const e = isPostboxError(err) ? err : new PostboxError('internal', 'encryption failed', { cause: err });
      this.deps.outbox.settle(id, 'failed', e);
      return;
    }
    this.ctx.emit('error', err);
    this.ctx.drop('encryption failed');
  }

  /** Runs `fn` on the seal chain (after every item already on its way), with the adapter open. */
  private onSealChain(fn: () => Promise<void>): Promise<void> {
    const run = this.txChain.then(async () => {
      await this.cryptoReady;
      await fn();
    });
    this.txChain = run.catch(() => {});
    return run;
  }

  /** The key wait: it asks through this connection, and puts items back through the outbox. */
  private keyWaitOf(keyWaitMs: number): KeyWait {
    const { ctx, e2ee } = this;
    return new KeyWait(
      {
        clock: ctx.clock,
        online: () => ctx.state === 'open',
        probe: async (users) => {
          await this.cryptoReady;
          const ready: string[] = [];
          const unknown: string[] = [];
          for (const u of users) ((await e2ee.hasKeys(u)) ? ready : unknown).push(u);
          if (unknown.length > 0) {
            // The round trip is outside the seal chain: it holds up no send.
            const bundles = await this.claimKeys(unknown);
            await this.onSealChain(() => e2ee.adopt(unknown, bundles));
            for (const u of unknown) if (await e2ee.hasKeys(u)) ready.push(u);
          }
          return ready;
        },
        afterSealing: (fn) => void this.onSealChain(async () => fn()).catch((e) => ctx.emit('error', e)),
        requeue: (entries) => this.deps.outbox.requeue(entries),
        fail: (entry, error) => this.deps.outbox.settle(entry.id, 'failed', error),
      },
      keyWaitMs,
    );
  }

  /** Counts a correction of an outgoing item; false once it has had too many. */
  private retryCorrection(id: string): boolean {
    const n = (this.corrections.get(id) ?? 0) + 1;
    if (this.corrections.size > CORRECTION_MEMORY) this.corrections.clear();
    this.corrections.set(id, n);
    return n <= MAX_CORRECTIONS;
  }

  /** The directory disagreed with a send's device list: fix the lists, then send everything again. */
  refused(id: string, r: number, error: PostboxError): boolean {
    if (error.code !== 'mismatched_devices' && error.code !== 'stale_devices') return false;
    if (!this.retryCorrection(id) || !error.devices) {
      this.deps.requests.remove(r);
      this.deps.outbox.settle(id, 'failed', error);
      return true;
    }
    const ctx = this.ctx;
    const gen = ctx.generation;
    this.e2ee.correct(error.devices).then(
      () => {
        // Later sends may be in flight; resending everything in order keeps per-sender order.
        if (ctx.live(gen)) ctx.drop('device list corrected');
      },
      (e) => ctx.fault(gen, e, 'device list correction failed'),
    );
    return true;
  }

  private claimKeys(users: string[], device?: string): Promise<KeyBundle[]> {
    return this.deps.requests.keys((r) => {
      const f: ClientFrame = { t: 'kget', r, u: users };
      if (device !== undefined) f.d = device;
      return f;
    });
  }

  private uploadKeys(k: KeyUpload): Promise<void> {
    return this.deps.requests.call((r) => {
      const f: ClientFrame = { t: 'keys', r, rid: k.registrationId, ik: k.identityKey };
      if (k.signedPreKey) f.spk = [k.signedPreKey.id, k.signedPreKey.key, k.signedPreKey.signature];
      if (k.lastResortKyber)
        f.lrk = [k.lastResortKyber.id, k.lastResortKyber.key, k.lastResortKyber.signature];
      if (k.preKeys?.length) f.pk = k.preKeys.map((p) => [p.id, p.key]);
      if (k.kyberPreKeys?.length) f.kpk = k.kyberPreKeys.map((p) => [p.id, p.key, p.signature]);
      return f;
    });
  }

  /** Queues a control message of the encryption layer (resend request or answer) to `to`. */
  private async enqueueControl(to: string, content: Content): Promise<void> {
    const ctx = this.ctx;
    await this.deps.outbox.add({
      id: ctx.ulid(),
      kind: 'ctl',
      to,
      conv: to,
      body: encodeContent(content),
      createdAt: ctx.clock.now(),
    });
  }
}

/** The key bundles of a `kb` answer. */
export function bundlesOf(f: KeyBundlesFrame): KeyBundle[] {
  return f.b.map(([user, device, registrationId, identityKey, spk, kpk, pk]) => {
    const b: KeyBundle = {
      user,
      device,
      registrationId,
      identityKey,
      signedPreKey: { id: spk[0], key: spk[1], signature: spk[2] },
      kyberPreKey: { id: kpk[0], key: kpk[1], signature: kpk[2] },
    };
    if (pk) b.preKey = { id: pk[0], key: pk[1] };
    return b;
  });
}
