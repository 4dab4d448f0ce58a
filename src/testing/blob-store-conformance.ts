/**
 * The blob-store conformance suite: the rules of `BlobStore` (src/server/media/blob-store.ts),
 * checked against any store (file system, S3, yours) under any test runner.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type { BlobStore } from '../server/media/blob-store.js';
import { newBlobId } from '../server/media/http.js';
import type { ConformanceCase } from './conformance.js';

/** A blob store under test. */
export interface BlobStoreSubject {
  /** Shown in failure messages. */
  name: string;
  /** A fresh store (its own folder, bucket prefix, …) and how to release it. */
  setup(): Promise<{ store: BlobStore; teardown(): Promise<void> }>;
}

async function collect(it: AsyncIterable<Uint8Array> | undefined): Promise<Buffer | undefined> {
  if (!it) return undefined;
  const parts: Buffer[] = [];
  for await (const p of it) parts.push(Buffer.from(p));
  return Buffer.concat(parts);
}

async function* pieces(b: Uint8Array, size = 10_000): AsyncGenerator<Uint8Array> {
  for (let o = 0; o < b.length; o += size) yield b.subarray(o, o + size);
}

async function* short(b: Uint8Array): AsyncGenerator<Uint8Array> {
  yield b.subarray(0, b.length >> 1);
  throw new Error('the uploader went away');
}

/** The cases of the suite; register them with `registerCases` (see `postbox/testing`). */
export function blobStoreConformance(subject: BlobStoreSubject): ConformanceCase[] {
  const run = (body: (s: BlobStore) => Promise<void>) => async () => {
    const { store, teardown } = await subject.setup();
    try {
      await body(store);
    } finally {
      await teardown();
    }
  };
  return [
    {
      name: 'a blob put in pieces reads back byte for byte, with its size',
      run: run(async (s) => {
        const id = newBlobId();
        const data = randomBytes(300_001);
        await s.put(id, pieces(data), data.length);
        assert.deepEqual(await s.stat(id), { size: data.length });
        assert.ok((await collect(await s.get(id)))!.equals(data));
      }),
    },
    {
      name: 'a range read returns exactly those bytes, clamped at the end',
      run: run(async (s) => {
        const id = newBlobId();
        const data = randomBytes(100_000);
        await s.put(id, pieces(data), data.length);
        assert.ok(
          (await collect(await s.get(id, { start: 12_345, end: 54_321 })))!.equals(
            data.subarray(12_345, 54_321),
          ),
        );
        assert.ok((await collect(await s.get(id, { start: 99_990 })))!.equals(data.subarray(99_990)));
        assert.ok(
          (await collect(await s.get(id, { start: 90_000, end: 200_000 })))!.equals(data.subarray(90_000)),
        );
      }),
    },
    {
      name: 'an empty blob is a blob',
      run: run(async (s) => {
        const id = newBlobId();
        await s.put(id, pieces(new Uint8Array(0)), 0);
        assert.deepEqual(await s.stat(id), { size: 0 });
        assert.equal((await collect(await s.get(id)))!.length, 0);
      }),
    },
    {
      name: 'a missing blob answers undefined, and deleting it succeeds',
      run: run(async (s) => {
        const id = newBlobId();
        assert.equal(await s.stat(id), undefined);
        assert.equal(await s.get(id), undefined);
        await s.delete(id);
      }),
    },
    {
      name: 'after delete a blob is gone for stat, get and list',
      run: run(async (s) => {
        const id = newBlobId();
        await s.put(id, pieces(randomBytes(1000)), 1000);
        await s.delete(id);
        assert.equal(await s.stat(id), undefined);
        assert.equal(await s.get(id), undefined);
        for await (const x of s.list()) assert.notEqual(x, id);
      }),
    },
    {
      name: 'a put whose body fails leaves no blob behind',
      run: run(async (s) => {
        const id = newBlobId();
        await assert.rejects(s.put(id, short(randomBytes(50_000)), 50_000));
        assert.equal(await s.stat(id), undefined);
      }),
    },
    {
      name: 'list yields every stored blob once',
      run: run(async (s) => {
        const ids = Array.from({ length: 5 }, () => newBlobId());
        for (const id of ids) await s.put(id, pieces(randomBytes(10)), 10);
        const seen: string[] = [];
        for await (const x of s.list()) seen.push(x);
        assert.deepEqual(seen.filter((x) => ids.includes(x)).sort(), [...ids].sort());
        assert.equal(new Set(seen).size, seen.length);
      }),
    },
    {
      name: 'adopt (when offered) takes a finished file as the blob',
      run: run(async (s) => {
        if (!s.adopt) return;
        const { writeFile, mkdtemp } = await import('node:fs/promises');
        const { tmpdir } = await import('node:os');
        const { join } = await import('node:path');
        const dir = await mkdtemp(join(tmpdir(), 'pb-adopt-'));
        const path = join(dir, 'f');
        const data = randomBytes(70_000);
        await writeFile(path, data);
        const id = newBlobId();
        await s.adopt(id, path, data.length);
        assert.ok((await collect(await s.get(id)))!.equals(data));
      }),
    },
  ];
}
