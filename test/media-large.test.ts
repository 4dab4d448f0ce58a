// A 200 MB file goes up and comes back streamed: the client process's RSS stays flat (it grows by
// far less than the file), so a 2 GB video would not sit in memory either. The server is a real
// `postbox serve` process, so the RSS measured here is the client's alone.
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { join } from 'node:path';
import { once } from 'node:events';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { fileSource } from '../src/media/node.js';
import { nodeMediaCipher } from '../src/media/node-cipher.js';
import { freshSecret } from '../src/media/stream.js';
import { downloadPlain, uploadMedia, type UploadProgress } from '../src/media/transfer.js';
import { setDefaultPatch, setDefaultRangeGet, type MediaEndpoint } from '../src/media/http.js';
import { nodePatch, nodeRangeGet } from '../src/media/node-http.js';
import { mediaRefOf } from '../src/media/ref.js';
import { killAll, startServerProcess } from './fixtures/proc.js';
import { tempDirs } from './fixtures/util.js';

const dirs = tempDirs('media-large');
afterEach(() => killAll());
afterAll(() => dirs.removeAll());

const SIZE = 200 * 1024 * 1024;
/** Bound on RSS growth above the baseline: under half the file (one run peaked at +66 MiB). */
const RSS_BOUND = 100 * 1024 * 1024;

describe('large media', () => {
  it('a 200 MB file round-trips streamed with the RSS flat', { timeout: 300_000 }, async () => {
    const dir = dirs.make();
    const { port } = await startServerProcess(join(dir, 'pb.sqlite'));
    const path = join(dir, 'big.bin');
    const want = createHash('sha256');
    const out = createWriteStream(path);
    const block = randomBytes(1024 * 1024);
    for (let i = 0; i < SIZE / block.length; i++) {
      block.writeUInt32BE(i, 0); // no two megabytes alike
      want.update(block);
      if (!out.write(block)) await once(out, 'drain');
    }
    out.end();
    await once(out, 'finish');
    const ep = (who: string): MediaEndpoint => ({
      url: `http://127.0.0.1:${port}/media`,
      credentials: () => who,
      backoff: () => 50,
    });

    globalThis.gc?.();
    const base = process.memoryUsage().rss;
    let peak = base;
    const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
    try {
      const secret = freshSecret();
      const progress: UploadProgress = { confirmed: { offset: 0 } };
      // Uploaded as a Node app does (`postbox/media` loads index.node there): PATCH bodies
      // streamed on node:http, sealed by WebCrypto (this file's default cipher).
      setDefaultPatch(nodePatch);
      const { blob, summary } = await uploadMedia(ep('alice/a1'), await fileSource(path), secret, progress);
      const got = createHash('sha256');
      let n = 0;
      // Opened by node:crypto and fetched on node:http (Node's defaults): the download is
      // decrypted piece by piece as the socket delivers it.
      setDefaultRangeGet(nodeRangeGet);
      for await (const p of downloadPlain(
        ep('alice/a1'),
        mediaRefOf(blob, secret.key, summary, { mime: 'x/y' }),
        { cipher: nodeMediaCipher },
      )) {
        got.update(p);
        n += p.length;
      }
      expect(n).toBe(SIZE);
      expect(got.digest('hex')).toBe(want.digest('hex'));
    } finally {
      clearInterval(sampler);
      setDefaultRangeGet(undefined);
      setDefaultPatch(undefined);
    }
    const growth = peak - base;
    console.log(
      `media-large: RSS ${Math.round(base / 2 ** 20)} MiB at start, peak +${Math.round(growth / 2 ** 20)} MiB for a ${SIZE / 2 ** 20} MiB round trip`,
    );
    expect(growth).toBeLessThan(RSS_BOUND);
  });
});
