/**
 * The PostgreSQL server store's schema (`postbox/server/postgres` re-exports what is public
 * here): the migration steps, each applied once in its own transaction under an advisory lock, and
 * the version they reach. The tables and indexes are described in docs/postgres.md; the store
 * itself (postgres.ts) reads and writes them.
 * @packageDocumentation
 */
import type { PgPool, PgQueryable } from './postgres.js';
import { GAP_ROW_STATUS } from './gap-notices.js';
import { guardConnection, quoteSchemaName } from './postgres-pool.js';

const LABEL = 'postgres server store';

/** Applies one migration step inside its transaction; `s` is the quoted schema name. */
type PgMigration = (c: PgQueryable, s: string) => Promise<unknown>;

const MIGRATIONS: readonly PgMigration[] = [
  // 1: the whole schema of the SQLite store at its version 3, with the offset counters in a table
  // of their own (one small row per device: the row every writer to that inbox locks). Times are
  // double precision: they are JS numbers (a virtual clock may have fractions of a millisecond),
  // and float8 holds every integer millisecond exactly.
  (c, s) =>
    c.query(`
      CREATE TABLE ${s}.devices (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        user_id text NOT NULL,
        device text NOT NULL,
        registered_at double precision NOT NULL,
        UNIQUE (user_id, device)
      );
      CREATE TABLE ${s}.inbox_heads (
        dev bigint PRIMARY KEY,
        last_offset bigint NOT NULL DEFAULT 0
      );
      CREATE TABLE ${s}.messages (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        from_user text NOT NULL,
        from_device text NOT NULL,
        msg_id text NOT NULL,
        to_user text NOT NULL,
        to_group boolean NOT NULL,
        seq bigint NOT NULL,
        ts double precision NOT NULL,
        body bytea NOT NULL,
        refs integer NOT NULL
      );
      CREATE TABLE ${s}.delivered (
        message bigint NOT NULL,
        user_id text NOT NULL,
        PRIMARY KEY (message, user_id)
      );
      CREATE TABLE ${s}.group_events (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        data bytea NOT NULL,
        refs integer NOT NULL
      );
      CREATE TABLE ${s}.inbox (
        dev bigint NOT NULL,
        pos bigint NOT NULL,
        ts double precision NOT NULL,
        message bigint,
        body bytea,
        event bigint,
        status text,
        ids text,
        by_user text,
        PRIMARY KEY (dev, pos)
      );
      CREATE INDEX inbox_ts ON ${s}.inbox (ts);
      CREATE TABLE ${s}.groups (
        id text PRIMARY KEY,
        name text NOT NULL,
        ver integer NOT NULL
      );
      CREATE TABLE ${s}.group_members (
        joined bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        group_id text NOT NULL,
        user_id text NOT NULL,
        role text NOT NULL,
        UNIQUE (group_id, user_id)
      );
      CREATE INDEX group_members_user ON ${s}.group_members (user_id);
      CREATE TABLE ${s}.contacts (
        a text NOT NULL,
        b text NOT NULL,
        PRIMARY KEY (a, b)
      );
      CREATE TABLE ${s}.last_seen (
        user_id text PRIMARY KEY,
        ts double precision NOT NULL
      );
      CREATE TABLE ${s}.dedupe (
        from_user text NOT NULL,
        from_device text NOT NULL,
        msg_id text NOT NULL,
        ts double precision NOT NULL,
        PRIMARY KEY (from_user, from_device, msg_id)
      );
      CREATE INDEX dedupe_ts ON ${s}.dedupe (ts);
      CREATE TABLE ${s}.device_keys (
        dev bigint PRIMARY KEY,
        identity_key bytea NOT NULL,
        registration_id integer NOT NULL,
        signed_id integer NOT NULL,
        signed_key bytea NOT NULL,
        signed_sig bytea NOT NULL,
        kyber_id integer NOT NULL,
        kyber_key bytea NOT NULL,
        kyber_sig bytea NOT NULL
      );
      CREATE TABLE ${s}.prekeys (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        dev bigint NOT NULL,
        key_id integer NOT NULL,
        key bytea NOT NULL,
        UNIQUE (dev, key_id)
      );
      CREATE INDEX prekeys_dev ON ${s}.prekeys (dev, id);
      CREATE TABLE ${s}.kyber_prekeys (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        dev bigint NOT NULL,
        key_id integer NOT NULL,
        key bytea NOT NULL,
        signature bytea NOT NULL,
        UNIQUE (dev, key_id)
      );
      CREATE INDEX kyber_prekeys_dev ON ${s}.kyber_prekeys (dev, id);
    `),
  // 2: push tokens, one per device (gone with the device), so every node can wake any device.
  (c, s) =>
    c.query(`
      CREATE TABLE ${s}.push_tokens (
        dev bigint PRIMARY KEY,
        kind text NOT NULL,
        token text NOT NULL
      );
    `),
  // 3: as the SQLite store's step 5. Consent becomes directed: each old symmetric pair, which
  // cannot tell who wrote first, becomes consent both ways (what it granted before). Members get
  // the version their membership began at (0: since the start, for existing ones) and the latest
  // at which they took part (the current one, for existing ones, so existing groups keep their
  // visibility). Dedupe records say where a message went (known for messages still in an inbox;
  // receipts for older ones are dropped), keyed sender user first, then message id.
  (c, s) =>
    c.query(`
      CREATE TABLE ${s}.consents (
        viewer text NOT NULL,
        target text NOT NULL,
        PRIMARY KEY (viewer, target)
      );
      INSERT INTO ${s}.consents (viewer, target)
        SELECT a, b FROM ${s}.contacts UNION SELECT b, a FROM ${s}.contacts;
      DROP TABLE ${s}.contacts;
      ALTER TABLE ${s}.group_members
        ADD COLUMN since_ver integer NOT NULL DEFAULT 0,
        ADD COLUMN acted_ver integer NOT NULL DEFAULT -1;
      UPDATE ${s}.group_members m SET acted_ver = g.ver FROM ${s}.groups g WHERE g.id = m.group_id;
      ALTER TABLE ${s}.dedupe ADD COLUMN to_user text, ADD COLUMN gver integer;
      UPDATE ${s}.dedupe d SET to_user = m.to_user, gver = CASE WHEN m.to_group THEN g.ver END
        FROM ${s}.messages m LEFT JOIN ${s}.groups g ON m.to_group AND g.id = m.to_user
        WHERE m.from_user = d.from_user AND m.from_device = d.from_device AND m.msg_id = d.msg_id;
      ALTER TABLE ${s}.dedupe DROP CONSTRAINT dedupe_pkey, ADD PRIMARY KEY (from_user, msg_id, from_device);
    `),
  // 4: as the SQLite store's step 6: inbox rows may be gap notices (`status` 'gap', the reason in
  // `by_user`, the streams in `ids`; see gap-notices.ts). No column changes: the step is there so
  // that an older build, which would read such a row as a status it does not know, refuses the
  // schema instead.
  async () => {},
  // 5: storage quotas, as the SQLite store's step 7: each head row counts its inbox's entries and
  // message body bytes (kept by the writer in the same locked update that takes offsets), and each
  // entry records the body bytes it counts for; existing inboxes are counted here.
  (c, s) =>
    c.query(`
      ALTER TABLE ${s}.inbox_heads
        ADD COLUMN entries bigint NOT NULL DEFAULT 0,
        ADD COLUMN bytes bigint NOT NULL DEFAULT 0;
      ALTER TABLE ${s}.inbox ADD COLUMN size integer NOT NULL DEFAULT 0;
      UPDATE ${s}.inbox i SET size = coalesce(length(i.body), length(m.body), 0)
        FROM ${s}.messages m WHERE m.id = i.message;
      UPDATE ${s}.inbox_heads h SET entries = x.n, bytes = x.b
        FROM (SELECT dev, count(*) AS n, sum(size) AS b FROM ${s}.inbox GROUP BY dev) x WHERE x.dev = h.dev;
      CREATE TABLE ${s}.group_invites (
        group_id text NOT NULL,
        user_id text NOT NULL,
        PRIMARY KEY (group_id, user_id)
      );
      CREATE INDEX group_invites_user ON ${s}.group_invites (user_id);
    `),
  // 6: as the SQLite store's step 8: gap notices may have the reason `inbox_full`, and a device's
  // one such notice is found, to be extended, by an index of notice rows.
  (c, s) => c.query(`CREATE INDEX inbox_gaps ON ${s}.inbox (dev) WHERE status = '${GAP_ROW_STATUS}'`),
  // 7: as the SQLite store's step 9: per-user action counts (the engine's group caps), so that
  // every node counts together.
  (c, s) =>
    c.query(`
      CREATE TABLE ${s}.action_counts (
        kind text NOT NULL,
        user_id text NOT NULL,
        win bigint NOT NULL,
        n integer NOT NULL,
        PRIMARY KEY (kind, user_id)
      )
    `),
  // 9: as the SQLite store's step 12: dedupe records keyed by message id first, so the records of
  // ids that sort by time (ULIDs, the client's default) go to the right edge of the key's index,
  // not to one leaf page per sender (each written whole to the WAL at its first change after a
  // checkpoint: bench/tools/pg-wal-per-message.ts). Rebuilds the index once.
  (c, s) =>
    c.query(`
      ALTER TABLE ${s}.dedupe DROP CONSTRAINT dedupe_pkey, ADD PRIMARY KEY (msg_id, from_user, from_device)
    `),
  // The ninth step (version 9; the one above is the eighth, its comment's number a slip kept as
  // released), as the SQLite store's step 16: expiry walks the devices whose head rows count
  // entries and each inbox by offset, so the index on \`inbox.ts\` (an index entry written and
  // deleted with every entry, for an hourly job) goes.
  (c, s) => c.query(`DROP INDEX IF EXISTS ${s}.inbox_ts`),
  // 10, as the SQLite store's step 14: a 1:1 message with one entry (one recipient device, no
  // other device of its sender: the common case) is stored in that entry, its body in `body` and
  // `message` 0 (never an identity: a node from before this step skips such an entry rather than
  // misread it), so no `messages` row is written, counted down and deleted, and its ack marks no
  // `delivered` row. Nullable columns without a default: no table rewrite.
  (c, s) =>
    c.query(`
      ALTER TABLE ${s}.inbox ADD COLUMN from_user text, ADD COLUMN from_device text,
        ADD COLUMN msg_id text, ADD COLUMN to_user text, ADD COLUMN seq bigint
    `),
];

/** The `postbox_schema` version of a schema the PostgreSQL server store has fully migrated. */
export const POSTGRES_SERVER_SCHEMA_VERSION: number = MIGRATIONS.length;

const quoteSchema = (schema: string): string => quoteSchemaName(schema, LABEL);

/**
 * Brings the schema up to {@link POSTGRES_SERVER_SCHEMA_VERSION}: each missing step in its own
 * transaction, under a transaction-scoped advisory lock keyed by the schema name, so nodes that
 * start together wait for each other and each step is applied exactly once. Refuses a schema
 * written by a newer version of the store. Resolves with how many steps this call applied.
 */
export async function migratePostgresServerStore(pool: PgPool, schema = 'public'): Promise<number> {
  const s = quoteSchema(schema);
  for (let steps = 0; ; steps++) {
    const c = await pool.connect();
    // A reset fails the statement under way, which is enough: the event must not end the process.
    guardConnection(c);
    let applied = false;
    try {
      await c.query('BEGIN');
      await c.query('SELECT pg_advisory_xact_lock(hashtextextended($1, 0))', [`postbox:${schema}`]);
      await c.query(`CREATE SCHEMA IF NOT EXISTS ${s}`);
      await c.query(
        `CREATE TABLE IF NOT EXISTS ${s}.postbox_schema (
           version integer PRIMARY KEY,
           applied_at timestamptz NOT NULL DEFAULT now()
         )`,
      );
      const { rows } = await c.query(`SELECT coalesce(max(version), 0) AS v FROM ${s}.postbox_schema`);
      const version = Number((rows[0] as { v: number }).v);
      if (version > MIGRATIONS.length) {
        throw new Error(
          `${LABEL}: schema ${schema} is at version ${version}, newer than this postbox knows ` +
            `(${MIGRATIONS.length}); upgrade postbox`,
        );
      }
      if (version < MIGRATIONS.length) {
        await MIGRATIONS[version]!(c, s);
        await c.query(`INSERT INTO ${s}.postbox_schema (version) VALUES ($1)`, [version + 1]);
        applied = true;
      }
      await c.query('COMMIT');
      c.release();
      if (!applied) return steps;
    } catch (e) {
      await c.query('ROLLBACK').catch(() => undefined);
      c.release();
      throw e;
    }
  }
}
