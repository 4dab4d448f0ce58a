/* global AbortController */
// The attacker, in its own process (run at nice 19 by default: see run.mjs). Loads one attack
// file from attacks/ and runs it until told to halt.
//   requests: start {attack, env} → once the attack called ready(); halt → {stats}
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { onRequest, sleep } from '../lib/child.mjs';
import { token } from './lib/wire-peer.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
let controller;
let running;
let stats;

onRequest('start', async ({ attack, env }) => {
  const mod = await import(path.join(here, 'attacks', `${attack}.mjs`));
  controller = new AbortController();
  stats = {};
  let ready;
  const isReady = new Promise((r) => (ready = r));
  const ctx = {
    ...env,
    signal: controller.signal,
    stats,
    /** Adds `n` to the counter `name` of the attack's report. */
    count(name, n = 1) {
      stats[name] = (stats[name] ?? 0) + n;
    },
    ready: () => ready(),
    token: (user, device) => token(env.secret, user, device),
    sleep,
    /** Resolves when the attack is told to halt. */
    halted: new Promise((r) => controller.signal.addEventListener('abort', r, { once: true })),
  };
  running = Promise.resolve(mod.run(ctx)).catch((e) => {
    stats.error = String(e?.message ?? e);
    ready();
  });
  await Promise.race([isReady, running]);
  return {};
});

onRequest('halt', async () => {
  controller?.abort();
  await Promise.race([running, sleep(10_000)]);
  return { stats };
});
