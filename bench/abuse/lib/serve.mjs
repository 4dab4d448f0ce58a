/* global fetch, AbortSignal */
// `postbox serve` (dist/cli/main.js) in its own process, as a user runs it, for the abuse bench:
// pinned to the server core when possible, its open-files limit raised to the hard limit, its
// log (stderr) written to a file so an attack's log volume can be measured.
// POSTBOX_ABUSE_PROFILE=DIR: each server writes a CPU profile into DIR (stopped with SIGTERM then,
// so that it can; bench/tools/profile-top.mjs reads it).
import { spawn } from 'node:child_process';
import { closeSync, openSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { procCpu, procRss, withTimeout, wrap } from '../../lib/proc.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const CLI = path.join(root, 'dist', 'cli', 'main.js');
const profileDir = process.env.POSTBOX_ABUSE_PROFILE;
const PROFILE = profileDir ? ['--cpu-prof', `--cpu-prof-dir=${path.resolve(profileDir)}`] : [];

/**
 * Starts `postbox serve --port 0` on a fresh SQLite file in `dir` with `--secret secret` and the
 * attack's extra flags; resolves once it prints its `postbox listening on URL` line.
 */
export async function startServe({ dir, secret, args = [], core, fileLimit }) {
  const logFile = path.join(dir, 'serve.log');
  const logFd = openSync(logFile, 'a');
  let [cmd, argv] = wrap(
    process.execPath,
    [
      ...PROFILE,
      CLI,
      'serve',
      '--port',
      '0',
      '--data',
      path.join(dir, 'db.sqlite'),
      '--secret',
      secret,
      ...args,
    ],
    core,
  );
  // An open-files limit of the attack's choosing (the wrapper raises the soft limit to it).
  if (fileLimit) [cmd, argv] = ['bash', ['-c', `ulimit -n ${fileLimit}; exec "$@"`, 'bash', cmd, ...argv]];
  const proc = spawn(cmd, argv, { stdio: ['ignore', 'pipe', logFd] });
  closeSync(logFd);
  // Never outlive the bench, however it ends.
  const reap = () => proc.kill('SIGKILL');
  process.on('exit', reap);
  proc.on('exit', () => process.off('exit', reap));
  const exited = new Promise((resolve) => proc.on('exit', (code, signal) => resolve({ code, signal })));
  let out = '';
  const url = await withTimeout(
    new Promise((resolve, reject) => {
      proc.stdout.on('data', (d) => {
        out += d.toString();
        const m = /postbox listening on (\S+)/.exec(out);
        if (m) resolve(m[1]);
      });
      exited.then(({ code, signal }) =>
        reject(new Error(`postbox serve exited (${signal ?? code}): ${out}`)),
      );
    }),
    20_000,
    'postbox serve did not start in 20 s',
  );
  const u = new URL(url);
  const extra = {};
  for (const m of out.matchAll(/postbox (\w+) on (\S+)/g)) extra[m[1]] = m[2];
  return {
    pid: proc.pid,
    url,
    host: u.hostname,
    port: Number(u.port),
    httpUrl: `http://${u.host}`,
    /** Other lines like `postbox metrics on URL`, by their word. */
    announced: extra,
    logFile,
    exited,
    get alive() {
      return proc.exitCode === null && proc.signalCode === null;
    },
    rss: () => procRss(proc.pid),
    cpu: () => procCpu(proc.pid),
    logBytes: () => statSync(logFile).size,
    diskBytes: () => dirBytes(dir, logFile),
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        if (profileDir) {
          // A graceful stop writes the profile; a server that does not stop in 10 s is killed.
          proc.kill('SIGTERM');
          await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
        }
        if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      }
      await exited;
    },
  };
}

/** Bytes of every file in `dir` but `skip` (the store and its WAL, the trace store, …). */
function dirBytes(dir, skip) {
  let n = 0;
  for (const f of readdirSync(dir)) {
    const p = path.join(dir, f);
    if (p === skip) continue;
    try {
      const s = statSync(p);
      if (s.isFile()) n += s.size;
    } catch {
      // removed meanwhile
    }
  }
  return n;
}

/** Whether `/healthz` answers 200 within 3 s. */
export async function healthy(httpUrl) {
  try {
    const r = await fetch(`${httpUrl}/healthz`, { signal: AbortSignal.timeout(3000) });
    return r.ok;
  } catch {
    return false;
  }
}
