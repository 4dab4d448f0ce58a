/**
 * What a session may ask of the server: the one interface between a connection's
 * `Session` and the rest of the engine. A session owns its handshake, its frame decoding
 * and limits, and its delivery window; everything shared between sessions (the commit queue, the
 * session registry, presence, typing, linking, keys, push, the cluster) it reaches through
 * these calls, never through the server's members.
 * Internal to the engine: not exported from `postbox/server`.
 * @packageDocumentation
 */
import type { ClientFrame, HelloFrame } from '../protocol/index.js';
import type { Clock } from '../util/clock.js';
import type { ServerMetrics } from './metrics.js';
import type { AuthResult, EngineConfig, Logger } from './options.js';
import type { AppendInput, DeviceAddress, GroupInput, NotifyResult, ServerStore } from './store.js';
import type { Tracer } from './trace.js';

/** The limits a session enforces by itself. */
export type SessionConfig = Pick<
  EngineConfig,
  | 'heartbeatMs'
  | 'helloTimeoutMs'
  | 'linkCodeTtlMs'
  | 'inboxPollMs'
  | 'maxFramesPerSecond'
  | 'maxFrameBytes'
  | 'maxPreHelloFrameBytes'
  | 'maxInvalidFrames'
  | 'maxBodyBytes'
  | 'maxConcurrentHandshakes'
  | 'maxGroupMembers'
  | 'maxPendingSends'
  | 'deliveryWindow'
  | 'sendHighWaterBytes'
>;

/** The store calls a session makes itself: register its device, read and ack its own inbox. */
export type SessionStore = Pick<ServerStore, 'registerDevice' | 'readInbox' | 'ack'>;

/**
 * The frames a session hands to the server's parts as they come (keys, push tokens, linking,
 * presence and typing): each is answered, if at all, by the part that handles it.
 */
export type ServiceFrame = Extract<
  ClientFrame,
  { t: 'keys' | 'ptok' | 'kget' | 'lnk' | 'unl' | 'sub' | 'unsub' | 'typ' }
>;

/**
 * What a session may ask of the server. `S` is the session type (the engine's `Session`): a
 * parameter, so that this file does not import session.ts, which imports it (no import cycle).
 */
export interface SessionHost<S> {
  readonly clock: Clock;
  readonly config: SessionConfig;
  readonly metrics: ServerMetrics;
  readonly tracer: Tracer;
  readonly log: Logger;
  readonly store: SessionStore;
  /** The server is shutting down: a session commits nothing more. */
  readonly closing: boolean;

  // ---------------------------------------------------------------- handshake
  /** A handshake starts: false when too many are in progress (the session sheds the load). */
  enterHandshake(): boolean;
  /** A handshake that {@link enterHandshake} let in is over. */
  leaveHandshake(): void;
  /** The app's `authenticate` hook on a `hello`. */
  authenticate(hello: HelloFrame, remoteAddress: string | undefined): Promise<AuthResult | null>;
  /** Whether the device was closed for cost debt and has not paid it off yet. */
  inDebt(addr: DeviceAddress, now: number): boolean;
  /** Whether an existing device must approve this one before it may open a session. */
  needsApproval(addr: DeviceAddress): Promise<boolean>;
  /** A new device awaits approval: its link code. */
  startLink(session: S): { code: string; exp: number };
  /**
   * Registers a device opening a session here in the cluster (undefined without one): from then
   * on every commit for it rings this node.
   */
  registerInCluster(addr: DeviceAddress): Promise<void> | undefined;
  /** Takes back {@link registerInCluster} for a session that closed while it ran. */
  unregisterInCluster(addr: DeviceAddress): void;
  /** The session opened: it is the device's session from now on (replacing an older one). */
  bind(session: S): void;
  /** The session closed. */
  unbind(session: S, code: number): void;

  // ---------------------------------------------------------------- frames
  /** Counts a frame against the device's frames per second: false when over. */
  frameAllowed(addr: DeviceAddress, now: number): boolean;
  /**
   * Charges a frame's size to the device's and user's cost budgets before it is decoded: false
   * when it must not be decoded at all (refused, its request id read from the bytes).
   */
  affordBytes(session: S, data: Uint8Array, now: number): boolean;
  /** Charges a frame to the device's and user's cost budgets: false when it must not run. */
  afford(session: S, frame: ClientFrame, now: number): boolean;
  /** Why a group change is refused before it is queued (a creation or join cap), or undefined. */
  groupCapRefusal(input: GroupInput): string | undefined;
  /** Queues a commit; the session is answered `ok` or `err` with `r` once it ran. */
  commit(session: S, r: number, input: AppendInput): void;
  /** Hands a frame to the part of the server that serves it (see {@link ServiceFrame}). */
  serve(session: S, frame: ServiceFrame, now: number): void;

  // ---------------------------------------------------------------- delivery
  /** Pushes the entries a store call wrote to sessions that can take them, rings the rest. */
  deliverWritten(res: NotifyResult): void;
  /** Tells the devices that entries landed in their inboxes. */
  ring(devices: DeviceAddress[]): void;
  /** Tells a connected device whose one-time keys run low to upload more. */
  checkKeySupply(addr: DeviceAddress): Promise<void>;
  /** A store call of the session failed: the store counts as failing, the session is closed with 1013. */
  storeFailed(error: unknown, session: S): void;
}
