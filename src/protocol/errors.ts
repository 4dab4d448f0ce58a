/**
 * The closed set of error codes postbox speaks on the wire and throws in process.
 * Each code says whether retrying the same request later can succeed.
 */
export const ERROR_CODES = {
  /** No successful `hello` yet, or the credentials were rejected. Not retryable with the same credentials. */
  unauthorized: { retryable: false },
  /** The frame failed decoding or schema validation. Fix the sender. */
  invalid_frame: { retryable: false },
  /** The frame or body is over the negotiated limit; the connection is closed. */
  too_large: { retryable: false },
  /** The peer is sending faster than allowed, or a bounded queue is full. Retry after a backoff. */
  rate_limited: { retryable: true },
  /** No protocol version in common. Upgrade the client or server. */
  unsupported_version: { retryable: false },
  /** The recipient user is not registered: no device, and not in the server's user directory. */
  unknown_recipient: { retryable: false },
  /** The sender's device list for a recipient is out of date (E2EE). Refresh and retry. */
  mismatched_devices: { retryable: false },
  /** The sender used keys for devices that no longer exist (E2EE). Refresh and retry. */
  stale_devices: { retryable: false },
  /** The sender is not a member of the group. */
  not_member: { retryable: false },
  /** The session may not perform this action (e.g. an admin action by a non-admin). */
  forbidden: { retryable: false },
  /** The group is at its member cap. */
  group_full: { retryable: false },
  /**
   * A recipient device's inbox is at its storage quota (entries or bytes not yet fetched). Nothing
   * was stored. Retryable once the device drained its inbox; the client fails the send with this
   * reason rather than resending it by itself, and the app decides whether to try again.
   */
  inbox_full: { retryable: true },
  /**
   * A storage quota of the acting device or user (or of a user it names) would be exceeded:
   * one-time prekeys per device, groups per user, pending invites per user. Nothing was stored.
   */
  quota_exceeded: { retryable: false },
  /** The server is shutting down or its store is unavailable. Retry, maybe on another node. */
  unavailable: { retryable: true },
  /** An unexpected server fault. Retried; the request is idempotent. */
  internal: { retryable: true },
  /** The connection closed before the request was answered. Retried after reconnect. */
  disconnected: { retryable: true },
  /** The client was closed by the application. */
  closed: { retryable: false },
  /**
   * The app's setup lacks something an adapter needs (an optional peer such as `ws` on a runtime
   * without a global `WebSocket`): retrying cannot help; the message says what to install or pass.
   */
  misconfigured: { retryable: false },
  /**
   * Client-side, a status reason (never on the wire): no device of the recipient fetched the
   * message within the server's retention period, and the server dropped it.
   */
  expired: { retryable: false },
  /**
   * Client-side, a media download (never on the wire): the blob failed authentication, its hashes
   * or its size do not match the media reference, or it ended early. No byte of it was accepted.
   */
  corrupt_media: { retryable: false },
  /**
   * Client-side (never on the wire): the client store's storage is full (a browser's quota for the
   * origin, or the disk). Nothing of the write was kept, so nothing is half-stored: a `send` that
   * rejects with it was not queued. Retrying helps only once space is freed.
   */
  storage_full: { retryable: false },
  /**
   * Client-side, never on the wire (end-to-end encryption): the recipient has registered devices
   * but none published keys within the wait allowed (`keyWaitMs` for a held send, `timeoutMs` for
   * `keysReady`), so there is nothing to encrypt to.
   */
  no_keys: { retryable: false },
} as const satisfies Record<string, { retryable: boolean }>;

/** One of the closed set of postbox error codes. */
export type ErrorCode = keyof typeof ERROR_CODES;

/** Every error code, for schemas and docs. */
export const ERROR_CODE_LIST = Object.keys(ERROR_CODES) as [ErrorCode, ...ErrorCode[]];

/** Whether a request that failed with `code` may succeed if retried. */
export function isRetryable(code: ErrorCode): boolean {
  return ERROR_CODES[code].retryable;
}

/** The devices a `mismatched_devices` / `stale_devices` refusal is about. */
export interface DeviceListDifference {
  /** Devices with keys that the send left out. */
  missing?: Array<{ user: string; device: string }>;
  /** Devices the send addressed that the directory does not have. */
  extra?: Array<{ user: string; device: string }>;
  /** Devices whose registration id changed (re-installed). */
  stale?: Array<{ user: string; device: string }>;
}

/**
 * The one error class of postbox. Check `.code` (or use {@link isPostboxError}) rather than
 * `instanceof`, which breaks across bundle boundaries.
 */
export class PostboxError extends Error {
  /** Stable, machine-readable code from {@link ERROR_CODES}. */
  readonly code: ErrorCode;
  /** Whether retrying may succeed. */
  readonly retryable: boolean;
  /**
   * The request id of the frame that failed, when it could be read even though the frame was
   * invalid, so the error can be answered to that request.
   */
  readonly requestId: number | undefined;
  /** `mismatched_devices` / `stale_devices`: which devices the directory disagreed about. */
  readonly devices: DeviceListDifference | undefined;
  constructor(
    code: ErrorCode,
    message: string,
    options?: { cause?: unknown; requestId?: number; devices?: DeviceListDifference },
  ) {
    super(message, options);
    this.name = 'PostboxError';
    this.code = code;
    this.retryable = ERROR_CODES[code].retryable;
    this.requestId = options?.requestId;
    this.devices = options?.devices;
  }
}

/** Type guard that works across bundle copies of postbox. */
export function isPostboxError(e: unknown): e is PostboxError {
  return (
    typeof e === 'object' &&
    e !== null &&
    (e as { name?: unknown }).name === 'PostboxError' &&
    typeof (e as { code?: unknown }).code === 'string' &&
    (e as { code: string }).code in ERROR_CODES
  );
}

/**
 * Close codes used when postbox closes a connection (WebSocket-compatible numbers).
 */
export const CLOSE_CODES = {
  /** Normal close. */
  normal: 1000,
  /** The server is shutting down; reconnect (elsewhere). */
  goingAway: 1001,
  /** The transport died without a close handshake. */
  abnormal: 1006,
  /** Authentication failed or a frame came before `hello`. */
  unauthorized: 1008,
  /** A frame was over the size limit. */
  tooLarge: 1009,
  /** A server fault. */
  internal: 1011,
  /** No frame arrived within the heartbeat timeout. */
  heartbeatTimeout: 4000,
  /** Another connection of the same device replaced this one. */
  replaced: 4001,
  /** Too many invalid frames, or a protocol violation. */
  protocolError: 4002,
  /** Too many frames too fast. */
  rateLimited: 4003,
  /** No protocol version in common. */
  unsupportedVersion: 4004,
  /**
   * The server's send queues (all connections together) were over their bound and this connection
   * had the most bytes queued: it read too slowly. Reconnect after a backoff; what was not yet
   * delivered waits in the inbox. The close frame is queued behind what the client has not read, so
   * a reader that reads nothing within the transport's `shedGraceMs` sees a reset (1006) instead;
   * the client engine backs off after either (see docs/security.md, "Shed slow readers").
   */
  slowReader: 4008,
  /** This device was unlinked from its user; reconnecting needs linking again. */
  unlinked: 4005,
  /** The link code shown by a device awaiting approval expired unused; reconnect for a new one. */
  linkExpired: 4006,
  /**
   * The session's credentials expired or were revoked: get fresh credentials and reconnect. The
   * client engine reconnects after a backoff, asking its `credentials` function again; with
   * static credentials it closes for good (`unauthorized`).
   */
  reauthenticate: 4007,
  /**
   * The server cannot serve now: it is overloaded (too many handshakes at once, say after another
   * gateway died and its clients all came here), or its store is unavailable: reconnect after a
   * backoff, maybe to another gateway, and resend what was not answered (a send whose commit was
   * under way may have committed; the resend then gets its original ack).
   */
  tryAgainLater: 1013,
} as const;
