/**
 * Media by reference, encrypted on the device: the `pbm1` format, the media reference, resumable
 * transfer and the media client. Browser-safe: WebCrypto and `fetch` only (see docs/media.md).
 * @packageDocumentation
 */
export { MEDIA_CHUNK_BYTES, MEDIA_HEADER_BYTES, MEDIA_TAG_BYTES, chunkCount, cipherSize } from './format.js';
export {
  blobIdSchema,
  decodeMediaRef,
  encodeMediaRef,
  isMediaMessage,
  mediaRefOf,
  mediaRefSchema,
  MAX_THUMBNAIL_BYTES,
} from './ref.js';
export type { MediaMeta, MediaRef, MediaSums } from './ref.js';
export { defaultMediaCipher, webCryptoCipher } from './cipher.js';
export type { ChunkCipher, ChunkOpening, MediaCipher, OpenedChunk, SealedChunk } from './cipher.js';
export { decryptMedia, encryptMedia, freshSecret } from './stream.js';
export type { DecryptExpect, EncryptCheckpoint, EncryptSummary, MediaSecret } from './stream.js';
export {
  ackMedia,
  attachMedia,
  blobSource,
  bytesSource,
  downloadCipher,
  downloadPlain,
  uploadMedia,
} from './transfer.js';
export type { DownloadOptions, MediaSource, UploadOptions, UploadProgress } from './transfer.js';
export type { MediaEndpoint } from './http.js';
export { mediaBackoff } from './http.js';
export { MediaClient, mediaClient } from './client.js';
export type { MediaClientOptions, MediaEvents, MediaPhase, MediaSend, SendMediaOptions } from './client.js';
