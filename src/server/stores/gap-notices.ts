/**
 * Gap notices as the built-in stores collect and keep them: every message entry an expiry removes
 * before its device acked it is named, by stream and sequence number, in one notice per device
 * (see `ServerStore` "Expiry"), and every message a full device was skipped for, in the device's
 * one `inbox_full` notice (see `ServerStore` "Quotas"). Pure code: each store feeds it the rows it removed and writes the
 * notices it returns into its own inboxes.
 * What store-kit.ts re-exports from here is public (`postbox/server/store-kit`).
 * @packageDocumentation
 */
import type { DeviceAddress, GapStream } from '../store.js';
import { merge } from '../../client/gaps.js';

// One notice becomes one `gap` frame: its bound is the frame's (with the longest ids a stream
// costs about 330 bytes, so a notice stays far below the 256 KiB frame limit).
import { MAX_GAP_RANGES } from '../../protocol/frames.js';

export { MAX_GAP_RANGES };

/** A removed message entry, as a notice needs it. */
export interface DroppedMessage {
  from: DeviceAddress;
  to: string;
  group: boolean;
  seq: number;
}

interface StreamSeqs {
  from: DeviceAddress;
  to: string;
  group: boolean;
  seqs: number[];
  /** Ranges carried over from the device's earlier notices that expired. */
  carried: Array<[number, number]>;
}

/** One device's dropped messages, by stream. */
interface DeviceDrops<K> {
  key: K;
  addr: DeviceAddress;
  streams: Map<string, StreamSeqs>;
}

const streamId = (m: Omit<DroppedMessage, 'seq'>): string =>
  `${m.from.user.length}:${m.from.user}${m.from.device.length}:${m.from.device}${m.to}`;

/** Sorted, deduplicated numbers as inclusive ranges. */
export function toRanges(seqs: readonly number[]): Array<[number, number]> {
  const sorted = [...new Set(seqs)].sort((a, b) => a - b);
  const out: Array<[number, number]> = [];
  for (const s of sorted) {
    const last = out[out.length - 1];
    if (last && s === last[1] + 1) last[1] = s;
    else out.push([s, s]);
  }
  return out;
}

/**
 * Collects the message entries one expiry transaction removes, per device (`K`: the store's own
 * handle of the device, e.g. its row id), and hands back the notices to append.
 */
export class GapCollector<K> {
  private readonly devices = new Map<K, DeviceDrops<K>>();

  /** A removed entry of `addr`'s inbox. Control messages (seq 0) are in no sequence: skipped. */
  add(key: K, addr: DeviceAddress, m: DroppedMessage): void {
    if (m.seq <= 0) return;
    this.stream(key, addr, m).seqs.push(m.seq);
  }

  /**
   * A notice of `addr`'s inbox that expires itself (its device stayed away through another
   * retention period): what it named is named again in the device's new notice, so a device
   * away through any number of expiries still learns every number it lost, and why.
   */
  carry(key: K, addr: DeviceAddress, streams: readonly GapStream[]): void {
    for (const s of streams) {
      this.stream(key, addr, { from: s.from, to: s.to, group: s.group === true }).carried.push(...s.ranges);
    }
  }

  private stream(key: K, addr: DeviceAddress, m: Omit<DroppedMessage, 'seq'>): StreamSeqs {
    let d = this.devices.get(key);
    if (!d) this.devices.set(key, (d = { key, addr, streams: new Map() }));
    const id = streamId(m);
    let s = d.streams.get(id);
    if (!s) d.streams.set(id, (s = { from: m.from, to: m.to, group: m.group, seqs: [], carried: [] }));
    return s;
  }

  /** Each device's notices (one, or several past {@link MAX_GAP_RANGES} ranges), in first-seen order. */
  notices(): Array<{ key: K; addr: DeviceAddress; notices: GapStream[][] }> {
    return [...this.devices.values()].map((d) => ({ key: d.key, addr: d.addr, notices: split(d) }));
  }
}

function split<K>(d: DeviceDrops<K>): GapStream[][] {
  const out: GapStream[][] = [];
  let current: GapStream[] = [];
  let room = MAX_GAP_RANGES;
  for (const s of d.streams.values()) {
    const ranges = s.carried.length > 0 ? merge([...toRanges(s.seqs), ...s.carried]) : toRanges(s.seqs);
    for (let i = 0; i < ranges.length;) {
      if (room === 0) {
        out.push(current);
        current = [];
        room = MAX_GAP_RANGES;
      }
      const part = ranges.slice(i, i + room);
      const stream: GapStream = { from: { ...s.from }, to: s.to, ranges: part };
      if (s.group) stream.group = true;
      current.push(stream);
      room -= part.length;
      i += part.length;
    }
  }
  if (current.length > 0) out.push(current);
  return out;
}

/**
 * The `inbox_full` notices a full device is to hold after skipping `skipped`: what its current
 * notices (`held`) named, with the skipped messages added: one notice, or several past
 * {@link MAX_GAP_RANGES} ranges. The caller replaces the held notices by these, so a device
 * has one such notice however many messages skipped it.
 */
export function extendFullNotices(
  held: ReadonlyArray<readonly GapStream[]>,
  skipped: readonly DroppedMessage[],
): GapStream[][] {
  const c = new GapCollector<0>();
  const device = { user: '', device: '' }; // one device: the collector's key is all it needs
  for (const streams of held) c.carry(0, device, streams);
  for (const m of skipped) c.add(0, device, m);
  return c.notices()[0]?.notices ?? [];
}

/**
 * The stored form of a notice's streams, for the SQL stores' `ids` text column (a notice row has
 * `status = 'gap'` and its reason in `by_user`): JSON `[[fromUser, fromDevice, to, 1 if group
 * else 0, first, last, first, last, …], …]`, no field names.
 */
export function encodeGapStreams(streams: readonly GapStream[]): string {
  return JSON.stringify(
    streams.map((s) => [s.from.user, s.from.device, s.to, s.group ? 1 : 0, ...s.ranges.flat()]),
  );
}

/** A notice's streams from their stored form ({@link encodeGapStreams}). */
export function decodeGapStreams(text: string): GapStream[] {
  const rows = JSON.parse(text) as Array<[string, string, string, number, ...number[]]>;
  return rows.map(([user, device, to, group, ...flat]) => {
    const ranges: Array<[number, number]> = [];
    for (let i = 0; i + 1 < flat.length; i += 2) ranges.push([flat[i]!, flat[i + 1]!]);
    const s: GapStream = { from: { user, device }, to, ranges };
    if (group === 1) s.group = true;
    return s;
  });
}

/** The status column's value of a notice row: no status of `EntryStatus` has it. */
export const GAP_ROW_STATUS = 'gap';
