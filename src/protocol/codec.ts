import { Packr } from 'msgpackr';
import type * as z from 'zod/mini';
import { PostboxError } from './errors.js';
import { clientFrame, serverFrame, type ClientFrame, type ServerFrame } from './frames.js';
import { passesFastCheck } from './fast-checks.js';
import { peekRequestId, scanMsgpack } from './msgpack-scan.js';

// Plain msgpack (no msgpackr records) so any msgpack implementation can speak the protocol.
const packr = new Packr({ useRecords: false, variableMapSize: true, moreTypes: false });

/** Default largest frame, in bytes, accepted before decoding. */
export const DEFAULT_MAX_FRAME_BYTES = 256 * 1024;

/** Default largest frame, in bytes, a server accepts before the connection is authenticated. */
export const DEFAULT_MAX_PRE_HELLO_FRAME_BYTES = 16 * 1024;

/**
 * The compact wire form. A frame travels as a msgpack array `[code, field1, field2, …]`: the
 * type's code, then its fields in the order below (absent optional fields are nil, trailing ones
 * left out), so no field name ever goes on the wire. Message ids that are canonical ULIDs travel
 * as their 16 bytes instead of 26 characters. Decoders also accept the map form
 * (`{ t: 'send', r: 1, … }`), which is handy for debugging and other-language clients.
 * See docs/protocol.md.
 */
const LAYOUT: Record<string, { code: number; fields: readonly string[] }> = {
  hello: { code: 1, fields: ['v', 'cred', 'dev'] },
  send: { code: 2, fields: ['r', 'id', 'to', 'seq', 'b', 'g', 'e'] },
  rcpt: { code: 3, fields: ['r', 'id', 'to', 'ids'] },
  ack: { code: 4, fields: ['o'] },
  ping: { code: 5, fields: [] },
  pong: { code: 6, fields: [] },
  welcome: { code: 7, fields: ['v', 'u', 'd', 'hb', 'lim'] },
  ok: { code: 8, fields: ['r'] },
  err: { code: 9, fields: ['r', 'c', 'm', 'd'] },
  msg: { code: 10, fields: ['o', 'id', 'f', 'fd', 'seq', 'ts', 'b', 'to', 'g'] },
  st: { code: 11, fields: ['o', 's', 'ids', 'by', 'ts'] },
  grp: { code: 12, fields: ['r', 'id', 'g', 'op', 'm', 'n'] },
  lnk: { code: 13, fields: ['r', 'code'] },
  unl: { code: 14, fields: ['r', 'd'] },
  sub: { code: 15, fields: ['r', 'u'] },
  unsub: { code: 16, fields: ['u'] },
  typ: { code: 17, fields: ['to', 'on', 'g'] },
  gev: { code: 18, fields: ['o', 'g', 'v', 'op', 'by', 'm', 'ts', 'n', 's'] },
  lcode: { code: 19, fields: ['code', 'exp'] },
  pres: { code: 20, fields: ['u', 'on', 'ls'] },
  typn: { code: 21, fields: ['f', 'fd', 'on', 'to', 'g'] },
  keys: { code: 22, fields: ['r', 'rid', 'ik', 'spk', 'lrk', 'pk', 'kpk'] },
  kget: { code: 23, fields: ['r', 'u', 'd'] },
  kb: { code: 24, fields: ['r', 'b', 'w'] },
  klow: { code: 25, fields: ['pk', 'kpk'] },
  ptok: { code: 26, fields: ['r', 'k', 'tok'] },
  gap: { code: 27, fields: ['o', 'why', 's', 'ts'] },
  kr: { code: 28, fields: ['u'] },
};
const BY_CODE: Array<{ t: string; fields: readonly string[] } | undefined> = [];
for (const [t, l] of Object.entries(LAYOUT)) BY_CODE[l.code] = { t, fields: l.fields };

/** Codes of the frames whose first field is a request id. */
const REQUEST_CODES: ReadonlySet<number> = new Set(
  Object.values(LAYOUT)
    .filter((l) => l.fields[0] === 'r')
    .map((l) => l.code),
);

/**
 * The request id of a client frame, read from its bytes without decoding it (either wire form),
 * or undefined. For answering a frame refused unread, e.g. one over the sender's cost budget.
 */
export function peekClientRequestId(data: Uint8Array): number | undefined {
  return peekRequestId(data, REQUEST_CODES);
}

/** Fields that hold one message id, and fields that hold a list of them. */
const ID_FIELD = 'id';
const IDS_FIELD = 'ids';

const CROCKFORD = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
const CROCKFORD_VALUE = new Int8Array(128).fill(-1);
for (let i = 0; i < CROCKFORD.length; i++) CROCKFORD_VALUE[CROCKFORD.charCodeAt(i)] = i;

/** The 16 bytes of a canonical ULID (26 upper-case Crockford characters, first ≤ 7), else undefined. */
function ulidBytes(id: string): Uint8Array | undefined {
  if (id.length !== 26) return undefined;
  const out = new Uint8Array(16);
  // 130 bits of base32, of which the top 2 must be zero: read 5 bits at a time, big-endian.
  let acc = 0;
  let bits = -2; // the first character's two surplus high bits are dropped
  let k = 0;
  for (let i = 0; i < 26; i++) {
    const c = id.charCodeAt(i);
    const v = c < 128 ? CROCKFORD_VALUE[c]! : -1;
    if (v < 0 || (i === 0 && v > 7)) return undefined;
    acc = ((acc << 5) | v) & 0xffff;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out[k++] = (acc >> bits) & 0xff;
    }
  }
  return out;
}

/** Character codes of one ULID being decoded (reused: decoding is synchronous). */
const ULID_CODES = new Array<number>(26).fill(0);
const CROCKFORD_CODES = Array.from(CROCKFORD, (c) => c.charCodeAt(0));

/**
 * The canonical ULID string of 16 bytes: built in one step from its character codes, not by 26
 * concatenations (each of which would leave a string behind for the garbage collector).
 */
function ulidString(b: Uint8Array): string {
  let acc = 0;
  let bits = 2; // 128 bits read as 130: two leading zero bits
  let i = 0;
  for (let n = 0; n < 26; n++) {
    while (bits < 5) {
      acc = ((acc << 8) | b[i++]!) & 0xfff;
      bits += 8;
    }
    bits -= 5;
    ULID_CODES[n] = CROCKFORD_CODES[(acc >> bits) & 31]!;
  }
  return String.fromCharCode.apply(null, ULID_CODES);
}

const packId = (v: unknown): unknown => (typeof v === 'string' ? (ulidBytes(v) ?? v) : v);
const unpackId = (v: unknown): unknown =>
  v instanceof Uint8Array && v.byteLength === 16 ? ulidString(v) : v;

/** Encodes a frame to bytes, in the compact wire form. Undefined optional fields are left out. */
export function encodeFrame(frame: ClientFrame | ServerFrame): Uint8Array {
  const layout = LAYOUT[frame.t];
  // A type without a layout (only tests build one) goes as a map.
  if (!layout) return packr.pack(stripUndefined(frame));
  const record = frame as unknown as Record<string, unknown>;
  const out: unknown[] = [layout.code];
  let end = 1;
  for (const f of layout.fields) {
    let v = record[f];
    if (v !== undefined) {
      if (f === ID_FIELD) v = packId(v);
      else if (f === IDS_FIELD && Array.isArray(v)) v = v.map(packId);
    }
    out.push(v === undefined ? null : v);
    if (v !== undefined) end = out.length;
  }
  out.length = end;
  return packr.pack(out);
}

/**
 * Encodes an inbox-entry frame (`msg`, `st`, `gev`: offset first) once for many devices: the
 * returned function gives the bytes for one offset, equal to `encodeFrame({ ...frame, o })`,
 * by splicing the offset between the shared head and tail (a msgpack array is the concatenation
 * of its elements). A group message to 1,024 members is packed once, not 1,024 times.
 */
export function encodeAtOffset(frame: ServerFrame): (offset: number) => Uint8Array {
  const layout = LAYOUT[frame.t];
  if (!layout || layout.fields[0] !== 'o') return (o) => encodeFrame({ ...frame, o } as ServerFrame);
  // Offset 0 packs as the single byte 0x00, right after the array header and the type code.
  const whole = encodeFrame({ ...frame, o: 0 } as ServerFrame);
  const h = whole[0]! <= 0x9f ? 1 : whole[0] === 0xdc ? 3 : 5;
  const head = whole.slice(0, h + 1);
  const tail = whole.slice(h + 2);
  return (o) => {
    // msgpack's shortest unsigned int, written in place; larger ones (never in practice) by packr.
    const n = o < 0x80 ? 1 : o < 0x100 ? 2 : o < 0x10000 ? 3 : o < 0x100000000 ? 5 : 0;
    const mid = n === 0 ? packr.pack(o) : undefined;
    const len = mid ? mid.length : n;
    const out = new Uint8Array(head.length + len + tail.length);
    out.set(head, 0);
    const p = head.length;
    if (mid) out.set(mid, p);
    else if (n === 1) out[p] = o;
    else if (n === 2) {
      out[p] = 0xcc;
      out[p + 1] = o;
    } else if (n === 3) {
      out[p] = 0xcd;
      out[p + 1] = o >>> 8;
      out[p + 2] = o & 0xff;
    } else {
      out[p] = 0xce;
      new DataView(out.buffer).setUint32(p + 1, o);
    }
    out.set(tail, head.length + len);
    return out;
  };
}

/** The frame object of a compact array, or `raw` itself when it is not one (the schema then judges it). */
function fromWire(raw: unknown): unknown {
  if (!Array.isArray(raw)) return raw;
  const layout = typeof raw[0] === 'number' ? BY_CODE[raw[0]] : undefined;
  if (!layout || raw.length - 1 > layout.fields.length) return { t: undefined };
  const frame: Record<string, unknown> = { t: layout.t };
  for (let i = 0; i < layout.fields.length; i++) {
    const f = layout.fields[i]!;
    let v = raw[i + 1];
    if (v === undefined || v === null) continue;
    if (f === ID_FIELD) v = unpackId(v);
    else if (f === IDS_FIELD && Array.isArray(v)) v = v.map(unpackId);
    frame[f] = v;
  }
  return frame;
}

function stripUndefined<T extends object>(frame: T): T {
  for (const k in frame) {
    if (frame[k] === undefined) {
      const copy: Record<string, unknown> = {};
      for (const [key, v] of Object.entries(frame)) if (v !== undefined) copy[key] = v;
      return copy as T;
    }
  }
  return frame;
}

/**
 * What went wrong, in words. The client bundles `zod/mini`, which loads no locale (that is most of
 * zod's size), so its default text is a bare "Invalid input": the issue's own fields say more.
 */
function describeIssue(issue: z.core.$ZodIssue): string {
  if (issue.message && issue.message !== 'Invalid input') return issue.message;
  switch (issue.code) {
    case 'invalid_type':
      return `expected ${issue.expected}`;
    case 'too_small':
      return `too small (at least ${String(issue.minimum)})`;
    case 'too_big':
      return `too big (at most ${String(issue.maximum)})`;
    case 'invalid_value':
      return `expected one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`;
    case 'unrecognized_keys':
      return `unknown keys ${issue.keys.join(', ')}`;
    default:
      return issue.code.replace(/_/g, ' ');
  }
}

function decodeWith<S extends z.ZodMiniType>(
  schema: S,
  from: 'server' | 'client',
  data: Uint8Array,
  maxBytes: number,
): z.infer<S> {
  if (data.byteLength > maxBytes) {
    throw new PostboxError(
      'too_large',
      `frame of ${data.byteLength} bytes is over the ${maxBytes}-byte limit`,
    );
  }
  // Refuse extension types and impossible lengths before the decoder sees a byte (issue 22).
  const refused = scanMsgpack(data);
  if (refused !== undefined) throw new PostboxError('invalid_frame', `frame refused: ${refused}`);
  let raw: unknown;
  let compact: boolean;
  try {
    const unpacked: unknown = packr.unpack(data);
    compact = Array.isArray(unpacked);
    raw = fromWire(unpacked);
  } catch (cause) {
    throw new PostboxError('invalid_frame', 'frame is not valid msgpack', { cause });
  }
  // The hot frames, checked by hand when they are plainly valid (fast-checks.ts); the schema
  // judges everything else, and says what is wrong.
  if (compact && passesFastCheck(from, raw as Record<string, unknown>)) return raw as z.infer<S>;
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    const { t, r } = typeof raw === 'object' && raw !== null ? (raw as { t?: unknown; r?: unknown }) : {};
    const issue = parsed.error.issues[0];
    const where = issue && issue.path.length > 0 ? ` at ${issue.path.map(String).join('.')}` : '';
    const options: { cause: unknown; requestId?: number } = { cause: parsed.error };
    // Echoing the request id lets the sender fail that one request instead of waiting forever.
    if (typeof r === 'number' && Number.isInteger(r) && r >= 0 && r <= 0xffffffff) options.requestId = r;
    throw new PostboxError(
      'invalid_frame',
      `frame ${typeof t === 'string' ? JSON.stringify(t.slice(0, 16)) : `of type ${typeof t}`} failed validation${where}: ${issue ? describeIssue(issue) : 'invalid'}`,
      options,
    );
  }
  return parsed.data;
}

/**
 * Decodes and validates a frame a client sent. Throws `too_large` or `invalid_frame` (which a
 * frame holding msgpack extension types, or lengths longer than itself, gets before any decoding).
 */
export function decodeClientFrame(data: Uint8Array, maxBytes = DEFAULT_MAX_FRAME_BYTES): ClientFrame {
  return decodeWith(clientFrame, 'client', data, maxBytes);
}

/** Decodes and validates a frame a server sent. Throws `too_large` or `invalid_frame`. */
export function decodeServerFrame(data: Uint8Array, maxBytes = DEFAULT_MAX_FRAME_BYTES): ServerFrame {
  return decodeWith(serverFrame, 'server', data, maxBytes);
}
