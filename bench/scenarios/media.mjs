// Media: a 100 MB file uploaded and downloaded through postbox (encrypted on the client, tus
// upload to `postbox serve`'s file store, granted ranged download, decrypted and verified) beside
// the plainest HTTP upload and download of the same bytes to the same disk (bench/systems/
// plain-upload.mjs), same run, systems alternating per round; the ratio is postbox's throughput
// over plain's (goal ≥ 0.7×). Then the bad-network profile: 50 kbit/s each way with a 300 ms
// round trip (our own throttling proxy, bench/lib/throttle-proxy.mjs), the upload cut at random
// offsets and resumed; bytes sent upstream per upload over the file size (goal ≤ 1.05×). At
// 50 kbit/s a 100 MB file takes 4.5 hours, so that profile uses a 160 KiB file (--quick: 96 KiB).
//
//   node bench/scenarios/media.mjs [--quick]   (standalone: bench/run.mjs has no media scenario)
/* global ReadableStream, fetch */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream, mkdtempSync, rmSync, openSync, readSync, closeSync } from 'node:fs';
import { once } from 'node:events';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { downloadPlain, freshSecret, mediaRefOf, uploadMedia } from 'postbox/media';
import { fileSource } from 'postbox/media/node';
import { startThrottleProxy } from '../lib/throttle-proxy.mjs';
import { canPin, procCpu, SERVER_CORE } from '../lib/proc.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const MB = 1024 * 1024;

function start(script, args, ready) {
  const [cmd, argv] = canPin
    ? ['taskset', ['-c', String(SERVER_CORE), process.execPath, script, ...args]]
    : [process.execPath, [script, ...args]];
  const proc = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'], cwd: root });
  const line = new Promise((resolve, reject) => {
    createInterface({ input: proc.stdout }).on('line', (l) => l.startsWith(ready) && resolve(l));
    proc.once('exit', (c) => reject(new Error(`${script} exited ${c}`)));
  });
  return { proc, line };
}

export async function makeFile(file, size) {
  const out = createWriteStream(file);
  const block = randomBytes(MB);
  for (let o = 0; o < size; o += MB) {
    block.writeUInt32BE(o / MB, 0);
    if (!out.write(o + MB <= size ? block : block.subarray(0, size - o))) await once(out, 'drain');
  }
  out.end();
  await once(out, 'finish');
}

function fileStream(file) {
  // A Web stream over the file for fetch's streaming body (same reader for both systems).
  const fd = openSync(file, 'r');
  const buf = Buffer.alloc(256 * 1024);
  return new ReadableStream({
    pull(c) {
      const n = readSync(fd, buf, 0, buf.length, null);
      if (n === 0) {
        closeSync(fd);
        return c.close();
      }
      c.enqueue(new Uint8Array(buf.subarray(0, n)));
    },
  });
}

export async function drain(body) {
  let n = 0;
  for await (const p of body) n += p.length;
  return n;
}

/**
 * Runs `step`, measuring its wall time, the CPU of this process (the client: all its threads) and
 * of the server process `pid` (from /proc), in ms. CPU per MB is steadier than MB/s while other
 * work shares the machine.
 */
async function measured(pid, step) {
  const c0 = process.cpuUsage();
  const s0 = procCpu(pid);
  const t0 = performance.now();
  const value = await step();
  const ms = performance.now() - t0;
  const c = process.cpuUsage(c0);
  const s1 = procCpu(pid);
  const server = s0 && s1 ? (s1.user + s1.system - s0.user - s0.system) / 1000 : NaN;
  return { value, ms, client: (c.user + c.system) / 1000, server };
}

async function postboxRound(ep, file, size, pid) {
  const secret = freshSecret();
  const progress = { confirmed: { offset: 0 } };
  const up = await measured(pid, async () => uploadMedia(ep, await fileSource(file), secret, progress));
  const { blob, summary } = up.value;
  const ref = mediaRefOf(blob, secret.key, summary, { mime: 'x/y' });
  const down = await measured(pid, () => drain(downloadPlain(ep, ref)));
  if (down.value !== size) throw new Error(`postbox downloaded ${down.value} of ${size}`);
  return { up, down };
}

async function plainRound(base, file, size, pid) {
  const up = await measured(pid, () =>
    fetch(`${base}/f`, { method: 'PUT', body: fileStream(file), duplex: 'half' }),
  );
  if (up.value.status !== 204) throw new Error(`plain PUT ${up.value.status}`);
  const down = await measured(pid, async () => drain((await fetch(`${base}/f`)).body));
  if (down.value !== size) throw new Error(`plain downloaded ${down.value} of ${size}`);
  return { up, down };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

/** Throughput rounds; resolves with the results table rows. */
async function throughput({ sizeMb, rounds }, dir, servers) {
  const size = sizeMb * MB;
  const file = path.join(dir, 'media.bin');
  await makeFile(file, size);
  const { ports, pids } = servers;
  const ep = { url: `http://127.0.0.1:${ports.postbox}/media`, credentials: () => 'alice/bench' };
  const plainBase = `http://127.0.0.1:${ports.plain}`;
  const round = (sys) =>
    sys === 'postbox'
      ? postboxRound(ep, file, size, pids.postbox)
      : plainRound(plainBase, file, size, pids.plain);
  const t = { postbox: { up: [], down: [] }, plain: { up: [], down: [] } };
  await round('postbox'); // warm-up (JIT, connections)
  await round('plain');
  for (let r = 0; r < rounds; r++) {
    const order = r % 2 === 0 ? ['postbox', 'plain'] : ['plain', 'postbox'];
    for (const sys of order) {
      const x = await round(sys);
      t[sys].up.push(x.up);
      t[sys].down.push(x.down);
    }
  }
  const mbps = (ms) => size / MB / (ms / 1000);
  const perMb = (ms) => ms / (size / MB);
  const rows = [];
  for (const sys of ['postbox', 'plain'])
    for (const dirn of ['up', 'down']) {
      const xs = t[sys][dirn];
      rows.push({
        system: sys,
        metric: `${dirn}load_MBps`,
        value: mbps(median(xs.map((x) => x.ms))),
        unit: 'MB/s',
        spread: xs.map((x) => +mbps(x.ms).toFixed(1)),
      });
      for (const side of ['client', 'server'])
        rows.push({
          system: sys,
          metric: `${dirn}load_${side}_cpu_ms_per_MB`,
          value: perMb(median(xs.map((x) => x[side]))),
          unit: 'ms/MB',
          spread: xs.map((x) => +perMb(x[side]).toFixed(2)),
        });
    }
  const ratio = (dirn) => median(t.plain[dirn].map((x) => x.ms)) / median(t.postbox[dirn].map((x) => x.ms));
  rows.push({
    system: 'postbox',
    metric: 'upload_ratio_vs_plain',
    value: ratio('up'),
    unit: '×',
    goal: '≥ 0.7',
  });
  rows.push({
    system: 'postbox',
    metric: 'download_ratio_vs_plain',
    value: ratio('down'),
    unit: '×',
    goal: '≥ 0.7',
  });
  rmSync(file, { force: true });
  return rows;
}

/** The 50 kbit/s, 300 ms RTT profile with cuts; resolves with the rows. */
async function badNetwork({ kib, cuts, seed }, dir, ports) {
  const size = kib * 1024;
  const file = path.join(dir, 'small.bin');
  await makeFile(file, size);
  const proxy = await startThrottleProxy({ target: ports.postbox, bps: 50_000, rttMs: 300 });
  let s = seed;
  const rand = () => (s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  // Cuts spread over the upload: each lands 10-40 % of the file further on.
  proxy.cutAtUp = Math.floor(size * (0.1 + rand() * 0.3));
  let left = cuts - 1;
  proxy.onCut = () => (left-- > 0 ? proxy.up + Math.floor(size * (0.1 + rand() * 0.3)) : undefined);
  const ep = {
    url: `http://127.0.0.1:${proxy.port}/media`,
    credentials: () => 'alice/bench',
    backoff: () => 300,
  };
  const t = performance.now();
  await uploadMedia(ep, await fileSource(file), freshSecret(), { confirmed: { offset: 0 } });
  const secs = (performance.now() - t) / 1000;
  const up = proxy.up;
  await proxy.close();
  rmSync(file, { force: true });
  return [
    {
      system: 'postbox',
      metric: 'bad_network_bytes_sent_per_file_byte',
      value: up / size,
      unit: '×',
      goal: '≤ 1.05',
      detail: `${up} B sent upstream (HTTP, headers included) for a ${size} B file, ${proxy.cuts} cuts, ${proxy.connections} connections, ${secs.toFixed(0)} s`,
    },
  ];
}

/** Starts `postbox serve` and the plain HTTP peer on DIR; resolves with their ports and pids. */
export async function startServers(dir) {
  const serve = start(
    'dist/cli/main.js',
    [
      'serve',
      '--port',
      '0',
      '--data',
      path.join(dir, 'pb.sqlite'),
      '--insecure-dev-auth',
      '--log-level',
      'error',
    ],
    'postbox listening on ',
  );
  const plain = start('bench/systems/plain-upload.mjs', [path.join(dir)], 'plain listening on ');
  const stop = () => {
    serve.proc.kill('SIGKILL');
    plain.proc.kill('SIGKILL');
  };
  try {
    return {
      ports: {
        postbox: Number(new URL((await serve.line).split(' ')[3]).port),
        plain: Number((await plain.line).split(' ')[3]),
      },
      pids: { postbox: serve.proc.pid, plain: plain.proc.pid },
      stop,
    };
  } catch (e) {
    stop();
    throw e;
  }
}

export async function run(params = {}) {
  const quick = params.quick ?? false;
  const dir = mkdtempSync(path.join(os.tmpdir(), 'postbox-media-bench-'));
  const servers = await startServers(dir);
  try {
    const rows = await throughput(
      { sizeMb: params.sizeMb ?? (quick ? 32 : 100), rounds: params.rounds ?? (quick ? 1 : 3) },
      dir,
      servers,
    );
    rows.push(...(await badNetwork({ kib: quick ? 96 : 160, cuts: 3, seed: 7 }, dir, servers.ports)));
    return { results: rows };
  } finally {
    servers.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const quick = process.argv.includes('--quick');
  const { results } = await run({ quick });
  console.log(
    `media bench (${quick ? 'quick' : 'full'}), ${os.availableParallelism()} cores, Node ${process.version}`,
  );
  for (const r of results)
    console.log(
      `${r.system.padEnd(8)} ${r.metric.padEnd(40)} ${r.value.toFixed(r.unit === '×' ? 3 : r.unit === 'ms/MB' ? 2 : 1).padStart(8)} ${r.unit}${r.goal ? `  (goal ${r.goal})` : ''}${r.spread ? `  rounds ${r.spread.join(' / ')}` : ''}${r.detail ? `  ${r.detail}` : ''}`,
    );
  console.log(JSON.stringify({ scenario: 'media', quick, results }));
}
