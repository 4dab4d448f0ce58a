// Both built-in blob stores pass the blob-store conformance suite: the file-system store in a
// temporary folder, and the S3 store against a real S3-compatible server (s3rver) running in its
// own process.
import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, it } from 'vitest';
import { S3Client } from '@aws-sdk/client-s3';
import { blobStoreConformance } from '../src/testing/blob-store-conformance.js';
import { registerCases } from '../src/testing/conformance.js';
import { fsBlobStore } from '../src/server/media/fs.js';
import { s3BlobStore } from '../src/server/media/s3.js';
import { run, type Proc } from './fixtures/proc.js';
import { tempDirs } from './fixtures/util.js';

const dirs = tempDirs('blobs');
afterAll(() => dirs.removeAll());

describe('file-system blob store', () => {
  registerCases(
    blobStoreConformance({
      name: 'fs',
      setup: async () => ({ store: fsBlobStore({ dir: dirs.make() }), teardown: async () => undefined }),
    }),
    it,
  );
});

describe('S3 blob store (s3rver in its own process)', () => {
  let s3: Proc;
  let port = 0;
  const bucket = 'postbox-test';
  beforeAll(async () => {
    s3 = run(['test/fixtures/s3-server.mjs', dirs.make(), bucket]);
    port = Number((await s3.waitFor('s3 listening on ')).split(' ')[3]);
  });
  afterAll(() => {
    s3?.proc.kill('SIGKILL');
  });
  registerCases(
    blobStoreConformance({
      name: 's3',
      setup: async () => {
        const client = new S3Client({
          endpoint: `http://127.0.0.1:${port}`,
          region: 'us-east-1',
          forcePathStyle: true,
          credentials: { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' },
          // s3rver predates the SDK's default aws-chunked trailing checksums.
          requestChecksumCalculation: 'WHEN_REQUIRED',
          responseChecksumValidation: 'WHEN_REQUIRED',
        });
        const store = s3BlobStore({ bucket, prefix: `run-${randomBytes(4).toString('hex')}/`, client });
        return { store, teardown: async () => client.destroy() };
      },
    }),
    it,
  );
});
