// What reading a 100 MB HTTP download costs the client, by HTTP client, beside the cryptography a
// postbox download adds (AES-256-GCM and one SHA-256 over the same pieces): the plain peer of the
// media bench serves the bytes; client CPU per MB (process.cpuUsage), rounds interleaved, medians.
//   node bench/tools/media-http-client.mjs [ROUNDS]
// `net (reused buffer)` reads into one 256 KiB buffer (`onread`) and parses nothing: the floor of
// the transfer itself, what a client that allocates nothing per read would approach.
/* global fetch */
import { createDecipheriv, createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { loadAverages } from '../lib/proc.mjs';
import { drain, makeFile, startServers } from '../scenarios/media.mjs';

const rounds = Number(process.argv[2] ?? 8);
const size = 100 * 1024 * 1024;
const dir = mkdtempSync(path.join(os.tmpdir(), 'postbox-media-http-'));
const servers = await startServers(dir);
try {
  const file = path.join(dir, 'media.bin');
  await makeFile(file, size);
  const url = `http://127.0.0.1:${servers.ports.plain}/f`;
  await fetch(url, { method: 'PUT', body: readFileSync(file) });
  const get = () => new Promise((ok, no) => http.get(url, ok).on('error', no));
  const crypto = () => {
    const d = createDecipheriv('aes-256-gcm', Buffer.alloc(32), Buffer.alloc(12));
    const h = createHash('sha256');
    return (p) => (h.update(p), d.update(p).length);
  };
  const raw = (onBytes) =>
    new Promise((ok, no) => {
      const s = net.connect({ port: servers.ports.plain, host: '127.0.0.1', ...onBytes });
      if (!onBytes.onread) s.on('data', () => undefined);
      s.write('GET /f HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n');
      s.on('close', () => ok(size)).on('error', no);
    });
  const buf = Buffer.allocUnsafe(256 * 1024);
  const sys = {
    fetch: async () => drain((await fetch(url)).body),
    'node:http': async () => drain(await get()),
    'net (fresh buffers)': () => raw({}),
    'net (reused buffer)': () => raw({ onread: { buffer: buf, callback: () => undefined } }),
    'fetch + crypto': async () => {
      const c = crypto();
      for await (const p of (await fetch(url)).body) c(p);
      return size;
    },
    'node:http + crypto': async () => {
      const c = crypto();
      for await (const p of await get()) c(p);
      return size;
    },
  };
  const out = Object.fromEntries(Object.keys(sys).map((k) => [k, []]));
  for (let r = -1; r < rounds; r++) {
    const names = Object.keys(sys);
    for (const n of r % 2 ? names.reverse() : names) {
      const c0 = process.cpuUsage();
      await sys[n]();
      const c = process.cpuUsage(c0);
      if (r >= 0) out[n].push((c.user + c.system) / 1000 / 100);
    }
  }
  const med = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  for (const [n, xs] of Object.entries(out))
    console.log(
      `${n.padEnd(20)} ${med(xs).toFixed(2)} ms/MB  [${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)}]`,
    );
  console.log(`load ${loadAverages()}`);
} finally {
  servers.stop();
  rmSync(dir, { recursive: true, force: true });
}
