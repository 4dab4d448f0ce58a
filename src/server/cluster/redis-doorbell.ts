/**
 * The Redis adapter's doorbell as bytes: the devices a ring names, each with the entries that
 * ride with it (issue 19), in msgpack rather than JSON. A message's body goes as its own bytes
 * (JSON had to base64 it) and nothing is stringified or parsed as text on either node.
 *
 * A doorbell published on a node's channel is {@link DOORBELL_MARK} followed by one msgpack value
 * per device, back to back (the RING script concatenates them as they come, so each node's share
 * of one ring is one publish): `[user, device, ...entries]`, an entry a tuple:
 * - message: `[0, offset, id, fromUser, fromDevice, to, group (0/1), seq, ts, body]`
 * - status: `[1, offset, status, ids, by, ts]`
 *
 * Every other message on a node's channel (take-overs, closes, typing, link approvals) stays a
 * JSON object, which starts with `{`, never with the mark.
 * @internal
 * @packageDocumentation
 */
import { Packr } from 'msgpackr';
import type { DeviceAddress, DoorbellEntry } from './types.js';

/** The first byte of a binary doorbell; a JSON message on the same channel starts with `{`. */
export const DOORBELL_MARK = '\u0001';
const MARK_BYTE = 1;

const MSG = 0;
const STATUS = 1;
const STATUSES: ReadonlySet<string> = new Set(['delivered', 'read', 'expired']);

// Plain msgpack; `copyBuffers`: a decoded body is its own bytes, not a view that would keep the
// whole published payload alive for as long as a session holds the entry.
const packr = new Packr({ useRecords: false, moreTypes: false, copyBuffers: true });

type Entry = DoorbellEntry['entry'];

function entryTuple(e: Entry): unknown[] {
  if (e.kind === 'status') return [STATUS, e.offset, e.status, e.ids, e.by, e.ts];
  return [MSG, e.offset, e.id, e.from.user, e.from.device, e.to, e.group ? 1 : 0, e.seq, e.ts, e.body];
}

/** One device of a doorbell with the entries that ride for it (`mine`: its own, in order). */
export function doorbellMember(d: DeviceAddress, mine: readonly DoorbellEntry[] | undefined): Buffer {
  const value: unknown[] = [d.user, d.device];
  for (const { entry } of mine ?? []) value.push(entryTuple(entry));
  return packr.pack(value);
}

const isStr = (v: unknown): v is string => typeof v === 'string';
const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

/** An entry tuple as an inbox entry, or undefined when it is not one a doorbell may carry. */
function readEntry(t: unknown): Entry | undefined {
  if (!Array.isArray(t) || !isNum(t[1])) return undefined;
  if (t[0] === STATUS) {
    const [, offset, status, ids, by, ts] = t as unknown[];
    if (!isStr(status) || !STATUSES.has(status) || !Array.isArray(ids) || !ids.every(isStr)) return undefined;
    if (!isStr(by) || !isNum(ts)) return undefined;
    return { offset: offset as number, kind: 'status', status: status as 'read', ids, by, ts };
  }
  if (t[0] !== MSG) return undefined;
  const [, offset, id, user, device, to, group, seq, ts, body] = t as unknown[];
  if (!isStr(id) || !isStr(user) || !isStr(device) || !isStr(to) || !isNum(seq) || !isNum(ts))
    return undefined;
  if (!(body instanceof Uint8Array)) return undefined;
  const entry: Entry = {
    offset: offset as number,
    kind: 'msg',
    id,
    from: { user, device },
    to,
    seq,
    ts,
    // A plain Uint8Array, as the store would read it back (the decoder may hand out a Buffer).
    body: Object.getPrototypeOf(body) === Uint8Array.prototype ? body : new Uint8Array(body),
  };
  if (group === 1) entry.group = true;
  return entry;
}

/** Whether a payload from a node's channel is a binary doorbell (else it is JSON). */
export const isDoorbell = (payload: Buffer): boolean => payload.length > 0 && payload[0] === MARK_BYTE;

/**
 * The devices a binary doorbell names and the entries that rode for them. An entry that does not
 * read as one a doorbell may carry is dropped (the device's node then reads its inbox, which has
 * it); a member that does not name a device is skipped. Throws when the payload is not msgpack.
 */
export function readDoorbell(payload: Buffer): { devices: DeviceAddress[]; entries?: DoorbellEntry[] } {
  const devices: DeviceAddress[] = [];
  let entries: DoorbellEntry[] | undefined;
  for (const m of packr.unpackMultiple(payload.subarray(1)) ?? []) {
    if (!Array.isArray(m) || !isStr(m[0]) || !isStr(m[1])) continue;
    const device = { user: m[0], device: m[1] };
    devices.push(device);
    for (let i = 2; i < m.length; i++) {
      const entry = readEntry(m[i]);
      if (entry) (entries ??= []).push({ device, entry });
    }
  }
  return entries ? { devices, entries } : { devices };
}
