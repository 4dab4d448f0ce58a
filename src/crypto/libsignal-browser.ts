/**
 * `postbox/crypto/libsignal` as a browser bundle gets it (the package's `browser` export
 * condition): `@signalapp/libsignal-client` is a native Node module with no browser build, so
 * instead of a bundle that fails deep inside (a missing `node:crypto`, a native addon),
 * {@link libsignalCrypto} throws at once with what to do. See docs/encryption.md, "In the browser".
 * @packageDocumentation
 */
import { PostboxError } from '../protocol/errors.js';
import type { CryptoAdapter } from './types.js';

/** Options of {@link libsignalCrypto} (the same as the Node build's). */
export interface LibsignalCryptoOptions {
  /**
   * The clock, in milliseconds since the epoch: prekey timestamps and session expiry.
   * @default Date.now
   */
  now?: () => number;
}

/**
 * Throws `misconfigured`: libsignal runs in Node and Electron's main process only. A browser app
 * runs encryption in a trusted native or desktop shell, or passes another {@link CryptoAdapter}
 * (docs/encryption.md, "In the browser").
 * @throws PostboxError `misconfigured`, always.
 */
export function libsignalCrypto(_options: LibsignalCryptoOptions = {}): CryptoAdapter {
  throw new PostboxError(
    'misconfigured',
    'postbox/crypto/libsignal: @signalapp/libsignal-client has no browser build, so libsignalCrypto() cannot run in a browser bundle. ' +
      'Run the client with encryption in Node or Electron (main process), or pass another CryptoAdapter; see docs/encryption.md, "In the browser".',
  );
}
