import { EventEmitter } from 'eventemitter3';
import {
  CLOSE_CODES,
  DEFAULT_MAX_FRAME_BYTES,
  MIN_PROTOCOL_VERSION,
  PROTOCOL_VERSION,
  PostboxError,
  decodeServerFrame,
  encodeFrame,
  assertDeviceId,
  assertGroupId,
  assertUserId,
  isGroupId,
  isPostboxError,
  isRetryable,
  isUserId,
  type ClientFrame,
  type DeviceListDifference,
  type ErrFrame,
  type GapFrame,
  type GroupEventFrame,
  type KeyBundlesFrame,
  type GroupOp,
  type MsgFrame,
  type ServerFrame,
  type StatusFrame,
  type TypingNoticeFrame,
  type WelcomeFrame,
} from '../protocol/index.js';
import type { ClientTransport, Connection } from '../transport/types.js';
import { seededRandom, systemClock, type Clock, type Random, type TimerHandle } from '../util/clock.js';
import { ulidFactory } from '../util/ulid.js';
import { GapBook, reasonsOf, walk, type GapEvent, type GapReason, type Range, type Step } from './gaps.js';
import {
  applyGroupEvent,
  decodeChange,
  decodeCounts,
  decodeRecipients,
  decodeView,
  encodeChange,
  encodeCounts,
  encodeRecipients,
  encodeView,
  isJoinSnapshot,
  type GroupChangeEvent,
  type GroupView,
} from './groups.js';
import { encodeInvite, inviteOf, listInvites, NS_INVITES, type GroupInvite } from './invites.js';
import type { CryptoAdapter, KeyBundle, KeyUpload } from '../crypto/types.js';
import { ackWait } from './ack-pacing.js';
import { E2ee, decodeContent, encodeContent, type Content } from './e2ee.js';
import { DEFAULT_KEY_WAIT_MS, KeyWait, type KeysReadyOptions } from './key-wait.js';
import { nextStatus } from './status.js';
import type {
  ClientStore,
  InboundMessage,
  MessageStatus,
  OutboxEntry,
  SendFailure,
  StateWrite,
} from './store.js';
import { failureFor, withFailure } from './failure.js';
import {
  loadIdentity,
  readConversations,
  readHistory,
  saveIdentity,
  type ConversationSummary,
  type HistoryMessage,
  type HistoryOptions,
} from './history.js';
import { assertMessageId, storeRefused } from './outbox.js';
import {
  DEFAULT_BACKOFF_BASE_MS,
  DEFAULT_BACKOFF_MAX_MS,
  Reconnector,
  untilOpen,
  type ConnectedOptions,
} from './reconnect.js';

/**
 * Connection states; every transition emits `connection`. `linking`: this is a new device of a
 * user who already has devices, waiting for one of them to approve it (see the `linkCode` event).
 */
export type ConnectionState =
  'idle' | 'connecting' | 'handshaking' | 'linking' | 'open' | 'backoff' | 'closed';

export { isGroupId };

/** Presence of a watched user. */
export interface PresenceChange {
  user: string;
  online: boolean;
  /** When it was last online, if offline and the privacy rule shows it. */
  lastSeen?: number;
}

/** Someone started or stopped typing in a conversation. */
export interface TypingChange {
  /** The 1:1 peer or the group id. */
  conv: string;
  user: string;
  device: string;
  /** False when they stopped, sent the message, or the notice expired. */
  on: boolean;
}

/** One member's receipt of a group message this device sent. */
export interface MemberStatus {
  user: string;
  status: 'delivered' | 'read' | 'expired';
}

/**
 * What is known about a message this device sent: the "message info" view. `reason` and `detail`
 * say why when it is `failed` or `expired` (absent for messages that failed before a client that
 * kept reasons).
 */
export interface MessageInfo extends Partial<SendFailure> {
  id: string;
  conv: string;
  /** The aggregate: for a group, `delivered` means delivered to all, `read` read by all. */
  status: MessageStatus;
  /** Group messages: the members it went to (as this device knew the group at send time). */
  recipients?: string[];
  /** Group messages: each member's receipt so far. */
  members?: MemberStatus[];
}

/** A message as the app sees it. */
export interface ReceivedMessage {
  id: string;
  /** Conversation from this user's point of view: the peer for 1:1. */
  conv: string;
  from: string;
  fromDevice: string;
  seq: number;
  /** Server commit time (ms): for display, never for order. */
  ts: number;
  body: Uint8Array;
  /** A copy of this user's own message, sent from another of its devices. */
  self: boolean;
  /** Arrived after its gap was already given up (see the `gap` event). */
  late: boolean;
  /** A group message: `conv` is the group id. */
  group: boolean;
}

/**
 * A status change of a message this device sent. When `status` is `failed` or `expired`, and
 * only then, `reason` (an error code: `unknown_recipient`, `not_member`, `too_large`,
 * `forbidden`, `mismatched_devices`, `no_keys`, `expired`, …) and `detail` (a human message) say why; the
 * same are stored with the message (see {@link PostboxClient.messageInfo}, {@link PostboxClient.history}).
 */
export interface StatusChange extends Partial<SendFailure> {
  id: string;
  conv: string;
  status: MessageStatus;
  /** The user that produced it (delivered/read), when known. */
  by?: string;
}

/** Events of {@link PostboxClient}. */
export interface ClientEvents {
  /**
   * A new message, in per-sender order: fired once per message, right after the client store
   * committed it, and never again for that id (not after a restart, nor when the server delivers
   * it again). An app that died before handling it finds it with {@link PostboxClient.history}.
   */
  message: (message: ReceivedMessage) => void;
  /** A sent message moved forward: pending → sent → delivered → read, or failed / expired. */
  status: (change: StatusChange) => void;
  /**
   * Messages of a sender will not come, and why (`reason`): at once when the server said it
   * dropped them (`expired`), else once the hole stayed open past `gapTimeoutMs` or
   * `maxHeldPerStream` (see {@link GapReason}). The held messages after it follow.
   */
  gap: (gap: GapEvent) => void;
  /** The connection state changed. `error` is set when the change was caused by one. */
  connection: (state: ConnectionState, error?: PostboxError) => void;
  /** Messages were marked read on another device of this user. */
  readElsewhere: (ids: string[]) => void;
  /** A group this device knows changed (or became known); `change` is what happened. */
  group: (view: GroupView, change: GroupChangeEvent) => void;
  /**
   * This user was invited to a group (`pending`: accept with {@link PostboxClient.acceptGroupInvite}
   * or decline), or the invite is gone (`declined` on one of its devices). See docs/groups.md.
   */
  groupInvite: (invite: GroupInvite, state: 'pending' | 'declined') => void;
  /** A member's receipt of a group message this device sent (see {@link PostboxClient.messageInfo}). */
  memberStatus: (change: { id: string; conv: string; user: string; status: MemberStatus['status'] }) => void;
  /** A watched user's presence (see {@link PostboxClient.watchPresence}). */
  presence: (change: PresenceChange) => void;
  /** Typing notices of others; `on: false` also when a notice expired without a stop. */
  typing: (change: TypingChange) => void;
  /**
   * This device awaits approval: show `code` (e.g. as a QR code) to an existing device of the
   * user, which calls {@link PostboxClient.approveDevice}. A new code comes on each connection.
   */
  linkCode: (link: { code: string; expiresAt: number }) => void;
  /**
   * A local fault that no call's outcome can carry: the client store or the crypto adapter
   * failed, the `credentials` function threw, a frame could not be read (this client's by the
   * server, or the server's by this client). The engine recovers by reconnecting. A request the
   * server refuses never comes here: a send's refusal is its `status` (`failed` with a
   * `reason`), a group change or other call rejects with the code, and a refused typing notice
   * is dropped like one sent offline.
   */
  error: (error: unknown) => void;
  /**
   * A peer device's identity key changed (a re-install, or someone in the middle): show it, and
   * offer {@link PostboxClient.safetyNumber} to compare. Under `identityPolicy: 'block'`, messages
   * to and from that device wait for {@link PostboxClient.verifyIdentity}.
   */
  identityChanged: (peer: { user: string; device: string }) => void;
  /**
   * A message that this device could not decrypt and its sender could not send again (gone from
   * its log). Recoverable failures never show up here: the message arrives late instead.
   */
  undecryptable: (info: { from: string; fromDevice: string; id: string }) => void;
}

/** Options of {@link PostboxClient.send} and {@link PostboxClient.sendToGroup}. */
export interface SendOptions {
  /**
   * The message's id, instead of a new one. A send whose id is already in this device's outbox
   * stores nothing and resolves with the id (no second message, no second `pending` status), so
   * a caller that cannot tell whether an earlier send got stored (a hand-off from another tab, a
   * retry after a crash) sends again safely. 1–64 of `A–Z a–z 0–9 _ -`; a ULID is best (ids that
   * sort by creation time). The server dedupes by it too.
   * @default a new ULID
   */
  id?: string;
}

/** Options of {@link createClient}. */
export interface ClientOptions {
  transport: ClientTransport;
  store: ClientStore;
  /**
   * Sent in `hello` for the server's `authenticate` hook. A function is called on every connect
   * (refresh a token there); with a function, a refusal is retried after a backoff, with a
   * static value it closes the client for good. A session whose credentials expire or are revoked
   * is closed by the server (4007); the client then reconnects, calling the function again, or
   * with a static value closes for good with `unauthorized`.
   */
  credentials: unknown | (() => unknown | Promise<unknown>);
  /** Device id hint sent in `hello` (a valid device id, or the constructor throws `invalid_frame`). */
  device?: string;
  /** @default systemClock */
  clock?: Clock;
  /** Randomness for ids and jitter. @default Math.random */
  random?: Random;
  /**
   * Ceiling of the first wait before reconnecting, ms; each failed attempt doubles it (each wait
   * is uniform below its ceiling: full jitter). See docs/engines.md, "Reconnecting".
   * @default 500
   */
  backoffBaseMs?: number;
  /**
   * Largest ceiling of a wait before reconnecting, ms: once the waits have grown to it, the
   * client is back at most this long after the server is (see {@link DEFAULT_BACKOFF_MAX_MS} for
   * why 8 s). Also the least time between two waits {@link PostboxClient.reconnectNow} skips.
   * @default 8000
   */
  backoffMaxMs?: number;
  /** How long a hole in a sender's sequence may stay open before `gap`. @default 10000 */
  gapTimeoutMs?: number;
  /**
   * Most messages held behind one hole per sender device; one more gives the hole up at once
   * (a `gap` event), so a sender that skips a number cannot make this device buffer without end.
   * @default 1024
   */
  maxHeldPerStream?: number;
  /** Give up on a handshake after this. @default 10000 */
  handshakeTimeoutMs?: number;
  /** Most sends in flight (the server's advertised window caps it too). @default 128 */
  maxInflight?: number;
  /** Largest body accepted by `send` before the server says otherwise. @default 65536 */
  maxBodyBytes?: number;
  /** Connect as soon as the client is created. @default true */
  autoStart?: boolean;
  /** A typing notice with no stop and no refresh ends after this. @default 6000 */
  typingTimeoutMs?: number;
  /** While typing continues, `on` is sent again at most this often. @default 3000 */
  typingRefreshMs?: number;
  /**
   * Under load, acks of received entries wait up to this long to leave as one frame (like TCP's
   * delayed ACK): a burst costs one ack, and on a busy device acking does not compete with
   * receiving. A quiet connection (no ack frame within the last `ackDelayMs`) acks as soon as
   * the received entries are stored, so at light load the sender's ✓✓ is not delayed; after
   * that, the next ack frame leaves `ackDelayMs` after the previous one. Half the server's
   * delivery window of unsent acks goes out at once, so a drain never stalls; the sender's ✓✓
   * comes this much later at most. 0 always acks as soon as the received entries are stored.
   * @default 25
   */
  ackDelayMs?: number;
  /**
   * End-to-end encryption (docs/encryption.md): every body is encrypted on this device for each
   * recipient device, and the server only ever sees ciphertext. Every client of an app must use
   * the same setting. Without it, bodies travel as the app gives them.
   */
  crypto?: CryptoAdapter;
  /**
   * When a peer device's identity key changes: `'accept'` it and emit `identityChanged` (what
   * most messengers do), or `'block'` messages to and from it until {@link PostboxClient.verifyIdentity}.
   * @default 'accept'
   */
  identityPolicy?: 'accept' | 'block';
  /** One-time prekeys of each kind kept in the server's directory. @default 50 */
  preKeySupply?: number;
  /** The signed prekey is rotated after this. @default 7 days */
  signedPreKeyMaxAgeMs?: number;
  /** A peer that could not decrypt a message may have it sent again this long after it was sent. @default 1 day */
  resendWindowMs?: number;
  /**
   * With encryption: how long a message to a user whose devices have not published keys yet is
   * held (`pending`, later messages to that user behind it) waiting for them, before it fails with
   * `no_keys`. Counted from when the client first found the user without keys; a restart of the
   * client starts it again. See docs/encryption.md, "A new contact: when can I write?".
   * @default 1 day
   */
  keyWaitMs?: number;
}

/** A request answered by `ok`/`err` outside the outbox (approve, unlink, subscribe). */
interface PendingRequest {
  resolve(): void;
  reject(error: PostboxError): void;
}

const NS_GROUP = 'group';
const NS_GROUP_SEND = 'gsend';
const NS_GROUP_COUNT = 'gcount';
const NS_MEMBER_STATUS = 'rcpt';
/** Group streams waiting for messages asked for again (see `pin`). */
const NS_PINS = 'pin';
/**
 * A sent group message's group version, and when each user last joined a group: who may have
 * received the message (its statuses are believed, and a resend is answered, only from them).
 */
const NS_GROUP_SEND_VER = 'gsendv';
const NS_GROUP_JOINED = 'gjoin';
const MEMBER_STATUS_CODE = { delivered: 1, read: 2, expired: 3 } as const;
const MEMBER_STATUS_NAME = ['', 'delivered', 'read', 'expired'] as const;

/**
 * `err` frames with no request id that need no `error` event: a refused typing notice
 * (`not_member`, `rate_limited`: dropped, like one sent offline), and the notices the server
 * sends right before closing (`rate_limited` for a frame flood, `unauthorized`,
 * `unsupported_version`), whose close the `connection` event reports.
 */
const NOTICES_WITHOUT_REQUEST: ReadonlySet<string> = new Set([
  'not_member',
  'rate_limited',
  'unauthorized',
  'unsupported_version',
]);

/** A 1:1 item sealed once per recipient device (so it needs a recipient device with keys). */
const perDevice = (e: OutboxEntry): boolean => e.kind === 'ctl' || (e.kind === 'msg' && !isGroupId(e.to));

const streamKey = (conv: string, from: string, fromDevice: string) =>
  `${conv}\u0000${from}\u0000${fromDevice}`;
const STATUS_FROM_WIRE = { d: 'delivered', r: 'read', x: 'expired' } as const;

/**
 * The client engine: a durable outbox that sends in order and resends until acked, and an
 * inbound path that persists, dedupes and orders before it acks. Create with {@link createClient}.
 */
export class PostboxClient extends EventEmitter<ClientEvents> {
  readonly store: ClientStore;
  private readonly transport: ClientTransport;
  private readonly clock: Clock;
  private readonly random: Random;
  private readonly ulid: () => string;
  private readonly opts: {
    gapTimeoutMs: number;
    maxHeldPerStream: number;
    handshakeTimeoutMs: number;
    maxInflight: number;
    maxBodyBytes: number;
    typingTimeoutMs: number;
    typingRefreshMs: number;
    ackDelayMs: number;
    resendWindowMs: number;
  };
  private readonly credentials: ClientOptions['credentials'];
  private readonly deviceHint: string | undefined;

  private _state: ConnectionState = 'idle';
  private conn: Connection | undefined;
  private generation = 0;
  /** The waits between connection attempts, and the app's hurrying of them. */
  private readonly reconnects: Reconnector;
  /** The error of the last failed attempt or close, until the connection opens (see `connected`). */
  private connectionError: PostboxError | undefined;
  private heartbeatTimer: TimerHandle | undefined;
  private handshakeTimer: TimerHandle | undefined;
  private heartbeatMs = 25_000;
  private window = 128;
  private lastSentAt = 0;
  private lastReceivedAt = 0;
  private me: { user: string; device: string } | undefined;

  // Outbox.
  private queue: OutboxEntry[] = [];
  private sendPointer = 0;
  private nextReq = 1;
  private readonly inflight = new Map<number, string>();

  // Inbound.
  private readonly streams = new Map<string, number>();
  private readonly heldByKey = new Map<string, Map<number, InboundMessage>>();
  private readonly gapTimers = new Map<string, TimerHandle>();
  /** Group streams waiting for messages asked for again (stream key → their sequence numbers). */
  private readonly pins = new Map<string, Set<number>>();
  /** What the server said it dropped, and group holes skipped without a reason (gaps.ts). */
  private readonly gapBook: GapBook;
  private pendingAcks: number[] = [];
  private ackTimer: TimerHandle | undefined;
  /** Unsent acks that go out at once: half the server's delivery window. */
  private ackBatch = 512;
  /** `ackDelayMs`, or 0 with a server that does not say its delivery window. */
  private ackDelay = 0;
  /** When the last ack frame left (see ack-pacing.ts). */
  private lastAckAt: number | undefined;

  // Groups, requests, presence, typing.
  private readonly groupViews = new Map<string, GroupView>();
  private readonly waiters = new Map<string, { resolve(): void; reject(e: PostboxError): void }>();
  private readonly requests = new Map<number, PendingRequest>();
  private readonly watched = new Set<string>();
  private readonly typingSentAt = new Map<string, number>();
  private readonly typingTimers = new Map<string, TimerHandle>();
  private readonly recipientCache = new Map<string, Set<string>>();

  // Serialised store access.
  private chain: Promise<unknown> = Promise.resolve();
  private tasks = 0;

  // End-to-end encryption.
  private readonly e2ee: E2ee | undefined;
  /** Outgoing frames that need encrypting leave through this chain, in outbox order. */
  private txChain: Promise<void> = Promise.resolve();
  /** Resolves when the adapter is open for the current connection. */
  private cryptoReady: Promise<void> = Promise.resolve();
  private readonly keyRequests = new Map<
    number,
    { resolve(b: KeyBundle[]): void; reject(e: PostboxError): void }
  >();
  /** Sender-key distributions in flight (not outbox items): what to do on `ok` / `err`. */
  private readonly ctlRequests = new Map<number, { ok(): void; err(e: PostboxError): void }>();
  /** Device-list corrections per outgoing id, to give up on one that never settles. */
  private readonly corrections = new Map<string, number>();
  /** Sends held until their recipient has keys (key-wait.ts). */
  private readonly keyWait: KeyWait | undefined;

  constructor(options: ClientOptions) {
    super();
    this.transport = options.transport;
    this.store = options.store;
    this.gapBook = new GapBook(options.store);
    this.clock = options.clock ?? systemClock;
    this.random = options.random ?? Math.random;
    this.ulid = ulidFactory(this.clock, this.random);
    this.credentials = options.credentials;
    if (options.device !== undefined) assertDeviceId(options.device, 'device');
    this.deviceHint = options.device;
    this.reconnects = new Reconnector(
      this.clock,
      this.random,
      options.backoffBaseMs ?? DEFAULT_BACKOFF_BASE_MS,
      options.backoffMaxMs ?? DEFAULT_BACKOFF_MAX_MS,
      () => {
        if (this._state !== 'backoff') return;
        this.setState('connecting');
        void this.connect();
      },
    );
    this.opts = {
      gapTimeoutMs: options.gapTimeoutMs ?? 10_000,
      maxHeldPerStream: options.maxHeldPerStream ?? 1024,
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? 10_000,
      maxInflight: options.maxInflight ?? 128,
      maxBodyBytes: options.maxBodyBytes ?? 64 * 1024,
      typingTimeoutMs: options.typingTimeoutMs ?? 6000,
      typingRefreshMs: options.typingRefreshMs ?? 3000,
      ackDelayMs: options.ackDelayMs ?? 25,
      resendWindowMs: options.resendWindowMs ?? 24 * 3600_000,
    };
    if (options.crypto) {
      this.e2ee = new E2ee(
        options.crypto,
        this.store,
        {
          identityPolicy: options.identityPolicy ?? 'accept',
          preKeySupply: Math.max(1, Math.min(200, options.preKeySupply ?? 50)),
          signedPreKeyMaxAgeMs: options.signedPreKeyMaxAgeMs ?? 7 * 24 * 3600_000,
        },
        {
          claim: (users, device) => this.claimKeys(users, device),
          upload: (keys) => this.uploadKeys(keys),
          identityChanged: (peer) => this.emit('identityChanged', { user: peer.user, device: peer.device }),
          now: () => this.clock.now(),
        },
      );
      this.keyWait = this.keyWaitOf(this.e2ee, options.keyWaitMs ?? DEFAULT_KEY_WAIT_MS);
    }
    if (options.autoStart ?? true) this.start();
  }

  /** The connection state. */
  get state(): ConnectionState {
    return this._state;
  }

  /** Who the server says this device is (after the first `welcome`). */
  get identity(): { user: string; device: string } | undefined {
    return this.me;
  }

  /**
   * Connects (and keeps reconnecting) until {@link close}. After a `close()` (or before the
   * first start, with `autoStart: false`) it connects at once, its waits starting again from the
   * shortest; while the client waits to reconnect it is {@link reconnectNow}; otherwise (open,
   * connecting) it does nothing.
   */
  start(): void {
    if (this._state === 'backoff') {
      this.reconnectNow();
      return;
    }
    if (this._state !== 'idle' && this._state !== 'closed') return;
    // A fresh start: nothing left of an earlier run's waits.
    this.reconnects.restart();
    this.setState('connecting');
    void this.connect();
  }

  /**
   * Connects at once if the client is waiting to reconnect (state `backoff`). Call it when the
   * network comes back (a browser `online` event, React Native NetInfo) or the app returns to the
   * foreground (`visibilitychange`, AppState): the next attempt then does not wait out a backoff
   * that grew while the network was down. Safe to call as often as those events fire: it skips at
   * most one wait per `backoffMaxMs` (later calls return false), never a wait the server asked
   * for (1013 try again later), and only its first skip after a connection was lost starts the
   * waits again from the shortest, so an app calling it in a loop cannot hammer a server that is
   * down (see docs/engines.md, "Reconnecting"). Does nothing while open, connecting, closed or
   * not yet started.
   * @returns true when it started a connection attempt.
   * @example
   * ```ts
   * window.addEventListener('online', () => client.reconnectNow());
   * ```
   */
  reconnectNow(): boolean {
    if (this._state !== 'backoff') return false;
    return this.reconnects.hurry();
  }

  /**
   * Resolves when the connection is open: at once if it is, else on the next `open`. Rejects with
   * `closed` if the client is closed, or closes while waiting (by {@link close}, or for good:
   * refused static credentials, say, as its `cause`); with `disconnected` after `timeoutMs`; with
   * the signal's reason when `signal` aborts. A client not started yet is waited for: a later
   * {@link start} may open it. Sends need none of this (they wait in the outbox); it is for what
   * needs a live connection, like {@link setPushToken} or {@link approveDevice}.
   * @example
   * ```ts
   * await client.connected({ timeoutMs: 10_000 });
   * await client.setPushToken({ kind: 'fcm', token });
   * ```
   */
  connected(options: ConnectedOptions = {}): Promise<void> {
    return untilOpen(
      {
        state: () => this._state,
        lastError: () => this.connectionError,
        subscribe: (fn) => {
          this.on('connection', fn);
          return () => this.off('connection', fn);
        },
      },
      this.clock,
      options,
    );
  }

  /**
   * Resolves when `user` can be written to with encryption: a device of theirs has published keys
   * (at once when one is known to, and at once without a crypto adapter). A send before that is
   * not lost: it is held, `pending`, until the keys come or `keyWaitMs` passes (then `failed`,
   * `no_keys`). Waits also for a user with no device yet; rejects with `no_keys` after
   * `timeoutMs`, with the signal's reason when `signal` aborts, and with `closed` when the client
   * is or becomes closed. See docs/encryption.md, "A new contact: when can I write?".
   * @example
   * ```ts
   * await client.keysReady('bob', { timeoutMs: 60_000 }); // bob's phone has published its keys
   * ```
   */
  async keysReady(user: string, options: KeysReadyOptions = {}): Promise<void> {
    assertUserId(user, 'user');
    if (this._state === 'closed') throw new PostboxError('closed', 'client is closed');
    if (this.keyWait) await this.keyWait.keysReady(user, options);
  }

  /**
   * Queues a message to user `to`. Resolves with the message id once the outbox entry (id and
   * sequence number, one atomic write) is committed in the client store: from then on the message
   * survives a crash of the app and will be sent, resent until the server acks it. Until it
   * resolves, a crash may have lost it or kept it (the app finds out with {@link history} at
   * start). The `status` event then reports `pending`, `sent` (✓, durable on the server),
   * `delivered` (✓✓), `read`.
   *
   * Rejects, and the message was never stored and will never be sent, with a PostboxError:
   * `too_large` when the body is over the limit, `invalid_frame` when `to` is not a valid user id
   * (1–128 characters, not a group id) or `body` is not a Uint8Array, `closed` after
   * {@link close}, `unavailable` (with the store's error as `cause`) when the client store failed
   * to write it. The body is copied when `send` is called: the caller may reuse its buffer.
   * @example
   * ```ts
   * const id = await client.send('bob', new TextEncoder().encode('hi bob'));
   * // the message is in the outbox on disk: it will reach bob, even if the app dies now
   * ```
   */
  async send(to: string, body: Uint8Array, options?: SendOptions): Promise<string> {
    if (isGroupId(to)) throw new PostboxError('invalid_frame', 'group ids start with #: use sendToGroup');
    assertUserId(to, 'recipient');
    return this.queueMessage(to, body, options?.id);
  }

  /**
   * Queues a message to a group; resolves with its id once it is committed in the client store,
   * and rejects when it is not, exactly as {@link send}. The server stores it once and delivers it
   * to every device of every member at commit time (and to this user's other devices). `status`
   * reports `sent`, then `delivered` when every member (as this device knew the group when
   * sending) has it and `read` when every one has read it; `memberStatus` and {@link messageInfo}
   * give each member's receipt. A sender who is not a member gets `failed` (`not_member`). The
   * recipients it is counted against are stored in the same atomic write as the message.
   */
  async sendToGroup(group: string, body: Uint8Array, options?: SendOptions): Promise<string> {
    assertGroupId(group, 'group');
    return this.queueMessage(group, body, options?.id);
  }

  /**
   * One conversation's messages, received and sent (never receipts), newest first, from the
   * client store: `limit` of them (default 50), older than the `before` cursor when given. Read
   * it at start to draw a chat and to catch up on anything the app's own state missed (a crash
   * between the store commit and the app's `message` handler, say). Works offline.
   * @example
   * ```ts
   * const page = await client.history('bob', { limit: 20 });
   * const older = await client.history('bob', { before: page.at(-1)?.cursor, limit: 20 });
   * ```
   */
  history(conv: string, options: HistoryOptions = {}): Promise<HistoryMessage[]> {
    return this.serial(async () => readHistory(this.store, conv, options, await this.self()));
  }

  /**
   * Every conversation with a message, the most recently active first, each with its latest
   * message and its number of unread received messages. From the client store; works offline.
   */
  conversations(): Promise<ConversationSummary[]> {
    return this.serial(async () => readConversations(this.store, await this.self()));
  }

  /** This device's identity: from the live session, else as saved on an earlier connection. */
  private async self(): Promise<{ user: string; device: string } | undefined> {
    return this.me ?? (await loadIdentity(this.store));
  }

  private async queueMessage(to: string, body: Uint8Array, given?: string): Promise<string> {
    if (this._state === 'closed') throw new PostboxError('closed', 'client is closed');
    if (!(body instanceof Uint8Array)) throw new PostboxError('invalid_frame', 'body must be a Uint8Array');
    if (body.byteLength > this.opts.maxBodyBytes) {
      throw new PostboxError(
        'too_large',
        `body of ${body.byteLength} bytes is over ${this.opts.maxBodyBytes}`,
      );
    }
    if (given !== undefined) assertMessageId(given);
    const id = given ?? this.ulid();
    const copy = body.slice();
    return this.serial(async () => {
      let entry: OutboxEntry;
      try {
        // A given id already stored: this send was made before (see SendOptions.id).
        if (given !== undefined && (await this.store.outgoing(given))) return given;
        // A group message's bookkeeping goes in the same atomic write: a crash in between would
        // send a message whose receipts count against no one, so its ✓✓ never came.
        const state = isGroupId(to) ? await this.groupSendState(id, to) : undefined;
        entry = await this.store.enqueue(
          { id, kind: 'msg', to, conv: to, body: copy, createdAt: this.clock.now() },
          true,
          state,
        );
      } catch (e) {
        throw storeRefused('message', e);
      }
      this.queue.push(entry);
      this.emit('status', { id, conv: to, status: 'pending' });
      this.pumpOutbox();
      return id;
    });
  }

  /** The recipients a group message counts its receipts against, as this device knows the group. */
  private async groupSendState(id: string, group: string): Promise<StateWrite[]> {
    // The views load with the first connection; a send before it reads the stored one.
    let view = this.groupViews.get(group);
    if (!view) {
      const raw = await this.store.getState(NS_GROUP, group);
      view = raw && decodeView(group, raw);
    }
    const me = (await this.self())?.user;
    const recipients = view ? view.members.map((m) => m.user).filter((u) => u !== me) : [];
    const writes: StateWrite[] = [{ ns: NS_GROUP_SEND, key: id, value: encodeRecipients(recipients) }];
    // The group's version when sent: who joined after it may have received it too (receipts
    // and resends are checked against it, with or without encryption).
    writes.push({ ns: NS_GROUP_SEND_VER, key: id, value: encodeNumber(view?.ver ?? 0) });
    return writes;
  }

  // ------------------------------------------------------------------ groups

  /**
   * Creates a group named `name` with this user as its admin and `members` (other users, at most
   * 1,023 of them, or the server's lower cap) as members. The request goes through the durable
   * outbox, so it survives being offline and restarts; the promise resolves with the group id
   * when the server has committed it (every member device then gets the group), and rejects with
   * `unknown_recipient` (a member is not registered: no device, not in the server's user
   * directory), `group_full`, or `closed`.
   * @param id - the group id to use (`#` and 1-63 of [0-9A-Za-z_-]); a fresh one by default.
   */
  async createGroup(name: string, members: string[], id?: string): Promise<string> {
    const group = id ?? `#${this.ulid()}`;
    await this.groupRequest(group, { op: 'create', m: members, n: name });
    return group;
  }

  /** Adds users to a group (admins only: else `forbidden`; past the cap `group_full`). */
  addMembers(group: string, users: string[]): Promise<void> {
    return this.groupRequest(group, { op: 'add', m: users });
  }

  /** Removes users from a group (admins only). A removed member gets nothing sent after it. */
  removeMembers(group: string, users: string[]): Promise<void> {
    return this.groupRequest(group, { op: 'remove', m: users });
  }

  /** Leaves a group. A last admin who leaves hands the role to the longest-standing member. */
  leaveGroup(group: string): Promise<void> {
    return this.groupRequest(group, { op: 'leave' });
  }

  /** Makes members admins (admins only). */
  promoteMembers(group: string, users: string[]): Promise<void> {
    return this.groupRequest(group, { op: 'promote', m: users });
  }

  /** Makes admins plain members (admins only; the last admin cannot be demoted). */
  demoteMembers(group: string, users: string[]): Promise<void> {
    return this.groupRequest(group, { op: 'demote', m: users });
  }

  /** Renames a group (admins only). */
  renameGroup(group: string, name: string): Promise<void> {
    return this.groupRequest(group, { op: 'rename', n: name });
  }

  /**
   * Accepts a pending invite: this user joins the group (every member is told, and this device
   * gets the group). Rejects with `forbidden` when there is no such invite.
   */
  acceptGroupInvite(group: string): Promise<void> {
    return this.groupRequest(group, { op: 'accept' });
  }

  /** Declines a pending invite; this user's other devices drop it too. */
  declineGroupInvite(group: string): Promise<void> {
    return this.groupRequest(group, { op: 'decline' });
  }

  /** The pending group invites this device knows, oldest first. */
  groupInvites(): Promise<GroupInvite[]> {
    return listInvites(this.store);
  }

  /** A group as this device knows it (after its membership events arrived), or undefined. */
  group(id: string): GroupView | undefined {
    const v = this.groupViews.get(id);
    return v && { ...v, members: v.members.map((m) => ({ ...m })) };
  }

  /** Every group this device knows, including ones this user has left. */
  groups(): GroupView[] {
    return [...this.groupViews.keys()].map((id) => this.group(id)!);
  }

  /**
   * The safety number of this device and a peer device (60 digits, identical on both), for the
   * users to compare in person or over another channel. Undefined without encryption or before
   * the two devices have exchanged a message.
   */
  async safetyNumber(user: string, device: string): Promise<string | undefined> {
    if (!this.e2ee || !this.me) return undefined;
    await this.cryptoReady;
    return this.e2ee.safetyNumber({ user, device });
  }

  /**
   * Marks a peer device's current identity key as verified (after comparing safety numbers).
   * Under `identityPolicy: 'block'` this releases the messages that waited for it. False when
   * the device's identity is not known.
   */
  async verifyIdentity(user: string, device: string): Promise<boolean> {
    if (!this.e2ee || !this.me) return false;
    await this.cryptoReady;
    const ok = await this.e2ee.verify({ user, device });
    // What waited (unsent items, unacked entries) goes again on a fresh connection.
    if (ok && this._state === 'open') this.drop('identity verified');
    return ok;
  }

  /**
   * The "message info" view of a message this device sent: its aggregate status and, for a
   * group message, each member's receipt. Undefined for an unknown id.
   */
  messageInfo(id: string): Promise<MessageInfo | undefined> {
    return this.serial(async () => {
      const entry = await this.store.outgoing(id);
      if (!entry || entry.kind !== 'msg') return undefined;
      const info = withFailure<MessageInfo>({ id, conv: entry.conv, status: entry.status }, entry);
      if (!isGroupId(entry.conv)) return info;
      info.recipients = [...(await this.recipientsOf(id))];
      const prefix = `${id}\u0000`;
      info.members = (await this.store.listState(NS_MEMBER_STATUS, prefix)).map((e) => ({
        user: e.key.slice(prefix.length),
        status: MEMBER_STATUS_NAME[e.value[0]!] as MemberStatus['status'],
      }));
      return info;
    });
  }

  private groupRequest(group: string, change: { op: GroupOp; m?: string[]; n?: string }): Promise<void> {
    if (this._state === 'closed') return Promise.reject(new PostboxError('closed', 'client is closed'));
    if (change.m && change.m.length > 1024) {
      return Promise.reject(new PostboxError('invalid_frame', 'members: at most 1,024 user ids'));
    }
    try {
      assertGroupId(group, 'group');
      for (const u of change.m ?? []) assertUserId(u, 'member');
    } catch (e) {
      return Promise.reject(e as PostboxError);
    }
    if (change.n !== undefined && (typeof change.n !== 'string' || !change.n || change.n.length > 128)) {
      return Promise.reject(new PostboxError('invalid_frame', 'group name: 1 to 128 characters'));
    }
    const id = this.ulid();
    const done = new Promise<void>((resolve, reject) => this.waiters.set(id, { resolve, reject }));
    void this.serial(async () => {
      let entry: OutboxEntry;
      try {
        entry = await this.store.enqueue(
          {
            id,
            kind: 'group',
            to: group,
            conv: group,
            body: encodeChange(change),
            createdAt: this.clock.now(),
          },
          false,
        );
      } catch (e) {
        this.settleWaiter(id, storeRefused('request', e));
        throw e;
      }
      this.queue.push(entry);
      this.pumpOutbox();
    });
    return done;
  }

  private settleWaiter(id: string, error?: PostboxError): void {
    const w = this.waiters.get(id);
    if (!w) return;
    this.waiters.delete(id);
    if (error) w.reject(error);
    else w.resolve();
  }

  // ------------------------------------------------------------------ devices, presence, typing

  /**
   * Approves linking the new device that shows `code` (see the `linkCode` event) to this user.
   * Needs a live connection. Rejects with `forbidden` for a wrong or expired code.
   */
  approveDevice(code: string): Promise<void> {
    return this.request((r) => ({ t: 'lnk', r, code }));
  }

  /**
   * Unlinks a device of this user (this one included): the server deletes it and its inbox and
   * closes its connection; it must be linked (approved) again to come back. Rejects with
   * `invalid_frame` for an invalid device id.
   */
  async unlinkDevice(device: string): Promise<void> {
    assertDeviceId(device, 'device');
    return this.request((r) => ({ t: 'unl', r, d: device }));
  }

  /**
   * Registers this device's push token with the server (`kind`: `apns`, `fcm`, `webpush` or the
   * app's own; `token` as the platform gave it), or removes it with `undefined`. The server then
   * wakes this device, content-free, when something lands in its inbox while it has no
   * connection (see docs/push.md). Needs a live connection; call it again when the platform
   * hands out a new token (calling it in an `open` handler is cheap and always right).
   */
  setPushToken(token: { kind: string; token: string } | undefined): Promise<void> {
    return this.request((r) =>
      token ? { t: 'ptok', r, k: token.kind, tok: token.token } : { t: 'ptok', r },
    );
  }

  /**
   * Follows a user's presence (a chat on screen): `presence` events now and on every change,
   * re-subscribed after reconnects until {@link unwatchPresence}. Rejects with `forbidden` when
   * the server's privacy rule hides that user from this one (default: only users who share a
   * conversation see each other), and with `invalid_frame` for an invalid user id.
   */
  async watchPresence(user: string): Promise<void> {
    assertUserId(user, 'user');
    this.watched.add(user);
    try {
      await this.request((r) => ({ t: 'sub', r, u: user }));
    } catch (e) {
      if (isPostboxErrorCode(e, 'forbidden')) this.watched.delete(user);
      throw e;
    }
  }

  /** Stops following a user's presence. */
  unwatchPresence(user: string): void {
    if (!this.watched.delete(user)) return;
    if (this._state === 'open') this.write({ t: 'unsub', u: user });
  }

  /**
   * Tells the peer (or the group's online members) that this user is typing (`on`) or stopped.
   * Call it on every keystroke: `on` goes out at most every `typingRefreshMs`, `off` once.
   * Nothing is stored or queued: when offline, it is dropped.
   * @throws PostboxError `invalid_frame` when `conv` is neither a user nor a group id.
   */
  setTyping(conv: string, on: boolean): void {
    if (!isUserId(conv) && !isGroupId(conv))
      throw new PostboxError('invalid_frame', 'not a user or group id');
    if (this._state !== 'open') return;
    const now = this.clock.now();
    const last = this.typingSentAt.get(conv);
    if (on) {
      if (last !== undefined && now - last < this.opts.typingRefreshMs) return;
      this.typingSentAt.set(conv, now);
    } else {
      if (last === undefined) return;
      this.typingSentAt.delete(conv);
    }
    const frame: ClientFrame = { t: 'typ', to: conv, on };
    if (isGroupId(conv)) frame.g = true;
    this.write(frame);
  }

  private request(build: (r: number) => ClientFrame): Promise<void> {
    if (this._state === 'closed') return Promise.reject(new PostboxError('closed', 'client is closed'));
    if (this._state !== 'open' || !this.conn) {
      return Promise.reject(new PostboxError('disconnected', 'needs a live connection'));
    }
    const r = this.takeReq();
    return new Promise<void>((resolve, reject) => {
      this.requests.set(r, { resolve, reject });
      this.write(build(r));
    });
  }

  private takeReq(): number {
    const r = this.nextReq++;
    if (this.nextReq > 0xffffffff) this.nextReq = 1;
    return r;
  }

  /**
   * Marks the conversation's received messages read, up to and including `upTo` (all when
   * omitted), and sends read receipts to their senders through the outbox (so they survive
   * being offline). Resolves when the receipts are durably queued.
   */
  markRead(conv: string, upTo?: string): Promise<void> {
    return this.serial(async () => {
      const messages = await this.store.inbound(conv);
      const end = upTo === undefined ? messages.length - 1 : messages.findIndex((m) => m.id === upTo);
      const bySender = new Map<string, string[]>();
      for (let i = 0; i <= end; i++) {
        const m = messages[i]!;
        // Only others' messages get receipts: not copies of this user's messages sent from its
        // other devices (in a 1:1 chat their sender is not the conversation's peer).
        if (m.read || m.held || m.from === this.me?.user) continue;
        if (!isGroupId(conv) && m.from !== m.conv) continue;
        let ids = bySender.get(m.from);
        if (!ids) bySender.set(m.from, (ids = []));
        ids.push(m.id);
      }
      for (const [from, ids] of bySender) {
        for (let i = 0; i < ids.length; i += 512) {
          const chunk = ids.slice(i, i + 512);
          const entry = await this.store.enqueue(
            { id: this.ulid(), kind: 'read', to: from, conv, ids: chunk, createdAt: this.clock.now() },
            false,
          );
          await this.store.markRead(chunk);
          this.queue.push(entry);
        }
      }
      this.pumpOutbox();
    });
  }

  /** Resolves when every queued store operation so far has finished (useful in tests). */
  settled(): Promise<void> {
    return this.serial(async () => {});
  }

  /** Outgoing items not yet acked by the server. */
  get unsent(): number {
    return this.queue.length + (this.keyWait?.size ?? 0);
  }

  /** Closes the connection and stops reconnecting. The store stays open for its owner. */
  async close(): Promise<void> {
    this.setState('closed');
    this.reconnects.cancel();
    this.stopTimers();
    for (const t of this.gapTimers.values()) this.clock.clearTimeout(t);
    this.gapTimers.clear();
    for (const t of this.typingTimers.values()) this.clock.clearTimeout(t);
    this.typingTimers.clear();
    this.keyWait?.close();
    // Queued requests stay in the outbox for the next start; only this run's promises end.
    for (const id of [...this.waiters.keys()]) {
      this.settleWaiter(id, new PostboxError('closed', 'client closed before the server answered'));
    }
    const conn = this.conn;
    this.conn = undefined;
    this.generation++;
    conn?.close(CLOSE_CODES.normal, 'client closed');
    await this.chain.catch(() => {});
  }

  // ------------------------------------------------------------------ connection

  private setState(state: ConnectionState, error?: PostboxError): void {
    if (this._state === state) return;
    if (this._state === 'closed' && state !== 'connecting') return;
    this._state = state;
    // Kept for `connected()`: why the client is not open (an app's close has no error).
    if (state === 'open' || state === 'closed') this.connectionError = error;
    else if (error) this.connectionError = error;
    this.emit('connection', state, error);
  }

  private async connect(): Promise<void> {
    const gen = ++this.generation;
    let conn: Connection;
    try {
      // The store is the truth: every connection starts from what it holds, which also heals
      // the in-memory queue after a store failure.
      await this.serial(() => this.load());
      if (gen !== this.generation) return;
      conn = await this.transport.connect();
    } catch (e) {
      if (gen !== this.generation) return;
      // A setup that cannot work (no WebSocket at all) stops here rather than retrying forever.
      if (isPostboxError(e) && e.code === 'misconfigured') return this.setState('closed', e);
      this.scheduleReconnect(
        // The transport's own words, not only in `cause`: "ECONNREFUSED", "no connection within…".
        new PostboxError('disconnected', `connect failed: ${e instanceof Error ? e.message : String(e)}`, {
          cause: e,
        }),
      );
      return;
    }
    if (gen !== this.generation || this._state === 'closed') {
      conn.close(CLOSE_CODES.normal, 'stale');
      return;
    }
    this.conn = conn;
    conn.setHandlers({
      frame: (data) => {
        if (gen === this.generation) this.onFrame(data);
      },
      close: (code, reason) => {
        if (gen === this.generation) this.onClose(code, reason);
      },
      drain: () => {
        if (gen === this.generation) this.pumpOutbox();
      },
    });
    this.setState('handshaking');
    this.lastReceivedAt = this.clock.now();
    this.handshakeTimer = this.clock.setTimeout(() => {
      if (gen === this.generation && this._state === 'handshaking') this.drop('handshake timeout');
    }, this.opts.handshakeTimeoutMs);
    let cred: unknown;
    try {
      cred =
        typeof this.credentials === 'function'
          ? await (this.credentials as () => unknown)()
          : this.credentials;
    } catch (e) {
      this.emit('error', e);
      this.drop('credentials failed');
      return;
    }
    if (gen !== this.generation) return;
    const hello: ClientFrame = { t: 'hello', v: [MIN_PROTOCOL_VERSION, PROTOCOL_VERSION], cred };
    if (this.deviceHint !== undefined) hello.dev = this.deviceHint;
    this.write(hello);
  }

  /** Drops the current connection (e.g. found dead) and reconnects after a backoff. */
  private drop(reason: string): void {
    const conn = this.conn;
    this.onClose(CLOSE_CODES.abnormal, reason);
    conn?.close(CLOSE_CODES.normal, reason);
  }

  private onClose(code: number, reason: string): void {
    this.generation++;
    this.conn = undefined;
    this.stopTimers();
    // Everything unacked goes out again, in order, on the next connection.
    this.inflight.clear();
    this.sendPointer = 0;
    this.typingSentAt.clear();
    const requests = [...this.requests.values(), ...this.keyRequests.values()];
    this.requests.clear();
    this.keyRequests.clear();
    this.ctlRequests.clear();
    for (const q of requests) q.reject(new PostboxError('disconnected', 'connection closed'));
    if (this._state === 'closed') return;
    // Retrying cannot help with static credentials the server refused or found expired, or with
    // no common version. Everything else reconnects, `replaced` included: a stale connection of
    // this same device (say, from before a restart) can reach the server after the new one and
    // replace it. Expired credentials reconnect with fresh ones from the function; if it keeps
    // handing out stale ones, the server refuses the hello (1008) and the backoff grows.
    const refused = code === CLOSE_CODES.unauthorized || code === CLOSE_CODES.reauthenticate;
    const fatal =
      refused && typeof this.credentials !== 'function'
        ? 'unauthorized'
        : code === CLOSE_CODES.unsupportedVersion
          ? 'unsupported_version'
          : code === CLOSE_CODES.unlinked
            ? 'forbidden'
            : undefined;
    if (fatal) {
      this.setState('closed', new PostboxError(fatal, `connection closed: ${reason || code}`));
      return;
    }
    // 1013: the server cannot serve now (overloaded, or its store is away); 4008: this client read
    // too slowly for the server's queues. Still retried, but after a wait the app cannot cut short.
    const busy = code === CLOSE_CODES.tryAgainLater || code === CLOSE_CODES.slowReader;
    const why = busy ? 'unavailable' : 'disconnected';
    this.scheduleReconnect(new PostboxError(why, `connection closed: ${reason || code}`), busy);
  }

  private scheduleReconnect(error: PostboxError, busy = false): void {
    if (this._state === 'closed') return;
    this.setState('backoff', error);
    this.reconnects.wait(busy);
  }

  private stopTimers(): void {
    this.clock.clearTimeout(this.heartbeatTimer);
    this.clock.clearTimeout(this.handshakeTimer);
    this.clock.clearTimeout(this.ackTimer);
    this.heartbeatTimer = this.handshakeTimer = this.ackTimer = undefined;
  }

  private scheduleHeartbeat(): void {
    const gen = this.generation;
    this.heartbeatTimer = this.clock.setTimeout(
      () => {
        if (gen !== this.generation || this._state !== 'open') return;
        const now = this.clock.now();
        if (now - this.lastReceivedAt > this.heartbeatMs * 2) {
          this.drop('heartbeat timeout');
          return;
        }
        if (
          now - this.lastSentAt >= this.heartbeatMs / 2 ||
          now - this.lastReceivedAt >= this.heartbeatMs / 2
        ) {
          this.write({ t: 'ping' });
        }
        this.scheduleHeartbeat();
      },
      Math.max(10, Math.floor(this.heartbeatMs / 2)),
    );
  }

  private write(frame: ClientFrame): void {
    if (!this.conn) return;
    this.lastSentAt = this.clock.now();
    this.conn.send(encodeFrame(frame));
  }

  private onFrame(data: Uint8Array): void {
    this.lastReceivedAt = this.clock.now();
    let frame: ServerFrame;
    try {
      frame = decodeServerFrame(data, Math.max(DEFAULT_MAX_FRAME_BYTES, this.opts.maxBodyBytes * 2));
    } catch (e) {
      this.emit('error', e);
      this.drop('invalid frame from server');
      return;
    }
    switch (frame.t) {
      case 'welcome':
        return this.onWelcome(frame);
      case 'ok':
        return this.onOk(frame.r);
      case 'err':
        return this.onErr(frame.r, errorOf(frame));
      case 'kb':
        return this.onKeyBundles(frame);
      case 'kr':
        return this.keyWait?.published(frame.u);
      case 'klow':
        if (this.e2ee) {
          const e2ee = this.e2ee;
          void this.cryptoReady
            .then(() => e2ee.replenish(frame.pk, frame.kpk))
            .catch((e) => this.emit('error', e));
        }
        return;
      case 'msg':
        return this.onMsg(frame);
      case 'st':
        return this.onStatus(frame);
      case 'gev':
        return this.onGroupEvent(frame);
      case 'gap':
        return this.onGapNotice(frame);
      case 'pres':
        if (this.watched.has(frame.u)) {
          const change: PresenceChange = { user: frame.u, online: frame.on };
          if (frame.ls !== undefined) change.lastSeen = frame.ls;
          this.emit('presence', change);
        }
        return;
      case 'typn':
        return this.onTyping(frame);
      case 'lcode':
        if (this._state !== 'handshaking' && this._state !== 'linking') return;
        // Approval can take a while: the handshake timeout no longer applies.
        this.clock.clearTimeout(this.handshakeTimer);
        this.setState('linking');
        this.emit('linkCode', { code: frame.code, expiresAt: frame.exp });
        return;
      case 'ping':
        return this.write({ t: 'pong' });
      case 'pong':
        return;
    }
  }

  private onWelcome(w: WelcomeFrame): void {
    if (this._state !== 'handshaking' && this._state !== 'linking') return;
    this.clock.clearTimeout(this.handshakeTimer);
    const me = (this.me = { user: w.u, device: w.d });
    // Saved so that history names this device's messages while offline, after a restart.
    void this.serial(() => saveIdentity(this.store, me));
    this.heartbeatMs = w.hb;
    this.window = Math.max(1, Math.min(this.opts.maxInflight, w.lim.window));
    this.opts.maxBodyBytes = w.lim.body;
    // Delaying acks needs the server's delivery window, or a drain could stall on it.
    this.ackBatch = w.lim.dw === undefined ? 512 : Math.max(1, Math.min(512, Math.floor(w.lim.dw / 2)));
    this.ackDelay = w.lim.dw === undefined ? 0 : this.opts.ackDelayMs;
    this.reconnects.opened();
    if (this.e2ee) {
      // Inbound messages (serial) and outgoing ones (tx chain) wait for the adapter to open.
      const e2ee = this.e2ee;
      const gen = this.generation;
      // Opened once per client (again only after a failure). It is a serial task, and serial
      // tasks never await it — they only check it ran — so no earlier task waits on a later one.
      if (!e2ee.opened) {
        this.cryptoReady = this.serial(async () => {
          await e2ee.open(me);
        });
      }
      void this.cryptoReady
        .then(() => (gen === this.generation ? e2ee.onConnected() : undefined))
        .catch((e) => {
          if (gen === this.generation) this.emit('error', e);
        });
    }
    // Taken before 'open' is emitted: a watch the app starts in its handler subscribes by itself.
    const renew = [...this.watched];
    this.setState('open');
    this.scheduleHeartbeat();
    this.flushAcks();
    this.pumpOutbox();
    this.keyWait?.connected();
    // Subscriptions end with a connection; the ones the app still wants are renewed.
    for (const user of renew) {
      const r = this.takeReq();
      this.requests.set(r, {
        resolve: () => {},
        reject: (e) => {
          if (e.code === 'forbidden') this.watched.delete(user);
        },
      });
      this.write({ t: 'sub', r, u: user });
    }
  }

  // ------------------------------------------------------------------ outbox

  private async load(): Promise<void> {
    this.queue = await this.store.pending();
    this.sendPointer = 0;
    this.keyWait?.requeued();
    if (this.groupViews.size === 0) {
      for (const { key, value } of await this.store.listState(NS_GROUP)) {
        this.groupViews.set(key, decodeView(key, value));
      }
    }
    this.pins.clear();
    for (const { key, value } of await this.store.listState(NS_PINS)) {
      this.pins.set(key, new Set(JSON.parse(new TextDecoder().decode(value)) as number[]));
      this.armGapTimer(key);
    }
    await this.gapBook.load();
    this.heldByKey.clear();
    for (const m of await this.store.held()) {
      const key = streamKey(m.conv, m.from, m.fromDevice);
      let held = this.heldByKey.get(key);
      if (!held) this.heldByKey.set(key, (held = new Map()));
      held.set(m.seq, m);
      this.armGapTimer(key);
    }
  }

  private pumpOutbox(): void {
    if (this._state !== 'open' || !this.conn) return;
    while (this.inflight.size < this.window && this.sendPointer < this.queue.length) {
      const e = this.queue[this.sendPointer++]!;
      const r = this.takeReq();
      this.inflight.set(r, e.id);
      // With encryption every frame takes the (asynchronous) sealing path, so none overtakes another.
      if (this.e2ee) this.sealAndSend(e, r);
      else if (e.kind === 'msg') {
        const f: ClientFrame = { t: 'send', r, id: e.id, to: e.to, seq: e.seq!, b: e.body! };
        if (isGroupId(e.to)) f.g = true;
        this.write(f);
      } else if (e.kind === 'group') {
        const c = decodeChange(e.body!);
        const f: ClientFrame = { t: 'grp', r, id: e.id, g: e.to, op: c.op };
        if (c.m) f.m = c.m;
        if (c.n !== undefined) f.n = c.n;
        this.write(f);
      } else this.write({ t: 'rcpt', r, id: e.id, to: e.to, ids: e.ids! });
    }
  }

  // ------------------------------------------------------------------ encryption

  /** Builds (encrypting where needed) and writes an outbox item's frame, in outbox order. */
  private sealAndSend(e: OutboxEntry, r: number): void {
    const gen = this.generation;
    this.txChain = this.txChain.then(async () => {
      if (gen !== this.generation) return;
      // Behind a send held for its recipient's keys, a later one to the same user waits too.
      if (perDevice(e) && this.keyWait!.behind(e)) return this.held(e.id, r);
      let frame: ClientFrame;
      try {
        await this.cryptoReady;
        frame = await this.sealedFrame(e, r);
      } catch (err) {
        // The connection went away mid-way: everything unacked goes out again after reconnecting.
        if (gen === this.generation) this.sealFailed(e, r, err);
        return;
      }
      if (gen === this.generation) this.write(frame);
    });
  }

  private async sealedFrame(e: OutboxEntry, r: number): Promise<ClientFrame> {
    const e2ee = this.e2ee!;
    if (e.kind === 'group') {
      const c = decodeChange(e.body!);
      const f: ClientFrame = { t: 'grp', r, id: e.id, g: e.to, op: c.op };
      if (c.m) f.m = c.m;
      if (c.n !== undefined) f.n = c.n;
      return f;
    }
    if (e.kind === 'read') return { t: 'rcpt', r, id: e.id, to: e.to, ids: e.ids! };
    if (e.kind === 'msg' && isGroupId(e.to)) {
      await this.distribute(e.to);
      return {
        t: 'send',
        r,
        id: e.id,
        to: e.to,
        seq: e.seq!,
        b: await e2ee.groupEncrypt(e.to, [0, e.body!]),
        g: true,
      };
    }
    const content: Content = e.kind === 'ctl' ? decodeContent(e.body!) : [0, e.body!];
    const envelopes = await e2ee.envelopes(e.to, content, content[0] === 2);
    if (envelopes.length === 0) {
      throw new PostboxError('unknown_recipient', `no device of ${e.to} has published keys`);
    }
    return { t: 'send', r, id: e.id, to: e.to, seq: e.kind === 'ctl' ? 0 : e.seq!, b: EMPTY, e: envelopes };
  }

  /** Sends this device's sender key for `group` to every member device that lacks it. */
  private async distribute(group: string): Promise<void> {
    const e2ee = this.e2ee!;
    const me = this.me!.user;
    const view = this.groupViews.get(group);
    const users = view ? view.members.map((m) => m.user).filter((u) => u !== me) : [];
    const { distribution, to, gen } = await e2ee.missingDistribution(group, users);
    for (const [user, devices] of to) {
      const envelopes = await e2ee.envelopes(user, [1, group, distribution]);
      if (envelopes.length === 0) continue;
      const r = this.takeReq();
      this.ctlRequests.set(r, {
        ok: () => void e2ee.distributed(group, user, devices, gen).catch((x) => this.emit('error', x)),
        err: (x) => {
          if (x.devices) void e2ee.correct(x.devices).catch((y) => this.emit('error', y));
        },
      });
      // Committed before the group message that needs it, so every inbox has it first.
      this.write({ t: 'send', r, id: this.ulid(), to: user, seq: 0, b: EMPTY, e: envelopes });
    }
  }

  private sealFailed(entry: OutboxEntry, r: number, err: unknown): void {
    const id = entry.id;
    const code = isPostboxError(err) ? err.code : (err as { code?: unknown })?.code;
    if (code === 'disconnected' || code === 'closed') return;
    // No device with keys yet, but the user has devices: held until keys come (key-wait.ts).
    if (code === 'unknown_recipient' && this.keyWait!.hold(entry)) return this.held(id, r);
    this.inflight.delete(r);
    if (code === 'untrusted_identity') {
      // Stays pending in the store: it goes out after verifyIdentity() (which reconnects).
      this.unqueue(id);
      this.emit('error', err);
      this.pumpOutbox();
      return;
    }
    if (code === 'unknown_recipient' || !this.retryCorrection(id)) {
      const e = isPostboxError(err) ? err : new PostboxError('internal', 'encryption failed', { cause: err });
      this.settleOutgoing(id, 'failed', e);
      return;
    }
    this.emit('error', err);
    this.drop('encryption failed');
  }

  /** An item was held for its recipient's keys: it leaves the send window and the queue (it stays pending in the store). */
  private held(id: string, r: number): void {
    this.inflight.delete(r);
    this.unqueue(id);
    this.pumpOutbox();
  }

  /** Runs `fn` on the seal chain (after every item already on its way), with the adapter open. */
  private onSealChain(fn: () => Promise<void>): Promise<void> {
    const run = this.txChain.then(async () => {
      await this.cryptoReady;
      await fn();
    });
    this.txChain = run.catch(() => {});
    return run;
  }

  /** The key wait of an encrypting client: it asks through this connection, and puts items back through the outbox. */
  private keyWaitOf(e2ee: E2ee, keyWaitMs: number): KeyWait {
    return new KeyWait(
      {
        clock: this.clock,
        online: () => this._state === 'open',
        probe: async (users) => {
          await this.cryptoReady;
          const ready: string[] = [];
          const unknown: string[] = [];
          for (const u of users) ((await e2ee.hasKeys(u)) ? ready : unknown).push(u);
          if (unknown.length > 0) {
            // The round trip is outside the seal chain: it holds up no send.
            const bundles = await this.claimKeys(unknown);
            await this.onSealChain(() => e2ee.adopt(unknown, bundles));
            for (const u of unknown) if (await e2ee.hasKeys(u)) ready.push(u);
          }
          return ready;
        },
        afterSealing: (fn) => void this.onSealChain(async () => fn()).catch((e) => this.emit('error', e)),
        requeue: (entries) => {
          // Ahead of everything not yet sent: the later items of their conversation are behind them.
          this.queue.splice(this.sendPointer, 0, ...entries);
          this.pumpOutbox();
        },
        fail: (entry, error) => this.settleOutgoing(entry.id, 'failed', error),
      },
      keyWaitMs,
    );
  }

  /** Counts a correction of an outgoing item; false once it has had too many. */
  private retryCorrection(id: string): boolean {
    const n = (this.corrections.get(id) ?? 0) + 1;
    if (this.corrections.size > 1024) this.corrections.clear();
    this.corrections.set(id, n);
    return n <= 5;
  }

  /** The directory disagreed with a send's device list: fix the lists, then send everything again. */
  private onDeviceMismatch(id: string, r: number, error: PostboxError): void {
    if (!this.retryCorrection(id) || !error.devices) {
      this.inflight.delete(r);
      this.settleOutgoing(id, 'failed', error);
      return;
    }
    const gen = this.generation;
    this.e2ee!.correct(error.devices).then(
      () => {
        // Later sends may be in flight; resending everything in order keeps per-sender order.
        if (gen === this.generation) this.drop('device list corrected');
      },
      (e) => {
        this.emit('error', e);
        if (gen === this.generation) this.drop('device list correction failed');
      },
    );
  }

  private claimKeys(users: string[], device?: string): Promise<KeyBundle[]> {
    if (this._state !== 'open' || !this.conn) {
      return Promise.reject(new PostboxError('disconnected', 'needs a live connection'));
    }
    const r = this.takeReq();
    return new Promise<KeyBundle[]>((resolve, reject) => {
      this.keyRequests.set(r, { resolve, reject });
      const f: ClientFrame = { t: 'kget', r, u: users };
      if (device !== undefined) f.d = device;
      this.write(f);
    });
  }

  private uploadKeys(k: KeyUpload): Promise<void> {
    return this.request((r) => {
      const f: ClientFrame = { t: 'keys', r, rid: k.registrationId, ik: k.identityKey };
      if (k.signedPreKey) f.spk = [k.signedPreKey.id, k.signedPreKey.key, k.signedPreKey.signature];
      if (k.lastResortKyber)
        f.lrk = [k.lastResortKyber.id, k.lastResortKyber.key, k.lastResortKyber.signature];
      if (k.preKeys?.length) f.pk = k.preKeys.map((p) => [p.id, p.key]);
      if (k.kyberPreKeys?.length) f.kpk = k.kyberPreKeys.map((p) => [p.id, p.key, p.signature]);
      return f;
    });
  }

  private onKeyBundles(f: KeyBundlesFrame): void {
    const q = this.keyRequests.get(f.r);
    if (!q) return;
    this.keyRequests.delete(f.r);
    if (f.w) this.keyWait?.noteKeyless(f.w);
    q.resolve(
      f.b.map(([user, device, registrationId, identityKey, spk, kpk, pk]) => {
        const b: KeyBundle = {
          user,
          device,
          registrationId,
          identityKey,
          signedPreKey: { id: spk[0], key: spk[1], signature: spk[2] },
          kyberPreKey: { id: kpk[0], key: kpk[1], signature: kpk[2] },
        };
        if (pk) b.preKey = { id: pk[0], key: pk[1] };
        return b;
      }),
    );
  }

  /** Queues a control message of the encryption layer (resend request or answer) to `to`. */
  private async enqueueControl(to: string, content: Content): Promise<void> {
    const entry = await this.store.enqueue(
      {
        id: this.ulid(),
        kind: 'ctl',
        to,
        conv: to,
        body: encodeContent(content),
        createdAt: this.clock.now(),
      },
      false,
    );
    this.queue.push(entry);
    this.pumpOutbox();
  }

  private onOk(r: number): void {
    const ctl = this.ctlRequests.get(r);
    if (ctl) {
      this.ctlRequests.delete(r);
      ctl.ok();
      return;
    }
    const q = this.requests.get(r);
    if (q) {
      this.requests.delete(r);
      q.resolve();
      return;
    }
    const id = this.inflight.get(r);
    if (id === undefined) return;
    this.inflight.delete(r);
    this.settleOutgoing(id, 'sent');
  }

  private onErr(r: number | undefined, error: PostboxError): void {
    const k = r === undefined ? undefined : this.keyRequests.get(r);
    if (k) {
      this.keyRequests.delete(r!);
      k.reject(error);
      return;
    }
    const ctl = r === undefined ? undefined : this.ctlRequests.get(r);
    if (ctl) {
      this.ctlRequests.delete(r!);
      ctl.err(error);
      return;
    }
    const q = r === undefined ? undefined : this.requests.get(r);
    if (q) {
      this.requests.delete(r!);
      q.reject(error);
      return;
    }
    if (r === undefined && NOTICES_WITHOUT_REQUEST.has(error.code)) return;
    const id = r === undefined ? undefined : this.inflight.get(r);
    if (id === undefined) {
      this.emit('error', error);
      if (error.retryable) this.drop(`server error ${error.code}`);
      return;
    }
    // A full inbox is the recipient's state, not the connection's: resending at once would only
    // hammer it. The send fails with that reason (retryable: the app may send it again later).
    if (isRetryable(error.code) && error.code !== 'inbox_full') {
      // Later sends may already be in flight; resending everything in order on a fresh
      // connection is what keeps per-sender order.
      this.drop(`server error ${error.code}`);
      return;
    }
    if (this.e2ee && (error.code === 'mismatched_devices' || error.code === 'stale_devices')) {
      this.onDeviceMismatch(id, r!, error);
      return;
    }
    this.inflight.delete(r!);
    this.settleOutgoing(id, 'failed', error);
  }

  /** Takes an item out of the in-memory queue and records its new status. */
  private settleOutgoing(id: string, status: MessageStatus, error?: PostboxError, by?: string): void {
    this.unqueue(id);
    this.settleWaiter(
      id,
      status === 'failed' ? (error ?? new PostboxError('internal', 'failed')) : undefined,
    );
    const gen = this.generation;
    void this.serial(async () => {
      try {
        // A refusal is the item's own outcome (its status, with the reason), not an `error`.
        await this.applyStatus(id, status, by, error);
      } catch (e) {
        // The store still says pending; reconnecting reloads the outbox and resends it.
        this.emit('error', e);
        if (gen === this.generation) this.drop('client store failed');
      }
    });
    this.pumpOutbox();
  }

  /** Removes an entry from the in-memory send queue, keeping the send pointer on the same next entry. */
  private unqueue(id: string): void {
    const idx = this.queue.findIndex((e) => e.id === id);
    if (idx < 0) return;
    this.queue.splice(idx, 1);
    if (idx < this.sendPointer) this.sendPointer--;
  }

  /**
   * Moves an outgoing item's status forward (see `nextStatus`), storing why with a `failed` or
   * `expired` one (`error`: the refusal), and tells the app about messages.
   */
  private async applyStatus(
    id: string,
    event: MessageStatus,
    by?: string,
    error?: PostboxError,
  ): Promise<void> {
    const entry = await this.store.outgoing(id);
    if (!entry) return;
    const next = nextStatus(entry.status, event);
    if (next === entry.status) return;
    const failure = failureFor(next, entry.to, error);
    await this.store.setStatus(id, next, failure);
    if (entry.kind !== 'msg') return;
    const change: StatusChange = { id, conv: entry.conv, status: next };
    if (by !== undefined) change.by = by;
    this.emit('status', failure ? withFailure(change, failure) : change);
  }

  // ------------------------------------------------------------------ inbound

  private onStatus(f: StatusFrame): void {
    const status = STATUS_FROM_WIRE[f.s];
    const offset = f.o;
    const gen = this.generation;
    void this.serial(async () => {
      try {
        if (status === 'read' && this.me && f.by === this.me.user) {
          await this.store.markRead(f.ids);
          this.emit('readElsewhere', f.ids);
        } else {
          for (const id of f.ids) {
            const entry = await this.store.outgoing(id);
            // Only a user the message went to can have received or read it: a status from anyone
            // else is forged (a server that does not check forwarded it) and changes nothing.
            if (!entry || !(await this.reached(entry, f.by))) continue;
            // A status can overtake the `ok` (the ok was lost with a connection); it settles the item too.
            this.unqueue(id);
            if (isGroupId(entry.conv)) await this.onMemberStatus(entry, f.by, status);
            else await this.applyStatus(id, status, f.by);
          }
        }
      } catch (e) {
        // Not acked: the server delivers it again after the reconnect.
        this.emit('error', e);
        if (gen === this.generation) this.drop('client store failed');
        return;
      }
      this.ackLater(offset);
    });
  }

  /**
   * One member's receipt of a group message this device sent: recorded per member, counted
   * against the recipients known at send time, and the aggregate moves when every one has it.
   */
  private async onMemberStatus(entry: OutboxEntry, user: string, status: MessageStatus): Promise<void> {
    if (status !== 'delivered' && status !== 'read' && status !== 'expired') return;
    const id = entry.id;
    if (entry.status === 'pending') await this.applyStatus(id, 'sent');
    const key = `${id}\u0000${user}`;
    const old = (await this.store.getState(NS_MEMBER_STATUS, key))?.[0] ?? 0;
    const code = MEMBER_STATUS_CODE[status];
    const forward = status === 'expired' ? old === 0 : old === 0 || old === 3 || (old === 1 && code === 2);
    if (!forward) return;
    const recipients = await this.recipientsOf(id);
    const raw = await this.store.getState(NS_GROUP_COUNT, id);
    const count = raw ? decodeCounts(raw) : { delivered: 0, read: 0 };
    if (recipients.has(user)) {
      if ((old === 0 || old === 3) && code !== 3) count.delivered++;
      if (code === 2) count.read++;
    }
    await this.store.putState([
      { ns: NS_MEMBER_STATUS, key, value: Uint8Array.of(code) },
      { ns: NS_GROUP_COUNT, key: id, value: encodeCounts(count) },
    ]);
    this.emit('memberStatus', { id, conv: entry.conv, user, status });
    const all = recipients.size;
    if (all > 0 && count.read >= all) await this.applyStatus(id, 'read');
    else if (all > 0 && count.delivered >= all) await this.applyStatus(id, 'delivered');
  }

  /** The recipients recorded when a group message was sent, cached for the receipts that follow. */
  private async recipientsOf(id: string): Promise<Set<string>> {
    let set = this.recipientCache.get(id);
    if (!set) {
      const raw = await this.store.getState(NS_GROUP_SEND, id);
      set = new Set(raw ? decodeRecipients(raw) : []);
      if (this.recipientCache.size >= 64) {
        this.recipientCache.delete(this.recipientCache.keys().next().value as string);
      }
      this.recipientCache.set(id, set);
    }
    return set;
  }

  private onGroupEvent(f: GroupEventFrame): void {
    const gen = this.generation;
    void this.serial(async () => {
      try {
        if (f.op === 'invite' || f.op === 'decline') {
          const invite = inviteOf(f);
          const value = f.op === 'invite' ? encodeInvite(invite) : undefined;
          await this.store.putState([{ ns: NS_INVITES, key: f.g, value }]);
          this.emit('groupInvite', invite, f.op === 'invite' ? 'pending' : 'declined');
          this.ackLater(f.o);
          return;
        }
        const me = this.me?.user ?? '';
        const next = applyGroupEvent(this.groupViews.get(f.g), f, me);
        if (next) {
          const joined =
            f.op === 'add' || f.op === 'create'
              ? f.m.map((u) => ({ ns: NS_GROUP_JOINED, key: `${f.g}\u0000${u}`, value: encodeNumber(f.v) }))
              : [];
          // Becoming a member (an accepted invite, or an add) settles any invite to the group.
          const settled = next.member ? [{ ns: NS_INVITES, key: f.g, value: undefined }] : [];
          await this.store.putState([
            { ns: NS_GROUP, key: f.g, value: encodeView(next) },
            ...joined,
            ...settled,
          ]);
          this.groupViews.set(f.g, next);
          // Someone left: a new sender key, which the members that remain get on the next send.
          if (this.e2ee && next.member && (f.op === 'remove' || f.op === 'leave')) {
            this.e2ee.assertOpen();
            await this.e2ee.rotateGroup(f.g);
          }
          const sync = isJoinSnapshot(f, me);
          this.emit('group', this.group(f.g)!, {
            group: f.g,
            ver: f.v,
            op: sync ? 'sync' : f.op,
            by: f.by,
            members: sync ? [] : [...f.m],
            ts: f.ts,
          });
        }
      } catch (e) {
        this.emit('error', e);
        if (gen === this.generation) this.drop('client store failed');
        return;
      }
      this.ackLater(f.o);
    });
  }

  private onTyping(f: TypingNoticeFrame): void {
    const conv = f.g && f.to !== undefined ? f.to : f.f;
    const key = streamKey(conv, f.f, f.fd);
    this.clock.clearTimeout(this.typingTimers.get(key));
    this.typingTimers.delete(key);
    if (f.on) {
      // A notice with no stop (the sender went away) ends by itself.
      this.typingTimers.set(
        key,
        this.clock.setTimeout(() => {
          this.typingTimers.delete(key);
          this.emit('typing', { conv, user: f.f, device: f.fd, on: false });
        }, this.opts.typingTimeoutMs),
      );
    }
    this.emit('typing', { conv, user: f.f, device: f.fd, on: f.on });
  }

  /** A message from a device that was typing ends its typing notice. */
  private endTyping(conv: string, user: string, device: string): void {
    const key = streamKey(conv, user, device);
    const t = this.typingTimers.get(key);
    if (t === undefined) return;
    this.clock.clearTimeout(t);
    this.typingTimers.delete(key);
    this.emit('typing', { conv, user, device, on: false });
  }

  /**
   * An encrypted entry: decrypted in inbox order, then a message goes the usual way and a
   * control content is handled here. One that cannot be decrypted is acked and asked for again
   * (the sender re-encrypts it over a fresh session); one from an identity that is not trusted
   * (`identityPolicy: 'block'`) stays unacked on the server until it is verified.
   */
  private onSealedMsg(f: MsgFrame): void {
    const me = this.me!;
    const e2ee = this.e2ee!;
    const gen = this.generation;
    const group = f.g && f.to !== undefined ? f.to : undefined;
    const from = { user: f.f, device: f.fd };
    void this.serial(async () => {
      try {
        // An adapter that failed to open is a local fault: not acked, tried again after reconnecting.
        e2ee.assertOpen();
        let content: Content;
        try {
          content = await e2ee.decrypt(from, f.b, group);
        } catch (e) {
          const code = (e as { code?: unknown; reason?: unknown }).code;
          if (code === 'untrusted_identity') return;
          // A control message (seq 0) is never asked for again: that could ping-pong over a
          // broken session; a group message that needed a lost sender key is asked for instead.
          // A "replay" is a message decrypted before whose plaintext was never stored (a crash or
          // store failure in between): asked for again unless it is really here.
          const replay = (e as { reason?: unknown }).reason === 'duplicate';
          if (f.seq !== 0 && !(replay && (await this.haveInbound(f, group)))) {
            if (!group && !replay) await e2ee.archive(from);
            await this.enqueueControl(f.f, [2, f.id, f.fd]);
            // Pinned 1:1 too: should the new copy never come, the gap says `undecryptable`.
            const conv = group ?? (f.f === me.user ? (f.to ?? me.user) : f.f);
            await this.pin(streamKey(conv, f.f, f.fd), f.seq);
          }
          this.ackLater(f.o);
          return;
        }
        const self = f.f === me.user;
        switch (content[0]) {
          case 0:
            if (f.seq === 0) break; // a message always has a sequence number
            await this.receive(
              streamKey(group ?? (self ? (f.to ?? me.user) : f.f), f.f, f.fd),
              this.inboundOf(f, group ?? (self ? (f.to ?? me.user) : f.f), f.id, f.seq, f.ts, content[1]),
            );
            break;
          case 1:
            if (!group) await e2ee.adapter.processGroupDistribution(from, content[1], content[2]);
            break;
          case 2:
            // For this device: its device id, and addressed to this user (not a copy of a
            // request this user's other device sent someone else).
            if (content[2] === me.device && (f.to === undefined || f.to === me.user)) {
              await this.answerResend(f.f, f.fd, content[1]);
            }
            break;
          case 3: {
            const [, id, seq, conv, body, ts] = content;
            const c = conv !== null && isGroupId(conv) ? conv : self ? (conv ?? me.user) : f.f;
            await this.receive(streamKey(c, f.f, f.fd), this.inboundOf(f, c, id, seq, ts, body));
            break;
          }
          case 4:
            this.emit('undecryptable', { from: f.f, fromDevice: f.fd, id: content[1] });
            break;
        }
      } catch (e) {
        // Not acked: the server delivers it again after the reconnect.
        this.emit('error', e);
        if (gen === this.generation) this.drop('client store failed');
        return;
      }
      this.ackLater(f.o);
    });
  }

  /**
   * A group stream waits for a message asked for again: later ones from that sender device are
   * held until it arrives (or `gapTimeoutMs` gives up), instead of skipping it as a group hole.
   */
  private async pin(key: string, seq: number): Promise<void> {
    if (seq < (await this.nextFor(key))) return;
    const set = new Set(this.pins.get(key));
    set.add(seq);
    await this.savePins(key, set);
    // Should the new copy never come, the hole ends as `undecryptable` even with nothing after it.
    this.armGapTimer(key);
  }

  /** Pins survive restarts (a restarted app would otherwise skip the hole). */
  private async savePins(key: string, set: Set<number> | undefined): Promise<void> {
    const value = set?.size ? new TextEncoder().encode(JSON.stringify([...set])) : undefined;
    await this.store.putState([{ ns: NS_PINS, key, value }]);
    if (value) this.pins.set(key, set!);
    else this.pins.delete(key);
  }

  /** Whether this device's message `e` may have reached `user`: its 1:1 peer, or a member (see below). */
  private async reached(e: OutboxEntry, user: string): Promise<boolean> {
    if (e.kind !== 'msg') return false;
    return isGroupId(e.to) ? this.mayHaveReceived(e.id, e.to, user) : e.to === user;
  }

  /**
   * Whether a user may have been a member when this device's group message committed: one of
   * its recipients at send time, or added to the group after that (it may have been removed
   * again since; a user removed before the send gets nothing).
   */
  private async mayHaveReceived(id: string, group: string, user: string): Promise<boolean> {
    if ((await this.recipientsOf(id)).has(user)) return true;
    const sent = await this.store.getState(NS_GROUP_SEND_VER, id);
    const joined = await this.store.getState(NS_GROUP_JOINED, `${group}\u0000${user}`);
    return sent !== undefined && joined !== undefined && decodeNumber(joined) > decodeNumber(sent);
  }

  /** Whether a delivered message is already in the client store. */
  private async haveInbound(f: MsgFrame, group: string | undefined): Promise<boolean> {
    const me = this.me!.user;
    const conv = group ?? (f.f === me ? (f.to ?? me) : f.f);
    return (await this.store.inbound(conv)).some(
      (m) => m.id === f.id && m.from === f.f && m.fromDevice === f.fd,
    );
  }

  private inboundOf(
    f: MsgFrame,
    conv: string,
    id: string,
    seq: number,
    ts: number,
    body: Uint8Array,
  ): InboundMessage {
    const to = isGroupId(conv) ? conv : f.f === this.me!.user ? conv : this.me!.user;
    // This user's own message (sent from another device) is never unread here.
    const read = f.f === this.me!.user;
    return { id, conv, from: f.f, fromDevice: f.fd, to, seq, ts, body, held: false, read };
  }

  /** A peer device could not decrypt message `id`: send it again over a fresh session, or say it cannot be. */
  private async answerResend(user: string, device: string, id: string): Promise<void> {
    const e = await this.store.outgoing(id);
    const me = this.me!.user;
    const allowed =
      e !== undefined &&
      e.kind === 'msg' &&
      e.body !== undefined &&
      this.clock.now() - e.createdAt <= this.opts.resendWindowMs &&
      (user === me || (await this.reached(e, user)));
    // The requester's session is broken: either answer goes over a fresh one.
    await this.e2ee!.archive({ user, device });
    if (!allowed) {
      await this.enqueueControl(user, [4, id]);
      return;
    }
    await this.enqueueControl(user, [3, id, e.seq ?? 0, e.to, e.body!, e.createdAt]);
  }

  private onMsg(f: MsgFrame): void {
    const me = this.me;
    if (!me) return; // a server sends entries only after welcome; ignore a broken one
    if (this.e2ee) return this.onSealedMsg(f);
    if (f.seq === 0) {
      // An encrypting client's control message: nothing for a client without encryption.
      void this.serial(async () => this.ackLater(f.o));
      return;
    }
    const self = f.f === me.user;
    const conv = f.g && f.to !== undefined ? f.to : self ? (f.to ?? me.user) : f.f;
    const gen = this.generation;
    void this.serial(async () => {
      try {
        await this.receive(streamKey(conv, f.f, f.fd), {
          id: f.id,
          conv,
          from: f.f,
          fromDevice: f.fd,
          to: f.to ?? me.user,
          seq: f.seq,
          ts: f.ts,
          body: f.b,
          held: false,
          // This user's own message (sent from another device) is never unread here.
          read: self,
        });
      } catch (e) {
        // Not acked: the server delivers it again after the reconnect.
        this.emit('error', e);
        if (gen === this.generation) this.drop('client store failed');
        return;
      }
      this.ackLater(f.o);
    });
  }

  private async nextFor(key: string): Promise<number> {
    let next = this.streams.get(key);
    if (next === undefined) {
      next = (await this.store.streamNext(key)) ?? 1;
      this.streams.set(key, next);
    }
    return next;
  }

  private async receive(key: string, m: InboundMessage): Promise<void> {
    let next = await this.nextFor(key);
    // In a group a hole in a sender's sequence is never waited for: it is a message the server
    // refused (the sender was no longer a member) or one sent while this user was not in the
    // group, and the inbox already delivers a sender's messages in commit order. A gap notice
    // that comes later may still explain it (gaps.ts).
    let passed: Range[] = [];
    if (m.seq > next && isGroupId(m.conv)) {
      // Skip the hole, but not past a message asked for again.
      let first = m.seq;
      for (const s of this.pins.get(key) ?? []) if (s >= next && s < first) first = s;
      if (first > next) passed = await this.skipHole(key, next, first - 1);
      next = first;
    }
    if (m.seq === next) {
      const pinned = this.pins.get(key);
      if (pinned?.has(m.seq)) {
        const rest = new Set(pinned);
        rest.delete(m.seq);
        await this.savePins(key, rest);
      }
      const held = this.heldByKey.get(key);
      const { next: n, steps } = walk(m.seq + 1, held, this.gapBook.dropped(key));
      const released = steps.flatMap((st) => (st.msg ? [st.msg] : []));
      const { inserted } = await this.store.applyInbound({
        insert: m,
        release: released.map((r) => r.id),
        streams: [{ key, next: n }],
      });
      if (!inserted) return;
      this.streams.set(key, n);
      for (const r of released) held!.delete(r.seq);
      if ((held?.size ?? 0) === 0 && !this.pins.has(key)) this.clearGap(key);
      await this.gapBook.passed(key, n);
      for (const [a, b] of passed) this.emitGap(m, a, b, 'expired');
      this.emitMessage(m, false);
      this.emitSteps(m, steps);
    } else if (m.seq < next) {
      const { inserted } = await this.store.applyInbound({ insert: m });
      if (inserted) this.emitMessage(m, true);
    } else {
      const { inserted } = await this.store.applyInbound({ insert: { ...m, held: true } });
      if (!inserted) return;
      let held = this.heldByKey.get(key);
      if (!held) this.heldByKey.set(key, (held = new Map()));
      held.set(m.seq, m);
      if (held.size > this.opts.maxHeldPerStream) {
        this.clearGap(key);
        await this.giveUpGap(key, 'overflow');
      } else this.armGapTimer(key);
    }
  }

  /**
   * A group stream passes the hole `[from, to]` without waiting: the numbers the server already
   * said it dropped are returned (to report as `expired`), the others are kept as skipped.
   */
  private async skipHole(key: string, from: number, to: number): Promise<Range[]> {
    const known = reasonsOf(from, to, undefined, this.gapBook.dropped(key), 'timeout');
    for (const r of known) if (r.reason !== 'expired') await this.gapBook.skipped(key, r.from, r.to);
    return known.flatMap((r): Range[] => (r.reason === 'expired' ? [[r.from, r.to]] : []));
  }

  /**
   * A gap notice: the server dropped these messages of each stream before this device acked
   * them. Numbers behind a stream's next expected one explain a group hole skipped before (or
   * were shown, or reported, already); the others let the stream move on at once, past them and
   * over the messages held behind them. Acked after, in inbox order.
   */
  private onGapNotice(f: GapFrame): void {
    const me = this.me;
    if (!me) return;
    const gen = this.generation;
    void this.serial(async () => {
      try {
        for (const [from, fromDevice, to, ...flat] of f.s) {
          const conv = isGroupId(to) ? to : from === me.user ? to : from;
          const key = streamKey(conv, from, fromDevice);
          const ranges: Range[] = [];
          for (let i = 0; i + 1 < flat.length; i += 2) ranges.push([flat[i]!, flat[i + 1]!]);
          await this.applyDropped(key, { conv, from, fromDevice }, ranges);
        }
      } catch (e) {
        // Not acked: the server delivers it again after the reconnect.
        this.emit('error', e);
        if (gen === this.generation) this.drop('client store failed');
        return;
      }
      this.ackLater(f.o);
    });
  }

  private async applyDropped(
    key: string,
    stream: { conv: string; from: string; fromDevice: string },
    ranges: Range[],
  ): Promise<void> {
    const start = await this.nextFor(key);
    const behind = ranges.flatMap(([a, b]): Range[] => (a < start ? [[a, Math.min(b, start - 1)]] : []));
    const ahead = ranges.flatMap(([a, b]): Range[] => (b >= start ? [[Math.max(a, start), b]] : []));
    const inGroup = isGroupId(stream.conv);
    if (behind.length > 0 && inGroup) {
      for (const [a, b] of await this.gapBook.explain(key, behind)) this.emitGap(stream, a, b, 'expired');
    }
    if (ahead.length === 0) return;
    // A group stream never waits for a hole (see `receive`): numbers before the first dropped one
    // that nobody explained (sent before this user joined, or refused) are passed as skipped, so
    // the dropped ones are reported at once, however the stream began on this device.
    let next = start;
    let passed: Range[] = [];
    if (inGroup) {
      let first = Math.min(...ahead.map(([a]) => a));
      for (const s of this.pins.get(key) ?? []) if (s >= next && s < first) first = s;
      if (first > next) passed = await this.skipHole(key, next, first - 1);
      next = Math.max(next, first);
    }
    await this.gapBook.addDropped(key, ahead);
    const held = this.heldByKey.get(key);
    const { next: n, steps } = walk(next, held, this.gapBook.dropped(key));
    if (n === start) return; // a 1:1 hole nobody explained comes first: the timeout still runs for it
    const released = steps.flatMap((st) => (st.msg ? [st.msg] : []));
    await this.store.applyInbound({ release: released.map((r) => r.id), streams: [{ key, next: n }] });
    this.streams.set(key, n);
    for (const r of released) held!.delete(r.seq);
    if (!held || held.size === 0) {
      if (!this.pins.has(key)) this.clearGap(key);
      this.heldByKey.delete(key);
    }
    await this.gapBook.passed(key, n);
    for (const [a, b] of passed) this.emitGap(stream, a, b, 'expired');
    this.emitSteps(stream, steps);
  }

  /** Emits a stream's steps in sequence order: released messages, and dropped ranges as `expired` gaps. */
  private emitSteps(stream: { conv: string; from: string; fromDevice: string }, steps: Step[]): void {
    for (const st of steps) {
      if (st.msg) this.emitMessage(st.msg, false);
      else this.emitGap(stream, st.gap[0], st.gap[1], 'expired');
    }
  }

  private emitGap(
    s: { conv: string; from: string; fromDevice: string },
    fromSeq: number,
    toSeq: number,
    reason: GapReason,
  ): void {
    this.emit('gap', { conv: s.conv, from: s.from, fromDevice: s.fromDevice, fromSeq, toSeq, reason });
  }

  private emitMessage(m: InboundMessage, late: boolean): void {
    this.endTyping(m.conv, m.from, m.fromDevice);
    this.emit('message', {
      id: m.id,
      conv: m.conv,
      from: m.from,
      fromDevice: m.fromDevice,
      seq: m.seq,
      ts: m.ts,
      body: m.body,
      self: this.me !== undefined && m.from === this.me.user,
      late,
      group: isGroupId(m.conv),
    });
  }

  private armGapTimer(key: string): void {
    if (this.gapTimers.has(key)) return;
    this.gapTimers.set(
      key,
      this.clock.setTimeout(() => {
        this.gapTimers.delete(key);
        void this.serial(() => this.giveUpGap(key, 'timeout'));
      }, this.opts.gapTimeoutMs),
    );
  }

  private clearGap(key: string): void {
    this.clock.clearTimeout(this.gapTimers.get(key));
    this.gapTimers.delete(key);
  }

  /**
   * Gives up the holes of a stream: every held message is released, each hole reported first
   * with why — numbers asked for again are `undecryptable`, numbers the server dropped `expired`,
   * the rest `fallback` (the timeout, or the held-message bound). A message asked for again with
   * nothing held after it is given up too: its hole is the stream's last.
   */
  private async giveUpGap(key: string, fallback: GapReason): Promise<void> {
    const pinned = this.pins.get(key);
    if (pinned) await this.savePins(key, undefined);
    const held = this.heldByKey.get(key);
    const ordered = [...(held?.values() ?? [])].sort((a, b) => a.seq - b.seq);
    let expect = await this.nextFor(key);
    const end = Math.max(ordered[ordered.length - 1]?.seq ?? 0, ...(pinned ?? []));
    if (end < expect) return;
    const dropped = this.gapBook.dropped(key);
    await this.store.applyInbound({
      release: ordered.map((m) => m.id),
      streams: [{ key, next: end + 1 }],
    });
    this.streams.set(key, end + 1);
    this.heldByKey.delete(key);
    await this.gapBook.passed(key, end + 1);
    for (const m of ordered) {
      if (m.seq > expect) {
        for (const r of reasonsOf(expect, m.seq - 1, pinned, dropped, fallback)) {
          this.emitGap(m, r.from, r.to, r.reason);
        }
      }
      this.emitMessage(m, false);
      expect = m.seq + 1;
    }
    if (expect <= end) {
      const [conv, from, fromDevice] = key.split('\u0000') as [string, string, string];
      for (const r of reasonsOf(expect, end, pinned, dropped, fallback)) {
        this.emitGap({ conv, from, fromDevice }, r.from, r.to, r.reason);
      }
    }
  }

  private ackLater(offset: number): void {
    this.pendingAcks.push(offset);
    if (this.pendingAcks.length >= this.ackBatch) this.flushAcks();
  }

  /**
   * The store work ran dry: the acks go out now when the connection has been quiet, else
   * `ackDelayMs` after the last ack frame, with whatever follows (ack-pacing.ts).
   */
  private acksIdle(): void {
    if (this.pendingAcks.length === 0 || this.ackTimer !== undefined) return;
    const wait = ackWait(this.clock.now(), this.lastAckAt, this.ackDelay);
    if (wait <= 0) return this.flushAcks();
    this.ackTimer = this.clock.setTimeout(() => {
      this.ackTimer = undefined;
      this.flushAcks();
    }, wait);
  }

  private flushAcks(): void {
    if (this.pendingAcks.length === 0 || !this.conn || this._state !== 'open') return;
    this.clock.clearTimeout(this.ackTimer);
    this.ackTimer = undefined;
    // The ack frame carries at most 1,024 offsets.
    for (let k = 0; k < this.pendingAcks.length; k += 1024) {
      this.write({ t: 'ack', o: this.pendingAcks.slice(k, k + 1024) });
    }
    this.pendingAcks = [];
    this.lastAckAt = this.clock.now();
  }

  /** Runs store work one task at a time; acks are coalesced while it is busy (see `acksIdle`). */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    this.tasks++;
    const run = this.chain.then(fn);
    this.chain = run
      .catch((e) => {
        this.emit('error', e);
      })
      .finally(() => {
        if (--this.tasks === 0) this.acksIdle();
      });
    return run;
  }
}

const EMPTY = new Uint8Array(0);

const encodeNumber = (n: number): Uint8Array => new TextEncoder().encode(String(n));
const decodeNumber = (b: Uint8Array): number => Number(new TextDecoder().decode(b));

/** The error an `err` frame reports, with its device-list difference when it has one. */
function errorOf(f: ErrFrame): PostboxError {
  if (!f.d) return new PostboxError(f.c, f.m ?? f.c);
  const list = (l: Array<[string, string]> | undefined) => l?.map(([user, device]) => ({ user, device }));
  const devices: DeviceListDifference = {};
  if (f.d.m) devices.missing = list(f.d.m)!;
  if (f.d.x) devices.extra = list(f.d.x)!;
  if (f.d.s) devices.stale = list(f.d.s)!;
  return new PostboxError(f.c, f.m ?? f.c, { devices });
}

/**
 * Creates a client engine and (unless `autoStart: false`) connects it.
 * @example
 * const client = createClient({ transport, store: memoryClientStore(), credentials: token });
 * client.on('message', (m) => render(m));
 * const id = await client.send('bob', new TextEncoder().encode('hi')); // stored: it will be sent
 */
export function createClient(options: ClientOptions): PostboxClient {
  return new PostboxClient(options);
}

export { seededRandom };

function isPostboxErrorCode(e: unknown, code: string): boolean {
  return e instanceof Error && (e as { code?: unknown }).code === code;
}
