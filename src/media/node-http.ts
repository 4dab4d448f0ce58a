/**
 * Blob downloads on `node:http` (Node only). Reading a 100 MB download cost the client about
 * 0.7-0.9 ms of CPU per MB less through `node:http` than through `fetch` (undici's parser in
 * WebAssembly and the Web stream it feeds), and 0.06-1.1 less in the verified download, out of
 * 3.4-5.3; see docs/benchmarks.md, media. The Node entry point of `postbox/media` installs it for endpoints
 * that bring no `fetch` of their own.
 * @packageDocumentation
 */
import type { IncomingMessage } from 'node:http';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { aborted, refusal, totalOf, Transient, type RangeGet } from './http.js';

async function text(res: IncomingMessage): Promise<string> {
  let out = '';
  res.setEncoding('utf8');
  for await (const s of res) out += s as string;
  return out;
}

/** {@link RangeGet} on `node:http`/`node:https` with the global agent (kept-alive connections). */
export const nodeRangeGet: RangeGet = (url, offset, signal) =>
  new Promise((resolve, reject) => {
    const u = new URL(url);
    const req = (u.protocol === 'https:' ? httpsRequest : httpRequest)(
      u,
      { headers: { Range: `bytes=${offset}-` }, ...(signal ? { signal } : {}) },
      (res) => {
        const status = res.statusCode ?? 0;
        if (status >= 200 && status < 300) {
          const total = totalOf(res.headers['content-range'], res.headers['content-length']);
          // Pieces as the socket delivers them; a cut connection errors the iteration.
          resolve({ total, pieces: res });
          return;
        }
        const retryAfter = res.headers['retry-after'];
        text(res).then(
          (body) => reject(refusal(status, body, retryAfter)),
          () => reject(refusal(status, '', retryAfter)),
        );
      },
    );
    req.on('error', (e) => reject(signal?.aborted ? aborted() : new Transient(`network: ${e.message}`)));
    req.end();
  });
