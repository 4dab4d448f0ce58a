// Issue 22, item 4: one device uploads one-time prekeys as fast as the server answers, every key
// a fresh id (a re-uploaded id does not count twice): 100 EC and 100 Kyber keys (1.6 KB each) a
// frame, some 170 KB. Unguarded, one device wrote 244,800 prekeys (+1.01 GB) in 12 s; the store's
// quota (1,000 of each kind per device) refuses the rest, and the cost budget (64 + 1 per key)
// paces what is left.
import { pipeline } from '../lib/wire-peer.mjs';

const PER_FRAME = 100; // MAX_KEYS_PER_UPLOAD, of each kind
const IN_FLIGHT = 8;

export const about = `one device uploads ${PER_FRAME} EC + ${PER_FRAME} Kyber one-time prekeys a frame (≈170 KB, fresh key ids), ${IN_FLIGHT} uploads in flight, reconnecting when closed`;
// The quota: 1,000 EC keys (33 B) and 1,000 Kyber keys (1,569 B + a 64 B signature) ≈ 1.7 MB of
// keys, a few times that with the store's indexes and WAL.
export const bounds = { diskMb: 8 };

const bytes = (n, v) => new Uint8Array(n).fill(v);

export async function run(ctx) {
  let nextId = 1;
  const kyber = bytes(1569, 8);
  const sig = bytes(64, 9);
  const ec = bytes(33, 7);
  const upload = (r) => ({
    t: 'keys',
    r,
    rid: 7,
    ik: bytes(33, 5),
    spk: [1, bytes(33, 6), bytes(64, 7)],
    lrk: [2, kyber, sig],
    pk: Array.from({ length: PER_FRAME }, () => [nextId++, ec]),
    kpk: Array.from({ length: PER_FRAME }, () => [nextId++, kyber, sig]),
  });
  await pipeline(ctx, {
    user: 'hoarder',
    localAddress: ctx.addresses[0],
    inFlight: IN_FLIGHT,
    frame: upload,
  });
  ctx.stats.keys_sent = nextId - 1;
}
