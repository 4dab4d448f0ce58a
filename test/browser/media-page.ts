// Media in the page (real Chromium, the browser entry: WebCrypto and fetch): a file encrypted,
// uploaded over tus in several PATCH requests, then downloaded, verified and decrypted, as a web
// app would; the test reads the outcome from `window.mediaRoundTrip`.
import { freshSecret } from '../../src/media/stream.js';
import { bytesSource, downloadPlain, uploadMedia, type UploadProgress } from '../../src/media/transfer.js';
import { mediaRefOf } from '../../src/media/ref.js';
import type { MediaEndpoint } from '../../src/media/http.js';

async function roundTrip(
  size: number,
  who: string,
): Promise<{ equal: boolean; saves: number; error?: string }> {
  const plain = new Uint8Array(size);
  for (let o = 0; o < size; o += 65536) crypto.getRandomValues(plain.subarray(o, Math.min(size, o + 65536)));
  const ep: MediaEndpoint = { url: `${location.origin}/media`, credentials: () => who };
  const secret = freshSecret();
  const progress: UploadProgress = { confirmed: { offset: 0 } };
  let saves = 0;
  try {
    // Network faults are retried for ever: a bound, so a failure comes back as one.
    let last = '';
    const { blob, summary } = await uploadMedia(ep, bytesSource(plain), secret, progress, {
      onSaved: () => void saves++,
      signal: AbortSignal.timeout(20_000),
      onProgress: (stored) => (last = `stored ${stored}`),
    }).catch((e: unknown) => {
      throw new Error(`${String(e)} (${last}, saves ${saves})`);
    });
    const parts: Uint8Array[] = [];
    let n = 0;
    for await (const p of downloadPlain(ep, mediaRefOf(blob, secret.key, summary, { mime: 'x/y' }))) {
      parts.push(p);
      n += p.length;
    }
    const got = new Uint8Array(n);
    let o = 0;
    for (const p of parts) {
      got.set(p, o);
      o += p.length;
    }
    return { equal: n === size && got.every((b, i) => b === plain[i]), saves };
  } catch (e) {
    return { equal: false, saves, error: e instanceof Error ? `${e.name}: ${e.message}` : String(e) };
  }
}

(window as unknown as { mediaRoundTrip: typeof roundTrip }).mediaRoundTrip = roundTrip;
