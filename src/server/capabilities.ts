/**
 * Reading a store's declared {@link StoreCapabilities}: the one place the engine asks what a
 * store can do, so that no caller probes for optional methods.
 */
import type { ServerStore, StoreCapabilities } from './store.js';

/** The optional methods each method capability promises. */
interface CapabilityMethods {
  pushTokens: Required<Pick<ServerStore, 'setPushToken' | 'pushToken'>>;
  inboxSize: Required<Pick<ServerStore, 'inboxSize'>>;
  ping: Required<Pick<ServerStore, 'ping'>>;
  atomicBatch: unknown;
  actionCounts: Required<Pick<ServerStore, 'countActions'>>;
  slicedAppend: unknown;
}

/**
 * Whether `store` declares capability `cap`; a store without a `capabilities` object (written
 * before it existed) declares none. Narrows the store's type to have the methods it promises.
 * @internal
 */
export function capable<K extends keyof StoreCapabilities>(
  store: ServerStore,
  cap: K,
): store is ServerStore & CapabilityMethods[K] {
  return (store.capabilities as StoreCapabilities | undefined)?.[cap] === true;
}
