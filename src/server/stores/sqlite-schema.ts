/**
 * The SQLite server store's schema steps (`postbox/server/sqlite` re-exports what is public here):
 * each step runs once, in a transaction of its own, and `PRAGMA user_version` counts them. The
 * tables, indexes and triggers they make are described at the top of sqlite.ts.
 * @packageDocumentation
 */
import type { SqliteMigration } from '../../util/sqlite.js';
import { GAP_ROW_STATUS } from './gap-notices.js';
import { FANOUTS_TABLE } from './sqlite-fanout.js';

/** The steps, in order; the i-th brings `user_version` from i to i + 1. */
export const MIGRATIONS: readonly SqliteMigration[] = [
  // 1: the initial schema.
  (db) =>
    db.exec(`
      CREATE TABLE devices (
        id INTEGER PRIMARY KEY,
        user TEXT NOT NULL,
        device TEXT NOT NULL,
        registered_at INTEGER NOT NULL,
        last_offset INTEGER NOT NULL DEFAULT 0,
        UNIQUE (user, device)
      );
      CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        from_user TEXT NOT NULL,
        from_device TEXT NOT NULL,
        msg_id TEXT NOT NULL,
        to_user TEXT NOT NULL,
        seq INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        body BLOB NOT NULL,
        refs INTEGER NOT NULL,
        state INTEGER NOT NULL DEFAULT 0
      );
      CREATE TABLE inbox (
        dev INTEGER NOT NULL,
        pos INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        message INTEGER,
        status TEXT,
        ids TEXT,
        by_user TEXT,
        PRIMARY KEY (dev, pos)
      ) WITHOUT ROWID;
      CREATE INDEX inbox_ts ON inbox (ts);
      CREATE TABLE dedupe (
        from_user TEXT NOT NULL,
        from_device TEXT NOT NULL,
        msg_id TEXT NOT NULL,
        ts INTEGER NOT NULL,
        PRIMARY KEY (from_user, from_device, msg_id)
      ) WITHOUT ROWID;
      CREATE INDEX dedupe_ts ON dedupe (ts);
      CREATE TRIGGER inbox_unref AFTER DELETE ON inbox WHEN old.message IS NOT NULL BEGIN
        UPDATE messages SET refs = refs - 1 WHERE id = old.message;
        DELETE FROM messages WHERE id = old.message AND refs <= 0;
      END;
    `),
  // 2: groups, group messages and events, per-(message, user) delivery, contacts, last seen.
  // The per-message `state` flag becomes `delivered` rows: a 1:1 message had one recipient user.
  (db) =>
    db.exec(`
      ALTER TABLE messages ADD COLUMN to_group INTEGER NOT NULL DEFAULT 0;
      CREATE TABLE delivered (
        message INTEGER NOT NULL,
        user TEXT NOT NULL,
        PRIMARY KEY (message, user)
      ) WITHOUT ROWID;
      INSERT INTO delivered (message, user) SELECT id, to_user FROM messages WHERE state <> 0;
      ALTER TABLE messages DROP COLUMN state;
      CREATE TRIGGER messages_gone AFTER DELETE ON messages BEGIN
        DELETE FROM delivered WHERE message = old.id;
      END;
      CREATE TABLE group_events (
        id INTEGER PRIMARY KEY,
        data BLOB NOT NULL,
        refs INTEGER NOT NULL
      );
      ALTER TABLE inbox ADD COLUMN event INTEGER;
      CREATE TRIGGER inbox_unref_event AFTER DELETE ON inbox WHEN old.event IS NOT NULL BEGIN
        UPDATE group_events SET refs = refs - 1 WHERE id = old.event;
        DELETE FROM group_events WHERE id = old.event AND refs <= 0;
      END;
      CREATE TABLE groups (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        ver INTEGER NOT NULL
      ) WITHOUT ROWID;
      CREATE TABLE group_members (
        joined INTEGER PRIMARY KEY,
        group_id TEXT NOT NULL,
        user TEXT NOT NULL,
        role TEXT NOT NULL,
        UNIQUE (group_id, user)
      );
      CREATE INDEX group_members_user ON group_members (user);
      CREATE TABLE contacts (
        a TEXT NOT NULL,
        b TEXT NOT NULL,
        PRIMARY KEY (a, b)
      ) WITHOUT ROWID;
      CREATE TABLE last_seen (
        user TEXT PRIMARY KEY,
        ts INTEGER NOT NULL
      ) WITHOUT ROWID;
    `),
  // 3: the key directory, and per-device bodies of end-to-end encrypted messages. One-time keys
  // are rowid tables so that the rowid is upload order: the index on `dev` alone then holds
  // (dev, rowid), and the oldest key of a device is its first entry.
  (db) =>
    db.exec(`
      ALTER TABLE inbox ADD COLUMN body BLOB;
      CREATE TABLE device_keys (
        dev INTEGER PRIMARY KEY,
        identity_key BLOB NOT NULL,
        registration_id INTEGER NOT NULL,
        signed_id INTEGER NOT NULL,
        signed_key BLOB NOT NULL,
        signed_sig BLOB NOT NULL,
        kyber_id INTEGER NOT NULL,
        kyber_key BLOB NOT NULL,
        kyber_sig BLOB NOT NULL
      );
      CREATE TABLE prekeys (
        id INTEGER PRIMARY KEY,
        dev INTEGER NOT NULL,
        key_id INTEGER NOT NULL,
        key BLOB NOT NULL,
        UNIQUE (dev, key_id)
      );
      CREATE INDEX prekeys_dev ON prekeys (dev);
      CREATE TABLE kyber_prekeys (
        id INTEGER PRIMARY KEY,
        dev INTEGER NOT NULL,
        key_id INTEGER NOT NULL,
        key BLOB NOT NULL,
        signature BLOB NOT NULL,
        UNIQUE (dev, key_id)
      );
      CREATE INDEX kyber_prekeys_dev ON kyber_prekeys (dev);
      CREATE TRIGGER devices_gone AFTER DELETE ON devices BEGIN
        DELETE FROM device_keys WHERE dev = old.id;
        DELETE FROM prekeys WHERE dev = old.id;
        DELETE FROM kyber_prekeys WHERE dev = old.id;
      END;
    `),
  // 4: push tokens, one per device, gone with the device.
  (db) =>
    db.exec(`
      CREATE TABLE push_tokens (
        dev INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        token TEXT NOT NULL
      );
      CREATE TRIGGER devices_gone_push AFTER DELETE ON devices BEGIN
        DELETE FROM push_tokens WHERE dev = old.id;
      END;
    `),
  // 5: consent becomes directed, members carry versions, dedupe records say where a message went.
  // The old symmetric contacts cannot tell who wrote first: each pair becomes consent both ways
  // (what it granted before). Members of existing groups count as members since the start and
  // as having taken part at the current version, so existing groups keep their visibility.
  // Messages still in an inbox get their recipients; older records have none, so receipts for
  // messages delivered before the upgrade are dropped.
  (db) =>
    db.exec(`
      CREATE TABLE consents (
        viewer TEXT NOT NULL,
        target TEXT NOT NULL,
        PRIMARY KEY (viewer, target)
      ) WITHOUT ROWID;
      INSERT INTO consents (viewer, target) SELECT a, b FROM contacts UNION SELECT b, a FROM contacts;
      DROP TABLE contacts;
      ALTER TABLE group_members ADD COLUMN since_ver INTEGER NOT NULL DEFAULT 0;
      ALTER TABLE group_members ADD COLUMN acted_ver INTEGER NOT NULL DEFAULT -1;
      UPDATE group_members SET acted_ver = (SELECT ver FROM groups WHERE groups.id = group_members.group_id);
      CREATE TABLE dedupe_v5 (
        from_user TEXT NOT NULL,
        msg_id TEXT NOT NULL,
        from_device TEXT NOT NULL,
        ts INTEGER NOT NULL,
        to_user TEXT,
        gver INTEGER,
        PRIMARY KEY (from_user, msg_id, from_device)
      ) WITHOUT ROWID;
      INSERT INTO dedupe_v5 (from_user, msg_id, from_device, ts, to_user, gver)
        SELECT d.from_user, d.msg_id, d.from_device, d.ts, m.to_user,
               CASE WHEN m.to_group = 1 THEN (SELECT ver FROM groups g WHERE g.id = m.to_user) END
        FROM dedupe d LEFT JOIN messages m
          ON m.from_user = d.from_user AND m.from_device = d.from_device AND m.msg_id = d.msg_id;
      DROP TABLE dedupe;
      ALTER TABLE dedupe_v5 RENAME TO dedupe;
      CREATE INDEX dedupe_ts ON dedupe (ts);
    `),
  // 6: inbox rows may be gap notices (`status` 'gap', the reason in `by_user`, the streams in
  // `ids`; see gap-notices.ts). No column changes: the step is there so that an older build,
  // which would read such a row as a status it does not know, refuses the database instead.
  () => {},
  // 7: storage quotas. Each device row counts its inbox's entries and message body bytes, kept by
  // triggers on every insert and delete (so no write path can miss them), and each entry records
  // the body bytes it counts for; existing inboxes are counted once here.
  (db) =>
    db.exec(`
      ALTER TABLE devices ADD COLUMN entries INTEGER NOT NULL DEFAULT 0;
      ALTER TABLE devices ADD COLUMN bytes INTEGER NOT NULL DEFAULT 0;
      ALTER TABLE inbox ADD COLUMN size INTEGER NOT NULL DEFAULT 0;
      UPDATE inbox SET size = coalesce(length(body), (SELECT length(m.body) FROM messages m WHERE m.id = inbox.message), 0)
        WHERE message IS NOT NULL;
      UPDATE devices SET entries = (SELECT count(*) FROM inbox WHERE dev = devices.id),
                         bytes = (SELECT coalesce(sum(size), 0) FROM inbox WHERE dev = devices.id);
      CREATE TRIGGER inbox_usage_in AFTER INSERT ON inbox BEGIN
        UPDATE devices SET entries = entries + 1, bytes = bytes + new.size WHERE id = new.dev;
      END;
      CREATE TRIGGER inbox_usage_out AFTER DELETE ON inbox BEGIN
        UPDATE devices SET entries = entries - 1, bytes = bytes - old.size WHERE id = old.dev;
      END;
      CREATE TABLE group_invites (
        group_id TEXT NOT NULL,
        user TEXT NOT NULL,
        PRIMARY KEY (group_id, user)
      ) WITHOUT ROWID;
      CREATE INDEX group_invites_user ON group_invites (user);
    `),
  // 8: gap notices may have the reason `inbox_full` (a message that skipped a full device), and a
  // device's one such notice is found, to be extended, by an index of notice rows (an older build
  // would not know the reason: it refuses the database instead).
  (db) => db.exec(`CREATE INDEX inbox_gaps ON inbox (dev) WHERE status = '${GAP_ROW_STATUS}';`),
  // 9: per-user action counts (the engine's group caps), one row per (kind, user): its current
  // window and the count in it, so that every process on the file counts together.
  (db) =>
    db.exec(`
      CREATE TABLE action_counts (
        kind TEXT NOT NULL,
        user TEXT NOT NULL,
        win INTEGER NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (kind, user)
      ) WITHOUT ROWID;
    `),
  // 10: an inbox's usage grows through the writer, which adds each transaction's entries and bytes
  // to the device row once, with its offset counter (see \`writer\`), not through a trigger that
  // updated the device row once per inserted entry (a 1,024-member group message paid 1,023
  // extra row updates inside its transaction). Deletes keep their trigger.
  (db) => db.exec('DROP TRIGGER inbox_usage_in;'),
  // 11: group messages written in slices (sqlite-fanout.ts) record the devices still to write.
  (db) => db.exec(FANOUTS_TABLE),
  // 12: dedupe records keyed by message id first. Keyed by sender first, the records of one
  // commit landed on as many leaf pages as it had senders, each written to the WAL and again by
  // the checkpoint (~9 KB of writes per 1:1 message life, measured by bench/store-life.ts); ids
  // that sort by time now go to the right edge of the tree. Every record is copied once here.
  (db) =>
    db.exec(`
      CREATE TABLE dedupe_v12 (
        msg_id TEXT NOT NULL,
        from_user TEXT NOT NULL,
        from_device TEXT NOT NULL,
        ts INTEGER NOT NULL,
        to_user TEXT,
        gver INTEGER,
        PRIMARY KEY (msg_id, from_user, from_device)
      ) WITHOUT ROWID;
      INSERT INTO dedupe_v12 (msg_id, from_user, from_device, ts, to_user, gver)
        SELECT msg_id, from_user, from_device, ts, to_user, gver FROM dedupe;
      DROP TABLE dedupe;
      ALTER TABLE dedupe_v12 RENAME TO dedupe;
      CREATE INDEX dedupe_ts ON dedupe (ts);
    `),
  // 13: an inbox's usage shrinks through the writer too, once per device and transaction with its
  // other changes to the device row (see \`writer\`), not through a trigger that updated the row
  // once per deleted entry (an ack of ten entries paid ten row updates). A removed device needs
  // none: its row goes with its entries.
  (db) => db.exec('DROP TRIGGER inbox_usage_out;'),
  // 14: a 1:1 message with one entry (one recipient device, no other device of its sender) is
  // stored in the entry: no `messages` row to write, to count down on the ack and delete with its
  // `delivered` rows. Such an entry has `msg_id` and no `message`; its body is the entry's `body`.
  (db) =>
    db.exec(`
      ALTER TABLE inbox ADD COLUMN from_user TEXT;
      ALTER TABLE inbox ADD COLUMN from_device TEXT;
      ALTER TABLE inbox ADD COLUMN msg_id TEXT;
      ALTER TABLE inbox ADD COLUMN to_user TEXT;
      ALTER TABLE inbox ADD COLUMN seq INTEGER;
    `),
  // 15: the store releases shared bodies and group events itself (\`releaseMessage\`,
  // \`releaseEvent\`), not by triggers on inbox deletes: with no trigger on \`inbox\`, an ack
  // deletes a run of entries with one statement, where each entry took a delete of its own (a
  // ranged delete on a table with triggers first collects its keys in a temporary table). Bodies
  // and events removed devices referenced are released by \`dropDevice\`.
  (db) => db.exec('DROP TRIGGER inbox_unref; DROP TRIGGER inbox_unref_event;'),
  // 16: expiry walks the devices whose \`entries\` counters are not zero and each inbox by offset
  // (the hourly job reads each such device once), so no index on \`inbox.ts\` is kept up on every
  // entry written and deleted. Offsets follow commit order: an entry a clock stepped back
  // stamped older than the one before it expires with that one, later, never skipped.
  (db) => db.exec('DROP INDEX inbox_ts;'),
];

/** The `PRAGMA user_version` of a database the SQLite server store has fully migrated. */
export const SQLITE_SERVER_SCHEMA_VERSION: number = MIGRATIONS.length;
