/**
 * Blob transfers on `node:http` (Node only). Reading a 100 MB download cost the client about
 * 0.7-0.9 ms of CPU per MB less through `node:http` than through `fetch` (undici's parser in
 * WebAssembly and the Web stream it feeds), and 0.06-1.1 less in the verified download, out of
 * 3.4-5.3; see docs/benchmarks.md, media. Sending an upload's `PATCH` body through `node:http`
 * instead of `fetch` with a Web stream cost about half the client CPU per MB (docs/media.md,
 * Bench). The Node entry point of `postbox/media` installs both for endpoints that bring no
 * `fetch` of their own.
 * @packageDocumentation
 */
import type { ClientRequest, IncomingMessage, RequestOptions } from 'node:http';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { aborted, patchHeaders, refusal, totalOf, Transient, type PatchSend, type RangeGet } from './http.js';

async function text(res: IncomingMessage): Promise<string> {
  let out = '';
  res.setEncoding('utf8');
  for await (const s of res) out += s as string;
  return out;
}

/**
 * Starts a request; `onAnswer` sees the response, `fail` any network error (as a
 * {@link Transient}, or the abort error once `signal` aborted).
 */
function start(
  url: URL,
  options: RequestOptions,
  signal: AbortSignal | undefined,
  onAnswer: (res: IncomingMessage) => void,
  fail: (e: Error) => void,
): ClientRequest {
  const req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(
    url,
    { ...options, ...(signal ? { signal } : {}) },
    onAnswer,
  );
  req.on('error', (e) => fail(signal?.aborted ? aborted() : new Transient(`network: ${e.message}`)));
  return req;
}

/** Rejects with the refusal an answer of status `status` carries (its JSON body read first). */
function refuse(res: IncomingMessage, status: number, reject: (e: Error) => void): void {
  const retryAfter = res.headers['retry-after'];
  text(res).then(
    (body) => reject(refusal(status, body, retryAfter)),
    () => reject(refusal(status, '', retryAfter)),
  );
}

/**
 * A response's chunks as an async iterable fed by its `data` events, paused while `max` chunks
 * wait. `Readable`'s own async iterator cost a 100 MB download about 0.8 ms of client CPU per MB
 * more (1.6 against 2.4 ms/MB for the bare transfer). Chunks received before a cut are handed on,
 * then the cut throws; a consumer that stops early destroys the response.
 */
function chunksOf(res: IncomingMessage, max = 8): AsyncIterable<Uint8Array> {
  return {
    [Symbol.asyncIterator]() {
      const queue: Buffer[] = [];
      let ended = false;
      let failure: Error | undefined;
      let wake: (() => void) | undefined;
      const poke = () => {
        const w = wake;
        wake = undefined;
        w?.();
      };
      res.on('data', (chunk: Buffer) => {
        queue.push(chunk);
        if (queue.length >= max) res.pause();
        poke();
      });
      res.on('end', () => {
        ended = true;
        poke();
      });
      res.on('error', (e) => {
        failure ??= e;
        poke();
      });
      res.on('close', () => {
        if (!ended) failure ??= new Error('the response was cut');
        poke();
      });
      return {
        async next(): Promise<IteratorResult<Uint8Array>> {
          for (;;) {
            const chunk = queue.shift();
            if (chunk) {
              if (queue.length <= max / 2 && res.isPaused()) res.resume();
              return { value: chunk, done: false };
            }
            if (failure) throw failure;
            if (ended) return { value: undefined, done: true };
            await new Promise<void>((w) => (wake = w));
          }
        },
        return(): Promise<IteratorResult<Uint8Array>> {
          res.destroy();
          return Promise.resolve({ value: undefined, done: true });
        },
      };
    },
  };
}

/** {@link RangeGet} on `node:http`/`node:https` with the global agent (kept-alive connections). */
export const nodeRangeGet: RangeGet = (url, offset, signal) =>
  new Promise((resolve, reject) => {
    const onAnswer = (res: IncomingMessage) => {
      const status = res.statusCode ?? 0;
      if (status < 200 || status >= 300) return refuse(res, status, reject);
      const total = totalOf(res.headers['content-range'], res.headers['content-length']);
      // Pieces as the socket delivers them; a cut connection errors the iteration.
      resolve({ total, pieces: chunksOf(res) });
    };
    start(new URL(url), { headers: { Range: `bytes=${offset}-` } }, signal, onAnswer, reject).end();
  });

/** Resolves once `req` can take more bytes, or closed. */
const writable = (req: ClientRequest) =>
  new Promise<void>((resolve) => {
    const go = () => {
      req.off('drain', go);
      req.off('close', go);
      resolve();
    };
    req.on('drain', go);
    req.on('close', go);
  });

/**
 * {@link PatchSend} on `node:http`/`node:https` with the global agent: the body is written piece by
 * piece as the socket drains (chunked), no Web stream in between. An answer that comes before the
 * body ended (a refusal) stops the writing and closes the connection.
 */
export const nodePatch: PatchSend = async (ep, url, offset, body, signal) => {
  const headers = { ...patchHeaders(offset), Authorization: `Bearer ${await ep.credentials()}` };
  return new Promise<number>((resolve, reject) => {
    let settled = false;
    const fail = (e: Error) => {
      if (settled) return;
      settled = true;
      req.destroy();
      reject(e);
    };
    const onAnswer = (res: IncomingMessage) => {
      const status = res.statusCode ?? 0;
      if (status < 200 || status >= 300) return refuse(res, status, fail);
      res.resume();
      settled = true;
      resolve(Number(res.headers['upload-offset']));
    };
    const req = start(new URL(url, ep.url), { method: 'PATCH', headers }, signal, onAnswer, fail);
    (async () => {
      for await (const piece of body) {
        if (settled || req.destroyed) return;
        if (!req.write(piece)) await writable(req);
      }
      if (!settled && !req.destroyed) req.end();
    })().catch((e: unknown) => fail(e as Error));
  });
};
