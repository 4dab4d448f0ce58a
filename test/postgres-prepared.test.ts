import { describe, expect, it } from 'vitest';
import { MAX_NAMED_STATEMENTS, StatementNames } from '../src/server/stores/postgres-prepared.js';

describe('the PostgreSQL store’s statement names', () => {
  it('one text has one name, different texts never share one, and only statements with parameters and one command are named', () => {
    const names = new StatementNames();
    const a = names.nameOf('SELECT $1::int AS x', [1]);
    expect(a).toMatch(/^postbox_[\w-]{24}$/);
    expect(names.nameOf('SELECT $1::int AS x', [2])).toBe(a);
    expect(new StatementNames().nameOf('SELECT $1::int AS x', [3])).toBe(a); // every store, every node
    expect(names.nameOf('SELECT $1::int AS y', [1])).not.toBe(a);
    expect(names.nameOf('COMMIT', undefined)).toBeUndefined();
    expect(names.nameOf('SELECT 1', [])).toBeUndefined();
    expect(names.nameOf('BEGIN; SET LOCAL x = $1', [1])).toBeUndefined();
    expect(names.size).toBe(2);
  });

  it('a store names at most MAX_NAMED_STATEMENTS texts, so varying texts cannot grow every connection’s cache', () => {
    const names = new StatementNames();
    for (let i = 0; i < MAX_NAMED_STATEMENTS + 50; i++) names.nameOf(`SELECT $1::int + ${i}`, [i]);
    expect(names.size).toBe(MAX_NAMED_STATEMENTS);
    // Those named before the bound keep their names; later ones run unnamed.
    expect(names.nameOf('SELECT $1::int + 0', [0])).toBeDefined();
    expect(names.nameOf(`SELECT $1::int + ${MAX_NAMED_STATEMENTS}`, [0])).toBeUndefined();
  });
});
