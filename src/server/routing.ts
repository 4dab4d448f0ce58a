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
import { addressKey } from './address.js';
import { entriesByDevice } from './cluster/common.js';
import type { ClusterAdapter, DoorbellEntry } from './cluster/types.js';
import type { ServerMetrics } from './metrics.js';
import type { Logger } from './options.js';
import type { PushWake } from './push-wake.js';
import type { Session } from './session.js';
import type { DeviceAddress, InboxEntry, MessageInput, NotifyResult } from './store.js';
import type { Tracer } from './trace.js';
import { isPendingDevice } from './users.js';
import { committedMsgFrame } from './wire.js';

/**
 * A device's session key (`addressKey`, length-prefixed). Unambiguous for any two strings, not
 * only valid ids: a separator character would let ids containing it collide, and one device take
 * over another's session.
 */
const keyOf = addressKey;

/** Most message ids a status may name to ride in a doorbell (a doorbell stays small). */
const MAX_CARRIED_IDS = 32;

/** Largest message body that rides in a doorbell (a longer one is read from the inbox). */
const MAX_CARRIED_BODY = 1024;

/** Whether an entry is small enough to ride in a doorbell: a short status or a short message. */
function canRide(entry: InboxEntry): entry is DoorbellEntry['entry'] {
  if (entry.kind === 'status') return entry.ids.length <= MAX_CARRIED_IDS;
  return entry.kind === 'msg' && entry.body.length <= MAX_CARRIED_BODY;
}

/**
 * The entries that ride in one ring's doorbells, per device not connected to this node. A device
 * with any entry that cannot ride gets none: its node reads its inbox, which has them all.
 */
export class Carried {
  /** device key → its entries so far, in offset order (undefined: it reads its inbox). */
  private readonly byDevice = new Map<string, DoorbellEntry[] | undefined>();

  /**
   * @param perDevice Most entries that ride for one device (more: it reads its inbox): the
   *   delivery window (`deliveryWindow`), since a session takes no more pushes than its window
   *   holds anyway. It was a fixed 8: at saturation a commit batch often held more than eight
   *   messages for one device (a sender keeps up to its window in flight), none of them rode, and
   *   the device's node read its inbox for them (with three nodes and every message crossing,
   *   370–610 such doorbells per node in a 5-second window, about a third of the entries
   *   delivered read back from the store). A ring stays bounded by its batch (at most
   *   `maxCommitBatch` items, each body at most 1 KB to ride).
   */
  constructor(private readonly perDevice: number) {}

  /** Adds the next entry written for `device`. */
  add(device: DeviceAddress, entry: InboxEntry): void {
    const k = keyOf(device);
    const list = this.byDevice.has(k) ? this.byDevice.get(k) : [];
    if (!list || !canRide(entry) || list.length >= this.perDevice) this.byDevice.set(k, undefined);
    else {
      list.push({ device, entry });
      this.byDevice.set(k, list);
    }
  }

  /** `device` has entries in this ring that are not known here: none of its entries ride. */
  skip(device: DeviceAddress): void {
    this.byDevice.set(keyOf(device), undefined);
  }

  /** What rides, over every device (undefined when nothing does). */
  entries(): DoorbellEntry[] | undefined {
    let out: DoorbellEntry[] | undefined;
    for (const list of this.byDevice.values()) if (list) (out ??= []).push(...list);
    return out;
  }
}

/** The inbox entry a just-committed message is for device `d` (its own envelope when sealed). */
function messageEntry(
  input: MessageInput,
  ts: number,
  offset: number,
  bodies: Map<string, Uint8Array> | undefined,
  d: DeviceAddress,
): InboxEntry {
  const e: InboxEntry = {
    offset,
    kind: 'msg',
    id: input.id,
    from: input.from,
    to: input.to,
    seq: input.seq,
    ts,
    body: bodies?.get(keyOf(d)) ?? input.body,
  };
  if (input.group) e.group = true;
  return e;
}

/** What routing needs of the engine. */
export interface RouterDeps {
  metrics: ServerMetrics;
  tracer: Tracer;
  log: Logger;
  cluster: ClusterAdapter | undefined;
  push: PushWake;
  /** Most entries that ride in one device's doorbell: the delivery window (see {@link Carried}). */
  carryPerDevice: number;
}

/** This node's sessions by device and by user, and the ways to reach a device. */
export class Router {
  /** device key → its open session on this node. */
  readonly sessions = new Map<string, Session>();
  /** user → its devices' open sessions on this node. */
  readonly userSessions = new Map<string, Set<Session>>();

  constructor(private readonly d: RouterDeps) {}

  /** A collector of the entries that ride in one ring's doorbells; none without a cluster. */
  carrying(): Carried | undefined {
    return this.d.cluster ? new Carried(this.d.carryPerDevice) : undefined;
  }

  /** The open session of a device on this node. */
  session(addr: DeviceAddress): Session | undefined {
    return this.sessions.get(keyOf(addr));
  }

  /**
   * Pushes a just-committed message straight to each recipient session that has delivered
   * everything before it (the common case for online devices), without reading it back from the
   * store, and encoded straight from what was committed; the others go to `ring`. With a
   * cluster, the entry of a device not connected here goes to `carried` too, so that a short
   * message rides in its node's doorbell and is pushed there without a read.
   */
  deliverNew(
    input: MessageInput,
    ts: number,
    devices: DeviceAddress[],
    offsets: number[],
    ring: DeviceAddress[],
    carried?: Carried,
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
        if (!remote) continue;
        ring.push(d);
        carried?.add(d, messageEntry(input, ts, offsets[i]!, bodies, d));
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
   * sessions here that can take them at once, and rings every other device of the result. With
   * a cluster, the small statuses of a device not connected here ride in its doorbell, so its
   * node can push them without reading its inbox back.
   */
  deliverWritten(res: NotifyResult): void {
    if (!res.entries) return this.ring(res.notify);
    const ring: DeviceAddress[] = [];
    const seen = new Map<string, boolean>(); // device → all its entries so far went out
    // Devices not connected here: the entries that ride in their doorbells.
    const away = this.d.cluster ? new Carried(this.d.carryPerDevice) : undefined;
    for (const { device, entry } of res.entries) {
      const k = keyOf(device);
      const s = this.sessions.get(k);
      if (!s) {
        if (!seen.has(k)) ring.push(device);
        seen.set(k, false);
        away?.add(device, entry);
        continue;
      }
      // An earlier entry could not go: the read takes them all.
      if (seen.get(k) === false) continue;
      const sent = s.offer(entry);
      seen.set(k, sent);
      if (!sent) ring.push(device);
    }
    for (const d of res.notify) if (!seen.has(keyOf(d))) ring.push(d);
    this.ring(ring, away?.entries());
  }

  /**
   * A doorbell from the cluster: each listed session here takes the entries that rode with it
   * when it can take them at once, and reads its inbox otherwise.
   */
  doorbell(devices: DeviceAddress[], entries: DoorbellEntry[] | undefined): void {
    const byDevice = entriesByDevice(entries);
    for (const d of devices) {
      const k = keyOf(d);
      const s = this.sessions.get(k);
      if (!s) continue;
      const mine = byDevice?.get(k);
      if (!mine || !mine.every((e) => s.offer(e.entry))) s.notify();
    }
  }

  /**
   * Tells the devices that entries landed in their inboxes; `carried` are the entries that ride
   * in the doorbells of devices on other nodes (see {@link deliverWritten}).
   */
  ring(devices: DeviceAddress[], carried?: DoorbellEntry[]): void {
    const { cluster, push } = this.d;
    let remote: DeviceAddress[] | undefined;
    // A batch lists a device once per entry it wrote for it: one doorbell each is enough.
    const rung = new Set<string>();
    for (const d of devices) {
      const k = keyOf(d);
      if (rung.has(k)) continue;
      rung.add(k);
      if (isPendingDevice(d.device)) {
        // A pending inbox has no connection, token or node. Its user's first device may have
        // taken it over after the commit listed it: a session of the user here reads again.
        for (const s of this.userSessions.get(d.user) ?? []) s.notify();
        continue;
      }
      const s = this.sessions.get(k);
      if (s) s.notify();
      else if (cluster) (remote ??= []).push(d);
      else if (push.enabled) void push.wake(d);
    }
    if (rung.size > 0) this.d.metrics.doorbell(rung.size);
    if (remote) this.ringRemote(remote, carried).catch((e) => this.d.log.warn('cluster ring failed', e));
  }

  /** Rings the nodes of devices not connected here; wakes by push those connected nowhere. */
  private async ringRemote(devices: DeviceAddress[], carried: DoorbellEntry[] | undefined): Promise<void> {
    const c = this.d.cluster!;
    await (carried ? c.ring(devices, carried) : c.ring(devices));
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
