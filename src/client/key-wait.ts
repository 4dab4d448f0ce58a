/**
 * Sends to recipients whose devices have not published keys yet (docs/encryption.md, "A new
 * contact: when can I write?"). With end-to-end encryption a message needs a key of a recipient
 * device; a user whose device has connected but not uploaded keys has none yet. Such a send is
 * *held*: it stays `pending` in the outbox, later items to the same user wait behind it (so
 * per-conversation order holds), items to everyone else go on. The directory is asked again with
 * a growing wait (one `kget` for every user waited on), and the held items go back into the
 * outbox as soon as a device of the user has keys; an item held longer than `keyWaitMs` fails
 * with `no_keys`. `keysReady(user)` waits the same way, for the app.
 * @packageDocumentation
 */
import { PostboxError } from '../protocol/index.js';
import type { Clock, TimerHandle } from '../util/clock.js';
import type { OutboxEntry } from './store.js';

/** How long a send waits for its recipient's keys before it fails (`keyWaitMs`): one day. */
export const DEFAULT_KEY_WAIT_MS = 24 * 3600_000;
/** The first wait before the directory is asked again for a user's keys, ms; it doubles. */
export const KEY_PROBE_BASE_MS = 1000;
/** The longest wait between two asks for a user's keys, ms. */
export const KEY_PROBE_MAX_MS = 60_000;
/** Most users remembered as "registered, no keys yet", and most held items remembered with their start. */
const MEMORY = 4096;
/** Most users asked for in one probe (one `kget`). */
const PROBE_BATCH = 64;

/** Options of `PostboxClient.keysReady`. */
export interface KeysReadyOptions {
  /** Rejects with the signal's reason when it aborts. */
  signal?: AbortSignal;
  /** Rejects with `no_keys` after this long. Without it (and without `signal`) it waits until the keys come or the client closes. */
  timeoutMs?: number;
}

/** What the engine lends the key wait. @internal */
export interface KeyWaitIo {
  clock: Clock;
  /** Whether the directory can be asked now (the connection is open). */
  online(): boolean;
  /**
   * Asks the directory for the keys of `users`, keeping what comes (device lists, sessions), and
   * resolves with those of them that now have a device with keys.
   */
  probe(users: string[]): Promise<string[]>;
  /**
   * Runs `fn` after every item already on its way to the sealing (in outbox order), so that the
   * items it puts back cannot be overtaken by later items of the same conversation.
   */
  afterSealing(fn: () => void): void;
  /** Puts held items back into the outbox, in their order, ahead of everything not yet sent. */
  requeue(entries: OutboxEntry[]): void;
  /** Fails a held item for good. */
  fail(entry: OutboxEntry, error: PostboxError): void;
}

/** A user waited on: how many asks came back empty, and when the next is due. */
interface Waited {
  attempt: number;
  next: number;
}

/** The held items and the asks for keys of one client. @internal */
export class KeyWait {
  /** Held items per recipient user, in outbox order. */
  private readonly held = new Map<string, OutboxEntry[]>();
  /** When each held item was first held (kept across reconnects, not across restarts). */
  private readonly since = new Map<string, number>();
  /** Users the server said have registered devices but none with keys. */
  private readonly keyless = new Set<string>();
  private readonly waited = new Map<string, Waited>();
  private readonly waiters = new Map<string, Set<(error?: unknown) => void>>();
  private timer: TimerHandle | undefined;
  private probing = false;
  /** Users the server said published keys while an ask was out: asked again at once after it. */
  private readonly hinted = new Set<string>();

  constructor(
    private readonly io: KeyWaitIo,
    private readonly keyWaitMs: number,
  ) {}

  /** Held items. */
  get size(): number {
    let n = 0;
    for (const l of this.held.values()) n += l.length;
    return n;
  }

  /** The server answered a key claim: these users have registered devices but none with keys. */
  noteKeyless(users: readonly string[]): void {
    for (const u of users) {
      this.keyless.delete(u);
      this.keyless.add(u);
      if (this.keyless.size > MEMORY) this.keyless.delete(this.keyless.values().next().value!);
    }
  }

  /**
   * Whether item `e` must wait behind held items to the same user (it then joins them). Asked
   * before sealing each 1:1 item, in outbox order.
   */
  behind(e: OutboxEntry): boolean {
    const list = this.held.get(e.to);
    if (!list) return false;
    this.add(list, e);
    return true;
  }

  /**
   * Sealing found no device of `e.to` with keys. Holds `e` and answers true when the server said
   * keys may come (the user has registered devices); false when the user is not registered, and
   * the item fails as `unknown_recipient`.
   */
  hold(e: OutboxEntry): boolean {
    if (!this.keyless.has(e.to)) return false;
    let list = this.held.get(e.to);
    if (!list) this.held.set(e.to, (list = []));
    this.add(list, e);
    // Sealing has just asked: the next ask after the first wait.
    if (!this.waited.has(e.to)) this.waited.set(e.to, { attempt: 0, next: this.now() + KEY_PROBE_BASE_MS });
    this.schedule();
    return true;
  }

  /** The outbox was reloaded from the store: the held items are in it again, and are held again as they come. */
  requeued(): void {
    this.held.clear();
  }

  /** The server says a device of `user` has just published keys (`kr`): asks at once. */
  published(user: string): void {
    const w = this.waited.get(user);
    if (!w) return;
    if (this.probing) this.hinted.add(user);
    w.next = this.now();
    this.schedule();
  }

  /** The connection opened: asks that fell due while offline go now. */
  connected(): void {
    this.schedule();
  }

  /**
   * Resolves when a device of `user` has published keys (at once when one is known to). Waits for
   * a user with no device yet too; rejects with `no_keys` after `timeoutMs`, with the signal's
   * reason when it aborts, and with `closed` when the client closes.
   */
  keysReady(user: string, options: KeysReadyOptions = {}): Promise<void> {
    const { signal, timeoutMs } = options;
    return new Promise<void>((resolve, reject) => {
      if (signal?.aborted) return reject(signal.reason);
      let timer: TimerHandle | undefined;
      const onAbort = () => settle(signal!.reason);
      const settle = (error?: unknown) => {
        this.io.clock.clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        const set = this.waiters.get(user);
        set?.delete(settle);
        if (set?.size === 0) this.waiters.delete(user);
        if (error === undefined) resolve();
        else reject(error);
      };
      let set = this.waiters.get(user);
      if (!set) this.waiters.set(user, (set = new Set()));
      set.add(settle);
      if (timeoutMs !== undefined) {
        timer = this.io.clock.setTimeout(
          () => settle(noKeys(user, `within ${timeoutMs} ms (timeoutMs)`)),
          Math.max(0, timeoutMs),
        );
      }
      signal?.addEventListener('abort', onAbort, { once: true });
      // Asked at once (a user with a known device answers without a round trip).
      const w = this.waited.get(user);
      if (w) w.next = Math.min(w.next, this.now());
      else this.waited.set(user, { attempt: 0, next: this.now() });
      this.schedule();
    });
  }

  /** The client closed: `keysReady` promises reject with `closed`; held items stay in the store. */
  close(): void {
    this.io.clock.clearTimeout(this.timer);
    this.timer = undefined;
    const closed = new PostboxError('closed', 'client closed before the keys came');
    for (const set of [...this.waiters.values()]) for (const settle of [...set]) settle(closed);
    this.held.clear();
    this.waited.clear();
  }

  // ------------------------------------------------------------------ internals

  private now(): number {
    return this.io.clock.now();
  }

  private add(list: OutboxEntry[], e: OutboxEntry): void {
    if (!list.some((x) => x.id === e.id)) list.push(e);
    if (!this.since.has(e.id)) {
      this.since.set(e.id, this.now());
      if (this.since.size > MEMORY) this.since.delete(this.since.keys().next().value!);
    }
    this.schedule();
  }

  /** Whether anyone still needs `user`'s keys. */
  private needed(user: string): boolean {
    return this.held.has(user) || this.waiters.has(user);
  }

  /** Arms the one timer for the next deadline or due ask. */
  private schedule(): void {
    let at = Infinity;
    for (const list of this.held.values()) {
      for (const e of list) at = Math.min(at, (this.since.get(e.id) ?? this.now()) + this.keyWaitMs);
    }
    if (!this.probing && this.io.online()) {
      for (const [u, w] of this.waited) if (this.needed(u)) at = Math.min(at, w.next);
    }
    this.io.clock.clearTimeout(this.timer);
    this.timer = undefined;
    if (at === Infinity) return;
    this.timer = this.io.clock.setTimeout(() => this.tick(), Math.max(0, at - this.now()));
  }

  private tick(): void {
    this.timer = undefined;
    const now = this.now();
    for (const [user, list] of [...this.held]) {
      const keep = list.filter((e) => {
        const start = this.since.get(e.id) ?? now;
        if (now < start + this.keyWaitMs) return true;
        this.since.delete(e.id);
        this.io.fail(e, noKeys(user, `within ${this.keyWaitMs} ms (keyWaitMs)`));
        return false;
      });
      // With nothing left held, the user's next item is sealed (and asked for) afresh.
      if (keep.length > 0) this.held.set(user, keep);
      else this.held.delete(user);
    }
    for (const u of [...this.waited.keys()]) if (!this.needed(u)) this.waited.delete(u);
    if (!this.probing && this.io.online()) this.probe(now);
    this.schedule();
  }

  private probe(now: number): void {
    const due = [...this.waited]
      .filter(([, w]) => w.next <= now)
      .map(([u]) => u)
      .slice(0, PROBE_BATCH);
    if (due.length === 0) return;
    this.probing = true;
    this.io.probe(due).then(
      (ready) => this.probed(due, new Set(ready)),
      // Offline, rate limited, a store fault: asked again after the next wait.
      () => this.probed(due, new Set()),
    );
  }

  private probed(asked: string[], ready: Set<string>): void {
    this.probing = false;
    const now = this.now();
    for (const u of asked) {
      if (ready.has(u)) {
        this.ready(u);
        continue;
      }
      const w = this.waited.get(u);
      if (!w) continue;
      if (this.hinted.delete(u)) {
        w.next = now;
        continue;
      }
      w.attempt++;
      w.next = now + Math.min(KEY_PROBE_MAX_MS, KEY_PROBE_BASE_MS * 2 ** Math.min(w.attempt, 20));
    }
    this.hinted.clear();
    this.schedule();
  }

  /** A device of `user` has keys: its held items go back into the outbox, its waiters resolve. */
  private ready(user: string): void {
    this.keyless.delete(user);
    this.waited.delete(user);
    for (const settle of [...(this.waiters.get(user) ?? [])]) settle();
    // Items already on their way to the sealing are held first, then all go back in order.
    this.io.afterSealing(() => {
      const list = this.held.get(user);
      if (!list) return;
      this.held.delete(user);
      for (const e of list) this.since.delete(e.id);
      this.io.requeue(list);
      this.schedule();
    });
  }
}

/** The failure of a send (or a `keysReady`) whose recipient never got keys. */
function noKeys(user: string, within: string): PostboxError {
  return new PostboxError(
    'no_keys',
    `no device of ${user} published encryption keys ${within}: nothing to encrypt to`,
  );
}
