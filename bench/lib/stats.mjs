// Numbers: growable sample arrays, percentiles, medians.

/** A growable array of doubles (latency samples, send times by message tag). */
export class Samples {
  constructor(capacity = 1 << 16) {
    this.data = new Float64Array(capacity);
    this.length = 0;
  }
  push(v) {
    if (this.length === this.data.length) this.grow(this.length * 2);
    this.data[this.length++] = v;
  }
  /** Sets slot `i`, growing as needed (slots never written read as 0). */
  set(i, v) {
    if (i >= this.data.length) this.grow(Math.max(i + 1, this.data.length * 2));
    this.data[i] = v;
    if (i >= this.length) this.length = i + 1;
  }
  get(i) {
    return this.data[i];
  }
  grow(n) {
    const d = new Float64Array(n);
    d.set(this.data.subarray(0, this.length));
    this.data = d;
  }
  /** Percentiles (0–100) by nearest rank; undefined when empty. */
  percentiles(ps) {
    if (this.length === 0) return ps.map(() => undefined);
    const s = this.data.slice(0, this.length).sort();
    return ps.map((p) => s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]);
  }
}

export function median(values) {
  const s = [...values].sort((a, b) => a - b);
  if (s.length === 0) return undefined;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** Rounds for display and JSON: 3 significant digits below 100, integers above. */
export function round(v) {
  if (v === undefined || v === null || !Number.isFinite(v)) return v;
  if (Math.abs(v) >= 100) return Math.round(v);
  return Number(v.toPrecision(3));
}

/** Short human form: 91234 → "91.2k". */
export function human(v) {
  if (v === undefined || v === null) return '–';
  if (!Number.isFinite(v)) return String(v);
  const a = Math.abs(v);
  if (a >= 1e6) return `${(v / 1e6).toPrecision(3)}M`;
  if (a >= 1e4) return `${(v / 1e3).toPrecision(3)}k`;
  if (a >= 100) return String(Math.round(v));
  if (a >= 1) return String(Number(v.toPrecision(3)));
  if (a === 0) return '0';
  return String(Number(v.toPrecision(2)));
}
