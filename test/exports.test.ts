import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

// Every subpath in the exports map resolves from the built package, by its public name, so
// the map cannot rot. Runs in a child Node process (package self-reference), testing what ships.
const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as {
  exports: Record<string, string | { types: string; default: string }>;
};
const subpaths = Object.keys(pkg.exports).filter((s) => s !== './package.json');
// Subpaths that carry only type declarations (interfaces for adapter authors).
const typeOnly = new Set(['./transport']);

describe('the exports map', () => {
  for (const sub of subpaths) {
    it(`postbox${sub.slice(1)} imports from dist, with its declarations`, () => {
      const name = `postbox${sub.slice(1)}`;
      const out = execFileSync(
        process.execPath,
        [
          '--input-type=module',
          '-e',
          `const m = await import(${JSON.stringify(name)}); console.log(JSON.stringify(Object.keys(m)));`,
        ],
        { encoding: 'utf8' },
      );
      const keys = JSON.parse(out) as string[];
      if (!typeOnly.has(sub)) expect(keys.length).toBeGreaterThan(0);
      const entry = pkg.exports[sub];
      expect(typeof entry === 'object' && existsSync(entry.types)).toBe(true);
    });
  }

  // ESM-only, but CommonJS apps on Node >= 20.19 can require() it (require(esm)): the map's
  // `default` condition is what lets require() in.
  it('every subpath loads from CommonJS with require()', () => {
    const out = execFileSync(
      process.execPath,
      [
        '-e',
        `const subs = ${JSON.stringify(subpaths)};
         console.log(JSON.stringify(subs.map((s) => Object.keys(require('postbox' + s.slice(1))).length)));`,
      ],
      { encoding: 'utf8' },
    );
    const counts = JSON.parse(out) as number[];
    subpaths.forEach((sub, i) => {
      if (!typeOnly.has(sub)) expect(counts[i], sub).toBeGreaterThan(0);
    });
  });

  // The public surface, named: adding or removing an export is a decision, made here on purpose.
  // After a deliberate change: UPDATE_EXPORTS=1 npx vitest run test/exports.test.ts
  it('every subpath exports exactly the names listed in test/fixtures/exports.json', () => {
    const out = execFileSync(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `const subs = ${JSON.stringify(subpaths)}; const r = {};
         for (const s of subs) r[s] = Object.keys(await import('postbox' + s.slice(1))).sort();
         console.log(JSON.stringify(r));`,
      ],
      { encoding: 'utf8' },
    );
    const actual = JSON.parse(out) as Record<string, string[]>;
    const file = 'test/fixtures/exports.json';
    if (process.env.UPDATE_EXPORTS) writeFileSync(file, `${JSON.stringify(actual, null, 2)}\n`);
    const listed = JSON.parse(readFileSync(file, 'utf8')) as Record<string, string[]>;
    expect(
      actual,
      `the exports changed: if on purpose, UPDATE_EXPORTS=1 npx vitest run test/exports.test.ts`,
    ).toEqual(listed);
  });

  // Declarations are built with stripInternal: what is left must still type-check on its own,
  // as an app's compiler sees it (skipLibCheck off, NodeNext resolution of the exports map).
  it('the declarations of every subpath type-check together, with nothing @internal left dangling', () => {
    const dir = mkdtempSync(join(process.cwd(), '.decl-check-'));
    try {
      writeFileSync(
        join(dir, 'all.ts'),
        `${subpaths.map((s, i) => `import * as m${i} from 'postbox${s.slice(1)}';`).join('\n')}\nexport const all = [${subpaths.map((_, i) => `m${i}`).join(', ')}];\n`,
      );
      writeFileSync(
        join(dir, 'tsconfig.json'),
        JSON.stringify({
          compilerOptions: {
            strict: true,
            noEmit: true,
            skipLibCheck: false,
            module: 'nodenext',
            moduleResolution: 'nodenext',
            target: 'es2022',
            types: ['node'],
          },
          files: ['all.ts'],
        }),
      );
      const tsc = join(process.cwd(), 'node_modules', 'typescript', 'bin', 'tsc');
      let output = '';
      try {
        execFileSync(process.execPath, [tsc, '-p', dir], { encoding: 'utf8' });
      } catch (e) {
        output = String((e as { stdout?: string }).stdout ?? e);
      }
      expect(output).toBe('');
      expect(readFileSync('dist/server/engine.d.ts', 'utf8')).not.toContain('@internal');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }, 60_000);
});
