/**
 * The media reference: what travels in the message (inside the end-to-end encrypted body when a
 * crypto adapter is used) in place of the file. It carries the key, so whoever reads it can fetch
 * and decrypt the blob; the server sees the blob id only when the device asks for a download grant.
 * @packageDocumentation
 */
import { Packr } from 'msgpackr';
import * as z from 'zod/mini';
import { PostboxError } from '../protocol/errors.js';

/** Largest thumbnail a reference may carry inline (a message body is at most 64 KiB). */
export const MAX_THUMBNAIL_BYTES = 16 * 1024;

const anyBytes = () => z.custom<Uint8Array>((v) => v instanceof Uint8Array, 'must be bytes');
const bytes = (n?: number) =>
  n === undefined ? anyBytes() : anyBytes().check(z.refine((b) => b.length === n, `must be ${n} bytes`));

/** The blob id rule: 26 characters of Crockford base32 (a ULID-shaped random id). */
export const blobIdSchema = z.string().check(z.regex(/^[0-9A-HJKMNP-TV-Z]{26}$/));

/** Schema of {@link MediaRef}. */
export const mediaRefSchema = z.strictObject({
  /** Format version of the reference. */
  v: z.literal(1),
  /** Blob id on the media server. */
  id: blobIdSchema,
  /** AES-256 key of the file (32 bytes). */
  key: bytes(32),
  /** Chunked SHA-256 of the ciphertext (see the `pbm1` format). */
  cipherHash: bytes(32),
  /** Chunked SHA-256 of the plaintext. */
  plainHash: bytes(32),
  /** Plaintext size in bytes. */
  size: z.int().check(z.minimum(0), z.maximum(Number.MAX_SAFE_INTEGER)),
  /** MIME type, as the sender declared it. */
  mime: z.string().check(z.minLength(1), z.maxLength(255)),
  /** File name, as the sender declared it. */
  name: z.optional(z.string().check(z.maxLength(255))),
  /** A small preview image, sent inline. */
  thumbnail: z.optional(
    bytes().check(
      z.refine((b) => b.length <= MAX_THUMBNAIL_BYTES, `a thumbnail is at most ${MAX_THUMBNAIL_BYTES} bytes`),
    ),
  ),
  /** Pixel width, for images and video. */
  width: z.optional(z.int().check(z.positive(), z.maximum(100_000))),
  /** Pixel height, for images and video. */
  height: z.optional(z.int().check(z.positive(), z.maximum(100_000))),
  /** Duration in milliseconds, for audio and video. */
  durationMs: z.optional(z.int().check(z.minimum(0), z.maximum(Number.MAX_SAFE_INTEGER))),
});

/** A typed reference to an encrypted media blob: what a media message carries. */
export type MediaRef = z.infer<typeof mediaRefSchema>;

/** What a reference says about the file beside where it is and how to open it. */
export type MediaMeta = Pick<MediaRef, 'mime'> &
  Partial<Pick<MediaRef, 'name' | 'thumbnail' | 'width' | 'height' | 'durationMs'>>;

/** The facts of an encrypted upload a reference carries (what `uploadMedia` sums up). */
export interface MediaSums {
  size: number;
  plainHash: Uint8Array;
  cipherHash: Uint8Array;
}

/**
 * The reference to blob `blob`, encrypted with `key`, from its upload's sums and the file's
 * metadata (fields of `meta` beyond {@link MediaMeta}'s are left out).
 */
export function mediaRefOf(blob: string, key: Uint8Array, sums: MediaSums, meta: MediaMeta): MediaRef {
  const ref: MediaRef = {
    v: 1,
    id: blob,
    key,
    size: sums.size,
    mime: meta.mime,
    cipherHash: sums.cipherHash,
    plainHash: sums.plainHash,
  };
  if (meta.name !== undefined) ref.name = meta.name;
  if (meta.thumbnail !== undefined) ref.thumbnail = meta.thumbnail;
  if (meta.width !== undefined) ref.width = meta.width;
  if (meta.height !== undefined) ref.height = meta.height;
  if (meta.durationMs !== undefined) ref.durationMs = meta.durationMs;
  return ref;
}

const MAGIC = [0x50, 0x42, 0x4d, 0x01]; // "PBM\x01": a media message body
const packr = new Packr({ useRecords: false, variableMapSize: true });

/** Encodes a reference as a message body (a 4-byte marker, then msgpack). */
export function encodeMediaRef(ref: MediaRef): Uint8Array {
  const valid = mediaRefSchema.parse(ref);
  const packed = packr.pack(valid);
  const out = new Uint8Array(4 + packed.length);
  out.set(MAGIC, 0);
  out.set(packed, 4);
  return out;
}

/** Whether a message body is a media message (it starts with the marker). */
export function isMediaMessage(body: Uint8Array): boolean {
  return body.length > 4 && MAGIC.every((b, i) => body[i] === b);
}

/**
 * The reference in a media message body, validated; `invalid_frame` when the body is not a media
 * message or its reference breaks the schema.
 */
export function decodeMediaRef(body: Uint8Array): MediaRef {
  if (!isMediaMessage(body)) throw new PostboxError('invalid_frame', 'not a media message');
  let raw: unknown;
  try {
    raw = packr.unpack(body.subarray(4));
  } catch (e) {
    throw new PostboxError('invalid_frame', 'media reference does not decode', { cause: e });
  }
  const r = mediaRefSchema.safeParse(raw);
  if (!r.success)
    throw new PostboxError('invalid_frame', `bad media reference: ${r.error.issues[0]?.message ?? ''}`);
  return r.data;
}
