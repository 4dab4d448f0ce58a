// Child processes of the bench: every one is tracked here and killed when the orchestrator
// exits, whatever the reason (normal end, error, Ctrl-C). Children also exit on their own when
// their IPC channel to the orchestrator goes away (see `child.mjs`).
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';

const live = new Set();

/** True when `taskset` can pin processes to cores (Linux with util-linux). */
export const canPin = (() => {
  if (process.platform !== 'linux' || os.availableParallelism() < 2) return false;
  const r = spawnSync('taskset', ['-c', '0', 'true'], { stdio: 'ignore' });
  return r.status === 0;
})();

/**
 * The core (0 or 1) that takes the disk's completion interrupts, read from /proc/interrupts (the
 * busiest CPU column of the block devices' queue lines: virtio `-req`, NVMe, SCSI/ATA), or
 * undefined. A durable server's flushes end in such an interrupt and its softirq; on a VM they
 * may all land on one core (this workplace's do, and the affinity cannot be changed), and when
 * that core is the load generator's, every fsync of the server under test steals time from the
 * clients that measure it.
 */
function diskInterruptCore() {
  try {
    const lines = readFileSync('/proc/interrupts', 'utf8').split('\n');
    const cpus = lines[0].trim().split(/\s+/).length;
    const counts = new Array(cpus).fill(0);
    for (const line of lines.slice(1)) {
      if (!/virtio\d+-req|nvme\d+q|ahci|ata_piix|scsi/.test(line)) continue;
      const cols = line
        .trim()
        .split(/\s+/)
        .slice(1, 1 + cpus)
        .map(Number);
      cols.forEach((n, i) => (counts[i] += Number.isFinite(n) ? n : 0));
    }
    const best = counts.indexOf(Math.max(...counts));
    return counts[best] > 0 && best <= 1 ? best : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Core of the server under test and core of the load generator (when pinning is possible): the
 * server gets the core its disk's interrupts land on, so that the cost of its own flushes is
 * charged to it and not to the clients (the same for every system: only the durable ones
 * flush). `POSTBOX_BENCH_SERVER_CORE=0|1` overrides.
 */
export const SERVER_CORE = (() => {
  const forced = process.env.POSTBOX_BENCH_SERVER_CORE;
  if (forced === '0' || forced === '1') return Number(forced);
  return diskInterruptCore() ?? 0;
})();
export const LOAD_CORE = SERVER_CORE === 0 ? 1 : 0;

function killAll() {
  for (const c of live) {
    try {
      c.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
  live.clear();
}

let hooked = false;
function hookExit() {
  if (hooked) return;
  hooked = true;
  process.on('exit', killAll);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
    process.on(sig, () => {
      process.stderr.write(`\nbench: ${sig}, stopping children\n`);
      killAll();
      process.exit(130);
    });
  }
}

/**
 * Builds the argv that runs `cmd` with the open-files limit raised to the hard limit and, when
 * possible, pinned to `core`, at niceness `nice` when given. Every wrapper execs, so the child's
 * pid is the program's own.
 */
export function wrap(cmd, args, core, nice) {
  let inner = [cmd, ...args];
  if (nice !== undefined) inner = ['nice', '-n', String(nice), ...inner];
  if (core !== undefined && canPin) inner = ['taskset', '-c', String(core), ...inner];
  return ['bash', ['-c', 'ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$@"', 'bash', ...inner]];
}

/**
 * Starts a Node child with an IPC channel. Its stdout is dropped, its stderr kept (the last
 * lines are shown when it fails).
 * @returns a handle with `request(msg)` (resolves with the reply carrying the same `rid`),
 *   `next(type)` (resolves with the next message of that type), `exited`, `kill()`.
 */
export function startNode(script, args, { core, nice, nodeFlags = [] } = {}) {
  hookExit();
  const [cmd, argv] = wrap(process.execPath, [...nodeFlags, script, ...args], core, nice);
  const proc = spawn(cmd, argv, { stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
  live.add(proc);
  let stderr = '';
  proc.stderr.on('data', (d) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  const waiters = [];
  let rid = 0;
  const pending = new Map();
  // A child that dies while a message is on its way makes `send` fail with EPIPE; its exit is
  // what the caller sees (and reports), not an unhandled 'error' that takes the whole run down.
  proc.on('error', (e) => {
    if (e?.code !== 'EPIPE') process.stderr.write(`${script}: ${e?.stack ?? e}\n`);
  });
  proc.on('message', (m) => {
    if (m && m.rid !== undefined && pending.has(m.rid)) {
      const p = pending.get(m.rid);
      pending.delete(m.rid);
      p.resolve(m);
      return;
    }
    if (m && m.type === 'error') {
      // The child reported a fatal error (it exits right after): fail whoever waits on it.
      const err = new Error(`${script}: ${m.error}`);
      for (const w of waiters.splice(0)) w.reject(err);
      for (const p of pending.values()) p.reject(err);
      pending.clear();
      return;
    }
    const i = waiters.findIndex((w) => w.type === m.type);
    if (i >= 0) waiters.splice(i, 1)[0].resolve(m);
    else handle.onMessage?.(m);
  });
  const exited = new Promise((resolve) => {
    proc.on('exit', (code, signal) => {
      live.delete(proc);
      const err = new Error(`${script} exited (${signal ?? code})${stderr ? `:\n${tail(stderr)}` : ''}`);
      for (const w of waiters.splice(0)) w.reject(err);
      for (const p of pending.values()) p.reject(err);
      pending.clear();
      resolve({ code, signal });
    });
  });
  const handle = {
    proc,
    get pid() {
      return proc.pid;
    },
    get stderr() {
      return stderr;
    },
    onMessage: undefined,
    exited,
    send(msg) {
      if (proc.connected) proc.send(msg);
    },
    request(msg, timeoutMs = 30_000) {
      const id = ++rid;
      return withTimeout(
        new Promise((resolve, reject) => {
          pending.set(id, { resolve, reject });
          if (proc.connected) proc.send({ ...msg, rid: id });
          else reject(new Error(`${script} is not running`));
        }),
        timeoutMs,
        `${script}: no reply to ${msg.type}`,
      );
    },
    next(type, timeoutMs = 60_000) {
      return withTimeout(
        new Promise((resolve, reject) => waiters.push({ type, resolve, reject })),
        timeoutMs,
        `${script}: no "${type}" within ${timeoutMs} ms`,
      );
    },
    kill() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      return exited;
    },
    /** Asks the child to exit cleanly (profiles get written), then kills it after `graceMs`. */
    async stop(graceMs = 3000) {
      if (proc.exitCode !== null || proc.signalCode !== null) return exited;
      if (proc.connected) proc.send({ type: 'stop' });
      const t = setTimeout(() => handle.kill(), graceMs);
      await exited;
      clearTimeout(t);
      return exited;
    },
  };
  return handle;
}

/** Starts a non-Node child (the mosquitto broker), pinned like a server, tracked like the rest. */
export function startProcess(cmd, args, { core } = {}) {
  hookExit();
  const [c, argv] = wrap(cmd, args, core);
  const proc = spawn(c, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
  live.add(proc);
  let stderr = '';
  proc.stderr.on('data', (d) => {
    stderr = (stderr + d.toString()).slice(-2000);
  });
  const exited = new Promise((resolve) =>
    proc.on('exit', (code, signal) => {
      live.delete(proc);
      resolve({ code, signal });
    }),
  );
  return {
    proc,
    exited,
    get stderr() {
      return stderr;
    },
    kill() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
      return exited;
    },
  };
}

function tail(s) {
  return s.trim().split('\n').slice(-12).join('\n');
}

/** Rejects with `message` if `promise` has not settled within `ms`. */
export function withTimeout(promise, ms, message) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(message)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

const TICKS = (() => {
  const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
  return Number(r.stdout) || 100;
})();

/** CPU time (µs, user and system) of any process, read from /proc; undefined when unreadable. */
export function procCpu(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // Fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the command name.
    return { user: (Number(f[11]) * 1e6) / TICKS, system: (Number(f[12]) * 1e6) / TICKS };
  } catch {
    return undefined;
  }
}

/** Resident set size (bytes) of any process, from /proc; undefined when unreadable. */
export function procRss(pid) {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const m = /VmRSS:\s+(\d+) kB/.exec(status);
    return m ? Number(m[1]) * 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** The load averages, as the bench tools print them: "0.8 1.2 1.5". */
export const loadAverages = () =>
  os
    .loadavg()
    .map((x) => x.toFixed(1))
    .join(' ');
