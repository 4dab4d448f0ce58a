/**
 * Push on the engine's side: devices register their tokens (`ptok`), and a device that got an
 * inbox entry while connected nowhere is woken through the app's {@link PushProvider}, at most
 * once per interval. Content-free: the wake-up says only that something waits.
 * Internal to the engine: not exported from `postbox/server`.
 * @packageDocumentation
 */
import type { PushTokenFrame } from '../protocol/index.js';
import type { Clock } from '../util/clock.js';
import { capable } from './capabilities.js';
import { addressKey as deviceKey } from './address.js';
import { BoundedMap } from './limits.js';
import type { ServerMetrics } from './metrics.js';
import type { Logger } from './options.js';
import type { PushProvider, PushToken } from './push/types.js';
import type { Session } from './session.js';
import type { DeviceAddress, ServerStore } from './store.js';

/** What push needs of the engine. */
export interface PushWakeDeps {
  store: ServerStore;
  clock: Clock;
  log: Logger;
  metrics: ServerMetrics;
  /** The app's provider; without one tokens are still kept, and nobody is woken. */
  provider: PushProvider | undefined;
  /** At most one wake-up per device per this interval. */
  intervalMs: number;
  /** Whether the device (by its {@link deviceKey}) has an open session on this node. */
  connected(key: string): boolean;
}

/** Push tokens and wake-ups. */
export class PushWake {
  /** device → push token, for a store that does not keep them. */
  private readonly tokens = new Map<string, PushToken>();
  /** device → time of its last wake-up (bounded: the oldest are forgotten past 100k). */
  private readonly lastWake = new BoundedMap<string, number>(100_000);

  constructor(private readonly d: PushWakeDeps) {}

  /** Whether there is a provider to wake devices with. */
  get enabled(): boolean {
    return this.d.provider !== undefined;
  }

  /** A device without a connection got an inbox entry: wake it, at most once per interval. */
  async wake(device: DeviceAddress): Promise<void> {
    const { store, clock, metrics } = this.d;
    const k = deviceKey(device);
    const now = clock.now();
    const last = this.lastWake.get(k);
    if (last !== undefined && now - last < this.d.intervalMs) return;
    this.lastWake.set(k, now);
    try {
      const token = capable(store, 'pushTokens') ? await store.pushToken(device) : this.tokens.get(k);
      if (!token || this.d.connected(k)) return;
      await this.d.provider!.wake(device, token, { ts: now });
      metrics.push(true);
    } catch (e) {
      metrics.push(false);
      this.d.log.warn('push wake-up failed', e);
    }
  }

  /** Registers or removes a device's push token (`ptok`). */
  async setToken(session: Session, f: PushTokenFrame): Promise<void> {
    const token = f.k !== undefined && f.tok !== undefined ? { kind: f.k, token: f.tok } : undefined;
    const addr = session.addr!;
    const store = this.d.store;
    try {
      if (capable(store, 'pushTokens')) await store.setPushToken(addr, token);
      else if (token) this.tokens.set(deviceKey(addr), token);
      else this.tokens.delete(deviceKey(addr));
    } catch (e) {
      this.d.log.error('push token not stored', e);
      session.sendError('unavailable', 'push token not stored', f.r);
      return;
    }
    session.send({ t: 'ok', r: f.r });
  }
}
