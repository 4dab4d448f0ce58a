import * as z from 'zod/mini';
import { ERROR_CODE_LIST } from './errors.js';
import { conversationIdSchema, deviceIdSchema, groupIdSchema, isGroupId, userIdSchema } from './ids.js';

/**
 * Wire frames. Every frame is a msgpack map with a short type tag `t`; keys are kept to one
 * or two letters because bytes matter on 2G links. Schemas are the single source of truth:
 * the TypeScript types are inferred from them, and every inbound frame is parsed by them
 * before it touches state.
 */

const id = z.string().check(z.minLength(1), z.maxLength(64));
// Every id field goes by the one rule of ids.ts.
const user = userIdSchema;
const device = deviceIdSchema;
const reqId = z.int().check(z.nonnegative(), z.maximum(0xffffffff));
const offset = z.int().check(z.nonnegative());
/** Group ids start with `#`, which no user id has, so the two never collide in a conversation list. */
const groupId = groupIdSchema;
/** `to` names a group exactly when `g` is set: a user id never passes for a group, nor the reverse. */
const conversation = conversationIdSchema;
const toMatchesG = (f: { to?: string | undefined; g?: true | undefined }): boolean =>
  f.g === true ? f.to !== undefined && isGroupId(f.to) : f.to === undefined || !isGroupId(f.to);
const TO_MATCHES_G = { message: 'to is a group id exactly when g is set', path: ['to'] };
const groupName = z.string().check(z.minLength(1), z.maxLength(128));
/** Largest member list in one frame (a group's hard cap). */
export const MAX_GROUP_MEMBERS = 1024;
const userList = z.array(user).check(z.minLength(1), z.maxLength(MAX_GROUP_MEMBERS));
// Decoders may hand back a Uint8Array subclass (Node's Buffer); a plain view over the same memory
// keeps values identical on every platform without copying.
const bytes = z.pipe(
  z.custom<Uint8Array>((v) => v instanceof Uint8Array, { message: 'expected binary' }),
  z.transform((v: Uint8Array) =>
    v.constructor === Uint8Array ? v : new Uint8Array(v.buffer, v.byteOffset, v.byteLength),
  ),
);

/** A public key on the wire (EC keys are 33 bytes, Kyber-1024 keys 1,569). */
const keyBytes = bytes.check(
  z.refine((v) => v.byteLength >= 1 && v.byteLength <= 2048, 'key of 1-2048 bytes'),
);
const signature = bytes.check(
  z.refine((v) => v.byteLength >= 1 && v.byteLength <= 128, 'signature of 1-128 bytes'),
);
const keyId = z.int().check(z.nonnegative(), z.maximum(0xffffffff));
/** A signed prekey on the wire: `[id, key, signature]`. */
const wireSignedKey = z.tuple([keyId, keyBytes, signature]);
/** A one-time EC prekey on the wire: `[id, key]`. */
const wirePreKey = z.tuple([keyId, keyBytes]);
/** A registration id (Signal's are 1-16380; 0 is never used). */
const registrationId = z.int().check(z.positive(), z.maximum(0xffff));
/** Most one-time keys of each kind in one `keys` frame (Kyber keys are 1.6 KB each). */
export const MAX_KEYS_PER_UPLOAD = 100;
/** Most per-device envelopes in one `send` (the recipient's and the sender's other devices). */
export const MAX_ENVELOPES = 64;
/** Most users in one `kget`. */
export const MAX_KEY_USERS = 64;
/** A device of a user on the wire: `[user, device]`. */
const wireDevice = z.tuple([user, device]);
const deviceList = z.array(wireDevice).check(z.maxLength(2 * MAX_ENVELOPES));

/** Wire form of a receipt status: `d` delivered, `r` read, `x` expired. */
export const wireStatus = z.enum(['d', 'r', 'x']);

// ---------------------------------------------------------------- client → server

/** Opens a session: supported protocol versions `[min, max]`, app credentials, optional device id. */
export const helloFrame = z.object({
  t: z.literal('hello'),
  v: z.tuple([z.int().check(z.positive()), z.int().check(z.positive())]),
  cred: z.unknown(),
  dev: z.optional(device),
});

/**
 * A message for user `to` (or, with `g`, for group `to`); `seq` is the per-(conversation, sender
 * device) sequence.
 */
export const sendFrame = z
  .object({
    t: z.literal('send'),
    r: reqId,
    id,
    to: conversation,
    /** 0: an unsequenced control message of the encryption layer (1:1 only). */
    seq: z.int().check(z.nonnegative()),
    b: bytes,
    g: z.optional(z.literal(true)),
    /**
     * End-to-end encrypted 1:1 message: one `[user, device, registration id, ciphertext]` per
     * device of `to` and per other device of the sender (then `b` is empty).
     */
    e: z.optional(
      z
        .array(z.tuple([user, device, registrationId, bytes]))
        .check(z.minLength(1), z.maxLength(MAX_ENVELOPES)),
    ),
  })
  .check(z.refine(toMatchesG, TO_MATCHES_G));

/**
 * Publishes this device's public keys to the directory (see docs/encryption.md): registration id,
 * identity key, and any of a signed prekey, a last-resort Kyber key, one-time EC and Kyber keys.
 */
export const keysFrame = z.object({
  t: z.literal('keys'),
  r: reqId,
  rid: registrationId,
  ik: keyBytes,
  spk: z.optional(wireSignedKey),
  lrk: z.optional(wireSignedKey),
  pk: z.optional(z.array(wirePreKey).check(z.maxLength(MAX_KEYS_PER_UPLOAD))),
  kpk: z.optional(z.array(wireSignedKey).check(z.maxLength(MAX_KEYS_PER_UPLOAD))),
});

/**
 * Registers this device's push token (`k` the service, `tok` the token), or with neither removes
 * it; answered `ok`. See docs/push.md.
 */
export const pushTokenFrame = z.object({
  t: z.literal('ptok'),
  r: reqId,
  k: z.optional(z.string().check(z.minLength(1), z.maxLength(16))),
  tok: z.optional(z.string().check(z.minLength(1), z.maxLength(4096))),
});

/**
 * Claims key bundles: for every device with keys of each user in `u`, or (with one user) only
 * device `d`. Answered by `kb` (each one-time key is handed out once) or `err`.
 */
export const keyGetFrame = z.object({
  t: z.literal('kget'),
  r: reqId,
  u: z.array(user).check(z.minLength(1), z.maxLength(MAX_KEY_USERS)),
  d: z.optional(device),
});

/**
 * Group operation codes on the wire. `invite` and `decline` events go only to the invitee's
 * devices (an invite it may `accept` or `decline`, see docs/groups.md "Consent"); a client sends
 * `accept` and `decline`, never `invite` (an add the server turns into invites).
 */
export const groupOp = z.enum([
  'create',
  'add',
  'remove',
  'leave',
  'promote',
  'demote',
  'rename',
  'invite',
  'accept',
  'decline',
]);

/**
 * A membership change of group `g`, deduplicated by `id` like a message: `m` lists the users it
 * is about (create: the other initial members), `n` the name (create, rename).
 */
export const groupFrame = z.object({
  t: z.literal('grp'),
  r: reqId,
  id,
  g: groupId,
  op: groupOp,
  m: z.optional(userList),
  n: z.optional(groupName),
});

/** Approves linking the new device that shows `code` to this user (see docs/devices.md). */
export const linkApproveFrame = z.object({
  t: z.literal('lnk'),
  r: reqId,
  code: z.string().check(z.minLength(8), z.maxLength(64)),
});

/** Unlinks device `d` of this user (itself included): its inbox is deleted, its session closed. */
export const unlinkFrame = z.object({ t: z.literal('unl'), r: reqId, d: device });

/** Subscribes to user `u`'s presence for as long as this connection lasts. */
export const subscribeFrame = z.object({ t: z.literal('sub'), r: reqId, u: user });

/** Ends a presence subscription. */
export const unsubscribeFrame = z.object({ t: z.literal('unsub'), u: user });

/** Typing started (`on`) or stopped in the 1:1 chat with `to` or, with `g`, in group `to`. */
export const typingFrame = z
  .object({
    t: z.literal('typ'),
    to: conversation,
    g: z.optional(z.literal(true)),
    on: z.boolean(),
  })
  .check(z.refine(toMatchesG, TO_MATCHES_G));

/** A read receipt for messages `ids` that user `to` sent. Stored and forwarded like a message. */
export const receiptFrame = z.object({
  t: z.literal('rcpt'),
  r: reqId,
  id,
  to: user,
  ids: z.array(id).check(z.minLength(1), z.maxLength(512)),
});

/** The device has persisted the inbox entries at these offsets; the server may delete them. */
export const ackFrame = z.object({
  t: z.literal('ack'),
  o: z.array(offset).check(z.minLength(1), z.maxLength(1024)),
});

/** Liveness probe, either direction. */
export const pingFrame = z.object({ t: z.literal('ping') });
/** Answer to `ping`. */
export const pongFrame = z.object({ t: z.literal('pong') });

// ---------------------------------------------------------------- server → client

/** The session is open: chosen version, who the server says you are, heartbeat and limits. */
export const welcomeFrame = z.object({
  t: z.literal('welcome'),
  v: z.int().check(z.positive()),
  u: user,
  d: device,
  hb: z.int().check(z.positive()),
  lim: z.object({
    frame: z.int().check(z.positive()),
    body: z.int().check(z.positive()),
    window: z.int().check(z.positive()),
    /** Entries the server pushes ahead of the device's acks (its delivery window). */
    dw: z.optional(z.int().check(z.positive())),
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
  r: z.optional(reqId),
  c: z.enum(ERROR_CODE_LIST),
  m: z.optional(z.string().check(z.maxLength(1024))),
  /** `mismatched_devices` / `stale_devices`: missing, extra and stale devices. */
  d: z.optional(
    z.object({ m: z.optional(deviceList), x: z.optional(deviceList), s: z.optional(deviceList) }),
  ),
});

/**
 * Bundles claimed by `kget` `r`: `[user, device, registration id, identity key, signed prekey,
 * Kyber prekey, one-time EC prekey?]` each. `w` lists the users asked for that have registered
 * devices but none with keys yet: worth waiting for (a user in neither is not registered).
 */
export const keyBundlesFrame = z.object({
  t: z.literal('kb'),
  r: reqId,
  b: z
    .array(z.tuple([user, device, registrationId, keyBytes, wireSignedKey, wireSignedKey], wirePreKey))
    .check(z.maxLength(MAX_KEY_USERS * MAX_ENVELOPES)),
  w: z.optional(z.array(user).check(z.maxLength(MAX_KEY_USERS))),
});

/**
 * This device's supply of one-time keys in the directory is low (`pk` EC, `kpk` Kyber left):
 * upload more (`keys`).
 */
export const keysLowFrame = z.object({
  t: z.literal('klow'),
  pk: z.int().check(z.nonnegative()),
  kpk: z.int().check(z.nonnegative()),
});

/**
 * A device of user `u` has just published keys. Sent to the sessions that claimed `u`'s keys and
 * got none; only a hint (the client claims again with `kget`).
 */
export const keysReadyFrame = z.object({
  t: z.literal('kr'),
  u: user,
});

/**
 * An inbox entry carrying a message. `to` is present only when it differs from the receiving
 * user (a copy of one's own message sent from another device).
 */
export const msgFrame = z
  .object({
    t: z.literal('msg'),
    o: offset,
    id,
    f: user,
    fd: device,
    to: z.optional(conversation),
    /** 0: a control message of the encryption layer (not part of the sender's sequence). */
    seq: z.int().check(z.nonnegative()),
    ts: z.number(),
    b: bytes,
    /** `to` is a group (always present then). */
    g: z.optional(z.literal(true)),
  })
  .check(z.refine(toMatchesG, TO_MATCHES_G));

/**
 * An inbox entry carrying a membership change of group `g`, at version `v`, made by `by`, about
 * users `m`. `s` is the whole membership after the change (`[user, 1 if admin else 0]`) for a
 * device that did not know the group.
 */
export const groupEventFrame = z.object({
  t: z.literal('gev'),
  o: offset,
  g: groupId,
  v: z.int().check(z.positive()),
  op: groupOp,
  by: user,
  m: z.array(user).check(z.maxLength(MAX_GROUP_MEMBERS)),
  ts: z.number(),
  n: z.optional(groupName),
  s: z.optional(
    z.array(z.tuple([user, z.union([z.literal(0), z.literal(1)])])).check(z.maxLength(MAX_GROUP_MEMBERS)),
  ),
});

/** Linking this device needs approval: show `code` (e.g. as a QR code) to an existing device. */
export const linkCodeFrame = z.object({
  t: z.literal('lcode'),
  code: z.string().check(z.minLength(8), z.maxLength(64)),
  /** When the code stops working (server time, ms). */
  exp: z.number(),
});

/** User `u` is online (`on`) or not; `ls` is its last-seen time when the privacy rule shows it. */
export const presenceFrame = z.object({
  t: z.literal('pres'),
  u: user,
  on: z.boolean(),
  ls: z.optional(z.number()),
});

/** Device `fd` of user `f` started or stopped typing to this user, or (with `g`) in group `to`. */
export const typingNoticeFrame = z
  .object({
    t: z.literal('typn'),
    f: user,
    fd: device,
    on: z.boolean(),
    to: z.optional(conversation),
    g: z.optional(z.literal(true)),
  })
  .check(z.refine(toMatchesG, TO_MATCHES_G));

/** An inbox entry carrying a status for messages `ids`, produced by (or about) user `by`. */
export const statusFrame = z.object({
  t: z.literal('st'),
  o: offset,
  s: wireStatus,
  ids: z.array(id).check(z.minLength(1), z.maxLength(4096)),
  by: user,
  ts: z.number(),
});

/**
 * Wire form of why the server dropped messages (a `gap` frame's `why`): `x` retention expired;
 * `f` the device's inbox was full (protocol version 3 and later, {@link INBOX_FULL_GAP_VERSION}).
 */
export const wireGapReason = z.enum(['x', 'f']);

/** Most sequence ranges one `gap` frame names, over all its streams (the server splits past it). */
export const MAX_GAP_RANGES = 256;

const gapSeq = z.int().check(z.positive(), z.maximum(Number.MAX_SAFE_INTEGER));
/** Whether `s` (a stream after its three ids) is `[first, last]` pairs, ascending, not touching. */
function rangesOk(s: readonly unknown[]): boolean {
  if (s.length < 5 || (s.length - 3) % 2 !== 0) return false;
  for (let i = 3; i < s.length; i += 2) {
    const first = s[i] as number;
    if (first > (s[i + 1] as number) || (i > 3 && first <= (s[i - 1] as number) + 1)) return false;
  }
  return true;
}
/**
 * One stream of a `gap` frame: `[from user, from device, to, first, last, first, last, …]`, `to`
 * as on the messages (the recipient user, or the group id), then the dropped sequence numbers as
 * inclusive ranges, ascending and not touching.
 */
const gapStream = z
  .tuple([user, device, conversation], gapSeq)
  .check(z.refine(rangesOk, 'ranges: [first, last] pairs, ascending, not touching'));

/**
 * An inbox entry telling this device which of its messages the server dropped before the device
 * acked them, and why (`why`): per stream (see `gapStream`). Sent to clients of protocol version
 * 2 and later; acked like any entry.
 */
export const gapFrame = z.object({
  t: z.literal('gap'),
  o: offset,
  why: wireGapReason,
  s: z.array(gapStream).check(
    z.minLength(1),
    z.maxLength(MAX_GAP_RANGES),
    z.refine((l) => l.reduce((n, st) => n + (st.length - 3) / 2, 0) <= MAX_GAP_RANGES, 'too many ranges'),
  ),
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
  groupFrame,
  linkApproveFrame,
  unlinkFrame,
  subscribeFrame,
  unsubscribeFrame,
  typingFrame,
  keysFrame,
  keyGetFrame,
  pushTokenFrame,
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
  groupEventFrame,
  linkCodeFrame,
  presenceFrame,
  typingNoticeFrame,
  keyBundlesFrame,
  keysLowFrame,
  gapFrame,
  keysReadyFrame,
]);

/** The type of {@link helloFrame}: opens a session. */
export type HelloFrame = z.infer<typeof helloFrame>;
/**
 * The type of {@link sendFrame}: a message for user `to` (or, with `g`, for group `to`); `seq` is
 * the per-(conversation, sender device) sequence.
 */
export type SendFrame = z.infer<typeof sendFrame>;
/** The type of {@link receiptFrame}: a read receipt for messages `ids` that user `to` sent. */
export type ReceiptFrame = z.infer<typeof receiptFrame>;
/**
 * The type of {@link ackFrame}: the device has persisted the inbox entries at these offsets; the
 * server may delete them.
 */
export type AckFrame = z.infer<typeof ackFrame>;
/** The type of {@link pingFrame}: liveness probe, either direction. */
export type PingFrame = z.infer<typeof pingFrame>;
/** The type of {@link pongFrame}: answer to `ping`. */
export type PongFrame = z.infer<typeof pongFrame>;
/** The type of {@link welcomeFrame}: the session is open. */
export type WelcomeFrame = z.infer<typeof welcomeFrame>;
/** The type of {@link okFrame}: the request `r` is durably committed. */
export type OkFrame = z.infer<typeof okFrame>;
/** The type of {@link errFrame}: the request `r` (or the connection, if absent) failed with `c`. */
export type ErrFrame = z.infer<typeof errFrame>;
/** The type of {@link msgFrame}: an inbox entry carrying a message. */
export type MsgFrame = z.infer<typeof msgFrame>;
/**
 * The type of {@link statusFrame}: an inbox entry carrying a status for messages `ids`, produced
 * by (or about) user `by`.
 */
export type StatusFrame = z.infer<typeof statusFrame>;
/** The type of {@link wireStatus}: wire form of a receipt status. */
export type WireStatus = z.infer<typeof wireStatus>;
/**
 * The type of {@link groupFrame}: a membership change of group `g`, deduplicated by `id` like a
 * message.
 */
export type GroupFrame = z.infer<typeof groupFrame>;
/** The type of {@link groupOp}: group operation codes on the wire. */
export type GroupOp = z.infer<typeof groupOp>;
/**
 * The type of {@link linkApproveFrame}: approves linking the new device that shows `code` to this
 * user (see docs/devices.md).
 */
export type LinkApproveFrame = z.infer<typeof linkApproveFrame>;
/** The type of {@link unlinkFrame}: unlinks device `d` of this user (itself included). */
export type UnlinkFrame = z.infer<typeof unlinkFrame>;
/**
 * The type of {@link subscribeFrame}: subscribes to user `u`'s presence for as long as this
 * connection lasts.
 */
export type SubscribeFrame = z.infer<typeof subscribeFrame>;
/** The type of {@link unsubscribeFrame}: ends a presence subscription. */
export type UnsubscribeFrame = z.infer<typeof unsubscribeFrame>;
/**
 * The type of {@link typingFrame}: typing started (`on`) or stopped in the 1:1 chat with `to` or,
 * with `g`, in group `to`.
 */
export type TypingFrame = z.infer<typeof typingFrame>;
/**
 * The type of {@link groupEventFrame}: an inbox entry carrying a membership change of group `g`,
 * at version `v`, made by `by`, about users `m`.
 */
export type GroupEventFrame = z.infer<typeof groupEventFrame>;
/** The type of {@link linkCodeFrame}: linking this device needs approval. */
export type LinkCodeFrame = z.infer<typeof linkCodeFrame>;
/**
 * The type of {@link presenceFrame}: user `u` is online (`on`) or not; `ls` is its last-seen time
 * when the privacy rule shows it.
 */
export type PresenceFrame = z.infer<typeof presenceFrame>;
/**
 * The type of {@link typingNoticeFrame}: device `fd` of user `f` started or stopped typing to this
 * user, or (with `g`) in group `to`.
 */
export type TypingNoticeFrame = z.infer<typeof typingNoticeFrame>;
/**
 * The type of {@link keysFrame}: publishes this device's public keys to the directory (see
 * docs/encryption.md).
 */
export type KeysFrame = z.infer<typeof keysFrame>;
/** The type of {@link keyGetFrame}: claims key bundles. */
export type KeyGetFrame = z.infer<typeof keyGetFrame>;
/** The type of {@link keyBundlesFrame}: bundles claimed by `kget` `r`. */
export type KeyBundlesFrame = z.infer<typeof keyBundlesFrame>;
/**
 * The type of {@link keysLowFrame}: this device's supply of one-time keys in the directory is low
 * (`pk` EC, `kpk` Kyber left).
 */
export type KeysLowFrame = z.infer<typeof keysLowFrame>;
/**
 * The type of {@link gapFrame}: an inbox entry telling this device which of its messages the
 * server dropped before the device acked them, and why (`why`).
 */
export type GapFrame = z.infer<typeof gapFrame>;
/**
 * The type of {@link wireGapReason}: wire form of why the server dropped messages (a `gap` frame's
 * `why`).
 */
export type WireGapReason = z.infer<typeof wireGapReason>;
/** The type of {@link keysReadyFrame}: a device of user `u` has just published keys. */
export type KeysReadyFrame = z.infer<typeof keysReadyFrame>;
/**
 * The type of {@link pushTokenFrame}: registers this device's push token (`k` the service, `tok`
 * the token), or with neither removes it; answered `ok`.
 */
export type PushTokenFrame = z.infer<typeof pushTokenFrame>;
/** A frame a client sends. */
export type ClientFrame = z.infer<typeof clientFrame>;
/** A frame a server sends. */
export type ServerFrame = z.infer<typeof serverFrame>;
