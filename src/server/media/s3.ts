/**
 * The S3-compatible blob store, on `@aws-sdk/client-s3` (an optional peer: `npm install
 * @aws-sdk/client-s3`). Blobs are objects `PREFIX + ID` in one bucket; works with AWS S3 and with
 * compatible servers (MinIO, Ceph, Garage, s3rver) through `endpoint` and `forcePathStyle` (older
 * servers also need `requestChecksumCalculation: 'WHEN_REQUIRED'`: the SDK's default aws-chunked
 * trailing checksums are recent).
 * @packageDocumentation
 */
import {
  DeleteObjectCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
import type { BlobRange, BlobStore } from './blob-store.js';

export type { BlobStore, BlobRange } from './blob-store.js';

/**
 * What the store needs of an `S3Client` from `@aws-sdk/client-s3`, declared here so that no public
 * signature depends on the peer's (large) types: a real `S3Client` fits.
 */
export interface S3ClientLike {
  /** Sends a command. */
  send(command: any, options?: { abortSignal?: AbortSignal }): Promise<any>;
  /** Releases the client's sockets. */
  destroy(): void;
}

/** Settings for the `S3Client` the store makes when none is given (see `S3ClientConfig`). */
export interface S3Settings {
  /** e.g. `us-east-1`. */
  region?: string;
  /** An S3-compatible server's URL. */
  endpoint?: string;
  /** Path-style URLs (most S3-compatible servers want them). */
  forcePathStyle?: boolean;
  /** Static credentials; the SDK's default chain when absent. */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** `WHEN_REQUIRED` for servers without the aws-chunked trailing checksums. */
  requestChecksumCalculation?: 'WHEN_SUPPORTED' | 'WHEN_REQUIRED';
  /** `WHEN_REQUIRED` likewise. */
  responseChecksumValidation?: 'WHEN_SUPPORTED' | 'WHEN_REQUIRED';
}

/** Options of {@link s3BlobStore}. */
export interface S3BlobStoreOptions {
  /** The bucket; it must exist. */
  bucket: string;
  /** Key prefix, so one bucket can hold several deployments (or test runs). @default 'postbox/' */
  prefix?: string;
  /** A client you configured (an `S3Client`); the store never closes it. */
  client?: S3ClientLike;
  /** Used to make a client when `client` is absent. */
  config?: S3Settings;
}

const ID = /^[0-9A-HJKMNP-TV-Z]{26}$/;

function missing(e: unknown): boolean {
  const err = e as { name?: string; $metadata?: { httpStatusCode?: number } };
  return err.name === 'NotFound' || err.name === 'NoSuchKey' || err.$metadata?.httpStatusCode === 404;
}

/**
 * A blob store in an S3 bucket. A blob is one `PutObject` (S3 caps one object written that way at
 * 5 GB, above the media server's own size limit).
 */
export function s3BlobStore(options: S3BlobStoreOptions): BlobStore {
  const s3: S3ClientLike = options.client ?? new S3Client(options.config ?? {});
  const owned = !options.client;
  const prefix = options.prefix ?? 'postbox/';
  const key = (id: string) => {
    if (!ID.test(id)) throw new TypeError(`not a blob id: ${JSON.stringify(id).slice(0, 40)}`);
    return prefix + id;
  };
  const store: BlobStore = {
    name: 's3',
    async put(id, body, size) {
      // The SDK does not watch its body for errors: a body that fails aborts the request, so the
      // object is never written (S3 stores a PUT whole or not at all).
      const abort = new AbortController();
      let failed: unknown;
      const stream = Readable.from(body, { objectMode: false }).on('error', (e) => {
        failed = e;
        abort.abort(e);
      });
      try {
        await s3.send(
          new PutObjectCommand({
            Bucket: options.bucket,
            Key: key(id),
            Body: stream,
            ContentLength: size,
            ContentType: 'application/octet-stream',
          }),
          { abortSignal: abort.signal },
        );
      } catch (e) {
        throw failed ?? e;
      }
    },
    async adopt(id, path, size) {
      await store.put(id, createReadStream(path, { highWaterMark: 256 * 1024 }), size);
    },
    async get(id, range?: BlobRange) {
      const st = await store.stat(id);
      if (!st) return undefined;
      const start = Math.min(range?.start ?? 0, st.size);
      const end = Math.min(range?.end ?? st.size, st.size);
      if (end <= start) return (async function* () {})();
      try {
        const out = await s3.send(
          new GetObjectCommand({ Bucket: options.bucket, Key: key(id), Range: `bytes=${start}-${end - 1}` }),
        );
        return out.Body as unknown as AsyncIterable<Uint8Array>;
      } catch (e) {
        if (missing(e)) return undefined;
        throw e;
      }
    },
    async stat(id) {
      try {
        const h = await s3.send(new HeadObjectCommand({ Bucket: options.bucket, Key: key(id) }));
        return { size: Number(h.ContentLength ?? 0) };
      } catch (e) {
        if (missing(e)) return undefined;
        throw e;
      }
    },
    async delete(id) {
      await s3.send(new DeleteObjectCommand({ Bucket: options.bucket, Key: key(id) }));
    },
    async *list() {
      let token: string | undefined;
      do {
        const page = await s3.send(
          new ListObjectsV2Command({ Bucket: options.bucket, Prefix: prefix, ContinuationToken: token }),
        );
        for (const o of page.Contents ?? []) {
          const id = o.Key?.slice(prefix.length);
          if (id && ID.test(id)) yield id;
        }
        token = page.IsTruncated ? page.NextContinuationToken : undefined;
      } while (token);
    },
    async close() {
      if (owned) s3.destroy();
    },
  };
  return store;
}
