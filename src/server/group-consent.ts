/**
 * Consent for groups: who may be put into a group by someone else. A user a create or add names
 * joins at once only when the server's consent rule says it consented to the actor; everyone else
 * gets an invite it may accept or decline (see docs/groups.md, "Consent"). Joins and creations are
 * also capped per user and time, so even users who consented cannot be flooded with groups.
 * @packageDocumentation
 */
import { capable } from './capabilities.js';
import type { GroupInput, ServerStore } from './store.js';
import { WindowCounters } from './limits.js';

/**
 * An app's own rule: may `actor` put `user` into a group without asking (e.g. they are contacts
 * in the app's address book)? `store` answers {@link ServerStore.related}.
 */
export type GroupConsentRule = (
  actor: string,
  user: string,
  store: ServerStore,
) => boolean | Promise<boolean>;

/**
 * Who joins a group directly when someone else creates it with them or adds them:
 * - `'related'`: a user that consented to the actor ({@link ServerStore.related}: it wrote to the
 *   actor 1:1, or took part in a group while the actor was in it); everyone else is invited;
 * - `'invite'`: nobody, every one is invited;
 * - `'open'`: everybody (the old behaviour, for apps whose own rules already stand for consent);
 * - a {@link GroupConsentRule}.
 */
export type GroupConsent = 'related' | 'invite' | 'open' | GroupConsentRule;

/** The per-user caps of {@link GroupCaps}. */
export interface GroupCapOptions {
  /** Groups one user may create per hour. */
  maxGroupCreatesPerHour: number;
  /** Groups one user may be put into (added directly, or by accepting an invite) per day. */
  maxGroupJoinsPerDay: number;
}

const HOUR_MS = 3600_000;
const DAY_MS = 24 * HOUR_MS;

/**
 * Creations per creator and joins per joining user, in fixed windows. Counted through the store
 * when it declares `actionCounts` (so every node of a cluster counts together, atomically);
 * else on this node (bounded maps, see limits.ts), and N nodes allow up to N times each cap.
 */
export class GroupCaps {
  private readonly creates = new WindowCounters(HOUR_MS);
  private readonly joins = new WindowCounters(DAY_MS);

  constructor(
    private readonly opts: GroupCapOptions,
    private readonly store?: ServerStore,
  ) {}

  /** One more group created by `user`: false once it is over its creations per hour. */
  async create(user: string, now: number): Promise<boolean> {
    const [n] = await this.count('group-create', this.creates, HOUR_MS, [user], now);
    return n! <= this.opts.maxGroupCreatesPerHour;
  }

  /** One more group joined by each of `users` (each named once): whether each is within its joins per day. */
  async join(users: string[], now: number): Promise<boolean[]> {
    const counts = await this.count('group-join', this.joins, DAY_MS, users, now);
    return counts.map((n) => n <= this.opts.maxGroupJoinsPerDay);
  }

  private async count(
    kind: string,
    local: WindowCounters,
    windowMs: number,
    users: string[],
    now: number,
  ): Promise<number[]> {
    if (users.length === 0) return [];
    const store = this.store;
    if (store && capable(store, 'actionCounts')) return store.countActions(kind, users, windowMs, now);
    return users.map((u) => local.add(u, 1, now));
  }
}

/**
 * Decides, for a create or add, which named users join at once and which are invited, and writes
 * that into the change. Users over their joins per day are invited too (an invite they accept
 * still counts as a join then). Other changes are left as they are.
 */
export async function applyConsent(
  input: GroupInput,
  consent: GroupConsent,
  store: ServerStore,
  caps: GroupCaps,
  now: number,
): Promise<void> {
  const c = input.change;
  if (c.op !== 'create' && c.op !== 'add') return;
  const actor = input.from.user;
  const direct: string[] = [];
  const invite: string[] = [];
  const consenting: string[] = [];
  for (const user of new Set(c.members)) {
    if (user === actor) continue;
    let ok: boolean;
    if (consent === 'open') ok = true;
    else if (consent === 'invite') ok = false;
    else if (consent === 'related') ok = await store.related(actor, user);
    else ok = await consent(actor, user, store);
    (ok ? consenting : invite).push(user);
  }
  // Users over their joins per day are invited instead (one count for all of them).
  const within = await caps.join(consenting, now);
  consenting.forEach((user, i) => (within[i] ? direct : invite).push(user));
  c.members = direct;
  if (invite.length > 0) c.invite = invite;
}
