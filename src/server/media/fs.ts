/**
 * The file-system blob store: the embedded default, a folder beside the SQLite file
 * (`postbox serve --media-dir`). Blobs are files `blobs/XY/ID`, written to a temporary name,
 * fsynced and renamed, so a crash leaves either the whole blob or none.
 * @packageDocumentation
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import { randomBytes } from 'node:crypto';
import type { BlobRange, BlobStore } from './blob-store.js';

export type { BlobStore, BlobRange } from './blob-store.js';

/** Options of {@link fsBlobStore}. */
export interface FsBlobStoreOptions {
  /** The folder; created when missing. */
  dir: string;
}

const ID = /^[0-9A-HJKMNP-TV-Z]{26}$/;

function check(id: string): string {
  if (!ID.test(id)) throw new TypeError(`not a blob id: ${JSON.stringify(id).slice(0, 40)}`);
  return id;
}

async function fsyncPath(path: string): Promise<void> {
  const fh = await open(path, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** A blob store in a local folder. */
export function fsBlobStore(options: FsBlobStoreOptions): BlobStore {
  const root = join(options.dir, 'blobs');
  const pathOf = (id: string) => join(root, check(id).slice(0, 2), id);
  const dirOf = (id: string) => join(root, id.slice(0, 2));
  const tmpOf = (id: string) => join(options.dir, '.tmp', `${id}.${randomBytes(6).toString('hex')}`);
  const ready = Promise.all([
    mkdir(root, { recursive: true }),
    mkdir(join(options.dir, '.tmp'), { recursive: true }),
  ]);

  async function commit(id: string, tmp: string): Promise<void> {
    await fsyncPath(tmp);
    await mkdir(dirOf(id), { recursive: true });
    await rename(tmp, pathOf(id));
    await fsyncPath(dirOf(id));
  }

  return {
    name: 'fs',
    async put(id, body, size) {
      await ready;
      const tmp = tmpOf(check(id));
      try {
        await pipeline(Readable.from(body, { objectMode: false }), createWriteStream(tmp));
        const st = await stat(tmp);
        if (st.size !== size) throw new Error(`blob ${id}: got ${st.size} bytes, expected ${size}`);
        await commit(id, tmp);
      } catch (e) {
        await rm(tmp, { force: true });
        throw e;
      }
    },
    async adopt(id, path, size) {
      await ready;
      const st = await stat(path);
      if (st.size !== size) throw new Error(`blob ${id}: file has ${st.size} bytes, expected ${size}`);
      try {
        await commit(check(id), path);
      } catch (e) {
        // Another file system: copy (through `put`) instead of renaming.
        if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw e;
        await this.put(id, createReadStream(path), size);
        await rm(path, { force: true });
      }
    },
    async get(id, range?: BlobRange) {
      const st = await this.stat(id);
      if (!st) return undefined;
      const start = Math.min(range?.start ?? 0, st.size);
      const end = Math.min(range?.end ?? st.size, st.size);
      if (end <= start) return (async function* () {})();
      return createReadStream(pathOf(id), { start, end: end - 1, highWaterMark: 256 * 1024 });
    },
    async stat(id) {
      try {
        const st = await stat(pathOf(id));
        return { size: st.size };
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
        throw e;
      }
    },
    async delete(id) {
      await rm(pathOf(id), { force: true });
    },
    async *list() {
      await ready;
      for (const d of await readdir(root)) {
        let names: string[];
        try {
          names = await readdir(join(root, d));
        } catch {
          continue;
        }
        for (const n of names) if (ID.test(n)) yield n;
      }
    },
  };
}
