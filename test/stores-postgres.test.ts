import { EVERY_CAPABILITY } from './helpers.js';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import type {
  AppendInput,
  DeviceAddress,
  GroupChange,
  GroupInput,
  KeyUpload,
  MessageInput,
  ReceiptInput,
  ServerStore,
} from '../src/server/store.js';
import { ridOf, upload } from '../src/testing/key-fixtures.js';
import {
  migratePostgresServerStore,
  openPostgresServerStore,
  POSTGRES_SERVER_SCHEMA_VERSION,
  type PgPool,
} from '../src/server/stores/postgres.js';
import { registerCases, serverStoreConformance } from '../src/testing/index.js';
import { checkAfterUpgrade, msg, writeBeforeUpgrade } from './fixtures/consent-upgrade.js';
import { countingPool } from './fixtures/pg-count.js';
import { describeWithServices, PG_URL, pgUnreachable } from './fixtures/services.js';

const URL = PG_URL;
const reason = await pgUnreachable();

// Each case works in a schema of its own, dropped when the file is done: runs never see each
// other's data, and nothing is left behind in the database.
const schemas: string[] = [];
const freshSchema = (): string => {
  const name = `pb_${randomBytes(6).toString('hex')}`;
  schemas.push(name);
  return name;
};

// A store's schema is its "disk": a new store over the same schema is a restart (or another node).
const schemaOf = new WeakMap<ServerStore, string>();
async function openOn(schema: string): Promise<ServerStore> {
  const store = await openPostgresServerStore({ connectionString: URL, schema, poolSize: 4 });
  schemaOf.set(store, schema);
  return store;
}

describeWithServices('postgres server store', reason, () => {
  afterAll(async () => {
    const admin = new pg.Client({ connectionString: URL });
    await admin.connect();
    try {
      for (const name of schemas) await admin.query(`DROP SCHEMA IF EXISTS "${name}" CASCADE`);
    } finally {
      await admin.end();
    }
  });

  describe('postgres server store conformance', () => {
    registerCases(
      serverStoreConformance({
        name: 'postgres',
        open: () => openOn(freshSchema()),
        async reopen(old) {
          await old.close();
          return openOn(schemaOf.get(old)!);
        },
        share: (store) => openOn(schemaOf.get(store)!),
        capabilities: EVERY_CAPABILITY,
        openWithFaults: (faults) =>
          openPostgresServerStore({
            connectionString: URL,
            schema: freshSchema(),
            poolSize: 4,
            beforeWrite: faults.hook,
          }),
      }),
      it,
    );
  });

  describe('postgres server store', () => {
    const alice1: DeviceAddress = { user: 'alice', device: 'a1' };
    const bob1: DeviceAddress = { user: 'bob', device: 'b1' };
    const withPool = async <T>(fn: (pool: pg.Pool) => Promise<T>): Promise<T> => {
      const pool = new pg.Pool({ connectionString: URL, max: 4 });
      try {
        return await fn(pool);
      } finally {
        await pool.end();
      }
    };
    const count = async (pool: pg.Pool, schema: string, table: string): Promise<number> =>
      Number((await pool.query(`SELECT count(*) AS n FROM "${schema}".${table}`)).rows[0].n);

    it('nodes starting together apply each migration step once, and re-opening applies nothing', async () => {
      const schema = freshSchema();
      await withPool(async (pool) => {
        const versions = await Promise.all(
          Array.from({ length: 4 }, () => migratePostgresServerStore(pool as unknown as PgPool, schema)),
        );
        // Every step applied by exactly one of them.
        expect(versions.reduce((a, b) => a + b, 0)).toBe(POSTGRES_SERVER_SCHEMA_VERSION);
        const steps = await pool.query(`SELECT version FROM "${schema}".postbox_schema ORDER BY version`);
        expect(steps.rows.map((r: { version: number }) => r.version)).toEqual(
          Array.from({ length: POSTGRES_SERVER_SCHEMA_VERSION }, (_, i) => i + 1),
        );
        expect(await migratePostgresServerStore(pool as unknown as PgPool, schema)).toBe(0);
      });
    });

    it('a schema at version 2 gets only the missing steps, keeps its data and who may see whom, and counts its inboxes', async () => {
      const schema = freshSchema();
      const old = await openOn(schema);
      await writeBeforeUpgrade(old);
      await old.close();
      await withPool(async (pool) => {
        // As a version 2 schema was: symmetric contacts, members without versions, dedupe records
        // that do not say where a message went, keyed by device before message id.
        await pool.query(`
          SET search_path TO "${schema}";
          CREATE TABLE contacts (a text NOT NULL, b text NOT NULL, PRIMARY KEY (a, b));
          INSERT INTO contacts SELECT DISTINCT least(viewer, target), greatest(viewer, target) FROM consents;
          DROP TABLE consents;
          ALTER TABLE group_members DROP COLUMN since_ver, DROP COLUMN acted_ver;
          ALTER TABLE dedupe DROP COLUMN to_user, DROP COLUMN gver, DROP CONSTRAINT dedupe_pkey,
            ADD PRIMARY KEY (from_user, from_device, msg_id);
          DROP TABLE group_invites;
          ALTER TABLE inbox_heads DROP COLUMN entries, DROP COLUMN bytes;
          -- Before step 10 a message's one entry referenced a shared row like any other.
          INSERT INTO messages (from_user, from_device, msg_id, to_user, to_group, seq, ts, body, refs)
            SELECT from_user, from_device, msg_id, to_user, false, seq, ts, body, 1 FROM inbox WHERE msg_id IS NOT NULL;
          UPDATE inbox SET body = NULL, message = (
            SELECT m.id FROM messages m
            WHERE (m.msg_id, m.from_user, m.from_device) = (inbox.msg_id, inbox.from_user, inbox.from_device)
          ) WHERE msg_id IS NOT NULL;
          ALTER TABLE inbox DROP COLUMN size, DROP COLUMN from_user, DROP COLUMN from_device,
            DROP COLUMN msg_id, DROP COLUMN to_user, DROP COLUMN seq;
          DROP INDEX inbox_gaps;
          DROP TABLE action_counts;
          DELETE FROM postbox_schema WHERE version > 2;
          RESET search_path;
        `);
        expect(await migratePostgresServerStore(pool as unknown as PgPool, schema)).toBe(
          POSTGRES_SERVER_SCHEMA_VERSION - 2,
        );
        // Step 9 keys the records by message id first (ids that sort by time insert at the end).
        const key = await pool.query(
          `SELECT a.attname FROM pg_index i
           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
           WHERE i.indrelid = '"${schema}".dedupe'::regclass AND i.indisprimary
           ORDER BY array_position(i.indkey::int2[], a.attnum)`,
        );
        expect(key.rows.map((r: { attname: string }) => r.attname)).toEqual([
          'msg_id',
          'from_user',
          'from_device',
        ]);
      });
      const store = await openOn(schema);
      try {
        await checkAfterUpgrade(store);
      } finally {
        await store.close();
      }
      // Step 4 counted the inboxes it found: each head's usage matches its entries.
      await withPool(async (pool) => {
        const wrong = await pool.query(
          `SELECT h.dev FROM "${schema}".inbox_heads h
           WHERE h.entries <> (SELECT count(*) FROM "${schema}".inbox WHERE dev = h.dev)
              OR h.bytes <> (SELECT coalesce(sum(size), 0) FROM "${schema}".inbox WHERE dev = h.dev)`,
        );
        expect(wrong.rows).toEqual([]);
      });
    });

    it('refuses a schema written by a newer version', async () => {
      const schema = freshSchema();
      await withPool(async (pool) => {
        await migratePostgresServerStore(pool as unknown as PgPool, schema);
        await pool.query(`INSERT INTO "${schema}".postbox_schema (version) VALUES (999)`);
        await expect(openPostgresServerStore({ pool: pool as unknown as PgPool, schema })).rejects.toThrow(
          /newer/,
        );
      });
    });

    it('a store handed a pool uses it and never ends it; writes run with synchronous_commit on', async () => {
      const schema = freshSchema();
      await withPool(async (pool) => {
        await pool.query(`SET synchronous_commit = off`); // on one connection only: the store sets its own
        const store = await openPostgresServerStore({ pool, schema });
        await store.registerDevice(alice1, 1);
        await store.registerDevice(bob1, 1);
        expect(await store.append([msg('m1')], 1000)).toEqual([
          { ok: true, ts: 1000, duplicate: false, notify: [bob1], offsets: [1] },
        ]);
        await store.close();
        expect((await pool.query('SELECT 1 AS x')).rows).toEqual([{ x: 1 }]);
      });
    });

    // The names the store gives its statements (postgres-prepared.ts), on the pool's one connection.
    const preparedOn = async (pool: pg.Pool): Promise<number> =>
      Number(
        (await pool.query(`SELECT count(*) AS n FROM pg_prepared_statements WHERE name LIKE 'postbox\\_%'`))
          .rows[0].n,
      );

    it('each statement is prepared once per connection and then only run again; with preparedStatements off, none is', async () => {
      const life = async (store: ServerStore, from: number): Promise<void> => {
        for (let i = from; i < from + 3; i++) {
          await store.append([msg(`m${i}`)], 1000 + i);
          const [entry] = await store.readInbox(bob1, 0, 10);
          await store.ack(bob1, [entry!.offset], 1000 + i);
        }
        await store.devices('bob');
      };
      for (const preparedStatements of [true, false]) {
        const schema = freshSchema();
        const pool = new pg.Pool({ connectionString: URL, max: 1 });
        try {
          const store = await openPostgresServerStore({ pool, schema, preparedStatements });
          await store.registerDevice(alice1, 1);
          await store.registerDevice(bob1, 1);
          await life(store, 1);
          const prepared = await preparedOn(pool);
          if (preparedStatements) expect(prepared).toBeGreaterThan(3);
          else expect(prepared).toBe(0);
          // The same kinds of calls again prepare nothing new: the connection keeps what it parsed.
          await life(store, 4);
          expect(await preparedOn(pool)).toBe(prepared);
          await store.close();
        } finally {
          await pool.end();
        }
      }
    });

    it('a prepared statement whose result columns a schema change altered, or that was deallocated, is dropped with its connection, and the call succeeds on a fresh one', async () => {
      const schema = freshSchema();
      const pool = new pg.Pool({ connectionString: URL, max: 1 });
      try {
        const store = await openPostgresServerStore({ pool, schema });
        await store.registerDevice(alice1, 1);
        await store.registerDevice(bob1, 1);
        // Both prepare statements that return `devices.device`: one on the pool, one in a transaction.
        expect(await store.devices('bob')).toEqual(['b1']);
        expect(await store.append([msg('m1')], 1000)).toMatchObject([{ ok: true, duplicate: false }]);
        const before = (await pool.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
        // What a newer node's migration could do while this one runs; the transaction meets it first.
        await pool.query(`ALTER TABLE "${schema}".devices ALTER COLUMN device TYPE varchar(200)`);
        expect(await store.append([msg('m2')], 1001)).toMatchObject([{ ok: true, duplicate: false }]);
        expect(await store.devices('bob')).toEqual(['b1']);
        // And back, the statement run on the pool meeting it first.
        await pool.query(`ALTER TABLE "${schema}".devices ALTER COLUMN device TYPE text`);
        expect(await store.devices('bob')).toEqual(['b1']);
        expect(await store.append([msg('m3')], 1002)).toMatchObject([{ ok: true, duplicate: false }]);
        expect((await store.readInbox(bob1, 0, 10)).map((e) => e.kind === 'msg' && e.id)).toEqual([
          'm1',
          'm2',
          'm3',
        ]);
        // The connections that held the stale statements are gone.
        const after = (await pool.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
        expect(after).not.toBe(before);
        // Statements deallocated behind pg's back (a pooler's `DISCARD ALL`): the same recovery.
        await pool.query('DEALLOCATE ALL');
        expect(await store.append([msg('m4')], 1003)).toMatchObject([{ ok: true, duplicate: false }]);
        await pool.query('DEALLOCATE ALL');
        expect(await store.devices('bob')).toEqual(['b1']);
        expect((await pool.query('SELECT pg_backend_pid() AS pid')).rows[0].pid).not.toBe(after);
        await store.close();
      } finally {
        await pool.end();
      }
    });

    it('a batch of messages (plain, end-to-end encrypted, group), read receipts, duplicates or acks costs the same few statements however many items it has', async () => {
      const schema = freshSchema();
      await withPool(async (pool) => {
        // The statements the store's transactions send, counted on the connections it checks out.
        const counted = countingPool(pool);
        const store = await openPostgresServerStore({ pool: counted.pool, schema });
        const pairs = Array.from({ length: 64 }, (_, i) => ({
          a: { user: `a${i}`, device: 'd' },
          b: { user: `b${i}`, device: 'd' },
        }));
        for (const { a, b } of pairs) {
          for (const d of [a, b]) {
            await store.registerDevice(d, 1);
            await store.putKeys(d, upload(d, { pre: [1], kyber: [101] }));
          }
        }
        const plain = (n: number) =>
          pairs.slice(0, n).map(({ a, b }, i): MessageInput => ({
            kind: 'msg',
            from: a,
            id: `p${i}`,
            to: b.user,
            seq: i + 1,
            body: new Uint8Array(100),
          }));
        const sealed = (n: number) =>
          pairs.slice(0, n).map(({ a, b }, i): MessageInput => ({
            kind: 'msg',
            from: a,
            id: `e${i}`,
            to: b.user,
            seq: i + 1,
            body: new Uint8Array(0),
            envelopes: [{ user: b.user, device: 'd', rid: ridOf(b, 1), body: new Uint8Array(100) }],
          }));
        const receipts = (n: number) =>
          pairs.slice(0, n).map(({ a, b }, i): ReceiptInput => ({
            kind: 'receipt',
            from: b,
            id: `r${i}`,
            to: a.user,
            status: 'read',
            ids: [`p${i}`, `e${i}`],
          }));
        // Each pair's group of two (made below).
        const grouped = (n: number) =>
          pairs.slice(0, n).map(({ a }, i): MessageInput => ({
            kind: 'msg',
            from: a,
            id: `g${i}`,
            to: `grp${i}`,
            group: true,
            seq: i + 1,
            body: new Uint8Array(100),
          }));
        const groups = pairs.map(({ a, b }, i): AppendInput => ({
          kind: 'group',
          from: a,
          id: `create${i}`,
          group: `grp${i}`,
          change: { op: 'create', name: 'G', members: [b.user] },
          maxMembers: 8,
        }));
        expect((await store.append(groups, 0)).every((o) => o.ok)).toBe(true);
        const cost = async (batch: AppendInput[], now: number) => {
          counted.reset();
          const out = await store.append(batch, now);
          expect(out.every((o) => o.ok && !o.duplicate && o.notify.length === 1)).toBe(true);
          return counted.statements();
        };
        try {
          // One item, then 64 of the same kind (later items of each kind name other pairs).
          const one = [
            await cost(plain(1), 1),
            await cost(sealed(1), 2),
            await cost(receipts(1), 3),
            await cost(grouped(1), 4),
          ];
          const many = [
            await cost(plain(64).slice(1), 5),
            await cost(sealed(64).slice(1), 6),
            await cost(receipts(64).slice(1), 7),
            await cost(grouped(64).slice(1), 8),
          ];
          expect(many).toEqual(one);
          expect(Math.max(...many)).toBeLessThanOrEqual(8);
          // A batch sent again (a client resending after a lost connection): duplicates, each with
          // its original's time, as cheaply.
          counted.reset();
          const again = await store.append(plain(64).slice(1), 9);
          expect(again.every((o) => o.ok && o.duplicate && o.ts === 5)).toBe(true);
          expect(counted.statements()).toBeLessThanOrEqual(8);
          // Acks of many devices in one event-loop turn (one flush), each writing `delivered`
          // statuses: as few statements as one device's.
          const ackAll = async (devices: DeviceAddress[]) => {
            const waiting = await Promise.all(devices.map((d) => store.readInbox(d, 0, 100)));
            counted.reset();
            const done = await Promise.all(
              devices.map((d, i) =>
                store.ack(
                  d,
                  waiting[i]!.map((e) => e.offset),
                  10,
                ),
              ),
            );
            expect(done.every((r) => r.count === waiting[0]!.length && r.notify.length === 1)).toBe(true);
            return counted.statements();
          };
          const readers = pairs.map((p) => p.b);
          expect(await ackAll(readers.slice(1))).toBe(await ackAll(readers.slice(0, 1)));
          // And every receipt counted both messages it names (after the group's creation).
          const read = await store.readInbox(pairs[9]!.a, 0, 10);
          expect(read.filter((e) => e.kind === 'status' && e.status === 'read')).toEqual([
            { offset: 2, kind: 'status', status: 'read', ids: ['p9', 'e9'], by: 'b9', ts: 7 },
          ]);
        } finally {
          await store.close();
        }
      });
    });

    /** Registers alice1 and `readers` and commits one message from alice1 to each (offset 1 in each inbox). */
    const oneEach = async (store: ServerStore, readers: DeviceAddress[]): Promise<void> => {
      await store.registerDevice(alice1, 1);
      for (const d of readers) await store.registerDevice(d, 1);
      const sends = readers.map((d, i): MessageInput => ({
        kind: 'msg',
        from: alice1,
        id: `m${i}`,
        to: d.user,
        seq: i + 1,
        body: new Uint8Array(1),
      }));
      expect((await store.append(sends, 2)).every((o) => o.ok)).toBe(true);
    };

    it('acks made while an ack flush runs wait for it and then go together in one transaction', async () => {
      const schema = freshSchema();
      await withPool(async (pool) => {
        const counted = countingPool(pool);
        const store = await openPostgresServerStore({ pool: counted.pool, schema });
        const readers = Array.from({ length: 21 }, (_, i) => ({ user: `r${i}`, device: 'd' }));
        try {
          await oneEach(store, readers);
          counted.reset();
          const turn = () => new Promise((resolve) => setImmediate(resolve));
          const [first, ...rest] = readers;
          const acks = [store.ack(first!, [1], 3)];
          await turn(); // the first flush has begun
          // Four more turns of five acks each while it runs: without the wait, four more flushes.
          for (let k = 0; k < 4; k++) {
            for (const d of rest.slice(k * 5, k * 5 + 5)) acks.push(store.ack(d, [1], 3));
            await turn();
          }
          const done = await Promise.all(acks);
          expect(done.every((r) => r.count === 1 && r.notify.length === 1)).toBe(true);
          expect(counted.transactions()).toBe(2);
        } finally {
          await store.close();
        }
      });
    });

    it('acks waiting for a running flush are committed before close resolves', async () => {
      const schema = freshSchema();
      const store = await openOn(schema);
      const readers = [0, 1, 2].map((i) => ({ user: `r${i}`, device: 'd' }));
      await oneEach(store, readers);
      const acks = [store.ack(readers[0]!, [1], 3)];
      await new Promise((resolve) => setImmediate(resolve)); // its flush has begun
      acks.push(store.ack(readers[1]!, [1], 3), store.ack(readers[2]!, [1], 3)); // they wait for it
      await store.close();
      expect((await Promise.all(acks)).map((r) => r.count)).toEqual([1, 1, 1]);
      const again = await openOn(schema);
      try {
        for (const d of readers) expect(await again.readInbox(d, 0, 10)).toEqual([]);
      } finally {
        await again.close();
      }
    });

    it('keeps commit times exactly, fractions of a millisecond included', async () => {
      const store = await openOn(freshSchema());
      try {
        await store.registerDevice(alice1, 0.25);
        await store.registerDevice(bob1, 0.25);
        const [first] = await store.append([msg('m1')], 1_700_000_000_123.5);
        expect(first).toMatchObject({ ok: true, ts: 1_700_000_000_123.5 });
        const [again] = await store.append([msg('m1')], 1_800_000_000_000);
        expect(again).toMatchObject({ ok: true, duplicate: true, ts: 1_700_000_000_123.5 });
        expect((await store.readInbox(bob1, 0, 10))[0]?.ts).toBe(1_700_000_000_123.5);
      } finally {
        await store.close();
      }
    });

    it('reads with any numbers for after and limit, as the memory store does', async () => {
      const store = await openOn(freshSchema());
      try {
        await store.registerDevice(alice1, 1);
        await store.registerDevice(bob1, 1);
        await store.append([msg('m1'), msg('m2')], 1000);
        const ids = async (after: number, limit: number) =>
          (await store.readInbox(bob1, after, limit)).map((e) => e.offset);
        expect(await ids(0, 1e20)).toEqual([1, 2]);
        expect(await ids(0, Infinity)).toEqual([1, 2]);
        expect(await ids(0, NaN)).toEqual([1, 2]);
        expect(await ids(0.5, 1.5)).toEqual([1, 2]);
        expect(await ids(-Infinity, 1)).toEqual([1]);
        expect(await ids(1e20, 10)).toEqual([]);
        expect(await ids(NaN, 10)).toEqual([]);
        expect(await store.ack(bob1, [1e20, 1.5, NaN], 2000)).toEqual({ count: 0, notify: [] });
      } finally {
        await store.close();
      }
    });

    it('rejects a schema name that is not a plain identifier', async () => {
      await expect(
        openPostgresServerStore({ connectionString: URL, schema: 'x"; DROP TABLE y; --' }),
      ).rejects.toThrow(/plain identifier/);
    });

    it('a body is stored once and deleted with its last inbox reference', async () => {
      const schema = freshSchema();
      const store = await openOn(schema);
      const bob2: DeviceAddress = { user: 'bob', device: 'b2' };
      try {
        for (const d of [alice1, bob1, bob2]) await store.registerDevice(d, 1);
        await store.append([msg('m1')], 1000);
        await withPool(async (pool) => {
          expect(await count(pool, schema, 'messages')).toBe(1);
          expect(await count(pool, schema, 'inbox')).toBe(2);
          const [e1] = await store.readInbox(bob1, 0, 10);
          await store.ack(bob1, [e1!.offset], 2000);
          expect(await count(pool, schema, 'messages')).toBe(1);
          const [e2] = await store.readInbox(bob2, 0, 10);
          await store.ack(bob2, [e2!.offset], 2000);
          expect(await count(pool, schema, 'messages')).toBe(0);
          expect(await count(pool, schema, 'delivered')).toBe(0); // its marks went with it
        });
      } finally {
        await store.close();
      }
    });

    it('a 1:1 message with one entry is that entry alone, one with two entries shares one body, and acks and expiry leave no row behind', async () => {
      const schema = freshSchema();
      const store = await openOn(schema);
      const bob2: DeviceAddress = { user: 'bob', device: 'b2' };
      const carol1: DeviceAddress = { user: 'carol', device: 'c1' };
      try {
        for (const d of [alice1, bob1, carol1]) await store.registerDevice(d, 1);
        await store.append([msg('m1')], 1000);
        await withPool(async (pool) => {
          expect(await count(pool, schema, 'messages')).toBe(0); // bob has one device
          // What a node from before step 10 reads of it (a rolling upgrade): a reference to no body,
          // which its read skips (the entry waits for a newer node), never a status entry.
          const old = await pool.query(
            `SELECT i.message, m.from_user FROM "${schema}".inbox i
             LEFT JOIN "${schema}".messages m ON m.id = i.message`,
          );
          expect(old.rows).toEqual([{ message: '0', from_user: null }]);
        });
        const [one] = await store.readInbox(bob1, 0, 10);
        expect(one).toMatchObject({ kind: 'msg', id: 'm1', from: alice1, to: 'bob', seq: 1, ts: 1000 });
        expect(new TextDecoder().decode((one as { body: Uint8Array }).body)).toBe('m1');
        expect((one as { group?: boolean }).group).toBeUndefined();
        await store.registerDevice(bob2, 1001);
        await store.append([msg('m2')], 1002);
        await withPool(async (pool) =>
          expect((await pool.query(`SELECT refs FROM "${schema}".messages`)).rows).toEqual([{ refs: 2 }]),
        );
        // The sender hears `delivered` once per user, whichever form the message was stored in.
        const told = [
          await store.ack(bob1, [one!.offset, 2], 1003),
          await store.ack(bob2, [1], 1004),
        ].flatMap((r) => r.entries ?? []);
        expect(told.map((e) => e.entry)).toMatchObject([
          { kind: 'status', status: 'delivered', ids: ['m1', 'm2'] },
        ]);
        // Expiry of a message in its one entry tells `expired` once and leaves nothing.
        await store.append([msg('m3', alice1, 'carol')], 1005);
        expect((await store.expire(2000, 3000)).count).toBe(2); // m3 and alice's ✓✓ entry
        const expired = (await store.readInbox(alice1, 0, 100)).flatMap((e) =>
          e.kind === 'status' && e.status === 'expired' ? e.ids : [],
        );
        expect(expired).toEqual(['m3']);
        await withPool(async (pool) => {
          expect((await count(pool, schema, 'messages')) + (await count(pool, schema, 'delivered'))).toBe(0);
          const drift = await pool.query(
            `SELECT h.dev FROM "${schema}".inbox_heads h
             WHERE h.entries <> (SELECT count(*) FROM "${schema}".inbox WHERE dev = h.dev)
                OR h.bytes <> (SELECT coalesce(sum(size), 0) FROM "${schema}".inbox WHERE dev = h.dev)`,
          );
          expect(drift.rows).toEqual([]);
        });
      } finally {
        await store.close();
      }
    });

    it('a big expiry backlog is removed in bounded transactions, telling each message once', async () => {
      const schema = freshSchema();
      const store = await openPostgresServerStore({ connectionString: URL, schema, expiryBatchSize: 100 });
      try {
        await store.registerDevice(alice1, 1);
        await store.registerDevice(bob1, 1);
        await store.registerDevice({ user: 'bob', device: 'b2' }, 1);
        const batch = Array.from({ length: 450 }, (_, i) => msg(`m${i}`));
        await store.append(batch, 1000);
        const r = await store.expire(2000, 3000);
        expect(r.count).toBe(900);
        const statuses = (await store.readInbox(alice1, 0, 10_000)).flatMap((e) =>
          e.kind === 'status' && e.status === 'expired' ? e.ids : [],
        );
        expect(statuses.sort()).toEqual(batch.map((m) => m.id).sort()); // each once, across steps
        await withPool(async (pool) => {
          expect(await count(pool, schema, 'messages')).toBe(0);
          expect(await count(pool, schema, 'dedupe')).toBe(0);
        });
      } finally {
        await store.close();
      }
    });

    it('expiry in steps smaller than the devices and their backlogs removes every expired entry and no other', async () => {
      const schema = freshSchema();
      const store = await openPostgresServerStore({ connectionString: URL, schema, expiryBatchSize: 2 });
      try {
        // Two devices first with nothing expired: a step can read devices and remove nothing.
        const fresh = [0, 1].map((i) => ({ user: `f${i}`, device: 'd' }));
        const readers = Array.from({ length: 5 }, (_, i) => ({ user: `r${i}`, device: 'd' }));
        for (const d of [alice1, ...fresh, ...readers]) await store.registerDevice(d, 1);
        for (const ts of [1000, 1100, 1200, 5000]) {
          const to = ts === 5000 ? [...fresh, ...readers] : readers;
          await store.append(
            to.map((r) => ({ ...msg(`${r.user}-${ts}`), to: r.user })),
            ts,
          );
        }
        expect((await store.expire(2000, 6000)).count).toBe(15);
        for (const r of [...fresh, ...readers]) {
          const ids = (await store.readInbox(r, 0, 10)).flatMap((e) => (e.kind === 'msg' ? [e.id] : []));
          expect(ids).toEqual([`${r.user}-5000`]);
        }
        expect((await store.expire(2000, 6000)).count).toBe(0);
      } finally {
        await store.close();
      }
    });

    it('a push token set on one node is known on another, replaced, removed, and gone with its device', async () => {
      const schema = freshSchema();
      const [a, b] = [await openPostgresServerStore({ connectionString: URL, schema }), await openOn(schema)];
      try {
        await a.setPushToken(bob1, { kind: 'fcm', token: 'early' }); // not registered yet: ignored
        await a.registerDevice(bob1, 1);
        expect(await b.pushToken?.(bob1)).toBeUndefined();
        await a.setPushToken(bob1, { kind: 'fcm', token: 't1' });
        expect(await b.pushToken?.(bob1)).toEqual({ kind: 'fcm', token: 't1' });
        await b.setPushToken?.(bob1, { kind: 'apns', token: 't2' });
        expect(await a.pushToken(bob1)).toEqual({ kind: 'apns', token: 't2' });
        await a.setPushToken(bob1, undefined);
        expect(await a.pushToken(bob1)).toBeUndefined();
        await a.setPushToken(bob1, { kind: 'fcm', token: 't3' });
        await b.unregisterDevice(bob1);
        await a.registerDevice(bob1, 2);
        expect(await a.pushToken(bob1)).toBeUndefined();
      } finally {
        await a.close();
        await b.close();
      }
    });

    it('a device linked on one node while another adds its user to a group learns the group', async () => {
      const schema = freshSchema();
      const [a, b] = [await openOn(schema), await openOn(schema)];
      const group = (id: string, change: GroupChange): GroupInput => ({
        kind: 'group',
        from: alice1,
        id,
        group: `g-${id}`,
        change,
        maxMembers: 1000,
      });
      try {
        await a.registerDevice(alice1, 1);
        const users = Array.from({ length: 40 }, (_, i) => `u${i}`);
        for (const u of users) await a.registerDevice({ user: u, device: 'd1' }, 1);
        await a.append(
          users.map((u) => ({ ...group(u, { op: 'create', name: u, members: [] }), id: `create-${u}` })),
          1,
        );
        // Each user's new device races the add of that user to a group of its own, on the other node.
        await Promise.all(
          users.map((u) =>
            Promise.all([
              a.registerDevice({ user: u, device: 'd2' }, 2),
              b.append([{ ...group(u, { op: 'add', members: [u] }), id: `add-${u}` }], 2),
            ]),
          ),
        );
        for (const u of users) {
          const known = (await a.readInbox({ user: u, device: 'd2' }, 0, 100)).some(
            (e) =>
              e.kind === 'group' && e.event.group === `g-${u}` && e.event.snapshot?.some((m) => m.user === u),
          );
          expect(known, `${u}/d2 got a snapshot of its group with itself in it`).toBe(true);
        }
      } finally {
        await a.close();
        await b.close();
      }
    });

    it('three nodes claiming one device’s keys concurrently never hand out a one-time key twice', async () => {
      const schema = freshSchema();
      const nodes = [await openOn(schema), await openOn(schema), await openOn(schema)];
      try {
        await nodes[0]!.registerDevice(bob1, 1);
        const keys: KeyUpload = {
          identityKey: new Uint8Array([1]),
          registrationId: 7,
          signedPreKey: { id: 1, key: new Uint8Array([2]), signature: new Uint8Array([3]) },
          lastResortKyber: { id: 9000, key: new Uint8Array([4]), signature: new Uint8Array([5]) },
          preKeys: Array.from({ length: 60 }, (_, i) => ({ id: i + 1, key: new Uint8Array([i]) })),
          kyberPreKeys: Array.from({ length: 30 }, (_, i) => ({
            id: 101 + i,
            key: new Uint8Array([i]),
            signature: new Uint8Array([i]),
          })),
        };
        await nodes[1]!.putKeys(bob1, keys);
        const claims = await Promise.all(
          Array.from({ length: 90 }, (_, i) => nodes[i % 3]!.claimKeys('bob', 'b1')),
        );
        const bundles = claims.flat();
        const pre = bundles.flatMap((b) => (b.preKey ? [b.preKey.id] : []));
        expect(pre.sort((a, b) => a - b)).toEqual(Array.from({ length: 60 }, (_, i) => i + 1));
        const kyber = bundles.map((b) => b.kyberPreKey.id).filter((id) => id !== 9000);
        expect(kyber.sort((a, b) => a - b)).toEqual(Array.from({ length: 30 }, (_, i) => 101 + i));
      } finally {
        for (const n of nodes) await n.close();
      }
    });

    it('inboxSize follows the entries waiting, from the table statistics (an estimate that lags by about a second)', async () => {
      const store = await openOn(freshSchema());
      try {
        for (const d of [alice1, bob1, { user: 'bob', device: 'b2' }]) await store.registerDevice(d, 1);
        await store.append([msg('m1'), msg('m2'), msg('m3')], 2);
        const until = async (n: number) => {
          for (let i = 0; i < 150 && (await store.inboxSize!()) !== n; i++)
            await new Promise((r) => setTimeout(r, 100));
          return store.inboxSize!();
        };
        expect(await until(6)).toBe(6); // 3 messages × bob's 2 devices
        const entries = await store.readInbox(bob1, 0, 10);
        await store.ack(
          bob1,
          entries.map((e) => e.offset),
          3,
        );
        expect(await until(4)).toBe(4); // b1's three gone, alice's `delivered` status waiting
      } finally {
        await store.close();
      }
    });

    /**
     * Two stores (nodes) on one fresh schema with retries off, so that a deadlock shows as a failed
     * call: `fn` reports each round's settled calls with `failed`; both stores are closed after,
     * and no call may have failed.
     */
    const twoNodes = async (
      what: string,
      fn: (
        a: ServerStore,
        b: ServerStore,
        failed: (round: number, results: PromiseSettledResult<unknown>[]) => void,
      ) => Promise<void>,
    ): Promise<void> => {
      const schema = freshSchema();
      const a = await openPostgresServerStore({ connectionString: URL, schema, maxRetries: 0 });
      const b = await openPostgresServerStore({ connectionString: URL, schema, maxRetries: 0 });
      const failures: string[] = [];
      const failed = (round: number, results: PromiseSettledResult<unknown>[]) => {
        for (const r of results)
          if (r.status === 'rejected') failures.push(`round ${round}: ${(r.reason as Error).message}`);
      };
      try {
        await fn(a, b, failed);
      } finally {
        await a.close();
        await b.close();
      }
      expect(failures, `${what} that failed (deadlock victims)`).toEqual([]);
    };

    it('two nodes committing batches that start the same conversations in opposite orders never deadlock', async () => {
      // The first message between two users records the sender's consent; batches on two nodes
      // holding first messages of the same pairs in opposite orders must not lock them crosswise.
      await twoNodes('appends', async (a, b, failed) => {
        const users = Array.from({ length: 12 }, (_, i) => `u${i}`);
        for (const u of users) await a.registerDevice({ user: u, device: 'd' }, 1);
        for (let round = 0; round < 6; round++) {
          const pairs = users.map((u, i) => [u, users[(i + 1 + round) % users.length]!] as const);
          const batch = (from: readonly (readonly [string, string])[], tag: string): MessageInput[] =>
            from.map(([f, t], i) => ({
              kind: 'msg',
              from: { user: f, device: 'd' },
              id: `${tag}${round}-${i}`,
              to: t,
              seq: round * 100 + i + 1,
              body: Uint8Array.of(i),
            }));
          failed(
            round,
            await Promise.allSettled([
              a.append(batch(pairs, 'a'), 2),
              b.append(batch([...pairs].reverse(), 'b'), 2),
            ]),
          );
        }
        expect(await a.related('u1', 'u0')).toBe(true);
      });
    });

    it('two nodes committing group messages to the same groups from the same senders in opposite orders never deadlock', async () => {
      // A batch locks its groups FOR SHARE and marks its senders as having taken part (rows both
      // nodes write here) all at once, in key order. Committed one at a time in batch order, as
      // before 7 Dec, the two nodes deadlocked in the first round.
      await twoNodes('appends', async (a, b, failed) => {
        const users = Array.from({ length: 6 }, (_, i) => `u${i}`);
        for (const u of users) await a.registerDevice({ user: u, device: 'd' }, 1);
        const groups = Array.from({ length: 6 }, (_, g) => `g${g}`);
        const creates = groups.map((g, i): GroupInput => ({
          kind: 'group',
          from: { user: users[i]!, device: 'd' },
          id: `c-${g}`,
          group: g,
          change: { op: 'create', name: g, members: users.filter((_, k) => k !== i) },
          maxMembers: 64,
        }));
        expect((await a.append(creates, 1)).every((o) => o.ok)).toBe(true);
        for (let round = 0; round < 8; round++) {
          // Every sender to every group; node b takes the same items in the opposite order.
          const items = users.flatMap((u, i) =>
            groups.map((g, k): MessageInput => ({
              kind: 'msg',
              from: { user: u, device: 'd' },
              id: `m${round}-${i}-${k}`,
              to: g,
              group: true,
              seq: round * 100 + k + 1,
              body: Uint8Array.of(k),
            })),
          );
          const half = (tag: string, list: MessageInput[]) => list.map((m) => ({ ...m, id: tag + m.id }));
          const results = await Promise.allSettled([
            a.append(half('a', items), 2 + round),
            b.append(half('b', [...items].reverse()), 2 + round),
          ]);
          failed(round, results);
          for (const r of results)
            if (r.status === 'fulfilled') expect(r.value.every((o) => o.ok)).toBe(true);
        }
        expect(await a.related('u1', 'u0')).toBe(true);
      });
    });

    it('two nodes acking entries of the same messages at once never deadlock (marks and bodies lock in one order)', async () => {
      // Each body sits in three inboxes (the peer's two devices and the sender's other device);
      // each node acks two of them in one batch, the two nodes in opposite message orders: even
      // rounds on devices of the same users (shared `delivered` keys), odd rounds the sender's
      // copies (shared message rows only). With no retries a deadlock shows as a failed ack.
      const dev = (user: string, device: string): DeviceAddress => ({ user, device });
      const [p1, p2, q1, q2, s1, s2] = [
        dev('P', 'd1'),
        dev('P', 'd2'),
        dev('Q', 'd1'),
        dev('Q', 'd2'),
        dev('S', 'd1'),
        dev('S', 'd2'),
      ];
      await twoNodes('acks', async (a, b, failed) => {
        for (const d of [p1, p2, q1, q2, s1, s2]) await a.registerDevice(d, 1);
        for (let i = 0; i < 8; i++) {
          await a.append(
            [
              { kind: 'msg', from: s1, id: `p${i}`, to: 'P', seq: i + 1, body: Uint8Array.of(1) },
              { kind: 'msg', from: s1, id: `q${i}`, to: 'Q', seq: i + 1, body: Uint8Array.of(2) },
            ],
            2,
          );
          const offset = async (d: DeviceAddress, id: string) =>
            (await a.readInbox(d, 0, 1000)).find((e) => e.kind === 'msg' && e.id === id)!.offset;
          const even = i % 2 === 0;
          const [pA, qA] = [await offset(p1, `p${i}`), await offset(q1, `q${i}`)];
          const [qB, pB] = even
            ? [await offset(q2, `q${i}`), await offset(p2, `p${i}`)]
            : [await offset(s2, `q${i}`), await offset(s2, `p${i}`)];
          failed(
            i,
            await Promise.allSettled([
              a.ack(p1, [pA], 3),
              a.ack(q1, [qA], 3),
              b.ack(even ? q2 : s2, [qB], 3),
              b.ack(even ? p2 : s2, [pB], 3),
            ]),
          );
        }
        // And the statuses are right: S hears delivered once per (message, recipient user).
        const st = (await a.readInbox(s1, 0, 1000)).filter((e) => e.kind === 'status');
        expect(st.flatMap((e) => (e.kind === 'status' ? e.ids : [])).sort()).toEqual(
          Array.from({ length: 8 }, (_, i) => [`p${i}`, `q${i}`])
            .flat()
            .sort(),
        );
      });
    });
  });
});
