/**
 * The health check of the SQLite server store (`ServerStore.ping`): the connection answers
 * and the database has room to grow. A disk-full SQLite still reads fine, so a check that only
 * read would report a node healthy whose every send fails; this one looks at the two limits a
 * write runs into (the disk, and `PRAGMA max_page_count`) without writing.
 * @packageDocumentation
 */
import { statfsSync } from 'node:fs';
import { dirname } from 'node:path';
import type { SqliteDatabase } from '../../util/sqlite.js';

/**
 * Free space below which the disk counts as full: a group commit writes its pages to the WAL
 * before it syncs, so a disk with a few pages left fails the next real batch anyway.
 */
export const SQLITE_MIN_FREE_BYTES = 1024 * 1024;

/** An error shaped like `better-sqlite3`'s, so logs and callers read one kind of `code`. */
function full(label: string, what: string): Error {
  return Object.assign(new Error(`${label}: database or disk is full (${what})`), { code: 'SQLITE_FULL' });
}

/** Rejects when the database cannot answer, or has no room left to grow. */
export function sqlitePing(db: SqliteDatabase, label: string): void {
  const pragma = (name: string): number =>
    Number((db.prepare(`PRAGMA ${name}`).get() as Record<string, unknown>)[name]);
  const pages = pragma('page_count');
  if (pages >= pragma('max_page_count') && pragma('freelist_count') === 0) {
    throw full(label, `max_page_count of ${pages} pages reached`);
  }
  const main = (db.prepare('PRAGMA database_list').all() as Array<{ name: string; file: string }>).find(
    (d) => d.name === 'main',
  );
  // An in-memory database has no file (and no disk to fill).
  if (!main?.file) return;
  const fs = statfsSync(dirname(main.file));
  const free = fs.bavail * fs.bsize;
  if (free < SQLITE_MIN_FREE_BYTES) throw full(label, `${free} bytes free on its disk`);
}
