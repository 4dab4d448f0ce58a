/**
 * Opening the IndexedDB client store's database, and what its failures mean to the app: the
 * schema upgrade, a newer tab's upgrade waiting on this one, the browser closing the database
 * (site data cleared), the quota. Internal to `postbox/client/indexeddb`.
 * @packageDocumentation
 */
import { wrap } from 'idb';
import { PostboxError, isPostboxError } from '../../protocol/errors.js';
import { MIGRATIONS, type Db, type IndexedDbMigration } from './indexeddb-schema.js';

const LABEL = 'indexeddb client store';

/** Why an open database can no longer be used, once it cannot. */
export type Lost = 'closed' | 'upgraded' | 'terminated';

const LOST_MESSAGES: Record<Lost, PostboxError> = {
  closed: new PostboxError('closed', `${LABEL}: the store is closed`),
  upgraded: new PostboxError(
    'unavailable',
    `${LABEL}: another tab opened the database with a newer schema, so this tab closed it; reload this tab`,
  ),
  terminated: new PostboxError(
    'unavailable',
    `${LABEL}: the browser closed the database (site data cleared, or storage evicted); reload the app`,
  ),
};

/** The error every call gets once the database is lost for `why`. */
export const lostError = (why: Lost): PostboxError => LOST_MESSAGES[why];

/**
 * A failed IndexedDB call as the app should see it: the quota as `storage_full` (the transaction
 * aborted, so nothing of it was kept), anything else as it came.
 */
export function storeError(e: unknown): unknown {
  if (isPostboxError(e)) return e;
  const name = (e as { name?: unknown } | null)?.name;
  if (name === 'QuotaExceededError') {
    return new PostboxError(
      'storage_full',
      `${LABEL}: the browser's storage quota for this site is used up; nothing of the write was kept. Free space (old conversations, other site data), then retry`,
      { cause: e },
    );
  }
  return e;
}

/** What {@link openDatabase} needs. */
export interface OpenRequest {
  factory: IDBFactory;
  name: string;
  /** The schema steps (the store's own, or a test's longer list). */
  migrations?: readonly IndexedDbMigration[];
  /** Called once when the open database becomes unusable. */
  onLost(why: Lost): void;
}

/**
 * Opens (creating or upgrading) the database. A database written by a newer schema rejects with
 * `misconfigured`; an upgrade that older tabs keep waiting is resolved by those tabs closing
 * their connection on `versionchange` (see {@link Lost}).
 */
export async function openDatabase(r: OpenRequest): Promise<Db> {
  const steps = r.migrations ?? MIGRATIONS;
  const request = r.factory.open(r.name, steps.length);
  request.onupgradeneeded = (ev) => {
    const db = wrap(request.result) as Db;
    const tx = wrap(request.transaction!) as unknown as Parameters<IndexedDbMigration>[1];
    for (let v = ev.oldVersion; v < steps.length; v++) steps[v]!(db, tx);
  };
  let db: Db;
  try {
    db = (await wrap(request)) as Db;
  } catch (e) {
    if ((e as { name?: unknown } | null)?.name === 'VersionError') {
      throw new PostboxError(
        'misconfigured',
        `${LABEL}: the database "${r.name}" was written by a newer version of the app (schema above ${steps.length}); load the newer app, or use another database name`,
        { cause: e },
      );
    }
    throw storeError(e);
  }
  // A newer tab wants to upgrade: let it, and refuse every later call of this one.
  db.addEventListener('versionchange', () => {
    db.close();
    r.onLost('upgraded');
  });
  // Fired only when the browser closes the connection itself (never on db.close()).
  db.addEventListener('close', () => r.onLost('terminated'));
  return db;
}

/**
 * Asks the browser to keep this site's storage under pressure (`navigator.storage.persist()`).
 * Resolves with the browser's answer, or undefined where the API is missing (Node, old
 * browsers). Browsers may say no (Chromium decides by site engagement; Firefox asks the user).
 */
export async function requestPersistentStorage(): Promise<boolean | undefined> {
  const storage = (globalThis as { navigator?: { storage?: { persist?: () => Promise<boolean> } } }).navigator
    ?.storage;
  if (typeof storage?.persist !== 'function') return undefined;
  try {
    return await storage.persist();
  } catch {
    return undefined;
  }
}
