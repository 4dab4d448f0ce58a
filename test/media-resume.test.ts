// Resumable transfer on a bad network: an upload cut at random offsets by a TCP proxy resumes from
// the server's offset and sends each ciphertext byte once (counted at the proxy and at the
// server), through `fetch` and through `node:http` (what Node's entry point uses), a download cut the same way resumes with Range; and a server killed with SIGKILL in
// the middle of an upload comes back with what it had stored, and the upload finishes from there.
import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, describe, expect, it, vi } from 'vitest';
import { startThrottleProxy, type ThrottleProxy } from '../bench/lib/throttle-proxy.mjs';
import { cipherSize } from '../src/media/format.js';
import { freshSecret } from '../src/media/stream.js';
import {
  attachMedia,
  blobIdOf,
  bytesSource,
  downloadPlain,
  uploadMedia,
  type UploadProgress,
} from '../src/media/transfer.js';
import {
  setDefaultPatch,
  setDefaultRangeGet,
  type MediaEndpoint,
  type PatchSend,
} from '../src/media/http.js';
import { nodePatch, nodeRangeGet } from '../src/media/node-http.js';
import { mediaRefOf, type MediaRef } from '../src/media/ref.js';
import { seededRandom } from '../src/util/clock.js';
import { startMediaServer, type MediaFixture } from './fixtures/media.js';
import { killAll, startServerProcess } from './fixtures/proc.js';
import { tempDirs } from './fixtures/util.js';

const dirs = tempDirs('media-resume');
afterAll(() => dirs.removeAll());
let fx: MediaFixture | undefined;
let proxy: ThrottleProxy | undefined;
afterEach(async () => {
  await proxy?.close();
  await fx?.close();
  proxy = fx = undefined;
  killAll();
});

async function readPlain(ep: MediaEndpoint, ref: MediaRef): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const p of downloadPlain(ep, ref)) parts.push(Buffer.from(p));
  return Buffer.concat(parts);
}

describe('resumable media transfer', () => {
  const seeds = (process.env.SEEDS ?? '1,2,3').split(',').map(Number);
  for (const [seed, sender] of seeds.flatMap((n) =>
    (['fetch', 'node:http'] as const).map((s) => [n, s] as const),
  )) {
    it(`an upload cut at random offsets resumes and each byte is sent once (seed ${seed}, ${sender})`, async () => {
      fx = await startMediaServer(dirs.make());
      proxy = await startThrottleProxy({ target: fx.port });
      const rand = seededRandom(seed);
      const plain = randomBytes(2_000_000);
      const total = cipherSize(plain.length);
      // The next cut lands 30-330 KB further on: several per upload, inside and between requests.
      proxy.cutAtUp = Math.floor(30_000 + rand() * 300_000);
      proxy.onCut = () => proxy!.up + Math.floor(30_000 + rand() * 300_000);
      const secret = freshSecret();
      const progress: UploadProgress = { confirmed: { offset: 0 } };
      const ep = fx.as('alice/a1', proxy.port);
      // Every request counted: through the endpoint's own fetch, or (node:http) the global fetch
      // for the others and the installed sender for the PATCHes.
      let requests = 0;
      const counted: MediaEndpoint =
        sender === 'fetch'
          ? {
              ...ep,
              fetch: (input, init) => {
                requests++;
                return fetch(input, init);
              },
            }
          : ep;
      const spy = sender === 'node:http' ? vi.spyOn(globalThis, 'fetch') : undefined;
      const patches: PatchSend = (...a) => {
        requests++;
        return nodePatch(...a);
      };
      if (sender === 'node:http') setDefaultPatch(patches);
      let result: Awaited<ReturnType<typeof uploadMedia>>;
      try {
        result = await uploadMedia(counted, bytesSource(plain), secret, progress, {
          patchBytes: 512 * 1024,
        });
      } finally {
        if (spy) requests += spy.mock.calls.length;
        spy?.mockRestore();
        setDefaultPatch(undefined);
      }
      const { blob, summary } = result;
      proxy.cutAtUp = undefined;
      expect(proxy.cuts).toBeGreaterThanOrEqual(3);
      // At the server: every ciphertext byte written exactly once.
      expect(fx.handler.received.get(blob)).toBe(total);
      // At the proxy: the body bytes plus request headers (< 600 bytes each), nothing re-sent.
      expect(proxy.up).toBeGreaterThanOrEqual(total);
      expect(proxy.up).toBeLessThan(total + requests * 600);
      await attachMedia(ep, blob, 'bob');
      const ref = mediaRefOf(blob, secret.key, summary, { mime: 'x/y' });
      delete (ref as Partial<typeof summary>).cipherSize;
      // The download through the same proxy, cut at random offsets of what comes back; through
      // fetch and through node:http (what Node's entry point uses).
      const bob = fx.as('bob/b1', proxy.port);
      for (const get of [undefined, nodeRangeGet]) {
        setDefaultRangeGet(get);
        const start = proxy.down;
        let cuts = 0;
        const timer = setInterval(() => {
          if (proxy!.down - start > 100_000 * (cuts + 1) && cuts < 4) {
            cuts++;
            proxy!.cutAll();
          }
        }, 1);
        try {
          expect((await readPlain(bob, ref)).equals(plain)).toBe(true);
          expect(cuts).toBeGreaterThanOrEqual(1);
        } finally {
          clearInterval(timer);
          setDefaultRangeGet(undefined);
        }
      }
    });
  }

  it('a server killed with SIGKILL mid-upload restarts and the upload resumes from its stored offset', async () => {
    const dir = dirs.make();
    const data = `${dir}/pb.sqlite`;
    let server = await startServerProcess(data);
    const port = server.port;
    const ep: MediaEndpoint = {
      url: `http://127.0.0.1:${port}/media`,
      credentials: () => 'alice/a1',
      backoff: () => 50,
    };
    const plain = randomBytes(6_000_000);
    const total = cipherSize(plain.length);
    const secret = freshSecret();
    const progress: UploadProgress = { confirmed: { offset: 0 } };
    let killedAt = -1;
    let restarted: Promise<void> | undefined;
    let offsetAfterRestart = -1;
    const upload = uploadMedia(ep, bytesSource(plain), secret, progress, {
      patchBytes: 1024 * 1024,
      onProgress: (stored) => {
        if (killedAt < 0 && stored > total * 0.4) {
          killedAt = stored;
          server.p.proc.kill('SIGKILL');
          restarted = server.p.exited.then(async () => {
            server = await startServerProcess(data, port);
          });
        } else if (killedAt >= 0 && offsetAfterRestart < 0) offsetAfterRestart = stored;
      },
    });
    const { blob, summary } = await upload;
    await restarted;
    expect(killedAt).toBeGreaterThan(0);
    // The first offset reported after the restart came from the restarted server's HEAD: it kept
    // the bytes it had (more than the last confirmed request), and the upload went on from there.
    expect(offsetAfterRestart).toBeGreaterThan(0);
    expect(progress.url && blobIdOf(progress.url)).toBe(blob);
    const ref = mediaRefOf(blob, secret.key, summary, { mime: 'x/y' });
    expect((await readPlain(ep, ref)).equals(plain)).toBe(true);
  });
});
