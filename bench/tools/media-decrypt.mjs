// The download's decryption alone, without network: a 100 MB pbm1 blob in memory, fed in 64 KiB
// pieces (what fetch delivers) through decryptPieces with each cipher, beside the floor of its
// cryptography (AES-256-GCM and the SHA-256 of the ciphertext over the same pieces, nothing else).
// CPU per MB of this process (process.cpuUsage, all threads), rounds interleaved, medians.
//   node bench/tools/media-decrypt.mjs [ROUNDS]
import { createDecipheriv, createHash, randomBytes } from 'node:crypto';
// The generators downloadPlain runs (not exported by postbox/media), from the build.
import { decryptPieces, encryptPieces, freshSecret } from '../../dist/media/stream.js';
import { webCryptoCipher } from '../../dist/media/cipher.js';
import { nodeMediaCipher } from '../../dist/media/node-cipher.js';

const rounds = Number(process.argv[2] ?? 7);
const MB = 100;
const plain = randomBytes(MB << 20);
const secret = freshSecret();
async function* piecesOf(bytes, n) {
  for (let o = 0; o < bytes.length; o += n) yield bytes.subarray(o, o + n);
}
let summary;
const sealed = [];
for await (const p of encryptPieces(piecesOf(plain, 262144), secret, { onDone: (s) => (summary = s) }))
  sealed.push(p.bytes);
const blob = Buffer.concat(sealed);
sealed.length = 0;
// Fresh buffers per piece, as a network reader's are, made before any timing.
const pieces = [];
for (let o = 0; o < blob.length; o += 65536) pieces.push(Buffer.from(blob.subarray(o, o + 65536)));
async function* feed() {
  yield* pieces;
}
const expect = { key: secret.key, ...summary };
const open = (cipher) => async () => {
  let n = 0;
  for await (const p of decryptPieces(feed(), { ...expect, cipher })) n += p.length;
  if (n !== plain.length) throw new Error(`got ${n} of ${plain.length}`);
};
const floor = async () => {
  // Not the format (one cipher for the whole blob): only the work every reader must do, AES-GCM
  // and the SHA-256 of the ciphertext (the one hash a download checks, docs/media.md).
  const d = createDecipheriv('aes-256-gcm', Buffer.from(secret.key), Buffer.alloc(12));
  const c = createHash('sha256');
  for (const piece of pieces) {
    c.update(piece);
    d.update(piece);
  }
  c.digest();
};
const aesOnly = async () => {
  const d = createDecipheriv('aes-256-gcm', Buffer.from(secret.key), Buffer.alloc(12));
  for (const piece of pieces) d.update(piece);
};
const runs = {
  'node:crypto (incremental)': open(nodeMediaCipher),
  webcrypto: open(webCryptoCipher),
  'floor: AES + SHA-256': floor,
  'AES-GCM alone': aesOnly,
};
const out = Object.fromEntries(Object.keys(runs).map((k) => [k, []]));
for (let r = 0; r <= rounds; r++)
  for (const [name, run] of Object.entries(runs)) {
    const c0 = process.cpuUsage();
    await run();
    const c = process.cpuUsage(c0);
    if (r > 0) out[name].push((c.user + c.system) / 1000 / MB);
  }
const med = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
for (const [name, xs] of Object.entries(out))
  console.log(
    `${name.padEnd(28)} ${med(xs).toFixed(2)} ms/MB  [${Math.min(...xs).toFixed(2)}–${Math.max(...xs).toFixed(2)}]`,
  );
