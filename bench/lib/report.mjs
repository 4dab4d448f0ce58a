// Turning raw per-round results into the table, the ratios, the targets, JSON lines and the chart.
import { human, median, round } from './stats.mjs';

/** Unit of a metric, from its name. */
export function unitOf(metric) {
  if (metric.endsWith('_ms')) return 'ms';
  if (metric === 'msgs_per_server_cpu_s') return 'msg/cpu-s';
  if (metric.endsWith('msgs_per_s')) return 'msg/s';
  if (metric === 'deliveries_per_server_cpu_s') return 'deliveries/cpu-s';
  if (metric === 'deliveries_per_s') return 'deliveries/s';
  if (metric === 'ops_per_s') return 'ops/s';
  if (metric.endsWith('_pct')) return '%';
  if (metric.endsWith('_us_per_msg')) return 'µs/msg';
  if (metric.endsWith('_kb_per_conn')) return 'KB';
  if (metric.startsWith('bytes') || metric.endsWith('_bytes')) return 'B';
  if (metric.startsWith('frames')) return 'frames';
  if (metric.endsWith('_s')) return 's';
  return 'count';
}

// Counts and bookkeeping: shown in the table, but a ratio of them means nothing.
const NO_RATIO = new Set([
  'duplicates',
  'missing',
  'misrouted',
  'timed_out',
  'out_of_range',
  'undelivered_after_5s',
  'setup_s',
  'load_cpu_pct',
  'reordered',
  'paced_msgs',
  'load_cpu_per_msg_ms',
]);

/** Collects per-round values of (scenario, system, metric). */
export class Results {
  constructor() {
    this.map = new Map();
    this.notes = [];
    this.detail = {};
  }
  add(scenario, system, metric, value, unit = unitOf(metric)) {
    if (value === undefined || value === null || Number.isNaN(value)) return;
    const key = `${scenario}\t${system}\t${metric}`;
    let e = this.map.get(key);
    if (!e) this.map.set(key, (e = { scenario, system, metric, unit, values: [] }));
    e.values.push(value);
  }
  /** Adds a load result object: `metric` or `sub:metric` (a sub-scenario, e.g. a rate). */
  addObject(scenario, system, obj) {
    for (const [k, v] of Object.entries(obj)) {
      const i = k.indexOf(':');
      if (i < 0) this.add(scenario, system, k, v);
      else this.add(`${scenario}-${k.slice(0, i)}`, system, k.slice(i + 1), v);
    }
  }
  get(scenario, system, metric) {
    const e = this.map.get(`${scenario}\t${system}\t${metric}`);
    return e && median(e.values);
  }
  /** One row per (scenario, system, metric): median, min, max, rounds. */
  summary() {
    return [...this.map.values()].map((e) => ({
      scenario: e.scenario,
      system: e.system,
      metric: e.metric,
      unit: e.unit,
      value: round(median(e.values)),
      min: round(Math.min(...e.values)),
      max: round(Math.max(...e.values)),
      rounds: e.values.length,
    }));
  }
}

const isOurs = (system) => system.startsWith('postbox') || system === 'msgpackr';

/** postbox ÷ peer for every metric both have. */
export function ratios(summary) {
  const out = [];
  const by = new Map();
  for (const r of summary) {
    const k = `${r.scenario}\t${r.metric}`;
    if (!by.has(k)) by.set(k, []);
    by.get(k).push(r);
  }
  for (const rows of by.values()) {
    const ours = rows.filter((r) => isOurs(r.system));
    const peers = rows.filter((r) => !isOurs(r.system));
    for (const a of ours) {
      // A single traced message's timeline is an illustration, not a statistic.
      if (NO_RATIO.has(a.metric) || a.metric.startsWith('trace_')) continue;
      for (const b of peers) {
        if (!a.value || !b.value) continue;
        out.push({
          scenario: a.scenario,
          ours: a.system,
          peer: b.system,
          metric: a.metric,
          value: round(a.value / b.value),
        });
      }
    }
  }
  return out;
}

function pad(s, n, right = false) {
  s = String(s);
  return right ? s.padStart(n) : s.padEnd(n);
}

function table(header, rows) {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const line = (cells) => cells.map((c, i) => pad(c, widths[i], i > 0)).join('  ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

/** The readable table: one block per scenario, systems as columns, "median [min–max]" cells. */
export function renderTable(summary, systemOrder) {
  const blocks = [];
  const scenarios = [...new Set(summary.map((r) => r.scenario))];
  for (const sc of scenarios) {
    const rows = summary.filter((r) => r.scenario === sc);
    const systems = [...new Set(rows.map((r) => r.system))].sort(
      (a, b) => systemOrder.indexOf(a) - systemOrder.indexOf(b),
    );
    const metrics = [...new Set(rows.map((r) => r.metric))];
    const body = metrics.map((m) => {
      const unit = rows.find((r) => r.metric === m).unit;
      return [
        `${m} (${unit})`,
        ...systems.map((s) => {
          const r = rows.find((x) => x.system === s && x.metric === m);
          if (!r) return '·';
          return r.rounds > 1 && r.min !== r.max
            ? `${human(r.value)} [${human(r.min)}–${human(r.max)}]`
            : human(r.value);
        }),
      ];
    });
    blocks.push(`== ${sc}\n${table(['metric', ...systems], body)}`);
  }
  return blocks.join('\n\n');
}

/** Ratios block: one line per (scenario, metric, postbox system), peers as columns. */
export function renderRatios(rs) {
  const peers = [...new Set(rs.map((r) => r.peer))];
  const keys = [...new Set(rs.map((r) => `${r.scenario}\t${r.metric}\t${r.ours}`))];
  const body = keys.map((k) => {
    const [sc, m, ours] = k.split('\t');
    return [
      `${sc} ${m}`,
      ours,
      ...peers.map((p) => {
        const r = rs.find((x) => x.scenario === sc && x.metric === m && x.ours === ours && x.peer === p);
        return r ? `${r.value}×` : '·';
      }),
    ];
  });
  return table(['scenario metric', 'postbox ÷', ...peers], body);
}

/**
 * The pgstore scenario as two tables, or '' when it did not run: messages/s of raw PostgreSQL and
 * of the postbox store per (batch, writers) with the ratio postbox ÷ raw, then what one message
 * costs each (rows, index entries, round trips, WAL).
 */
export function renderPgstore(summary, rs, spread = false, detail = undefined) {
  const rows = summary.filter((r) => r.scenario.startsWith('pgstore-'));
  if (rows.length === 0) return '';
  const get = (sc, sys, m) => rows.find((r) => r.scenario === sc && r.system === sys && r.metric === m);
  const ratio = (sc, ours, peer) =>
    rs.find((r) => r.scenario === sc && r.ours === ours && r.peer === peer && r.metric === 'msgs_per_s');
  const cell = (r) =>
    !r
      ? '·'
      : spread && r.rounds > 1 && r.min !== r.max
        ? `${human(r.value)} [${human(r.min)}–${human(r.max)}]`
        : human(r.value);
  const x = (r) => (r ? `${r.value}×` : '·');
  const cells = [...new Set(rows.map((r) => r.scenario))]
    .map((sc) => /^pgstore-b(\d+)-w(\d+)$/.exec(sc))
    .filter(Boolean)
    .sort((a, b) => a[2] - b[2] || a[1] - b[1]);
  const rate = cells.map(([sc, batch, writers]) => [
    batch,
    writers,
    cell(get(sc, 'postgres', 'msgs_per_s')),
    cell(get(sc, 'postgres-unnest', 'msgs_per_s')),
    cell(get(sc, 'postbox-pg', 'msgs_per_s')),
    x(ratio(sc, 'postbox-pg', 'postgres')),
    x(ratio(sc, 'postbox-pg', 'postgres-unnest')),
    cell(get(sc, 'postbox-pg-spread', 'msgs_per_s')),
    x(ratio(sc, 'postbox-pg-spread', 'postgres')),
  ]);
  const out = [
    '== pgstore: messages/s with synchronous_commit on, and postbox ÷ raw PostgreSQL (same run)',
    table(
      [
        'batch',
        'writers',
        'postgres',
        'postgres-unnest',
        'postbox-pg (1 inbox)',
        '÷ postgres',
        '÷ unnest',
        'postbox-pg-spread',
        '÷ postgres',
      ],
      rate,
    ),
  ];
  const costs = [...new Set(rows.map((r) => r.scenario))]
    .map((sc) => /^pgstore-cost-b(\d+)$/.exec(sc))
    .filter(Boolean)
    .sort((a, b) => a[1] - b[1]);
  const costRows = [];
  for (const [sc, batch] of costs) {
    for (const sys of ['postgres', 'postgres-unnest', 'postbox-pg']) {
      if (!get(sc, sys, 'rows_per_msg')) continue;
      costRows.push([
        batch,
        sys,
        ...[
          'rows_per_msg',
          'updates_per_msg',
          'index_entries_per_msg',
          'round_trips_per_msg',
          'wal_bytes_per_msg',
        ].map((m) => human(get(sc, sys, m)?.value)),
      ]);
    }
  }
  if (costRows.length > 0) {
    out.push(
      '',
      '== pgstore: what one message writes (rows from pg_stat_user_tables, round trips = queries sent)',
      table(
        ['batch', 'system', 'rows inserted', 'rows updated', 'index entries', 'round trips', 'WAL bytes'],
        costRows,
      ),
    );
  }
  if (detail?.settings) {
    const st = detail.settings;
    out.push(
      '',
      `PostgreSQL ${st.server_version} at ${detail.url}: synchronous_commit ${st.synchronous_commit}, fsync ${st.fsync}, ` +
        `wal_sync_method ${st.wal_sync_method}, full_page_writes ${st.full_page_writes}; WAL counted from ${detail.wal}`,
    );
  }
  return out.join('\n');
}

/** Checks the targets against the medians. */
export function checkTargets(results, idleStep) {
  const t = [];
  const ratioTarget = (name, [sa, a], [sb, b], metric, op, limit, note) => {
    const va = results.get(sa, a, metric);
    const vb = results.get(sb, b, metric);
    const ratio = va !== undefined && vb ? va / vb : undefined;
    const pass = ratio === undefined ? undefined : op === '>=' ? ratio >= limit : ratio <= limit;
    t.push({ name, ours: a, peer: b, metric, value: round(ratio), limit, op, pass, note });
  };
  ratioTarget(
    'durable 1:1 throughput (SQLite, fsync before ack) ≥ 1.2 × Socket.IO emitWithAck',
    ['saturation', 'postbox-sqlite'],
    ['saturation', 'socketio'],
    'msgs_per_s',
    '>=',
    1.2,
  );
  ratioTarget(
    '  same, postbox with the memory store (not durable)',
    ['saturation', 'postbox-memory'],
    ['saturation', 'socketio'],
    'msgs_per_s',
    '>=',
    1.2,
  );
  ratioTarget(
    '  durable 1:1 throughput (SQLite) ≥ 1.0 × Socket.IO (issue 16; the standing goal is the 1.2× above)',
    ['saturation', 'postbox-sqlite'],
    ['saturation', 'socketio'],
    'msgs_per_s',
    '>=',
    1,
  );
  ratioTarget(
    'p99 send→delivered at 5k msg/s (SQLite) ≤ 1.5 × raw ws relay',
    ['latency-5k', 'postbox-sqlite'],
    ['latency-5k', 'ws'],
    'delivered_p99_ms',
    '<=',
    1.5,
  );
  ratioTarget(
    '  same, postbox with the memory store',
    ['latency-5k', 'postbox-memory'],
    ['latency-5k', 'ws'],
    'delivered_p99_ms',
    '<=',
    1.5,
  );
  ratioTarget(
    'p99 send→delivered at 5k msg/s (memory store) ≤ 1.5 × Socket.IO’s (issue 16)',
    ['latency-5k', 'postbox-memory'],
    ['latency-5k', 'socketio'],
    'delivered_p99_ms',
    '<=',
    1.5,
  );
  ratioTarget(
    '  same, SQLite ≤ 3 × Socket.IO’s (issue 16)',
    ['latency-5k', 'postbox-sqlite'],
    ['latency-5k', 'socketio'],
    'delivered_p99_ms',
    '<=',
    3,
  );
  ratioTarget(
    'p99 send→delivered at 2,000 msg/s (SQLite) ≤ 3 × a ws relay that fsyncs before acking (issue 23)',
    ['latency-light-2k', 'postbox-sqlite'],
    ['latency-light-2k', 'ws-fsync'],
    'delivered_p99_ms',
    '<=',
    3,
  );
  {
    // ✓✓ (the sender learns of the delivery) against the fsyncing relay's mere ack: the bar is
    // that the durable path adds no queueing of its own, not that a status is free.
    const va = results.get('latency-light-2k', 'postbox-sqlite', 'status_p50_ms');
    const vb = results.get('latency-light-2k', 'ws-fsync', 'acked_p50_ms');
    const value = va !== undefined && vb ? round(va / vb) : undefined;
    t.push({
      name: '  p50 send→✓✓ at 2,000 msg/s (SQLite) ≤ 3 × ws-fsync’s send→ack p50',
      ours: 'postbox-sqlite',
      peer: 'ws-fsync',
      metric: 'status_p50_ms / acked_p50_ms',
      value,
      limit: 3,
      op: '<=',
      pass: value === undefined ? undefined : value <= 3,
    });
  }
  ratioTarget(
    'p50 send→✓✓ at 500 msg/s (memory store) ≤ 2 × Socket.IO’s delivered event (issue 23)',
    ['latency-light-0.5k', 'postbox-memory'],
    ['latency-light-0.5k', 'socketio'],
    'status_p50_ms',
    '<=',
    2,
  );
  ratioTarget(
    'client CPU per message life at 2,000 msg/s (memory client store) ≤ 1.5 × socket.io-client (issue 16)',
    ['client-cost-2k', 'postbox-memory'],
    ['client-cost-2k', 'socketio'],
    'load_cpu_us_per_msg',
    '<=',
    1.5,
  );
  // Issue 19's: server CPU per message is the inverse of messages per server CPU-second.
  ratioTarget(
    'SQLite server CPU per message at saturation ≤ 1.5 × the memory store’s (issue 19)',
    ['saturation', 'postbox-memory'],
    ['saturation', 'postbox-sqlite'],
    'msgs_per_server_cpu_s',
    '<=',
    1.5,
  );
  ratioTarget(
    'gateway CPU per message crossing nodes ≤ 1.3 × not crossing, three nodes either way (issue 19)',
    ['multinode', 'postbox-pg-3nodes'],
    ['multinode', 'postbox-pg-3nodes-same'],
    'server_cpu_us_per_msg',
    '<=',
    1.3,
  );
  ratioTarget(
    '  the same three nodes ÷ one node (also counts a third of the messages per node batch)',
    ['multinode', 'postbox-pg-3nodes'],
    ['multinode', 'postbox-pg-1node'],
    'server_cpu_us_per_msg',
    '<=',
    1.3,
  );
  ratioTarget(
    'PostgreSQL store append, batch 256 × 12 writers ≥ 0.5 × postgres-unnest (issue 19)',
    ['pgstore-b256-w12', 'postbox-pg'],
    ['pgstore-b256-w12', 'postgres-unnest'],
    'msgs_per_s',
    '>=',
    0.5,
  );
  ratioTarget(
    '  and batch 1 × 12 writers ≥ 0.5 × plain postgres (issue 19)',
    ['pgstore-b1-w12', 'postbox-pg'],
    ['pgstore-b1-w12', 'postgres'],
    'msgs_per_s',
    '>=',
    0.5,
  );
  ratioTarget(
    `heap per idle connection (${idleStep}) ≤ 1.5 × raw ws`,
    [`idle-${idleStep}`, 'postbox-memory'],
    [`idle-${idleStep}`, 'ws'],
    'heap_kb_per_conn',
    '<=',
    1.5,
  );
  ratioTarget(
    `heap per idle connection (${idleStep}) well under Socket.IO (taken as ≤ 0.5×)`,
    [`idle-${idleStep}`, 'postbox-memory'],
    [`idle-${idleStep}`, 'socketio'],
    'heap_kb_per_conn',
    '<=',
    0.5,
  );
  ratioTarget(
    'group fan-out, 1,024 members: send → last member p99 (SQLite) ≤ Socket.IO rooms',
    ['fanout-1024', 'postbox-sqlite'],
    ['fanout-1024', 'socketio'],
    'last_p99_ms',
    '<=',
    1,
  );
  ratioTarget(
    '  same, postbox with the memory store',
    ['fanout-1024', 'postbox-memory'],
    ['fanout-1024', 'socketio'],
    'last_p99_ms',
    '<=',
    1,
  );
  ratioTarget(
    'encrypt + decrypt through the libsignal adapter ≥ 0.8 × raw libsignal (issue 6)',
    ['crypto', 'postbox-libsignal'],
    ['crypto', 'libsignal'],
    'msgs_per_s',
    '>=',
    0.8,
  );
  const bytes = results.get('wire', 'postbox', 'bytes_per_message');
  t.push({
    name: 'protocol bytes for one message’s whole life ≤ 160',
    ours: 'postbox',
    metric: 'bytes_per_message',
    value: bytes,
    limit: 160,
    op: '<=',
    unit: 'B',
    pass: bytes === undefined ? undefined : bytes <= 160,
  });
  ratioTarget(
    '  and ≤ ⅓ of the XMPP stanzas (message, XEP-0184 receipt, XEP-0198 acks)',
    ['wire', 'postbox'],
    ['wire', 'xmpp'],
    'bytes_per_message',
    '<=',
    round(1 / 3),
  );
  return t;
}

export function renderTargets(targets) {
  return targets
    .map((t) => {
      const verdict = t.pass === undefined ? 'n/a ' : t.pass ? 'PASS' : 'MISS';
      const v =
        t.value === undefined
          ? 'not measured'
          : t.unit
            ? `${t.value} ${t.unit} (limit ${t.limit})`
            : `${t.value}× (limit ${t.op === '>=' ? '≥' : '≤'} ${t.limit}×)`;
      return `${verdict}  ${t.name}: ${v}`;
    })
    .join('\n');
}

// ------------------------------------------------------------------------------- chart

const COLORS = {
  ws: '#9aa5b1',
  'ws-fsync': '#7b8794',
  socketio: '#f0b429',
  mqtt: '#8e6cc0',
  'postbox-memory': '#3ebd93',
  'postbox-sqlite': '#147d64',
};
const esc = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;');

/**
 * A hand-written SVG: saturation throughput per system (bars with min–max whiskers), and p99
 * send→delivered per system at 5k/10k/20k msg/s and at saturation (log scale).
 */
export function renderChart(summary, systems, machine) {
  const get = (sc, sys, m) => summary.find((r) => r.scenario === sc && r.system === sys && r.metric === m);
  const W = 980;
  const H = 420;
  const top = 60;
  const plotH = 280;
  const parts = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="system-ui, sans-serif" font-size="12">`,
    `<rect width="${W}" height="${H}" fill="#fff"/>`,
    `<text x="20" y="24" font-size="16" font-weight="600">postbox vs peers — 1:1, 200 clients, 100-byte messages, loopback</text>`,
    `<text x="20" y="42" fill="#52606d">${esc(machine)}</text>`,
  );
  // Panel 1: throughput.
  const sat = systems.map((s) => get('saturation', s, 'msgs_per_s')).filter(Boolean);
  const x1 = 70;
  const w1 = 380;
  const maxT = Math.max(1, ...sat.map((r) => r.max));
  const scaleT = niceMax(maxT);
  parts.push(
    `<text x="${x1}" y="${top - 4}" font-weight="600">messages/s at saturation (higher is better)</text>`,
  );
  for (let k = 0; k <= 4; k++) {
    const v = (scaleT * k) / 4;
    const y = top + plotH - (plotH * k) / 4;
    parts.push(
      `<line x1="${x1}" x2="${x1 + w1}" y1="${y}" y2="${y}" stroke="#e4e7eb"/>`,
      `<text x="${x1 - 6}" y="${y + 4}" text-anchor="end" fill="#52606d">${human(v)}</text>`,
    );
  }
  const bw = w1 / Math.max(1, sat.length);
  sat.forEach((r, k) => {
    const h = (plotH * r.value) / scaleT;
    const x = x1 + k * bw + bw * 0.15;
    const y = top + plotH - h;
    const yMin = top + plotH - (plotH * r.min) / scaleT;
    const yMax = top + plotH - (plotH * r.max) / scaleT;
    parts.push(
      `<rect x="${x.toFixed(1)}" y="${y.toFixed(1)}" width="${(bw * 0.7).toFixed(1)}" height="${h.toFixed(1)}" fill="${COLORS[r.system] ?? '#999'}"/>`,
      `<line x1="${(x + bw * 0.35).toFixed(1)}" x2="${(x + bw * 0.35).toFixed(1)}" y1="${yMin.toFixed(1)}" y2="${yMax.toFixed(1)}" stroke="#1f2933"/>`,
      `<text x="${(x + bw * 0.35).toFixed(1)}" y="${(y - 4).toFixed(1)}" text-anchor="middle">${human(r.value)}</text>`,
      `<text x="${(x + bw * 0.35).toFixed(1)}" y="${top + plotH + 16}" text-anchor="middle" font-size="11">${esc(r.system)}</text>`,
    );
  });
  // Panel 2: p99 latency, log scale.
  const groups = [
    ['latency-5k', '5k/s'],
    ['latency-10k', '10k/s'],
    ['latency-20k', '20k/s'],
    ['saturation', 'saturation'],
  ];
  const x2 = 560;
  const w2 = 400;
  const lat = systems.map((s) => groups.map(([sc]) => get(sc, s, 'delivered_p99_ms')));
  const vals = lat.flat().filter(Boolean);
  const lo = 0.1;
  const hi = niceMax(Math.max(1, ...vals.map((r) => r.value)));
  const ly = (v) => top + plotH - (plotH * Math.log10(Math.max(lo, v) / lo)) / Math.log10(hi / lo);
  parts.push(
    `<text x="${x2}" y="${top - 4}" font-weight="600">p99 send→delivered, ms, log scale (lower is better)</text>`,
  );
  for (let v = lo; v <= hi * 1.001; v *= 10) {
    parts.push(
      `<line x1="${x2}" x2="${x2 + w2}" y1="${ly(v).toFixed(1)}" y2="${ly(v).toFixed(1)}" stroke="#e4e7eb"/>`,
      `<text x="${x2 - 6}" y="${(ly(v) + 4).toFixed(1)}" text-anchor="end" fill="#52606d">${human(v)}</text>`,
    );
  }
  const gw = w2 / groups.length;
  const sw = (gw * 0.8) / Math.max(1, systems.length);
  groups.forEach(([, label], g) => {
    parts.push(
      `<text x="${(x2 + g * gw + gw / 2).toFixed(1)}" y="${top + plotH + 16}" text-anchor="middle" font-size="11">${label}</text>`,
    );
    systems.forEach((s, k) => {
      const r = lat[k][g];
      if (!r) return;
      const x = x2 + g * gw + gw * 0.1 + k * sw;
      const y = ly(r.value);
      parts.push(
        `<rect x="${x.toFixed(1)}" y="${y.toFixed(1)}" width="${(sw * 0.9).toFixed(1)}" height="${(top + plotH - y).toFixed(1)}" fill="${COLORS[s] ?? '#999'}"><title>${esc(s)} ${label}: ${human(r.value)} ms</title></rect>`,
      );
    });
  });
  // Legend.
  systems.forEach((s, k) => {
    const x = 70 + k * 150;
    const y = H - 30;
    parts.push(
      `<rect x="${x}" y="${y - 10}" width="12" height="12" fill="${COLORS[s] ?? '#999'}"/>`,
      `<text x="${x + 18}" y="${y}">${esc(s)}</text>`,
    );
  });
  parts.push('</svg>');
  return parts.join('\n') + '\n';
}

function niceMax(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}
