/**
 * The `BlobStore` contract: where finished, encrypted media blobs live. Uploads in progress are
 * staged on the media server's local disk (tus offsets need an appendable file) and handed to the
 * store whole, so a store needs no append or multipart support of its own.
 * @packageDocumentation
 */

/** A byte range of a blob: from `start` (inclusive) to `end` (exclusive; the blob's end when absent). */
export interface BlobRange {
  /** First byte. */
  start: number;
  /** One past the last byte. @default the blob's size */
  end?: number;
}

/**
 * Stores encrypted media blobs by id. Blob ids are 26 characters of Crockford base32.
 *
 * Rules every store keeps (the suite `blobStoreConformance` in `postbox/testing` checks them):
 * - **Durable put.** When `put` resolves the blob is stored whole and readable by `get`; a `put`
 *   that fails or whose body ends short of `size` leaves no blob (or the previous one) behind.
 * - **Ranges.** `get` with a range returns exactly those bytes; a range past the end is clamped.
 * - **Delete is idempotent.** Deleting a missing blob succeeds; after `delete`, `stat` and `get`
 *   answer `undefined`.
 * - **List.** `list` yields every stored blob id once.
 */
export interface BlobStore {
  /** For logs and conformance reports. */
  readonly name: string;
  /** Stores a blob of `size` bytes read from `body`. */
  put(id: string, body: AsyncIterable<Uint8Array>, size: number): Promise<void>;
  /** A blob's bytes (all, or a range), or `undefined` when there is no such blob. */
  get(id: string, range?: BlobRange): Promise<AsyncIterable<Uint8Array> | undefined>;
  /** A blob's size, or `undefined` when there is no such blob. */
  stat(id: string): Promise<{ size: number } | undefined>;
  /** Removes a blob; succeeds when there is none. */
  delete(id: string): Promise<void>;
  /** Every stored blob id. */
  list(): AsyncIterable<string>;
  /**
   * Optional: takes a finished local file as the blob, moving it when it can (the file-system
   * store renames it: no copy). Without it the media server streams the file through `put`.
   */
  adopt?(id: string, path: string, size: number): Promise<void>;
  /** Releases resources. */
  close?(): Promise<void>;
}
