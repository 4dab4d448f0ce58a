/**
 * Who waits for whose keys, on one server node (docs/encryption.md, "A new contact: when can I
 * write?"): a session that claimed a user's keys and got none is remembered, and when a device of
 * that user publishes keys the session is told (`kr`) so that its held sends go without waiting
 * for the client's next ask. Only a hint, kept in memory and bounded: a notice lost to a full
 * table, a restart or another node costs the client one ask later (at most a minute), nothing more.
 * @packageDocumentation
 */

/** Most users waited for at once on one node (the oldest is forgotten past it). */
export const MAX_KEY_WAITED_USERS = 10_000;
/** Most sessions remembered as waiting for one user. */
export const MAX_KEY_WAITERS_PER_USER = 256;

/** Sessions (by device key) waiting for users' keys. */
export class KeyWaiters {
  private readonly byUser = new Map<string, Set<string>>();

  /** Session `session` claimed `user`'s keys and got none. */
  add(user: string, session: string): void {
    let set = this.byUser.get(user);
    if (!set) {
      if (this.byUser.size >= MAX_KEY_WAITED_USERS) this.byUser.delete(this.byUser.keys().next().value!);
      this.byUser.set(user, (set = new Set()));
    }
    if (set.size < MAX_KEY_WAITERS_PER_USER) set.add(session);
  }

  /** A device of `user` published keys: the sessions to tell, forgotten here. */
  take(user: string): string[] {
    const set = this.byUser.get(user);
    if (!set) return [];
    this.byUser.delete(user);
    return [...set];
  }
}
