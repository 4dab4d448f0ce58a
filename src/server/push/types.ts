/**
 * Push wake-ups: how the server wakes a device that has no connection when something lands in its
 * inbox. Content-free by design — the server could not read an end-to-end encrypted message
 * anyway — so a push only says "connect": the app's background handler opens the client, which
 * drains the inbox and shows notifications from what it decrypts.
 * @packageDocumentation
 */
import type { DeviceAddress } from '../address.js';

/** A device's push registration, as its app got it from the platform. */
export interface PushToken {
  /** Which service the token belongs to: `apns`, `fcm`, `webpush`, or an app's own name. */
  kind: string;
  /** The platform's token (APNs device token, FCM registration token, a Web Push subscription as JSON, …). */
  token: string;
}

/** Why the server wakes a device (always content-free). */
export interface WakeReason {
  /** Server time of the wake-up. */
  ts: number;
}

/**
 * Sends wake-ups. The engine calls `wake` when an entry lands in the inbox of a device with a
 * token and no connection to this server, at most once per `pushIntervalMs` per device. A
 * rejection is logged and dropped: a push is a hint, the inbox stays the truth.
 */
export interface PushProvider {
  /** For logs. */
  readonly name: string;
  wake(device: DeviceAddress, token: PushToken, reason: WakeReason): Promise<void>;
}
