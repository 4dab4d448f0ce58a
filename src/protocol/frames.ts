import { z } from 'zod';
import { ERROR_CODE_LIST } from './errors.js';

/**
 * Wire frames. Every frame is a msgpack map with a short type tag `t`; keys are kept to one
 * or two letters because bytes matter on 2G links. Schemas are the single source of truth:
 * the TypeScript types are inferred from them, and every inbound frame is parsed by them
 * before it touches state.
 */

const id = z.string().min(1).max(64);
const user = z.string().min(1).max(128);
const device = z.string().min(1).max(64);
const reqId = z.number().int().nonnegative().max(0xffffffff);
const offset = z.number().int().nonnegative();
// Decoders may hand back a Uint8Array subclass (Node's Buffer); a plain view over the same memory
// keeps values identical on every platform without copying.
const bytes = z
  .custom<Uint8Array>((v) => v instanceof Uint8Array, { message: 'expected binary' })
  .transform((v) =>
    v.constructor === Uint8Array ? v : new Uint8Array(v.buffer, v.byteOffset, v.byteLength),
  );

/** Wire form of a receipt status: `d` delivered, `r` read, `x` expired. */
export const wireStatus = z.enum(['d', 'r', 'x']);

// ---------------------------------------------------------------- client → server

/** Opens a session: supported protocol versions `[min, max]`, app credentials, optional device id. */
export const helloFrame = z.object({
  t: z.literal('hello'),
  v: z.tuple([z.number().int().positive(), z.number().int().positive()]),
  cred: z.unknown(),
  dev: device.optional(),
});

/** A message for user `to`; `seq` is the per-(conversation, sender device) sequence. */
export const sendFrame = z.object({
  t: z.literal('send'),
  r: reqId,
  id,
  to: user,
  seq: z.number().int().positive(),
  b: bytes,
});

/** A read receipt for messages `ids` that user `to` sent. Stored and forwarded like a message. */
export const receiptFrame = z.object({
  t: z.literal('rcpt'),
  r: reqId,
  id,
  to: user,
  ids: z.array(id).min(1).max(512),
});

/** The device has persisted the inbox entries at these offsets; the server may delete them. */
export const ackFrame = z.object({
  t: z.literal('ack'),
  o: z.array(offset).min(1).max(1024),
});

/** Liveness probe, either direction. */
export const pingFrame = z.object({ t: z.literal('ping') });
/** Answer to `ping`. */
export const pongFrame = z.object({ t: z.literal('pong') });

// ---------------------------------------------------------------- server → client

/** The session is open: chosen version, who the server says you are, heartbeat and limits. */
export const welcomeFrame = z.object({
  t: z.literal('welcome'),
  v: z.number().int().positive(),
  u: user,
  d: device,
  hb: z.number().int().positive(),
  lim: z.object({
    frame: z.number().int().positive(),
    body: z.number().int().positive(),
    window: z.number().int().positive(),
  }),
});

/**
 * The request `r` is durably committed. No timestamp: the sending device already has its own
 * send time, and the server's commit time reaches every other device in its copy (`msg.ts`).
 */
export const okFrame = z.object({ t: z.literal('ok'), r: reqId });

/** The request `r` (or the connection, if absent) failed with `c`. */
export const errFrame = z.object({
  t: z.literal('err'),
  r: reqId.optional(),
  c: z.enum(ERROR_CODE_LIST),
  m: z.string().max(1024).optional(),
});

/**
 * An inbox entry carrying a message. `to` is present only when it differs from the receiving
 * user (a copy of one's own message sent from another device).
 */
export const msgFrame = z.object({
  t: z.literal('msg'),
  o: offset,
  id,
  f: user,
  fd: device,
  to: user.optional(),
  seq: z.number().int().positive(),
  ts: z.number(),
  b: bytes,
});

/** An inbox entry carrying a status for messages `ids`, produced by (or about) user `by`. */
export const statusFrame = z.object({
  t: z.literal('st'),
  o: offset,
  s: wireStatus,
  ids: z.array(id).min(1).max(4096),
  by: user,
  ts: z.number(),
});

/** Every frame a client may send. */
export const clientFrame = z.discriminatedUnion('t', [
  helloFrame,
  sendFrame,
  receiptFrame,
  ackFrame,
  pingFrame,
  pongFrame,
]);
/** Every frame a server may send. */
export const serverFrame = z.discriminatedUnion('t', [
  welcomeFrame,
  okFrame,
  errFrame,
  msgFrame,
  statusFrame,
  pingFrame,
  pongFrame,
]);

export type HelloFrame = z.infer<typeof helloFrame>;
export type SendFrame = z.infer<typeof sendFrame>;
export type ReceiptFrame = z.infer<typeof receiptFrame>;
export type AckFrame = z.infer<typeof ackFrame>;
export type PingFrame = z.infer<typeof pingFrame>;
export type PongFrame = z.infer<typeof pongFrame>;
export type WelcomeFrame = z.infer<typeof welcomeFrame>;
export type OkFrame = z.infer<typeof okFrame>;
export type ErrFrame = z.infer<typeof errFrame>;
export type MsgFrame = z.infer<typeof msgFrame>;
export type StatusFrame = z.infer<typeof statusFrame>;
export type WireStatus = z.infer<typeof wireStatus>;
/** A frame a client sends. */
export type ClientFrame = z.infer<typeof clientFrame>;
/** A frame a server sends. */
export type ServerFrame = z.infer<typeof serverFrame>;
