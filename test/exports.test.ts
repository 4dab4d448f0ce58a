import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
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
});
