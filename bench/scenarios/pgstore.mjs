// pgstore (solo): postbox's PostgreSQL store `append` beside PostgreSQL's own insert rate, in one
// process, one run, against the same server, with `synchronous_commit = on` for both (every
// transaction waits for its WAL flush). Issue 7.
//
// For each batch size (1, 16, 256 messages per transaction) and writer count (1, and 12 on
// connections of their own), these subjects are set up side by side:
//
//   postgres           raw `pg`: BEGIN, one plain single-row INSERT per message, COMMIT, into
//                      (id text PK, sender text, seq bigint, body bytea, ts bigint) + index on ts
//   postgres-unnest    the same rows in one multi-row INSERT … SELECT FROM unnest(…) per
//                      transaction (batches of 16 and 256 only: at 1 it is `postgres`)
//   postbox-pg         `openPostgresServerStore(…).append(batch)`: 1:1 messages to one user with
//                      2 devices; 12 writers are 3 stores (nodes, a pool each) × 4 senders, all
//                      into the same two inboxes (they queue on its two head rows)
//   postbox-pg-spread  12 writers as above, each to a recipient of its own (2 devices each)
//
// then warmed up and measured in slices that take turns (an order rotating with the round and
// the slice), so a burst of other load on a shared machine falls on all of them alike. The raw
// subjects share one throwaway schema (`pbbench_raw_*`), the postbox ones another
// (`pbbench_pb_*`); both are dropped when the cell is done. A message body is 100 bytes. Rate:
// messages committed / time from a slice's start until its last commit (writers start a
// transaction until the slice ends, so its tail is one commit long). Also the CPU time of this
// process (the client side: `pg`, and for postbox the store's own work) per message.
//
// Then the cost pass: a few transactions per batch size on one connection, counting what one
// message writes — rows inserted and updated per table (pg_stat_user_tables, read after the
// backend has exited and flushed its counters), index entries (rows × indexes of their table),
// client–server round trips (queries sent) and WAL bytes (with pg_walinspect, the records of the
// schema's own transactions; without it, how far the cluster-wide WAL position moved).
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import pg from 'pg';
import { openPostgresServerStore } from 'postbox/server/postgres';
import { pgUnreachable, redact } from '../lib/services.mjs';

/** Inbox quotas no cell reaches (the default, 20,000 entries, is a minute of the fastest cell). */
const NO_QUOTA = { inboxEntries: 1e12, inboxBytes: 1e15 };

export const DEFAULT_URL = 'postgres://postgres@127.0.0.1:5432/test';
const BODY = Buffer.alloc(100, 7);
const BATCHES = [1, 16, 256];
const NODES = 3;
const PER_NODE = 4;
const WRITERS = [1, NODES * PER_NODE];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const newSchema = (kind) => `pbbench_${kind}_${randomBytes(5).toString('hex')}`;

/**
 * Runs every writer's `step` (one transaction; resolves with the messages it committed) in a
 * loop until `ms` have passed; every writer finishes the transaction it is in.
 */
async function drive(steps, ms) {
  let messages = 0;
  let commits = 0;
  const start = performance.now();
  const end = start + ms;
  await Promise.all(
    steps.map(async (step) => {
      while (performance.now() < end) {
        const k = await step(); // not `messages += await step()`: that reads `messages` before the await
        messages += k;
        commits++;
      }
    }),
  );
  return { messages, commits, seconds: (performance.now() - start) / 1000 };
}

// ----------------------------------------------------------------------------------- raw

async function createRawTable(admin, schema) {
  await admin.query(`CREATE SCHEMA ${schema}`);
  await admin.query(
    `CREATE TABLE ${schema}.messages (
       id text PRIMARY KEY, sender text NOT NULL, seq bigint NOT NULL, body bytea NOT NULL, ts bigint NOT NULL)`,
  );
  await admin.query(`CREATE INDEX ON ${schema}.messages (ts)`);
}

async function rawConnection(url, application_name) {
  const c = new pg.Client({ connectionString: url, application_name });
  await c.connect();
  await c.query('SET synchronous_commit = on'); // the server default, made explicit
  return c;
}

/** One writer's transaction: `batch` rows, one INSERT each (or one INSERT for all: `unnest`). */
function rawStep(q, schema, sender, batch, unnest) {
  let n = 0;
  const one = `INSERT INTO ${schema}.messages (id, sender, seq, body, ts) VALUES ($1, $2, $3, $4, $5)`;
  const many = `INSERT INTO ${schema}.messages (id, sender, seq, body, ts)
    SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bytea[], $5::bigint[])`;
  return async () => {
    await q.query('BEGIN');
    const ts = Date.now();
    if (unnest) {
      const ids = [];
      const seqs = [];
      for (let i = 0; i < batch; i++) {
        seqs.push(++n);
        ids.push(`${sender}:${n}`);
      }
      await q.query(many, [ids, ids.map(() => sender), seqs, ids.map(() => BODY), ids.map(() => ts)]);
    } else {
      for (let i = 0; i < batch; i++) {
        n++;
        await q.query(one, [`${sender}:${n}`, sender, n, BODY, ts]);
      }
    }
    await q.query('COMMIT');
    return batch;
  };
}

/** A throwaway schema with the raw table and `writers` connections; `steps` builds a subject. */
async function openRaw(ctx, writers) {
  const schema = newSchema('raw');
  ctx.schemas.add(schema);
  const conns = [];
  const close = async () => {
    await Promise.all(conns.map((c) => c.end().catch(() => undefined)));
    await drop(ctx, schema);
  };
  try {
    await createRawTable(ctx.admin, schema);
    // Set-up in parallel: it is not measured, and a busy machine makes it slow.
    const opening = await Promise.allSettled(
      Array.from({ length: writers }, () => rawConnection(ctx.url, 'pbbench')),
    );
    for (const r of opening) if (r.status === 'fulfilled') conns.push(r.value);
    if (conns.length < writers) throw opening.find((r) => r.status === 'rejected').reason;
  } catch (e) {
    await close();
    throw e;
  }
  return {
    schema,
    /** One step per connection; `tag` keeps the ids of two subjects on one table apart. */
    steps: (batch, unnest, tag) => conns.map((c, i) => rawStep(c, schema, `${tag}${i}`, batch, unnest)),
    close,
  };
}

// ----------------------------------------------------------------------------------- postbox

const devicesOf = (user) => [
  { user, device: 'd1' },
  { user, device: 'd2' },
];

/** One sender's append: `batch` 1:1 messages to `to`, checked to be stored (not refused). */
function postboxStep(store, from, to, batch, idPrefix = '') {
  let n = 0;
  return async () => {
    const items = [];
    for (let i = 0; i < batch; i++) {
      n++;
      items.push({ kind: 'msg', from, id: `${idPrefix}${from.user}:${n}`, to, seq: n, body: BODY });
    }
    const out = await store.append(items, Date.now());
    for (const o of out) {
      if (!o.ok || o.duplicate) throw new Error(`append: ${JSON.stringify(o)}`);
    }
    return batch;
  };
}

/**
 * A throwaway schema with `writers` / 4 stores (nodes, a pool each; one store for one writer),
 * senders `s<i>` writing to `bob` and, with several writers, senders `t<i>` writing to `r<i>`;
 * every recipient has 2 devices. `steps(batch, spread)` builds a subject.
 */
async function openPostbox(ctx, writers) {
  const schema = newSchema('pb');
  ctx.schemas.add(schema);
  const nodes = writers === 1 ? 1 : NODES;
  const perNode = writers / nodes;
  const stores = [];
  const close = async () => {
    await Promise.all(stores.map((s) => s.close().catch(() => undefined)));
    await drop(ctx, schema);
  };
  const sender = (p, i) => ({ user: `${p}${i}`, device: 'd' });
  try {
    // Set-up, not measured: the first store creates the schema, the others open in parallel.
    // Nothing acks, so the inboxes only grow: a quota far above what a cell writes keeps every
    // append counted (the quota is still checked, under the same locks, as in production).
    const open = () =>
      openPostgresServerStore({ connectionString: ctx.url, schema, poolSize: perNode + 1, quotas: NO_QUOTA });
    stores.push(await open());
    const more = await Promise.allSettled(Array.from({ length: nodes - 1 }, open));
    for (const r of more) if (r.status === 'fulfilled') stores.push(r.value);
    if (stores.length < nodes) throw more.find((r) => r.status === 'rejected').reason;
    const devices = [...devicesOf('bob')];
    for (let i = 0; i < writers; i++) {
      devices.push(sender('s', i));
      if (writers > 1) devices.push(sender('t', i), ...devicesOf(`r${i}`));
    }
    await Promise.all(devices.map((d, i) => stores[i % nodes].registerDevice(d, 0)));
  } catch (e) {
    await close();
    throw e;
  }
  return {
    schema,
    steps: (batch, spread) =>
      Array.from({ length: writers }, (_, i) =>
        spread
          ? postboxStep(stores[i % nodes], sender('t', i), `r${i}`, batch)
          : postboxStep(stores[i % nodes], sender('s', i), 'bob', batch),
      ),
    close,
  };
}

const count = async (ctx, schema) =>
  (await ctx.admin.query(`SELECT count(*)::int AS n FROM ${schema}.messages`)).rows[0].n;
const rotate = (list, k) => list.map((_, i) => list[(i + k) % list.length]);

/**
 * One (batch, writers) cell: every subject set up side by side and warmed up, then measured in
 * `ctx.slices` slices that take turns (the order rotating with the round and the slice), so a
 * burst of other load on the machine falls on all of them alike. Checks that every message
 * counted is in the database.
 */
async function measureCell(ctx, batch, writers, round) {
  const [raw, pb] = await Promise.allSettled([openRaw(ctx, writers), openPostbox(ctx, writers)]);
  try {
    if (raw.status === 'rejected') throw raw.reason;
    if (pb.status === 'rejected') throw pb.reason;
    const subjects = [
      { system: 'postgres', fixture: raw.value, steps: raw.value.steps(batch, false, 'p') },
      batch > 1 && {
        system: 'postgres-unnest',
        fixture: raw.value,
        steps: raw.value.steps(batch, true, 'u'),
      },
      { system: 'postbox-pg', fixture: pb.value, steps: pb.value.steps(batch, false) },
      writers > 1 && { system: 'postbox-pg-spread', fixture: pb.value, steps: pb.value.steps(batch, true) },
    ].filter(Boolean);
    for (const s of subjects) Object.assign(s, { written: 0, messages: 0, commits: 0, seconds: 0, cpu: 0 });
    for (const s of rotate(subjects, round)) s.written += (await drive(s.steps, ctx.warmupMs)).messages;
    for (let k = 0; k < ctx.slices; k++) {
      for (const s of rotate(subjects, round + k)) {
        const cpu = process.cpuUsage();
        const r = await drive(s.steps, ctx.ms / ctx.slices);
        const used = process.cpuUsage(cpu);
        s.cpu += used.user + used.system;
        s.written += r.messages;
        s.messages += r.messages;
        s.commits += r.commits;
        s.seconds += r.seconds;
      }
    }
    for (const f of [raw.value, pb.value]) {
      const n = await count(ctx, f.schema);
      const expected = subjects.filter((s) => s.fixture === f).reduce((a, s) => a + s.written, 0);
      if (n !== expected) throw new Error(`${n} messages stored in ${f.schema}, ${expected} counted`);
    }
    return subjects;
  } finally {
    for (const f of [raw, pb]) if (f.status === 'fulfilled') await f.value.close();
  }
}

async function drop(ctx, schema) {
  await ctx.admin.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`);
  ctx.schemas.delete(schema);
}

// ----------------------------------------------------------------------------------- cost

/** A `pg` pool or client that counts the queries (round trips) sent through it. */
function counting(target, counter) {
  const query = (text, values) => {
    counter.n++;
    return target.query(text, values);
  };
  return {
    query,
    async connect() {
      const c = await target.connect();
      return {
        query: (text, values) => {
          counter.n++;
          return c.query(text, values);
        },
        release: (e) => c.release(e),
      };
    },
    end: () => target.end(),
  };
}

/** Waits until no connection named `tag` is left (its backend has exited and flushed its stats). */
async function gone(admin, tag) {
  for (let i = 0; i < 200; i++) {
    const { rows } = await admin.query(
      'SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1',
      [tag],
    );
    if (rows[0].n === 0) return;
    await sleep(10);
  }
  throw new Error(`connections ${tag} did not go away`);
}

/** Inserted / updated / HOT-updated rows per table of `schema`, once `table` shows `inserted`. */
async function tableStats(admin, schema, table, inserted) {
  let last;
  for (let i = 0; i < 200; i++) {
    await admin.query('SELECT pg_stat_clear_snapshot()');
    const { rows } = await admin.query(
      `SELECT t.relname AS name, t.n_tup_ins::int AS ins, t.n_tup_upd::int AS upd, t.n_tup_hot_upd::int AS hot,
              (SELECT count(*)::int FROM pg_index i WHERE i.indrelid = t.relid) AS indexes
       FROM pg_stat_user_tables t WHERE t.schemaname = $1`,
      [schema],
    );
    last = new Map(rows.map((r) => [r.name, r]));
    // The exiting backend flushes table after table: wait for the one we know the count of, then
    // for one more read that agrees.
    if ((last.get(table)?.ins ?? 0) >= inserted) {
      await sleep(20);
      await admin.query('SELECT pg_stat_clear_snapshot()');
      const again = await admin.query(
        'SELECT sum(n_tup_ins + n_tup_upd)::int AS s FROM pg_stat_user_tables WHERE schemaname = $1',
        [schema],
      );
      const sum = [...last.values()].reduce((a, r) => a + r.ins + r.upd, 0);
      if (again.rows[0].s === sum) return last;
    }
    await sleep(10);
  }
  throw new Error(`statistics of ${schema}.${table} did not arrive`);
}

const lsn = async (admin, which) =>
  (await admin.query(`SELECT pg_current_wal_${which}_lsn()::text AS l`)).rows[0].l;

/**
 * How the WAL of a transaction is counted. With pg_walinspect (a contrib extension, created in a
 * throwaway schema when the role may, dropped with it): exactly the records of the transactions
 * that touched the schema's relations, each 8-byte aligned as in the WAL. Without it: the
 * distance the WAL position moved, which also counts whatever other sessions wrote meanwhile.
 */
async function walCounter(ctx) {
  const { rows } = await ctx.admin.query(
    `SELECT n.nspname AS schema FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'pg_walinspect'`,
  );
  let where = rows[0]?.schema;
  if (!where) {
    const schema = newSchema('wal');
    ctx.schemas.add(schema);
    try {
      await ctx.admin.query(`CREATE SCHEMA ${schema}`);
      await ctx.admin.query(`CREATE EXTENSION pg_walinspect SCHEMA ${schema}`);
      where = schema;
    } catch {
      await drop(ctx, schema);
      return { exact: false };
    }
  }
  return { exact: true, fn: `"${where}".pg_get_wal_records_info` };
}

/** WAL bytes between `from` and `to` that belong to `schema`'s transactions (see walCounter). */
async function walOf(ctx, schema, from, to) {
  if (!ctx.wal.exact) {
    return Number(
      (await ctx.admin.query('SELECT pg_wal_lsn_diff($2, $1)::float8 AS d', [from, to])).rows[0].d,
    );
  }
  const { rows } = await ctx.admin.query(
    `WITH nodes AS (
       SELECT pg_relation_filenode(c.oid)::text AS node FROM pg_class c
       JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $3
     ), recs AS (
       SELECT start_lsn, xid::text AS xid, record_length, block_ref FROM ${ctx.wal.fn}($1::pg_lsn, $2::pg_lsn)
     ), touching AS (
       SELECT DISTINCT r.start_lsn, r.xid FROM recs r
       CROSS JOIN LATERAL regexp_matches(coalesce(r.block_ref, ''), 'rel [0-9]+/[0-9]+/([0-9]+)', 'g') AS m(a)
       WHERE m.a[1] IN (SELECT node FROM nodes)
     )
     SELECT coalesce(sum((record_length + 7) / 8 * 8), 0)::float8 AS bytes FROM recs
     WHERE start_lsn IN (SELECT start_lsn FROM touching)
        OR xid IN (SELECT xid FROM touching WHERE xid <> '0')`,
    [from, to, schema],
  );
  return rows[0].bytes;
}

/** Transactions in the cost pass per batch size: at least 64 messages, at least 4. */
const costTxns = (batch) => Math.max(4, Math.ceil(64 / batch));

/**
 * Runs one warm-up `step` (not counted), then `txns` counted ones, and returns the WAL span they
 * wrote: from the insert position before to the flush position after (our commits are flushed,
 * so everything of ours is before it).
 */
async function walSpan(ctx, counter, txns, step) {
  await step();
  counter.n = 0;
  const from = await lsn(ctx.admin, 'insert');
  for (let i = 0; i < txns; i++) await step();
  return { from, to: await lsn(ctx.admin, 'flush') };
}

/**
 * What one message costs `system` at `batch` per transaction. Two phases on single connections:
 * set-up and one warm-up transaction (so once-per-pair rows such as `contacts` are written),
 * the connection closed; then the measured transactions on a fresh connection, closed too, and
 * the statistics difference.
 */
async function cost(ctx, system, batch) {
  const kind = system === 'postbox-pg' ? 'pb' : 'raw';
  const schema = newSchema(`cost${kind}`);
  ctx.schemas.add(schema);
  const tag = `pbbench-${randomBytes(4).toString('hex')}`;
  const table = 'messages';
  const counter = { n: 0 };
  const unnest = system === 'postgres-unnest';
  try {
    // Phase 1: set-up and warm-up.
    let warm = 0;
    if (kind === 'pb') {
      const pool = new pg.Pool({ connectionString: ctx.url, max: 1, application_name: tag });
      try {
        const store = await openPostgresServerStore({ pool, schema, quotas: NO_QUOTA });
        try {
          for (const d of [{ user: 'alice', device: 'd' }, ...devicesOf('bob')])
            await store.registerDevice(d, 0);
          warm = await postboxStep(store, { user: 'alice', device: 'd' }, 'bob', 1, 'warm-')();
        } finally {
          await store.close();
        }
      } finally {
        await pool.end();
      }
    } else {
      await createRawTable(ctx.admin, schema);
      const c = await rawConnection(ctx.url, tag);
      try {
        warm = await rawStep(c, schema, 'w', 1, unnest)();
      } finally {
        await c.end();
      }
    }
    await gone(ctx.admin, tag);
    const before = await tableStats(ctx.admin, schema, table, warm);

    // Phase 2: the measured transactions.
    const txns = costTxns(batch);
    let from;
    let to;
    if (kind === 'pb') {
      const pool = new pg.Pool({ connectionString: ctx.url, max: 1, application_name: tag });
      const store = await openPostgresServerStore({
        pool: counting(pool, counter),
        schema,
        quotas: NO_QUOTA,
      });
      try {
        // The connection's first transaction (the store's caches) is not counted.
        ({ from, to } = await walSpan(
          ctx,
          counter,
          txns,
          postboxStep(store, { user: 'alice', device: 'd' }, 'bob', batch),
        ));
      } finally {
        await store.close();
        await pool.end();
      }
    } else {
      const c = await rawConnection(ctx.url, tag);
      try {
        ({ from, to } = await walSpan(
          ctx,
          counter,
          txns,
          rawStep(counting(c, counter), schema, 's', batch, unnest),
        ));
      } finally {
        await c.end();
      }
    }
    await gone(ctx.admin, tag);
    const messages = txns * batch;
    const wal = await walOf(ctx, schema, from, to);
    const after = await tableStats(ctx.admin, schema, table, warm + batch + messages);
    // Remove the uncounted first transaction of phase 2 by scaling: rows per message are the
    // difference over (txns + 1) transactions.
    const per = (v) => v / ((txns + 1) * batch);
    let ins = 0;
    let upd = 0;
    let idx = 0;
    const tables = {};
    for (const [name, a] of after) {
      const b = before.get(name) ?? { ins: 0, upd: 0, hot: 0 };
      const dIns = a.ins - b.ins;
      const dUpd = a.upd - b.upd;
      const dCold = dUpd - (a.hot - b.hot); // non-HOT updates write a new entry in every index
      if (dIns === 0 && dUpd === 0) continue;
      tables[name] = { inserted: per(dIns), updated: per(dUpd), indexes: a.indexes };
      ins += dIns;
      upd += dUpd;
      idx += (dIns + dCold) * a.indexes;
    }
    return {
      rows_per_msg: per(ins),
      updates_per_msg: per(upd),
      index_entries_per_msg: per(idx),
      round_trips_per_msg: counter.n / messages,
      wal_bytes_per_msg: wal / messages,
      tables,
    };
  } finally {
    await gone(ctx.admin, tag).catch(() => undefined);
    await drop(ctx, schema);
  }
}

// ----------------------------------------------------------------------------------- run

const COST_SYSTEMS = ['postgres', 'postgres-unnest', 'postbox-pg'];

export async function run({ ms, warmupMs, slices = 3, round = 0, url }) {
  url = url ?? process.env.POSTBOX_PG_URL ?? DEFAULT_URL;
  const why = await pgUnreachable(url);
  if (why) return { results: [], skipped: why };
  const admin = new pg.Client({ connectionString: url, application_name: 'pbbench-admin' });
  await admin.connect();
  const ctx = { url, admin, ms, warmupMs, slices, schemas: new Set() };
  ctx.wal = await walCounter(ctx);
  const results = [];
  const errors = [];
  const add = (scenario, system, metric, value, unit) =>
    results.push({ scenario, system, metric, value, unit });
  try {
    const settings = {};
    for (const k of [
      'server_version',
      'synchronous_commit',
      'fsync',
      'wal_sync_method',
      'full_page_writes',
    ]) {
      settings[k] = (await admin.query(`SHOW ${k}`)).rows[0][k];
    }
    const t0 = performance.now();
    for (const writers of WRITERS) {
      for (const batch of BATCHES) {
        const scenario = `pgstore-b${batch}-w${writers}`;
        try {
          for (const r of await measureCell(ctx, batch, writers, round)) {
            add(scenario, r.system, 'msgs_per_s', r.messages / r.seconds, 'msg/s');
            add(scenario, r.system, 'txn_mean_ms', (r.seconds * 1000 * writers) / r.commits, 'ms');
            add(scenario, r.system, 'node_cpu_us_per_msg', r.cpu / r.messages, 'µs');
          }
        } catch (e) {
          errors.push(`${scenario}: ${e.message}`);
        }
      }
    }
    const t1 = performance.now();
    const tables = {};
    // What a message writes does not change from round to round: counted in the first one.
    for (const batch of round === 0 ? BATCHES : []) {
      const order = COST_SYSTEMS.map((_, k) => COST_SYSTEMS[(k + round) % COST_SYSTEMS.length]);
      for (const system of order) {
        if (system === 'postgres-unnest' && batch === 1) continue;
        try {
          const c = await cost(ctx, system, batch);
          const scenario = `pgstore-cost-b${batch}`;
          add(scenario, system, 'rows_per_msg', c.rows_per_msg, 'rows');
          add(scenario, system, 'updates_per_msg', c.updates_per_msg, 'rows');
          add(scenario, system, 'index_entries_per_msg', c.index_entries_per_msg, 'entries');
          add(scenario, system, 'round_trips_per_msg', c.round_trips_per_msg, 'round trips');
          add(scenario, system, 'wal_bytes_per_msg', c.wal_bytes_per_msg, 'B');
          tables[`${system} b${batch}`] = c.tables;
        } catch (e) {
          errors.push(`pgstore cost b${batch} ${system}: ${e.message}`);
        }
      }
    }
    // One line for the log: postbox ÷ postgres per cell.
    const rate = (sc, sys) =>
      results.find((r) => r.scenario === sc && r.system === sys && r.metric === 'msgs_per_s');
    const brief = WRITERS.flatMap((w) =>
      BATCHES.map((b) => {
        const sc = `pgstore-b${b}-w${w}`;
        const [pb, raw] = [rate(sc, 'postbox-pg'), rate(sc, 'postgres')];
        return `${b}×${w} ${pb && raw ? (pb.value / raw.value).toFixed(2) : '–'}`;
      }),
    ).join(', ');
    return {
      results,
      errors,
      brief: `postbox-pg ÷ postgres (batch×writers): ${brief}`,
      detail: {
        url: redact(url),
        settings,
        wal: ctx.wal.exact
          ? 'pg_walinspect: records of the schema’s transactions'
          : 'WAL position distance (cluster-wide)',
        ...(Object.keys(tables).length > 0 ? { tables } : {}), // the first round's
        seconds: { rates: (t1 - t0) / 1000, cost: (performance.now() - t1) / 1000 },
        nodes: NODES,
        writersPerNode: PER_NODE,
      },
    };
  } finally {
    for (const schema of [...ctx.schemas]) await drop(ctx, schema).catch(() => undefined);
    await admin.end().catch(() => undefined);
  }
}
