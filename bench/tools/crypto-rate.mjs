// 1:1 encrypt + decrypt rate on one thread, the postbox libsignal adapter beside raw libsignal in
// the same process (bench/scenarios/crypto.mjs; `npm run bench -- --only crypto` runs it too).
// Median of `--rounds` rounds of `--seconds` each. Target: adapter ≥ 0.8 × raw.
//   npm run build && node bench/tools/crypto-rate.mjs [--seconds 1] [--rounds 9]
import { parseArgs } from 'node:util';
import { run, SUBJECTS } from '../scenarios/crypto.mjs';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '1' },
    rounds: { type: 'string', default: '9' },
  },
});
const SECONDS = Number(values.seconds);
const ROUNDS = Number(values.rounds);

const rates = Object.fromEntries(SUBJECTS.map((k) => [k, []]));
for (let round = 0; round < ROUNDS; round++) {
  for (const r of (await run({ ms: SECONDS * 1000, round })).results) rates[r.system].push(r.value);
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const result = Object.fromEntries(Object.entries(rates).map(([k, v]) => [k, Math.round(median(v))]));
const ratio = result['postbox-libsignal'] / result.libsignal;
const ratioSerialized = result['postbox-libsignal'] / result['libsignal-serialized'];

console.log(
  `1:1 encrypt+decrypt, 100-byte plaintext, established session, one thread (median of ${ROUNDS} × ${SECONDS} s)`,
);
console.log('subject                      messages/s');
for (const [k, v] of Object.entries(result)) console.log(`${k.padEnd(28)} ${String(v).padStart(10)}`);
console.log(
  `adapter / raw                ${ratio.toFixed(2)}  (target ≥ 0.80: ${ratio >= 0.8 ? 'met' : 'NOT met'})`,
);
console.log(`adapter / raw (serialized)   ${ratioSerialized.toFixed(2)}`);
