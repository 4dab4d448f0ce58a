import { Packr } from 'msgpackr';
import type { z } from 'zod';
import { PostboxError } from './errors.js';
import { clientFrame, serverFrame, type ClientFrame, type ServerFrame } from './frames.js';

// Plain msgpack maps (no msgpackr records) so any msgpack implementation can speak the protocol.
const packr = new Packr({ useRecords: false, variableMapSize: true, moreTypes: false });

/** Default largest frame, in bytes, accepted before decoding. */
export const DEFAULT_MAX_FRAME_BYTES = 256 * 1024;

/** Encodes a frame to bytes. Undefined optional fields are left out. */
export function encodeFrame(frame: ClientFrame | ServerFrame): Uint8Array {
  return packr.pack(stripUndefined(frame));
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

function decodeWith<S extends z.ZodType>(schema: S, data: Uint8Array, maxBytes: number): z.infer<S> {
  if (data.byteLength > maxBytes) {
    throw new PostboxError(
      'too_large',
      `frame of ${data.byteLength} bytes is over the ${maxBytes}-byte limit`,
    );
  }
  let raw: unknown;
  try {
    raw = packr.unpack(data);
  } catch (cause) {
    throw new PostboxError('invalid_frame', 'frame is not valid msgpack', { cause });
  }
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
      `frame ${typeof t === 'string' ? JSON.stringify(t.slice(0, 16)) : `of type ${typeof t}`} failed validation${where}: ${issue?.message ?? 'invalid'}`,
      options,
    );
  }
  return parsed.data;
}

/** Decodes and validates a frame a client sent. Throws `too_large` or `invalid_frame`. */
export function decodeClientFrame(data: Uint8Array, maxBytes = DEFAULT_MAX_FRAME_BYTES): ClientFrame {
  return decodeWith(clientFrame, data, maxBytes);
}

/** Decodes and validates a frame a server sent. Throws `too_large` or `invalid_frame`. */
export function decodeServerFrame(data: Uint8Array, maxBytes = DEFAULT_MAX_FRAME_BYTES): ServerFrame {
  return decodeWith(serverFrame, data, maxBytes);
}
