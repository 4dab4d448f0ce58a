// "Every public symbol has TSDoc" (design/STYLE.md), kept by a test: every name every subpath of
// the exports map exports, read from the built declarations as an app's editor reads them, must
// carry a documentation comment (on the declaration it resolves to, through re-exports). A name
// that is only `export type X = …` with nothing above it fails, naming the subpath and the name.
import { readFileSync } from 'node:fs';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

const pkg = JSON.parse(readFileSync('package.json', 'utf8')) as {
  exports: Record<string, string | { types?: string }>;
};
const entries = Object.entries(pkg.exports).flatMap(([sub, v]) =>
  typeof v === 'object' && v.types ? [[sub, v.types] as const] : [],
);

describe('the public API', () => {
  it('every name every subpath exports has TSDoc', () => {
    const program = ts.createProgram(
      entries.map(([, file]) => file),
      {
        strict: true,
        skipLibCheck: true,
        noEmit: true,
        module: ts.ModuleKind.NodeNext,
        moduleResolution: ts.ModuleResolutionKind.NodeNext,
      },
    );
    const checker = program.getTypeChecker();
    const undocumented: string[] = [];
    let names = 0;
    for (const [sub, file] of entries) {
      const source = program.getSourceFile(file);
      const module = source && checker.getSymbolAtLocation(source);
      expect(module, `${sub}: ${file} did not load`).toBeDefined();
      for (const symbol of checker.getExportsOfModule(module!)) {
        names++;
        const target = symbol.flags & ts.SymbolFlags.Alias ? checker.getAliasedSymbol(symbol) : symbol;
        if (target.getDocumentationComment(checker).length === 0)
          undocumented.push(`postbox${sub.slice(1)}: ${symbol.name}`);
      }
    }
    expect(names).toBeGreaterThan(400);
    expect(undocumented).toEqual([]);
  }, 60_000);
});
