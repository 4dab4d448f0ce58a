/**
 * End-to-end encryption: the {@link CryptoAdapter} contract, its errors, the test-only plaintext
 * adapter and the keyed lock adapters serialize their work with. Browser-safe.
 *
 * The Signal adapter lives in its own subpath, `postbox/crypto/libsignal` (Node/Electron; its
 * peer `@signalapp/libsignal-client` is AGPL-3.0), so importing this module never loads it.
 * @packageDocumentation
 */
export * from './types.js';
export { NoSessionError, clientCryptoState } from './common.js';
export type { NamespacedState } from './common.js';
export { insecurePlaintextCrypto } from './plaintext.js';
export type { PlaintextCryptoOptions } from './plaintext.js';
export { keyedLock } from './lock.js';
export type { KeyedLock } from './lock.js';
