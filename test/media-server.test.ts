// The media server's guarantees: only an authenticated device uploads; only the sender's and the
// recipients' devices get a download grant, and a grant is short-lived and for one blob; a
// tampered or truncated blob reaches no app; limits answer with clear typed errors; and a blob is
// deleted once every recipient device acked it, when it expires, or when it was never attached.
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync, truncateSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import {
  bytesSource,
  uploadMedia,
  downloadPlain,
  attachMedia,
  ackMedia,
  type UploadProgress,
} from '../src/media/transfer.js';
import { webCryptoCipher, type MediaCipher } from '../src/media/cipher.js';
import { nodeMediaCipher } from '../src/media/node-cipher.js';
import { freshSecret } from '../src/media/stream.js';
import type { MediaRef } from '../src/media/ref.js';
import {
  fetchPatch,
  fetchRange,
  Transient,
  type MediaEndpoint,
  type PatchSend,
  type RangeGet,
} from '../src/media/http.js';
import { nodePatch, nodeRangeGet } from '../src/media/node-http.js';
import { startMediaServer, type MediaFixture } from './fixtures/media.js';
import { tempDirs } from './fixtures/util.js';

const dirs = tempDirs('media-server');
afterAll(() => dirs.removeAll());
let fx: MediaFixture;
afterEach(async () => fx?.close());

async function send(ep: MediaEndpoint, plain: Uint8Array, to?: string): Promise<MediaRef> {
  const secret = freshSecret();
  const progress: UploadProgress = { confirmed: { offset: 0 } };
  const { blob, summary } = await uploadMedia(ep, bytesSource(plain), secret, progress, {
    patchBytes: 256 * 1024,
  });
  if (to) await attachMedia(ep, blob, to);
  return {
    v: 1,
    id: blob,
    key: secret.key,
    size: summary.size,
    plainHash: summary.plainHash,
    cipherHash: summary.cipherHash,
    mime: 'application/octet-stream',
  };
}

async function fetchPlain(ep: MediaEndpoint, ref: MediaRef, cipher?: MediaCipher): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const p of downloadPlain(ep, ref, cipher ? { cipher } : {})) parts.push(Buffer.from(p));
  return Buffer.concat(parts);
}

/** The download URL the server grants `device` for blob `id`. */
async function grantUrl(fx: MediaFixture, id: string, device: string): Promise<URL> {
  const res = await fetch(`${fx.url}/blobs/${id}/grant`, {
    method: 'POST',
    headers: { Authorization: `Bearer ${device}` },
  });
  return new URL(((await res.json()) as { url: string }).url, fx.url);
}

const codeOf = async (p: Promise<unknown>) =>
  p.then(
    () => 'ok',
    (e: { code?: string }) => e.code ?? String(e),
  );

describe('media server', () => {
  it("a file round-trips from the sender to every recipient device and the sender's other device", async () => {
    fx = await startMediaServer(dirs.make());
    const plain = randomBytes(1_500_000);
    const ref = await send(fx.as('alice/a1'), plain, 'bob');
    for (const who of ['bob/b1', 'bob/b2', 'alice/a2'])
      expect((await fetchPlain(fx.as(who), ref)).equals(plain)).toBe(true);
  });

  it('uploads need credentials the authenticate hook accepts', async () => {
    fx = await startMediaServer(dirs.make());
    const res = await fetch(`${fx.url}/uploads`, {
      method: 'POST',
      headers: { 'Tus-Resumable': '1.0.0', 'Upload-Length': '100' },
    });
    expect(res.status).toBe(401);
    expect(((await res.json()) as { code: string }).code).toBe('unauthorized');
    expect(await codeOf(send({ ...fx.as('x'), credentials: () => 'not a device' }, randomBytes(10)))).toBe(
      'unauthorized',
    );
  });

  it('a device that is not a recipient is refused a grant, and a grant opens only its blob until it expires', async () => {
    fx = await startMediaServer(dirs.make(), { grantTtlMs: 60_000 });
    const ref = await send(fx.as('alice/a1'), randomBytes(5000), 'bob');
    expect(await codeOf(fetchPlain(fx.as('carol/c1'), ref))).toBe('forbidden');
    const other = await send(fx.as('alice/a1'), randomBytes(5000), 'carol');
    // bob's grant for ref does not open carol's blob
    const granted = await grantUrl(fx, ref.id, 'bob/b1');
    const t = granted.searchParams.get('t')!;
    expect((await fetch(`${fx.url}/blobs/${other.id}?t=${t}`)).status).toBe(403);
    expect((await fetch(granted)).status).toBe(200);
    fx.skewMs = 61_000;
    expect((await fetch(granted)).status).toBe(403);
    // Nobody can peek at another user's upload either.
    const up = await fetch(`${fx.url}/uploads/${ref.id}`, {
      method: 'HEAD',
      headers: { 'Tus-Resumable': '1.0.0', Authorization: 'Bearer carol/c1' },
    });
    expect(up.status).toBe(404);
  });

  it('the blob getters (fetch, node:http) read from any offset and refuse a bad grant or range alike', async () => {
    fx = await startMediaServer(dirs.make());
    const ref = await send(fx.as('alice/a1'), randomBytes(300_000), 'bob');
    const url = await grantUrl(fx, ref.id, 'bob/b1');
    const whole = Buffer.from(await (await fetch(url)).arrayBuffer());
    const failure = async (p: Promise<unknown>) =>
      p.then(
        () => 'ok',
        (e: { code?: string; status?: number }) => `${e.status} ${e.code}`,
      );
    for (const get of [fetchRange(fx.as('bob/b1')), nodeRangeGet] as RangeGet[]) {
      for (const offset of [0, 1, 123_456, whole.length - 1]) {
        const { total, pieces } = await get(url.toString(), offset);
        const parts: Buffer[] = [];
        for await (const p of pieces) parts.push(Buffer.from(p));
        expect(total).toBe(whole.length);
        expect(Buffer.concat(parts).equals(whole.subarray(offset))).toBe(true);
      }
      const bad = new URL(url);
      bad.searchParams.set('t', 'x' + bad.searchParams.get('t')!.slice(1));
      expect(await failure(get(bad.toString(), 0))).toBe('403 forbidden');
      expect(await failure(get(url.toString(), whole.length))).toBe('416 invalid_frame');
    }
  });

  it('the upload senders (fetch, node:http) store a PATCH and report refusals; node:http stops sending when refused early', async () => {
    fx = await startMediaServer(dirs.make());
    const piece = randomBytes(256 * 1024);
    const failure = async (p: Promise<unknown>) =>
      p.then(
        (v) => `ok ${String(v)}`,
        (e: { code?: string; status?: number }) =>
          e instanceof Transient ? 'transient' : `${e.status} ${e.code}`,
      );
    // fetch gathers each PATCH into a Blob (browsers cannot stream a request body over
    // HTTP/1.1); node:http streams it, and stops when the server refuses early.
    for (const [send, streams] of [
      [fetchPatch, false],
      [nodePatch, true],
    ] as Array<[PatchSend, boolean]>) {
      const ep = fx.as('alice/a1');
      const created = await fetch(`${fx.url}/uploads`, {
        method: 'POST',
        headers: {
          'Tus-Resumable': '1.0.0',
          'Upload-Length': String(4 * piece.length),
          Authorization: 'Bearer alice/a1',
        },
      });
      const url = new URL(created.headers.get('location')!, fx.url).toString();
      async function* pieces(n: number, pulled: { bytes: number }) {
        for (let i = 0; i < n; i++) {
          pulled.bytes += piece.length;
          yield piece;
        }
      }
      const first = { bytes: 0 };
      expect(await failure(send(ep, url, 0, pieces(2, first)))).toBe(`ok ${2 * piece.length}`);
      expect(fx.handler.received.get(url.slice(url.lastIndexOf('/') + 1))).toBe(2 * piece.length);
      // A wrong offset is refused (409); a streamed body is not sent to its end (32 MiB).
      const pulled = { bytes: 0 };
      expect(await failure(send(ep, url, 0, pieces(128, pulled)))).toBe('409 invalid_frame');
      if (streams) expect(pulled.bytes).toBeLessThan(128 * piece.length);
      expect(await failure(send(fx.as('bob/b1'), url, 2 * piece.length, pieces(1, { bytes: 0 })))).toMatch(
        /^40[34] /,
      );
      // Nobody listening: a retryable network fault.
      const closed = `http://127.0.0.1:1/media/uploads/x`;
      expect(await failure(send({ ...ep, url: closed }, closed, 0, pieces(1, { bytes: 0 })))).toBe(
        'transient',
      );
    }
  });

  it('an unattached blob cannot be downloaded by anyone but its sender', async () => {
    fx = await startMediaServer(dirs.make());
    const ref = await send(fx.as('alice/a1'), randomBytes(5000));
    expect(await codeOf(fetchPlain(fx.as('bob/b1'), ref))).toBe('forbidden');
  });

  it('a tampered or truncated blob on the server is corrupt_media at the recipient', async () => {
    fx = await startMediaServer(dirs.make());
    const plain = randomBytes(300_000);
    const ref = await send(fx.as('alice/a1'), plain, 'bob');
    const path = join(fx.dir, 'blobs', ref.id.slice(0, 2), ref.id);
    const good = readFileSync(path);
    const bad = Buffer.from(good);
    bad[200_000]! ^= 0x40;
    // Both readers: WebCrypto's opens whole chunks, node:crypto's decrypts the pieces as they come.
    for (const cipher of [webCryptoCipher, nodeMediaCipher]) {
      writeFileSync(path, bad);
      expect(await codeOf(fetchPlain(fx.as('bob/b1'), ref, cipher))).toBe('corrupt_media');
      writeFileSync(path, good);
      expect((await fetchPlain(fx.as('bob/b1'), ref, cipher)).equals(plain)).toBe(true);
      truncateSync(path, good.length - 70_000);
      expect(await codeOf(fetchPlain(fx.as('bob/b1'), ref, cipher))).toBe('corrupt_media');
    }
  });

  it('limits: an upload over the size limit is too_large, too many open uploads is rate_limited', async () => {
    fx = await startMediaServer(dirs.make(), { maxUploadBytes: 100_000, maxOpenUploads: 2 });
    expect(await codeOf(send(fx.as('alice/a1'), randomBytes(200_000)))).toBe('too_large');
    const create = () =>
      fetch(`${fx.url}/uploads`, {
        method: 'POST',
        headers: { 'Tus-Resumable': '1.0.0', 'Upload-Length': '10', Authorization: 'Bearer alice/a1' },
      });
    expect((await create()).status).toBe(201);
    expect((await create()).status).toBe(201);
    const third = await create();
    expect(third.status).toBe(429);
    expect(third.headers.get('retry-after')).toBeTruthy();
    expect(((await third.json()) as { code: string }).code).toBe('rate_limited');
    // Another user is not affected.
    expect(
      (
        await fetch(`${fx.url}/uploads`, {
          method: 'POST',
          headers: { 'Tus-Resumable': '1.0.0', 'Upload-Length': '10', Authorization: 'Bearer bob/b1' },
        })
      ).status,
    ).toBe(201);
  });

  it("a blob is deleted once every recipient device and the sender's other devices acked it", async () => {
    fx = await startMediaServer(dirs.make());
    const ref = await send(fx.as('alice/a1'), randomBytes(5000), 'bob');
    for (const who of ['bob/b1', 'alice/a2']) {
      await ackMedia(fx.as(who), ref.id);
      expect(await fx.blobs.stat(ref.id)).toBeDefined();
    }
    await ackMedia(fx.as('bob/b2'), ref.id);
    expect(await fx.blobs.stat(ref.id)).toBeUndefined();
    expect(fx.ledger.get(ref.id)).toBeUndefined();
  });

  it('an attached blob is deleted when it expires, an unattached upload after its bound, and nothing earlier', async () => {
    fx = await startMediaServer(dirs.make(), { retentionMs: 10 * 86_400_000, unattachedMs: 3_600_000 });
    const kept = await send(fx.as('alice/a1'), randomBytes(5000), 'bob');
    const orphan = await send(fx.as('alice/a1'), randomBytes(5000));
    const partial = await fetch(`${fx.url}/uploads`, {
      method: 'POST',
      headers: { 'Tus-Resumable': '1.0.0', 'Upload-Length': '1000', Authorization: 'Bearer alice/a1' },
    });
    const partialId = partial.headers.get('location')!.split('/').pop()!;
    expect(await fx.handler.sweep()).toBe(0);
    expect(await fx.handler.sweep(Date.now() + 3_600_001)).toBe(2);
    expect(await fx.blobs.stat(orphan.id)).toBeUndefined();
    expect(fx.ledger.get(partialId)).toBeUndefined();
    expect(() => statSync(join(fx.dir, 'uploads', partialId))).toThrow();
    expect(await fx.blobs.stat(kept.id)).toBeDefined();
    expect(await fx.handler.sweep(Date.now() + 10 * 86_400_000 + 1)).toBe(1);
    expect(await fx.blobs.stat(kept.id)).toBeUndefined();
  });

  it('speaks tus 1.0: discovery, a wrong offset is 409 with the right one, a missing version is 412', async () => {
    fx = await startMediaServer(dirs.make());
    const opt = await fetch(`${fx.url}/uploads`, { method: 'OPTIONS' });
    expect(opt.headers.get('tus-version')).toBe('1.0.0');
    expect(opt.headers.get('tus-extension')).toContain('creation');
    const auth = { Authorization: 'Bearer alice/a1', 'Tus-Resumable': '1.0.0' };
    const loc = (
      await fetch(`${fx.url}/uploads`, { method: 'POST', headers: { ...auth, 'Upload-Length': '10' } })
    ).headers.get('location')!;
    const url = new URL(loc, fx.url);
    const patch = (offset: number, body: string, h = auth) =>
      fetch(url, {
        method: 'PATCH',
        headers: { ...h, 'Upload-Offset': String(offset), 'Content-Type': 'application/offset+octet-stream' },
        body,
      });
    expect((await patch(0, 'hello')).headers.get('upload-offset')).toBe('5');
    const wrong = await patch(2, 'xx');
    expect(wrong.status).toBe(409);
    expect(wrong.headers.get('upload-offset')).toBe('5');
    expect((await patch(5, 'x', { Authorization: 'Bearer alice/a1' } as typeof auth)).status).toBe(412);
    expect((await patch(5, 'world and more')).status).toBe(413);
    expect((await fetch(url, { method: 'HEAD', headers: auth })).headers.get('upload-offset')).toBe('5');
  });
});
