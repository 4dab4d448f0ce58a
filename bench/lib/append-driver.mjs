// The one operation the browser bench times, shared by the page (bundled by esbuild) and Node:
// the durable outbox append that `send()` awaits — `store.enqueue(draft, true)`, which takes the
// conversation's next sequence number and stores the entry in one write. One append at a time,
// as the client's store-task loop issues them.

/**
 * Appends to `store` for `seconds` after `warmup` appends, one awaited at a time, and returns how
 * many completed and in how long.
 * @param {import('../../dist/client/store.js').ClientStore} store
 * @param {{ seconds: number, warmup: number, size: number }} opts
 */
export async function measureAppends(store, { seconds, warmup, size }) {
  const body = new Uint8Array(size).fill(7);
  let n = 0;
  const append = () =>
    store.enqueue(
      {
        id: `m${String(++n).padStart(8, '0')}`,
        kind: 'msg',
        to: 'bob',
        conv: 'bob',
        body,
        createdAt: Date.now(),
      },
      true,
    );
  for (let i = 0; i < warmup; i++) await append();
  const start = performance.now();
  const end = start + seconds * 1000;
  let count = 0;
  let now = start;
  while (now < end) {
    await append();
    count++;
    now = performance.now();
  }
  return { count, ms: now - start };
}
