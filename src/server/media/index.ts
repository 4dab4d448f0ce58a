/**
 * The media server (tus uploads, grants, ranged downloads, lifecycle) and its file-system blob
 * store; see docs/media.md. Node only; the ledger needs the optional peer `better-sqlite3`.
 * @packageDocumentation
 */
export { fsBlobStore } from './fs.js';
export type { FsBlobStoreOptions } from './fs.js';
export type { BlobRange, BlobStore } from './blob-store.js';
export { mediaHttpHandler, newBlobId } from './http.js';
export type { MediaHttpHandler, MediaHttpOptions, ResolveAudience } from './http.js';
export { openMediaLedger } from './ledger.js';
export type { MediaLedger, UploadRow } from './ledger.js';
export { DEFAULT_MEDIA_LIMITS } from './limits.js';
export type { MediaLimits } from './limits.js';
export { storeAudience } from './audience.js';
export { checkGrant, signGrant } from './grants.js';
