/**
 * The media ledger: one row per upload, from creation to deletion. It says whose upload it is,
 * whether it finished, who may download it (its audience, fixed when the sender attaches it to a
 * conversation), which recipient devices have not yet acked it, and when it expires. A SQLite
 * table (in its own file beside the media folder, or `:memory:` for tests).
 * @packageDocumentation
 */
import Database from 'better-sqlite3';
import { openStoreDatabase, type SqliteDatabase, type SqliteStatement } from '../../util/sqlite.js';

/** One upload as the ledger keeps it. */
export interface UploadRow {
  /** Blob id. */
  id: string;
  /** Uploading user. */
  user: string;
  /** Uploading device. */
  device: string;
  /** Ciphertext bytes (tus `Upload-Length`). */
  length: number;
  /** When it was created, ms since the epoch. */
  created: number;
  /** When the last byte was stored, if it was. */
  completed: number | null;
  /** When the sender attached it to a conversation, if it did. */
  attached: number | null;
  /** When the blob is deleted whatever the acks (set on attach). */
  expires: number | null;
  /** Users who may download it (set on attach). */
  audience: string[];
  /** Devices (`user/device`) that have not acked it yet (set on attach). */
  pending: string[];
}

interface Raw {
  id: string;
  user: string;
  device: string;
  length: number;
  created: number;
  completed: number | null;
  attached: number | null;
  expires: number | null;
  audience: string;
  pending: string;
}

const migrations = [
  (db: SqliteDatabase) =>
    db.exec(`CREATE TABLE media_uploads (
      id TEXT PRIMARY KEY, user TEXT NOT NULL, device TEXT NOT NULL, length INTEGER NOT NULL,
      created INTEGER NOT NULL, completed INTEGER, attached INTEGER, expires INTEGER,
      audience TEXT NOT NULL DEFAULT '[]', pending TEXT NOT NULL DEFAULT '[]');
    CREATE INDEX media_uploads_user ON media_uploads(user);
    CREATE INDEX media_uploads_created ON media_uploads(created);
    CREATE INDEX media_uploads_expires ON media_uploads(expires);`),
];

const parse = (r: Raw): UploadRow => ({
  ...r,
  audience: JSON.parse(r.audience) as string[],
  pending: JSON.parse(r.pending) as string[],
});

/** The ledger's operations. */
export interface MediaLedger {
  /** Records a new upload. */
  create(row: Pick<UploadRow, 'id' | 'user' | 'device' | 'length' | 'created'>): void;
  /** An upload by id. */
  get(id: string): UploadRow | undefined;
  /** Marks an upload complete. */
  complete(id: string, now: number): void;
  /** Sets who may download and who must ack, and the expiry. */
  attach(id: string, now: number, audience: string[], pending: string[], expires: number): void;
  /** Removes `device` from the pending acks; answers how many remain (undefined: no such row). */
  ack(id: string, device: string): number | undefined;
  /** Forgets an upload. */
  remove(id: string): void;
  /** A user's uploads that are not attached yet, and the bytes the user has stored in all. */
  usage(user: string): { open: number; bytes: number };
  /** Uploads to delete at `now`: expired, or not attached within `unattachedMs` of creation. */
  due(now: number, unattachedMs: number, limit: number): UploadRow[];
  /** Closes the database. */
  close(): void;
}

/** Opens the ledger at `path` (`:memory:` for a private in-memory one). */
export function openMediaLedger(path: string): MediaLedger {
  const { db } = openStoreDatabase(
    { path },
    (p) => new Database(p) as unknown as SqliteDatabase,
    migrations,
    'media ledger',
    5000,
  );
  const st = (sql: string): SqliteStatement => db.prepare(sql);
  const insert = st('INSERT INTO media_uploads (id, user, device, length, created) VALUES (?, ?, ?, ?, ?)');
  const byId = st('SELECT * FROM media_uploads WHERE id = ?');
  const setComplete = st('UPDATE media_uploads SET completed = ? WHERE id = ? AND completed IS NULL');
  const setAttach = st(
    'UPDATE media_uploads SET attached = ?, audience = ?, pending = ?, expires = ? WHERE id = ?',
  );
  const setPending = st('UPDATE media_uploads SET pending = ? WHERE id = ?');
  const del = st('DELETE FROM media_uploads WHERE id = ?');
  const usage = st(
    'SELECT SUM(CASE WHEN attached IS NULL THEN 1 ELSE 0 END) AS open, SUM(length) AS bytes FROM media_uploads WHERE user = ?',
  );
  const due = st(
    'SELECT * FROM media_uploads WHERE (expires IS NOT NULL AND expires <= ?) OR (attached IS NULL AND created <= ?) LIMIT ?',
  );
  return {
    create: (r) => void insert.run(r.id, r.user, r.device, r.length, r.created),
    get: (id) => {
      const r = byId.get(id) as Raw | undefined;
      return r && parse(r);
    },
    complete: (id, now) => void setComplete.run(now, id),
    attach: (id, now, audience, pending, expires) =>
      void setAttach.run(now, JSON.stringify(audience), JSON.stringify(pending), expires, id),
    ack(id, device) {
      const r = byId.get(id) as Raw | undefined;
      if (!r) return undefined;
      const pending = (JSON.parse(r.pending) as string[]).filter((d) => d !== device);
      setPending.run(JSON.stringify(pending), id);
      return pending.length;
    },
    remove: (id) => void del.run(id),
    usage(user) {
      const r = usage.get(user) as { open: number | null; bytes: number | null };
      return { open: r.open ?? 0, bytes: r.bytes ?? 0 };
    },
    due: (now, unattachedMs, limit) => (due.all(now, now - unattachedMs, limit) as Raw[]).map(parse),
    close: () => void db.close(),
  };
}
