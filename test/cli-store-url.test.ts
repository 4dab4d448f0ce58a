import { describe, expect, it } from 'vitest';
import { parsePostgresStoreUrl } from '../src/cli/store-url.js';

describe('postbox serve --store postgres://…', () => {
  it('takes schema and prepared out of the URL and leaves every other parameter for pg', () => {
    expect(parsePostgresStoreUrl('postgres://app@db/x?schema=s1&prepared=off&query_timeout=500')).toEqual({
      connectionString: 'postgres://app@db/x?query_timeout=500',
      schema: 's1',
      preparedStatements: false,
    });
    expect(parsePostgresStoreUrl('postgres://app@db/x?prepared=on')).toEqual({
      connectionString: 'postgres://app@db/x',
    });
    expect(parsePostgresStoreUrl('postgres://app@db/x')).toEqual({ connectionString: 'postgres://app@db/x' });
  });

  it('refuses a prepared value it does not know with a RangeError, instead of guessing', () => {
    expect(() => parsePostgresStoreUrl('postgres://db/x?prepared=no')).toThrow(RangeError);
  });
});
