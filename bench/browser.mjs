// Durable sends per second of the browser's client store beside Node's (issue 18): the outbox
// append that `send()` awaits (bench/lib/append-driver.mjs), one at a time, on
//
//   indexeddb-strict    postbox/client/indexeddb in headless Chromium, durability 'strict' (the
//                       default: flushed to disk before the write reports done)
//   indexeddb-relaxed   the same with durability 'relaxed' (the option for apps that accept
//                       losing the last writes on a power cut)
//   sqlite              postbox/client/sqlite in Node (WAL, synchronous=FULL)
//   memory              the memory client store in Node (no durability: the reference)
//
//   npm run bench -- --only browser [--quick] [--rounds N]
//   node bench/browser.mjs [--rounds N] [--seconds S] [--dir DIR] [--json FILE]   (after `npm run build`)
//
// Chromium runs from a persistent profile in DIR (the default context of `launch()` is
// off the record, and its IndexedDB lives in memory); the SQLite files go in DIR too, so both
// pay the same disk. DIR defaults to the OS temp dir. Debian's `chromium` is driven by
// playwright-core (POSTBOX_CHROMIUM overrides the path). Stores alternate inside every round,
// each on a fresh database; medians with the min–max spread are reported, then one JSON line.
import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { build } from 'esbuild';
import { chromium } from 'playwright-core';
import { measureAppends } from './lib/append-driver.mjs';
import { median, round } from './lib/stats.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.dirname(here);
const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    rounds: { type: 'string' },
    seconds: { type: 'string' },
    dir: { type: 'string' },
    json: { type: 'string' },
  },
});
const ROUNDS = Number(values.rounds ?? (values.quick ? 1 : 3));
const RUN = { seconds: Number(values.seconds ?? (values.quick ? 1 : 3)), warmup: 50, size: 100 };
const SYSTEMS = ['indexeddb-strict', 'indexeddb-relaxed', 'sqlite', 'memory'];

const candidates = [process.env.POSTBOX_CHROMIUM, '/usr/bin/chromium', '/usr/bin/chromium-browser'];
const chromiumPath = candidates.find((p) => p && existsSync(p));
if (!chromiumPath) {
  console.error(
    `browser bench: no Chromium at ${candidates.filter(Boolean).join(' or ')} (apt-get install -y chromium)`,
  );
  process.exit(2);
}
if (!existsSync(path.join(root, 'dist/client/stores/indexeddb.js'))) {
  console.error('browser bench: run `npm run build` first (it measures the built package)');
  process.exit(2);
}

const { sqliteClientStore } = await import('../dist/client/stores/sqlite.js');
const { memoryClientStore } = await import('../dist/client/stores/memory.js');

const dir = mkdtempSync(path.join(values.dir ?? os.tmpdir(), 'postbox-browser-bench-'));

// The page: the IndexedDB store and the shared driver, bundled as an app would bundle them.
const bundled = await build({
  stdin: {
    contents: `
      import { openIndexedDbClientStore } from './dist/client/stores/indexeddb.js';
      import { measureAppends } from './bench/lib/append-driver.mjs';
      globalThis.appendBench = async ({ name, durability, run }) => {
        const store = await openIndexedDbClientStore({ name, durability });
        try { return await measureAppends(store, run); } finally { await store.close(); }
      };`,
    resolveDir: root,
    loader: 'js',
  },
  bundle: true,
  platform: 'browser',
  format: 'esm',
  target: 'es2022',
  write: false,
  logLevel: 'warning',
});
const script = bundled.outputFiles[0].text;
const server = http.createServer((req, res) => {
  if (req.url === '/bench.js') {
    res.writeHead(200, { 'content-type': 'text/javascript' }).end(script);
  } else {
    res
      .writeHead(200, { 'content-type': 'text/html' })
      .end('<!doctype html><script type="module" src="/bench.js"></script>');
  }
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const origin = `http://127.0.0.1:${server.address().port}/`;

const context = await chromium.launchPersistentContext(path.join(dir, 'profile'), {
  executablePath: chromiumPath,
  headless: true,
  args: ['--no-sandbox'],
});
const browserVersion = context.browser()?.version() ?? 'unknown';
const page = context.pages()[0] ?? (await context.newPage());
await page.goto(origin);
await page.waitForFunction(() => typeof globalThis.appendBench === 'function');

async function measure(system, round) {
  const name = `bench-${round}-${system}`;
  if (system.startsWith('indexeddb')) {
    const durability = system.slice('indexeddb-'.length);
    return page.evaluate((arg) => globalThis.appendBench(arg), { name, durability, run: RUN });
  }
  const store =
    system === 'sqlite' ? sqliteClientStore({ path: path.join(dir, `${name}.sqlite`) }) : memoryClientStore();
  try {
    return await measureAppends(store, RUN);
  } finally {
    await store.close();
  }
}

const samples = Object.fromEntries(SYSTEMS.map((s) => [s, []]));
console.log(
  `browser bench: ${ROUNDS} round(s) × ${RUN.seconds} s per store, ${RUN.size}-byte bodies, one append at a time; Chromium ${browserVersion}, Node ${process.version}, files in ${dir}`,
);
try {
  for (let r = 1; r <= ROUNDS; r++) {
    // Alternate the order each round, so no store always runs first or last.
    const order = r % 2 ? SYSTEMS : [...SYSTEMS].reverse();
    for (const system of order) {
      const { count, ms } = await measure(system, r);
      samples[system].push((count * 1000) / ms);
    }
  }
} finally {
  await context.close();
  server.close();
  rmSync(dir, { recursive: true, force: true });
}

const summary = Object.fromEntries(
  SYSTEMS.map((s) => {
    const v = samples[s];
    return [s, { median: round(median(v)), min: round(Math.min(...v)), max: round(Math.max(...v)) }];
  }),
);
const sqlite = summary.sqlite.median;
const rows = SYSTEMS.map((s) => {
  const { median: m, min, max } = summary[s];
  return `| ${s} | ${m.toLocaleString('en')} | ${min.toLocaleString('en')}–${max.toLocaleString('en')} | ${round(1000 / m)} | ×${round(m / sqlite)} |`;
});
console.log(
  [
    '',
    '| store | durable sends/s (median) | min–max | ms per send | vs SQLite in Node |',
    '| --- | ---: | ---: | ---: | ---: |',
    ...rows,
    '',
    `IndexedDB (strict) in Chromium / SQLite in Node: ×${round(summary['indexeddb-strict'].median / sqlite)}`,
  ].join('\n'),
);
const out = {
  scenario: 'browser',
  rounds: ROUNDS,
  run: RUN,
  chromium: browserVersion,
  node: process.version,
  samples,
  summary,
  ratio_indexeddb_strict_to_sqlite: round(summary['indexeddb-strict'].median / sqlite),
};
console.log(JSON.stringify(out));
if (values.json) writeFileSync(values.json, `${JSON.stringify(out, null, 2)}\n`);
