/**
 * `postbox/media` as Node loads it (the package's `node` export condition): everything of the
 * browser-safe entry, with `node:crypto` as the default media cipher instead of WebCrypto (faster
 * in Node: no copy of every chunk into a thread-pool job; see docs/media.md, Bench), and blob
 * downloads and upload `PATCH`es on `node:http` instead of `fetch` for endpoints without a
 * `fetch` of their own (cheaper per byte). Browser bundlers resolve the `default` condition and never see this file.
 * @packageDocumentation
 */
import { setDefaultMediaCipher } from './cipher.js';
import { setDefaultPatch, setDefaultRangeGet } from './http.js';
import { nodeMediaCipher } from './node-cipher.js';
import { nodePatch, nodeRangeGet } from './node-http.js';

setDefaultMediaCipher(nodeMediaCipher);
setDefaultRangeGet(nodeRangeGet);
setDefaultPatch(nodePatch);

export * from './index.js';
