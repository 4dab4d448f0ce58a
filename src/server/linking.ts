/**
 * Linking a new device: when its user already has devices (and linking needs approval), a new
 * device gets a link code (`lcode`) and waits; an existing device of the same user approves it
 * (`lnk`), on this node or, with a cluster, on any node. Also a device unlinking one of its
 * user's devices (`unl`).
 * Internal to the engine: not exported from `postbox/server`.
 * @packageDocumentation
 */
import type { Clock } from '../util/clock.js';
import type { ClusterAdapter } from './cluster/types.js';
import type { EngineConfig, Logger } from './options.js';
import type { Session } from './session.js';
import type { DeviceAddress, ServerStore } from './store.js';

/** What linking needs of the engine. */
export interface LinkingDeps {
  store: ServerStore;
  clock: Clock;
  log: Logger;
  config: Pick<EngineConfig, 'linking' | 'linkCodeTtlMs'>;
  cluster: ClusterAdapter | undefined;
  /** Runs a cluster call the engine's close waits for; its failure is logged. */
  clusterOp(what: string, op: () => Promise<void>): Promise<void>;
  ring(devices: DeviceAddress[]): void;
  /** A device was linked by another's approval (the server's `linked` event). */
  linked(device: DeviceAddress, by: DeviceAddress): void;
  /** Unlinks a device, as `PostboxServer.unlinkDevice` does. */
  unlinkDevice(user: string, device: string): Promise<boolean>;
  /** A store call failed for these sessions. */
  storeFailed(error: unknown, sessions: Session[]): void;
}

const CODE_ALPHABET = 'ABCDEFGHJKMNPQRSTVWXYZ0123456789';

/** Link codes of the devices waiting here, and their approval. */
export class Linking {
  /** link code → the session of the device waiting for approval. */
  private readonly codes = new Map<string, Session>();

  constructor(private readonly d: LinkingDeps) {}

  /** Whether approval is needed before this device may open a session. */
  async needsApproval(addr: DeviceAddress): Promise<boolean> {
    if (this.d.config.linking === 'open') return false;
    const devices = await this.d.store.devices(addr.user);
    return devices.length > 0 && !devices.includes(addr.device);
  }

  /** A new device awaits approval: hands out its link code. */
  start(session: Session): { code: string; exp: number } {
    const bytes = new Uint8Array(15);
    globalThis.crypto.getRandomValues(bytes);
    let code = '';
    for (const b of bytes) code += CODE_ALPHABET[b & 31];
    session.linkCode = code;
    this.codes.set(code, session);
    const addr = session.pendingAddr;
    const ttl = this.d.config.linkCodeTtlMs;
    const c = this.d.cluster;
    // So that a device of the user connected to any node can approve it.
    if (c && addr) void this.d.clusterOp('offer link', () => c.offerLink(code, addr, ttl));
    return { code, exp: this.d.clock.now() + ttl };
  }

  /** The waiting session closed: its code is void. */
  forget(session: Session): void {
    if (session.linkCode !== undefined) this.codes.delete(session.linkCode);
  }

  /** Approved from another node, which already registered the device: open its session. */
  approvedElsewhere(code: string): void {
    const pending = this.codes.get(code);
    if (!pending) return;
    this.codes.delete(code);
    pending.linkCode = undefined;
    void pending.completeLink();
  }

  /** `lnk`: an existing device approves the device showing `code`. */
  async approve(approver: Session, r: number, code: string): Promise<void> {
    const pending = this.codes.get(code);
    const by = approver.addr!;
    if (!pending && this.d.cluster) return this.approveRemote(approver, r, code);
    if (!pending || pending.isClosed() || pending.pendingAddr?.user !== by.user) {
      approver.sendError('forbidden', 'no device of this user awaits approval with that code', r);
      return;
    }
    this.codes.delete(code);
    pending.linkCode = undefined;
    const ok = await pending.completeLink();
    if (!ok) {
      approver.sendError('unavailable', 'the new device could not be registered', r);
      return;
    }
    approver.send({ t: 'ok', r });
    this.d.linked(pending.addr!, by);
  }

  /**
   * Approves a device waiting on another node: takes its code from the cluster (once, and only for
   * a device of the approver's user), registers the device in the store (the approval is durable:
   * should the notice to its node be lost, its next hello needs no approval), and the waiting
   * node opens its session.
   */
  private async approveRemote(approver: Session, r: number, code: string): Promise<void> {
    const by = approver.addr!;
    let device: DeviceAddress | undefined;
    try {
      device = await this.d.cluster!.takeLink(code, by.user);
    } catch (e) {
      this.d.log.warn('cluster takeLink failed', e);
      approver.sendError('unavailable', 'link codes are unavailable, try again', r);
      return;
    }
    if (!device) {
      approver.sendError('forbidden', 'no device of this user awaits approval with that code', r);
      return;
    }
    try {
      const res = await this.d.store.registerDevice(device, this.d.clock.now());
      this.d.ring(res.notify);
    } catch (e) {
      this.d.log.error('store failure registering a linked device', e);
      approver.sendError('unavailable', 'the new device could not be registered', r);
      return;
    }
    approver.send({ t: 'ok', r });
    this.d.linked(device, by);
  }

  /** `unl`: a device unlinks a device of its own user. */
  async unlink(session: Session, r: number, device: string): Promise<void> {
    try {
      await this.d.unlinkDevice(session.addr!.user, device);
    } catch (e) {
      this.d.storeFailed(e, [session]);
      return;
    }
    session.send({ t: 'ok', r });
  }
}
