/**
 * A {@link PushProvider} that POSTs each wake-up to an HTTP endpoint of the app's own (which then
 * talks to APNs, FCM or Web Push with its own credentials). Uses the platform `fetch`.
 * @packageDocumentation
 */
import type { DeviceAddress } from '../store.js';
import type { PushProvider, PushToken, WakeReason } from './types.js';

/** Options of {@link webhookPush}. */
export interface WebhookPushOptions {
  /** The endpoint; it gets `POST` with a JSON body `{ user, device, kind, token, ts }`. */
  url: string;
  /** Extra request headers (e.g. an authorization header for the endpoint). */
  headers?: Record<string, string>;
  /** Give up on one request after this. @default 5000 */
  timeoutMs?: number;
  /**
   * Most requests in flight; wake-ups past it are dropped (and logged by the engine), so a slow
   * endpoint cannot make the server buffer without end. @default 64
   */
  maxInFlight?: number;
}

/**
 * Wake-ups as webhook calls. A non-2xx answer, a timeout or a full queue rejects (the engine logs
 * it; the device still finds its inbox when it next connects).
 * @example
 * ```ts
 * createServer({ store, authenticate, push: webhookPush({ url: 'https://push.internal/wake' }) });
 * ```
 */
export function webhookPush(options: WebhookPushOptions): PushProvider {
  const timeoutMs = options.timeoutMs ?? 5000;
  const maxInFlight = options.maxInFlight ?? 64;
  let inFlight = 0;
  return {
    name: 'webhook',
    async wake(device: DeviceAddress, token: PushToken, reason: WakeReason): Promise<void> {
      if (inFlight >= maxInFlight)
        throw new Error(`webhook push: ${maxInFlight} requests in flight, dropped`);
      inFlight++;
      try {
        const res = await fetch(options.url, {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...options.headers },
          body: JSON.stringify({
            user: device.user,
            device: device.device,
            kind: token.kind,
            token: token.token,
            ts: reason.ts,
          }),
          signal: AbortSignal.timeout(timeoutMs),
        });
        // The body is not needed; reading it lets the connection be reused.
        await res.arrayBuffer().catch(() => undefined);
        if (!res.ok) throw new Error(`webhook push: ${options.url} answered ${res.status}`);
      } finally {
        inFlight--;
      }
    },
  };
}
