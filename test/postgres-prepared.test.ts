import pg from 'pg';
import { describe, expect, it } from 'vitest';
import {
  arrayLiteral,
  MAX_NAMED_STATEMENTS,
  StatementNames,
} from '../src/server/stores/postgres-prepared.js';
import { seededRandom } from '../src/util/clock.js';
import { describeWithServices, PG_URL, pgUnreachable } from './fixtures/services.js';

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

describe('the PostgreSQL store’s array parameters, written by the store', () => {
  it('writes strings quoted and escaped, numbers bare, bytes as hex, nulls as NULL, and leaves other arrays to pg', () => {
    expect(arrayLiteral(['a', 'b"c', 'd\\e', '', 'NULL', null, undefined])).toBe(
      '{"a","b\\"c","d\\\\e","","NULL",NULL,NULL}',
    );
    expect(arrayLiteral([1, -2.5, 3n, Number.NaN])).toBe('{1,-2.5,3,NaN}');
    expect(arrayLiteral([Uint8Array.of(0, 255), new Uint8Array(0), null])).toBe('{\\\\x00ff,\\\\x,NULL}');
    expect(arrayLiteral([[1, 2], [3]])).toBe('{{1,2},{3}}');
    expect(arrayLiteral([])).toBe('{}');
    expect(arrayLiteral([true])).toBeUndefined();
    expect(arrayLiteral([[new Date(0)]])).toBeUndefined();
  });
});

const SEEDS = process.env.ARRAY_SEED
  ? [Number(process.env.ARRAY_SEED)]
  : Array.from({ length: 20 }, (_, i) => i + 1);
const reason = await pgUnreachable();

describeWithServices('the PostgreSQL store’s array parameters in PostgreSQL', reason, () => {
  // Characters an array literal treats specially, and some that are not.
  const ALPHABET = ['a', 'Z', '0', ' ', ',', '{', '}', '"', '\\', "'", '\n', 'é', '😀', 'N', 'U', 'L'];
  const randomString = (rnd: () => number): string =>
    Array.from({ length: Math.floor(rnd() * 8) }, () => ALPHABET[Math.floor(rnd() * ALPHABET.length)]).join(
      '',
    );

  it.each(SEEDS)(
    'seed %i: every text, bigint, float8 and bytea array reads back as it was sent (ARRAY_SEED=N replays one)',
    async (seed) => {
      const rnd = seededRandom(seed);
      const n = Math.floor(rnd() * 12);
      const texts = Array.from({ length: n }, () => (rnd() < 0.15 ? null : randomString(rnd)));
      if (n > 0 && rnd() < 0.3) texts[0] = 'NULL';
      const ints = Array.from({ length: n }, () =>
        rnd() < 0.1 ? null : Math.floor((rnd() - 0.5) * Number.MAX_SAFE_INTEGER),
      );
      const floats = Array.from({ length: n }, () => (rnd() - 0.5) * 10 ** Math.floor(rnd() * 12));
      const bytes = Array.from({ length: n }, () =>
        rnd() < 0.1
          ? null
          : Uint8Array.from({ length: Math.floor(rnd() * 40) }, () => Math.floor(rnd() * 256)),
      );
      const client = new pg.Client({ connectionString: PG_URL });
      await client.connect();
      try {
        const { rows } = await client.query(
          'SELECT $1::text[] AS t, $2::bigint[]::text[] AS i, $3::float8[] AS f, $4::bytea[] AS b',
          [arrayLiteral(texts), arrayLiteral(ints), arrayLiteral(floats), arrayLiteral(bytes)],
        );
        expect(rows[0].t).toEqual(texts);
        expect(rows[0].i).toEqual(ints.map((v) => (v === null ? null : String(v))));
        expect(rows[0].f).toEqual(floats);
        expect(rows[0].b.map((b: Buffer | null) => (b === null ? null : new Uint8Array(b)))).toEqual(bytes);
      } finally {
        await client.end();
      }
    },
  );
});
