import type { Clock, Random } from './clock.js';

const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
const CODES = Array.from(ALPHABET, (c) => c.charCodeAt(0));

/**
 * Makes a ULID generator: 26 characters, lexicographically sortable by creation time, and
 * monotone within one generator even when the clock stalls or steps back.
 */
export function ulidFactory(clock: Pick<Clock, 'now'>, random: Random): () => string {
  let lastTime = -1;
  const rand = new Array<number>(16).fill(0);
  const codes = new Array<number>(26).fill(0);
  return () => {
    let time = clock.now();
    if (time <= lastTime) {
      time = lastTime;
      // Increment the random part so ids stay strictly increasing.
      let i = 15;
      while (i >= 0 && rand[i] === 31) rand[i--] = 0;
      if (i >= 0) rand[i] = (rand[i] ?? 0) + 1;
    } else {
      lastTime = time;
      for (let i = 0; i < 16; i++) rand[i] = Math.floor(random() * 32);
    }
    // One string from 26 character codes: concatenating would leave 25 strings of garbage per id.
    let t = time;
    for (let i = 9; i >= 0; i--) {
      codes[i] = CODES[t % 32]!;
      t = Math.floor(t / 32);
    }
    for (let i = 0; i < 16; i++) codes[10 + i] = CODES[rand[i]!]!;
    return String.fromCharCode.apply(null, codes);
  };
}
