/**
 * Routing: which device has an open session on this node, and how a device learns that entries
 * landed in its inbox. Online here: pushed straight down its connection when it can take the
 * entry at once, else its session is rung and reads its inbox. Online on another node: that
 * node's doorbell rings. Connected nowhere: a push wakes it. Every route is only a hint; the
 * entries wait in the store either way.
 * Internal to the engine: not exported from `postbox/server`.
 * @packageDocumentation
 */
import { encodeAtOffset, encodeFrame } from '../protocol/index.js';
import { deviceKey } from './cluster/common.js';
import type { ClusterAdapter } from './cluster/types.js';
import type { ServerMetrics } from './metrics.js';
import type { Logger } from './options.js';
import type { PushWake } from './push-wake.js';
import type { Session } from './session.js';
import type { DeviceAddress, MessageInput, NotifyResult } from './store.js';
import type { Tracer } from './trace.js';
import { isPendingDevice } from './users.js';
import { committedMsgFrame } from './wire.js';

/**
 * A device's session key. Unambiguous for any two strings, not only valid ids: a separator
 * character would let ids containing it collide, and one device take over another's session.
 */
export const keyOf = deviceKey;

/** What routing needs of the engine. */
export interface RouterDeps {
  metrics: ServerMetrics;
  tracer: Tracer;
  log: Logger;
  cluster: ClusterAdapter | undefined;
  push: PushWake;
}

/** This node's sessions by device and by user, and the ways to reach a device. */
export class Router {
  /** device key → its open session on this node. */
  readonly sessions = new Map<string, Session>();
  /** user → its devices' open sessions on this node. */
  readonly userSessions = new Map<string, Set<Session>>();

  constructor(private readonly d: RouterDeps) {}

  /** The open session of a device on this node. */
  session(addr: DeviceAddress): Session | undefined {
    return this.sessions.get(keyOf(addr));
  }

  /**
   * Pushes a just-committed message straight to each recipient session that has delivered
   * everything before it (the common case for online devices), without reading it back from the
   * store, and encoded straight from what was committed; the others go to `ring`.
   */
  deliverNew(
    input: MessageInput,
    ts: number,
    devices: DeviceAddress[],
    offsets: number[],
    ring: DeviceAddress[],
  ): void {
    const { cluster, tracer } = this.d;
    const remote = cluster !== undefined || this.d.push.enabled;
    // A group entry reads the same on every device but for its offset: packed once.
    let encode: ((offset: number) => Uint8Array) | undefined;
    // An encrypted 1:1 message carries one ciphertext per device.
    const bodies = input.envelopes && new Map(input.envelopes.map((e) => [keyOf(e), e.body]));
    for (let i = 0; i < devices.length; i++) {
      const d = devices[i]!;
      const s = this.sessions.get(keyOf(d));
      if (!s) {
        // Not here: the entry waits in its inbox; its node is rung (or a push wakes it).
        if (remote) ring.push(d);
        continue;
      }
      const offset = offsets[i]!;
      if (!s.canTake(offset)) {
        ring.push(d);
        continue;
      }
      let data: Uint8Array;
      if (input.group)
        data = (encode ??= encodeAtOffset(committedMsgFrame(input, ts, 0, input.body, d.user)))(offset);
      else
        data = encodeFrame(committedMsgFrame(input, ts, offset, bodies?.get(keyOf(d)) ?? input.body, d.user));
      s.take(offset, data);
      if (tracer.on) tracer.pushedMessage(d, input.id, offset);
    }
  }

  /**
   * Pushes the entries a store call says it wrote ({@link NotifyResult.entries}) to the
   * sessions here that can take them at once, and rings every other device of the result.
   */
  deliverWritten(res: NotifyResult): void {
    if (!res.entries) return this.ring(res.notify);
    const ring: DeviceAddress[] = [];
    const seen = new Map<string, boolean>(); // device → all its entries so far went out
    for (const { device, entry } of res.entries) {
      const k = keyOf(device);
      if (seen.get(k) === false) continue; // an earlier entry could not go: the read takes them all
      const sent = this.sessions.get(k)?.offer(entry) ?? false;
      seen.set(k, sent);
      if (!sent) ring.push(device);
    }
    for (const d of res.notify) if (!seen.has(keyOf(d))) ring.push(d);
    this.ring(ring);
  }

  /** Tells the devices that entries landed in their inboxes. */
  ring(devices: DeviceAddress[]): void {
    const { cluster, push } = this.d;
    if (devices.length > 0) this.d.metrics.doorbell(devices.length);
    let remote: DeviceAddress[] | undefined;
    for (const d of devices) {
      if (isPendingDevice(d.device)) {
        // A pending inbox has no connection, token or node. Its user's first device may have
        // taken it over after the commit listed it: a session of the user here reads again.
        for (const s of this.userSessions.get(d.user) ?? []) s.notify();
        continue;
      }
      const s = this.sessions.get(keyOf(d));
      if (s) s.notify();
      else if (cluster) (remote ??= []).push(d);
      else if (push.enabled) void push.wake(d);
    }
    if (remote) this.ringRemote(remote).catch((e) => this.d.log.warn('cluster ring failed', e));
  }

  /** Rings the nodes of devices not connected here; wakes by push those connected nowhere. */
  private async ringRemote(devices: DeviceAddress[]): Promise<void> {
    const c = this.d.cluster!;
    await c.ring(devices);
    const push = this.d.push;
    if (!push.enabled) return;
    let where: Array<string | undefined>;
    try {
      where = await c.locate(devices);
    } catch (e) {
      // Unknown whereabouts: a wake-up too many beats a device left asleep.
      this.d.log.warn('cluster locate failed', e);
      where = [];
    }
    for (let i = 0; i < devices.length; i++) if (where[i] === undefined) void push.wake(devices[i]!);
  }
}
