/**
 * Retention expiry as a simulator fault, and the oracle that checks what the app was told about
 * it: which message entries the server dropped from which device's inbox (read from the store
 * around each expiry, not taken from the server's own gap notices), and, at the end of the run,
 * that every one of them was shown on that device or reported there by an `expired` gap covering
 * it — never both — and that no gap covers anything the server did not drop.
 * @packageDocumentation
 */
import type { DeviceAddress, InboxEntry, ServerStore } from '../server/store.js';
import { PENDING_DEVICE } from '../server/users.js';

/** A message entry the server removed from a device's inbox at expiry, before the device acked it. */
export interface DroppedEntry {
  /** `conv|from|fromDevice`, as the device names the stream. */
  stream: string;
  seq: number;
  /** `from/fromDevice/id`, as the device's `seen` map names the message. */
  key: string;
  id: string;
}

/** A `gap` event as the simulator logged it: `after` messages of its stream had been shown before it. */
export interface LoggedGap {
  fromSeq: number;
  toSeq: number;
  reason: string | undefined;
  after: number;
}

/** What the oracle needs of a simulated device. */
export interface ExpiryDevice {
  user: string;
  device: string;
  name: string;
  /** (from/fd/id) → `message` events. */
  seen: Map<string, number>;
  /** stream → `gap` events, in order. */
  gapLog: Map<string, LoggedGap[]>;
}

/** The stream key of an inbox message entry as its device sees it (conversation, sender device). */
function streamOf(device: DeviceAddress, e: Extract<InboxEntry, { kind: 'msg' }>): string {
  const conv = e.group ? e.to : e.from.user === device.user ? e.to : e.from.user;
  return `${conv}|${e.from.user}|${e.from.device}`;
}

/** Every entry in the device's inbox committed before `cutoff`, by offset. */
async function agedEntries(
  store: ServerStore,
  device: DeviceAddress,
  cutoff: number,
): Promise<Map<number, InboxEntry>> {
  const out = new Map<number, InboxEntry>();
  for (let after = 0; ;) {
    const page = await store.readInbox(device, after, 500);
    for (const e of page) if (e.ts < cutoff) out.set(e.offset, e);
    if (page.length < 500) return out;
    after = page[page.length - 1]!.offset;
  }
}

/**
 * Records, around each expiry, what the server dropped from each device's inbox, and checks at
 * the end what the devices were told. A user's pending inbox counts as its one device's (that
 * device takes it over, notices included).
 */
export class ExpiryOracle {
  /** device name → entries dropped from its inbox. */
  readonly dropped = new Map<string, DroppedEntry[]>();
  /** message id → names of the devices it was dropped for. */
  readonly droppedFor = new Map<string, Set<string>>();
  /** device name → ids named by status entries that expired in its inbox (receipts it never got). */
  readonly lostStatuses = new Map<string, Set<string>>();
  /** Names of the devices that lost group events to expiry (their group views may stay behind). */
  readonly lostGroupEvents = new Set<string>();
  /**
   * `owner<from` pairs of device names: `owner` lost an encryption-layer control message (seq 0)
   * from `from`, such as a request to send a message again that `from` could not decrypt.
   */
  readonly lostControl = new Set<string>();
  /** The latest cutoff: dedupe records of messages committed before it are gone. */
  lastCutoff = Number.NEGATIVE_INFINITY;
  /** Entries dropped in the run. */
  entries = 0;

  /**
   * Runs `expire` (the server's expiry with `cutoff`), reading every device's aged entries from
   * `store` before and after it: the ones gone after it were dropped (or acked in between, which
   * the end check tells apart by what the device showed); any still there is a violation.
   */
  async around(
    store: ServerStore,
    devices: readonly ExpiryDevice[],
    cutoff: number,
    expire: () => Promise<unknown>,
    violations: string[],
  ): Promise<number> {
    const inboxes = devices.flatMap((d) => [
      { d, at: { user: d.user, device: d.device } },
      { d, at: { user: d.user, device: PENDING_DEVICE } },
    ]);
    const before = await Promise.all(inboxes.map((x) => agedEntries(store, x.at, cutoff)));
    await expire();
    const after = await Promise.all(inboxes.map((x) => agedEntries(store, x.at, cutoff)));
    this.lastCutoff = Math.max(this.lastCutoff, cutoff);
    let n = 0;
    for (const [i, { d, at }] of inboxes.entries()) {
      for (const [offset, e] of before[i]!) {
        if (after[i]!.has(offset)) {
          violations.push(
            `expiry: an entry committed before the cutoff is still in ${at.user}/${at.device}'s inbox`,
          );
          continue;
        }
        if (e.kind === 'status') {
          const ids = this.lostStatuses.get(d.name) ?? new Set<string>();
          this.lostStatuses.set(d.name, ids);
          for (const id of e.ids) ids.add(id);
        }
        if (e.kind === 'group') this.lostGroupEvents.add(d.name);
        if (e.kind === 'msg' && e.seq === 0)
          this.lostControl.add(`${d.name}<${e.from.user}/${e.from.device}`);
        if (e.kind !== 'msg' || e.seq === 0) continue;
        const list = this.dropped.get(d.name) ?? [];
        this.dropped.set(d.name, list);
        list.push({
          stream: streamOf(at, e),
          seq: e.seq,
          key: `${e.from.user}/${e.from.device}/${e.id}`,
          id: e.id,
        });
        const on = this.droppedFor.get(e.id) ?? new Set<string>();
        this.droppedFor.set(e.id, on.add(d.name));
        n++;
      }
    }
    this.entries += n;
    return n;
  }

  /** Whether device `name` lost a status entry about message `id` (so its final status may lag). */
  lostStatus(name: string, id: string): boolean {
    return this.lostStatuses.get(name)?.has(id) ?? false;
  }

  /**
   * Whether a control message between devices `sender` and `asker` expired: the asker's request
   * to send a message again, or the sender's new copy answering it. Either way the asker's hole
   * can only end in an `undecryptable` gap.
   */
  lostRequest(sender: string, asker: string): boolean {
    return this.lostControl.has(`${sender}<${asker}`) || this.lostControl.has(`${asker}<${sender}`);
  }

  /** Whether message `id` was dropped for device `name`. */
  droppedOn(id: string, name: string): boolean {
    return this.droppedFor.get(id)?.has(name) ?? false;
  }

  /**
   * Every dropped entry was shown on its device or covered there by an `expired` gap, not both;
   * every gap says `expired` and covers only numbers the server dropped for that device in that
   * stream, or says `undecryptable` in a stream where a request to send again (or its answer)
   * expired between the sender and this device (nothing else makes a gap in these runs).
   */
  check(devices: readonly ExpiryDevice[], violations: string[]): void {
    for (const d of devices) {
      const droppedIn = new Map<string, Map<number, DroppedEntry>>();
      for (const e of this.dropped.get(d.name) ?? []) {
        const m = droppedIn.get(e.stream) ?? new Map<number, DroppedEntry>();
        droppedIn.set(e.stream, m.set(e.seq, e));
      }
      const covered = new Set<string>();
      for (const [stream, gaps] of d.gapLog) {
        for (const g of gaps) {
          const [, fromUser, fromDevice] = stream.split('|');
          if (g.reason === 'undecryptable' && this.lostRequest(`${fromUser}/${fromDevice}`, d.name)) continue;
          if (g.reason !== 'expired') {
            violations.push(
              `gap reasons: ${d.name} reported ${stream} ${g.fromSeq}..${g.toSeq} as ${g.reason ?? 'no reason'}; only expiry drops messages here`,
            );
            continue;
          }
          for (let s = g.fromSeq; s <= g.toSeq; s++) {
            const e = droppedIn.get(stream)?.get(s);
            if (!e) {
              violations.push(
                `gap reasons: ${d.name} reported ${stream} #${s} expired, the server dropped no such entry`,
              );
              break;
            }
            covered.add(`${stream}#${s}`);
          }
        }
      }
      for (const e of this.dropped.get(d.name) ?? []) {
        const shown = (d.seen.get(e.key) ?? 0) > 0;
        const gap = covered.has(`${e.stream}#${e.seq}`);
        if (shown && gap) violations.push(`expiry: ${e.id} shown on ${d.name} and reported expired there`);
        if (!shown && !gap)
          violations.push(
            `expiry: ${e.id} expired for ${d.name}, which neither showed it nor got an expired gap`,
          );
      }
    }
  }
}
