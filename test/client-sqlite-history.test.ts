// The SQLite client store's history: read through indexes (never a scan of a table per call),
// and a database from before history positions migrates with what it already showed.
import Database from 'better-sqlite3';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { SQLITE_CLIENT_SCHEMA_VERSION, sqliteClientStore } from '../src/client/stores/sqlite.js';
import { MIGRATIONS } from '../src/client/stores/sqlite-schema.js';
import { migrate, type SqliteDatabase } from '../src/util/sqlite.js';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'postbox-history-'));
afterAll(() => fs.rmSync(root, { recursive: true, force: true }));
let n = 0;
const freshFile = () => path.join(root, `db-${++n}.sqlite`);
const text = (s: string) => new TextEncoder().encode(s);

describe('sqlite client store history', () => {
  it('history, conversations and the position counter read through indexes, never scanning messages', async () => {
    const db = new Database(freshFile());
    const selects = new Set<string>();
    const wrapped: SqliteDatabase = {
      prepare: (sql) => {
        if (/^\s*SELECT/i.test(sql)) selects.add(sql);
        return db.prepare(sql);
      },
      exec: (sql) => db.exec(sql),
      close: () => db.close(),
      get inTransaction() {
        return db.inTransaction;
      },
    };
    const store = sqliteClientStore({ database: wrapped });
    // Enough rows that the planner has tables worth avoiding.
    for (let i = 0; i < 200; i++) {
      await store.enqueue(
        { id: `o${i}`, kind: 'msg', to: `u${i % 7}`, conv: `u${i % 7}`, body: text('x'), createdAt: i },
        true,
      );
    }
    db.exec('ANALYZE');
    const history = [...selects].filter((s) => /\bpos\b|\bconvs\b/.test(s));
    expect(history.length).toBeGreaterThanOrEqual(5);
    for (const sql of history) {
      const params = [...sql].filter((c) => c === '?').map(() => 1);
      const plan = (db.prepare(`EXPLAIN QUERY PLAN ${sql}`).all(...params) as Array<{ detail: string }>)
        .map((r) => r.detail)
        .join('; ');
      // The conversation list walks its own index (one row per conversation); nothing scans
      // the message tables or sorts them.
      expect(plan, sql).not.toMatch(/SCAN (inbound|outbox)|TEMP B-TREE/);
      expect(plan, sql).toMatch(/INDEX (inbound_pos|outbox_pos|inbound_unread|convs_last)/);
      // Counting unread messages walks the unread ones only.
      if (/read = 0/.test(sql)) expect(plan, sql).toMatch(/INDEX inbound_unread/);
    }
    await store.close();
    db.close();
  });

  it('a version 2 database migrates: what it showed gets positions, in each table’s order, interleaved by time', async () => {
    const file = freshFile();
    const db = new Database(file);
    migrate(db, MIGRATIONS.slice(0, 2), 'test');
    const inb = db.prepare(
      `INSERT INTO inbound (from_user, from_device, id, conv, to_user, seq, ts, body, held, read)
       VALUES (?, 'd', ?, ?, 'me', ?, ?, x'00', ?, ?)`,
    );
    const out = db.prepare(
      `INSERT INTO outbox (id, kind, to_user, conv, body, ids, created_at, seq, status)
       VALUES (?, ?, ?, ?, x'00', NULL, ?, ?, 'sent')`,
    );
    inb.run('bob', 'b1', 'bob', 1, 100, 0, 1);
    out.run('o1', 'msg', 'bob', 'bob', 150, 1);
    inb.run('bob', 'b2', 'bob', 2, 200, 0, 0);
    inb.run('bob', 'b4', 'bob', 4, 250, 1, 0); // held: not shown, no position
    out.run('r1', 'read', 'bob', 'bob', 260, null); // a receipt: not history
    inb.run('carol', 'c1', 'carol', 1, 300, 0, 0);
    out.run('o2', 'msg', 'bob', 'bob', 400, 2);
    db.close();

    const store = sqliteClientStore({ path: file });
    const tags = async (conv: string) =>
      (await store.history(conv, undefined, 10)).map((r) => (r.inbound ? r.inbound.id : r.outgoing.id));
    expect(await tags('bob')).toEqual(['o2', 'b2', 'o1', 'b1']);
    expect((await store.conversations()).map((c) => [c.conv, c.unread])).toEqual([
      ['bob', 1],
      ['carol', 1],
    ]);
    // New messages continue above the migrated positions.
    await store.applyInbound({
      insert: {
        id: 'b3',
        conv: 'bob',
        from: 'bob',
        fromDevice: 'd',
        to: 'me',
        seq: 3,
        ts: 500,
        body: text('3'),
        held: false,
        read: false,
      },
      release: ['b4'],
    });
    expect(await tags('bob')).toEqual(['b4', 'b3', 'o2', 'b2', 'o1', 'b1']);
    await store.close();
    const look = new Database(file);
    expect(look.pragma('user_version', { simple: true })).toBe(SQLITE_CLIENT_SCHEMA_VERSION);
    look.close();
  });
});
