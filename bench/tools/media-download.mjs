// Download-only A/B of the media bench: one 100 MB blob uploaded once, then downloaded through
// postbox and plain HTTP alternately, with the client's CPU (process.cpuUsage, all threads) and
// each server's CPU (/proc) per MB beside the throughput. CPU per MB moves much less than MB/s
// when other work shares the machine.
//   node bench/tools/media-download.mjs [ROUNDS] [MB] [postbox|plain|NAME]   (one system only)
// PROFILE=FILE.cpuprofile: a CPU profile of the downloads alone (bench/tools/profile-top.mjs reads it).
// BASE=DIR[,DIR…]: one more system per DIR, named after its last path segment, that downloads with
// the build in DIR (another checkout's dist, e.g. `git archive main | tar -x -C DIR`, node_modules
// linked, `npx tsc -p tsconfig.build.json`): a before/after of the client in one process,
// interleaved; each one's ratio is printed beside postbox's.
/* global fetch */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { downloadPlain, freshSecret, mediaRefOf, uploadMedia } from 'postbox/media';
import { fileSource } from 'postbox/media/node';
import { loadAverages, procCpu } from '../lib/proc.mjs';
import { drain, makeFile, startServers } from '../scenarios/media.mjs';

const bases = await Promise.all(
  (process.env.BASE ? process.env.BASE.split(',') : []).map(async (dir) => [
    path.basename(path.resolve(dir)),
    await import(path.resolve(dir, 'dist/media/index.node.js')),
  ]),
);

const rounds = Number(process.argv[2] ?? 6);
const size = Number(process.argv[3] ?? 100) * 1024 * 1024;
const only = process.argv[4];
const dir = mkdtempSync(path.join(os.tmpdir(), 'postbox-media-dl-'));
const servers = await startServers(dir);
try {
  const file = path.join(dir, 'media.bin');
  await makeFile(file, size);
  const ep = { url: `http://127.0.0.1:${servers.ports.postbox}/media`, credentials: () => 'alice/bench' };
  const secret = freshSecret();
  const { blob, summary } = await uploadMedia(ep, await fileSource(file), secret, {
    confirmed: { offset: 0 },
  });
  const ref = mediaRefOf(blob, secret.key, summary, { mime: 'x/y' });
  const plainUrl = `http://127.0.0.1:${servers.ports.plain}/f`;
  await fetch(plainUrl, { method: 'PUT', body: readFileSync(file) });
  const sys = {
    postbox: { pid: servers.pids.postbox, get: () => drain(downloadPlain(ep, ref)) },
    plain: { pid: servers.pids.plain, get: async () => drain((await fetch(plainUrl)).body) },
    ...Object.fromEntries(
      bases.map(([name, m]) => [
        name,
        { pid: servers.pids.postbox, get: () => drain(m.downloadPlain(ep, ref)) },
      ]),
    ),
  };
  const names = Object.keys(sys);
  const out = Object.fromEntries(names.map((n) => [n, []]));
  const session = process.env.PROFILE ? new Session() : undefined;
  if (session) {
    session.connect();
    await session.post('Profiler.enable');
    await session.post('Profiler.start');
  }
  for (let r = -1; r < rounds; r++) {
    for (const name of only ? [only] : r % 2 === 0 ? names : [...names].reverse()) {
      const s = sys[name];
      const c0 = process.cpuUsage();
      const s0 = procCpu(s.pid);
      const t0 = performance.now();
      const got = await s.get();
      const ms = performance.now() - t0;
      const c = process.cpuUsage(c0);
      const s1 = procCpu(s.pid);
      if (got !== size) throw new Error(`${name} got ${got} of ${size}`);
      const mb = size / 1048576;
      if (r >= 0)
        out[name].push({
          mbps: mb / (ms / 1000),
          client: (c.user + c.system) / 1000 / mb,
          server: (s1.user + s1.system - s0.user - s0.system) / 1000 / mb,
        });
    }
  }
  if (session)
    writeFileSync(process.env.PROFILE, JSON.stringify((await session.post('Profiler.stop')).profile));
  const med = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const fmt = (xs) => `${med(xs).toFixed(2)} [${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)}]`;
  for (const name of names) {
    const o = out[name];
    if (o.length === 0) continue;
    console.log(
      `${name.padEnd(8)} MB/s ${fmt(o.map((x) => x.mbps))}  client ms/MB ${fmt(o.map((x) => x.client))}  server ms/MB ${fmt(o.map((x) => x.server))}`,
    );
  }
  // (Not `process.exit` here: it would skip the `finally` and leave both servers running.)
  for (const name of only ? [] : names.filter((n) => n !== 'plain')) {
    const ratios = out[name].map((p, i) => p.mbps / out.plain[i].mbps);
    console.log(
      `${name} ratio per round ${ratios.map((x) => x.toFixed(2)).join(' ')}  (median ${med(ratios).toFixed(2)})`,
    );
  }
  console.log(`load ${loadAverages()}`);
} finally {
  servers.stop();
  rmSync(dir, { recursive: true, force: true });
}
