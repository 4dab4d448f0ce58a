// The media client end to end against a real `postbox serve` process: a send is durable at once
// and becomes an ordinary message once the upload completes; the recipient downloads exactly the
// file; an upload survives an app restart and continues where the server was; and with
// end-to-end encryption the server's disk and database hold neither the file nor its key.
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { createClient, type PostboxClient, type ReceivedMessage } from '../src/client/index.js';
import type { ClientStore } from '../src/client/store.js';
import { memoryClientStore } from '../src/client/stores/memory.js';
import { sqliteClientStore } from '../src/client/stores/sqlite.js';
import { libsignalCrypto } from '../src/crypto/libsignal.js';
import { MediaClient, mediaClient, type MediaSend } from '../src/media/client.js';
import { fileSource } from '../src/media/node.js';
import { websocketClientTransport } from '../src/transport/websocket.js';
import { killAll, startServerProcess } from './fixtures/proc.js';
import { tempDirs, until } from './fixtures/util.js';

const dirs = tempDirs('media-client');
const closers: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of closers.splice(0).reverse()) await c();
  killAll();
});
afterAll(() => dirs.removeAll());

interface Device {
  client: PostboxClient;
  media: MediaClient;
  got: ReceivedMessage[];
  phases: MediaSend[];
}

function device(
  url: string,
  who: string,
  store: ClientStore = memoryClientStore(),
  extra: { e2ee?: boolean; openSource?: (k: string) => ReturnType<typeof fileSource> } = {},
): Device {
  const client = createClient({
    transport: websocketClientTransport({ url }),
    store,
    credentials: who,
    ...(extra.e2ee ? { crypto: libsignalCrypto() } : {}),
  });
  const http = url.replace('ws://', 'http://').replace(/\/postbox$/, '/media');
  const media = mediaClient(client, {
    url: http,
    credentials: () => who,
    store,
    patchBytes: 256 * 1024,
    backoff: () => 50,
    ...(extra.openSource ? { openSource: extra.openSource } : {}),
  });
  const got: ReceivedMessage[] = [];
  const phases: MediaSend[] = [];
  client.on('message', (m) => got.push(m));
  media.on('phase', (p) => phases.push(p));
  closers.push(async () => {
    media.close();
    await client.close();
  });
  return { client, media, got, phases };
}

async function download(d: Device, m: ReceivedMessage): Promise<Buffer> {
  const ref = MediaClient.refOf(m.body)!;
  const parts: Buffer[] = [];
  for await (const p of d.media.downloadMedia(ref) as unknown as AsyncIterable<Uint8Array>)
    parts.push(Buffer.from(p));
  return Buffer.concat(parts);
}

/** Every file under `dir`, recursively. */
function filesUnder(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? filesUnder(join(dir, e.name)) : [join(dir, e.name)],
  );
}

describe('media client', () => {
  it('a media send is pending at once, becomes a message after the upload, and the recipient gets the same bytes', async () => {
    const dir = dirs.make();
    const { url } = await startServerProcess(join(dir, 'pb.sqlite'));
    const alice = device(url, 'alice/a1');
    const bob = device(url, 'bob/b1');
    await until('online', () => alice.client.state === 'open' && bob.client.state === 'open');
    const file = randomBytes(1_200_000);
    const thumb = randomBytes(2000);
    const id = await alice.media.sendMedia('bob', file, {
      mime: 'image/jpeg',
      name: 'cat.jpg',
      thumbnail: thumb,
      width: 800,
      height: 600,
    });
    expect((await alice.media.pending()).map((p) => [p.id, p.phase])).toEqual([[id, 'uploading']]);
    await until('queued', () => alice.phases.some((p) => p.id === id && p.phase === 'queued'));
    const messageId = alice.phases.find((p) => p.phase === 'queued')!.messageId!;
    await until('bob has it', () => bob.got.length === 1);
    expect(bob.got[0]!.id).toBe(messageId);
    const ref = MediaClient.refOf(bob.got[0]!.body)!;
    expect([ref.mime, ref.name, ref.width, ref.size]).toEqual(['image/jpeg', 'cat.jpg', 800, file.length]);
    expect(Buffer.from(ref.thumbnail!).equals(thumb)).toBe(true);
    expect((await download(bob, bob.got[0]!)).equals(file)).toBe(true);
    expect(await alice.media.pending()).toEqual([]);
  });

  it('an upload survives an app restart: the new process resumes from the stored offset, not from zero', async () => {
    const dir = dirs.make();
    const { url } = await startServerProcess(join(dir, 'pb.sqlite'));
    const path = join(dir, 'video.bin');
    const file = randomBytes(4_000_000);
    writeFileSync(path, file);
    const storePath = join(dir, 'alice.sqlite');
    const bob = device(url, 'bob/b1');
    let alice = device(url, 'alice/a1', sqliteClientStore({ path: storePath }));
    await until('online', () => alice.client.state === 'open' && bob.client.state === 'open');
    let before = 0;
    const id = await alice.media.sendMedia('bob', await fileSource(path), {
      mime: 'video/mp4',
      sourceKey: path,
    });
    await new Promise<void>((resolve) =>
      alice.media.on('progress', (p) => {
        before = Math.max(before, p.sent);
        if (p.sent > 1_500_000) resolve();
      }),
    );
    // The app dies: media and client closed, the store with them.
    for (const c of closers.splice(1).reverse()) await c();
    alice = device(url, 'alice/a1', sqliteClientStore({ path: storePath }), { openSource: fileSource });
    expect((await alice.media.pending()).map((p) => p.id)).toEqual([id]);
    let first = -1;
    alice.media.on('progress', (p) => {
      if (first < 0) first = p.sent;
    });
    await alice.media.resume();
    await until(
      'queued after restart',
      () => alice.phases.some((p) => p.id === id && p.phase === 'queued'),
      30_000,
    );
    expect(first).toBeGreaterThan(1_000_000);
    await until('bob has it', () => bob.got.length === 1);
    expect((await download(bob, bob.got[0]!)).equals(file)).toBe(true);
  });

  it('with end-to-end encryption the server disk and database never contain the file or its key', async () => {
    const dir = dirs.make();
    const data = join(dir, 'pb.sqlite');
    const { url } = await startServerProcess(data);
    const alice = device(url, 'alice/a1', memoryClientStore(), { e2ee: true });
    const bob = device(url, 'bob/b1', memoryClientStore(), { e2ee: true });
    await until('online', () => alice.client.state === 'open' && bob.client.state === 'open');
    const file = randomBytes(700_000);
    const id = await alice.media.sendMedia('bob', file, { mime: 'application/pdf', name: 'secret-plan.pdf' });
    await until('bob has it', () => bob.got.length === 1, 30_000);
    const ref = MediaClient.refOf(bob.got[0]!.body)!;
    expect(id).toBeTruthy();
    // Scan everything the server wrote (SQLite files with their WAL, trace, media folder) for any
    // 32-byte window of the file at 4 KiB steps, the key, and the file name: once while the blob
    // is stored, once after the download (when its cleanup may remove files under the scan).
    const needles = [Buffer.from(ref.key), Buffer.from('secret-plan.pdf')];
    for (let o = 0; o + 32 <= file.length; o += 4096) needles.push(file.subarray(o, o + 32));
    const scan = (): number => {
      const files = filesUnder(dir).filter((f) => f.startsWith(data));
      expect(files.some((f) => f.includes('-media'))).toBe(true);
      let scanned = 0;
      for (const f of files) {
        let bytes: Buffer;
        try {
          bytes = readFileSync(f);
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue; // deleted: holds nothing
          throw e;
        }
        scanned += bytes.length;
        for (const n of needles) expect(bytes.includes(n), `${f} contains plaintext`).toBe(false);
      }
      return scanned;
    };
    expect(scan()).toBeGreaterThan(file.length);
    expect((await download(bob, bob.got[0]!)).equals(file)).toBe(true);
    scan();
  });
});
