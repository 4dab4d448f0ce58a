#!/usr/bin/env node
// Installs postbox the ways an app does and runs the README's "Use it in your app" files there.
//   node scripts/install-check.mjs          the packed tarball (`npm pack`) in an empty app
//   node scripts/install-check.mjs --git    also `npm install git+file://<this repo>` (its `prepare` builds dist/)
//
// The app files are not written here: they are the README blocks marked `<!-- install-check: NAME -->`,
// so the README cannot drift from what works. Each app gets only postbox and the peers the
// README's table names for it, never this repository's node_modules.
import { execFileSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const withGit = process.argv.includes('--git');
const keep = process.argv.includes('--keep');
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
const started = Date.now();
const say = (s) => console.log(`[install-check ${((Date.now() - started) / 1000).toFixed(1)}s] ${s}`);

/** The README blocks marked for this check, by file name. */
function readmeFiles(readme) {
  const files = new Map();
  const re = /<!-- install-check: (\S+) -->\s*\n```\w*\n([\s\S]*?)\n```/g;
  for (const m of readme.matchAll(re)) files.set(m[1], `${m[2]}\n`);
  return files;
}

function run(cmd, args, cwd, opts = {}) {
  return execFileSync(cmd, args, {
    cwd,
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'pipe'],
    timeout: 15 * 60_000,
    env: { ...process.env, npm_config_audit: 'false', npm_config_fund: 'false', ...opts.env },
  });
}

function step(what, fn) {
  try {
    return fn();
  } catch (e) {
    console.error(`install-check: ${what} failed`);
    if (e.stdout) console.error(e.stdout);
    if (e.stderr) console.error(e.stderr);
    throw e;
  }
}

const files = readmeFiles(readFileSync(join(root, 'README.md'), 'utf8'));
for (const name of ['app.mjs', 'app.ts', 'app.cjs']) {
  if (!files.has(name)) throw new Error(`README.md has no block marked <!-- install-check: ${name} -->`);
}

const pkg = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8'));
/** Peer versions as the package itself is developed against (from its devDependencies). */
const peer = (name) => `${name}@${pkg.devDependencies[name]}`;
const work = mkdtempSync(join(tmpdir(), 'postbox-install-'));

/** An empty app that may run better-sqlite3's build and (for a git install) postbox's prepare. */
function scratchApp(name) {
  const dir = join(work, name);
  mkdirSync(dir, { recursive: true });
  writeFileSync(
    join(dir, 'package.json'),
    `${JSON.stringify(
      {
        name: `postbox-install-check-${name}`,
        private: true,
        type: 'module',
        allowScripts: { 'better-sqlite3': true, postbox: true },
      },
      null,
      2,
    )}\n`,
  );
  for (const [file, text] of files) writeFileSync(join(dir, file), text);
  return dir;
}

/** Runs the README's files in an app where postbox is installed. */
function exercise(dir, label) {
  const installed = join(dir, 'node_modules', 'postbox');
  if (!existsSync(join(installed, 'dist', 'client', 'index.js')))
    throw new Error(`${label}: no dist/ in the installed package`);
  checkSourceMaps(installed, label);
  const out = step(`${label}: node app.mjs`, () => run(process.execPath, ['app.mjs'], dir));
  process.stdout.write(out.trimEnd().replace(/^/gm, `  ${label} app.mjs | `) + '\n');
  if (!/bob got "hi bob" from alice/.test(out) || !/alice sees ✓✓ on her message/.test(out)) {
    throw new Error(`${label}: app.mjs did not deliver: ${out}`);
  }
  const cjs = step(`${label}: node app.cjs`, () => run(process.execPath, ['app.cjs'], dir));
  process.stdout.write(cjs.trimEnd().replace(/^/gm, `  ${label} app.cjs | `) + '\n');
  if (!/token pb1\./.test(cjs)) throw new Error(`${label}: app.cjs printed ${cjs}`);
  const tsc = join(dir, 'node_modules', 'typescript', 'bin', 'tsc');
  for (const [module, resolution] of [
    ['NodeNext', 'NodeNext'],
    ['ESNext', 'Bundler'],
  ]) {
    step(`${label}: tsc --moduleResolution ${resolution}`, () =>
      run(
        process.execPath,
        [
          tsc,
          '--noEmit',
          '--strict',
          '--target',
          'ES2022',
          '--module',
          module,
          '--moduleResolution',
          resolution,
          '--types',
          'node',
          'app.ts',
        ],
        dir,
      ),
    );
    say(`${label}: app.ts type-checks under ${resolution} resolution`);
  }
}

/** Every shipped source map names sources that exist in the package. */
function checkSourceMaps(installed, label) {
  let maps = 0;
  const walk = (d) => {
    for (const f of readdirSync(d)) {
      const p = join(d, f);
      if (statSync(p).isDirectory()) walk(p);
      else if (f.endsWith('.map')) {
        maps++;
        const map = JSON.parse(readFileSync(p, 'utf8'));
        for (const s of map.sources) {
          const source = resolve(dirname(p), map.sourceRoot ?? '', s);
          if (!existsSync(source)) throw new Error(`${label}: ${p} points at missing ${source}`);
        }
      }
    }
  };
  walk(join(installed, 'dist'));
  if (maps === 0) throw new Error(`${label}: no source maps shipped`);
  say(`${label}: ${maps} source maps, every source present in the package`);
}

const peers = [peer('better-sqlite3'), peer('ws'), peer('typescript'), peer('@types/node')];
try {
  say(`npm pack in ${root}`);
  const packed = step('npm pack', () => run(npm, ['pack', '--silent', '--pack-destination', work], root));
  const tarball = join(work, packed.trim().split('\n').pop());
  say(`packed ${tarball} (${(statSync(tarball).size / 1024).toFixed(0)} KiB)`);
  const app = scratchApp('tarball');
  step('npm install (tarball)', () => run(npm, ['install', tarball, ...peers], app));
  say('installed the tarball with better-sqlite3 and ws');
  exercise(app, 'tarball');

  if (withGit) {
    const gitApp = scratchApp('git');
    step('npm install (git)', () => run(npm, ['install', `git+file://${root}`, ...peers], gitApp));
    say('installed from git (prepare built dist/)');
    exercise(gitApp, 'git');
  }
  say('ok');
} finally {
  if (keep) say(`kept ${work}`);
  else rmSync(work, { recursive: true, force: true });
}
