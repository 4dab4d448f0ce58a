/**
 * The group-invite rules every built-in store shares (see docs/groups.md, "Consent"): who gets a
 * pending invite from a create or add, what an invitee's devices are told, and what `accept` and
 * `decline` take away. Pure code: each store reads its pending invites and writes its own rows.
 * What store-kit.ts re-exports from here is public (`postbox/server/store-kit`).
 * @packageDocumentation
 */
import type { AppendRefusal, GroupEvent, GroupInput } from '../store.js';
import { snapshotOf, type ChangePlan, type GroupView } from './relational.js';

/** What a membership change does to pending invites, worked out before anything is written. */
export interface InvitePlan {
  /** New pending invites: the invitee, and the event every device of it gets. */
  add: Array<{ user: string; event: GroupEvent }>;
  /** Users whose pending invite to this group goes (accepted or declined). */
  drop: string[];
  /** The event the acting user's own devices get (a decline, so its other devices clear it). */
  own?: GroupEvent;
}

/** What a store answers about pending invites while planning. */
export interface PendingInvites {
  /** Whether `user` holds a pending invite to the change's group. */
  has(user: string): boolean;
  /** How many pending invites `user` holds, to any group. */
  count(user: string): number;
}

/**
 * The invite side of a membership change, given the group before it (`current`) and the change's
 * plan (`null`: no membership change). Refuses a `decline` without a pending invite (`forbidden`)
 * and invites of users not in the directory (`unknown_recipient`). Users already members or
 * already invited are skipped, and so are users holding `maxPending` invites (the invite is not
 * made: an inviter cannot bury anyone in invites).
 */
export function planInvites(
  item: GroupInput,
  current: GroupView | undefined,
  plan: ChangePlan | null,
  hasDevice: (user: string) => boolean,
  pending: PendingInvites,
  maxPending: number,
): InvitePlan | AppendRefusal {
  const actor = item.from.user;
  const c = item.change;
  if (c.op === 'accept') return { add: [], drop: [actor] };
  if (c.op === 'decline') {
    if (!current || !pending.has(actor)) return 'forbidden';
    const own: GroupEvent = {
      group: item.group,
      ver: Math.max(1, current.ver),
      op: 'decline',
      by: actor,
      members: [actor],
      name: current.name,
    };
    return { add: [], drop: [actor], own };
  }
  // Whoever joins by other means no longer needs an invite.
  const drop = (plan?.joined ?? []).filter((u) => pending.has(u));
  if ((c.op !== 'create' && c.op !== 'add') || !c.invite?.length) return { add: [], drop };
  const after = plan?.after ?? current;
  if (!after) return { add: [], drop };
  const users = [...new Set(c.invite)].filter((u) => u !== actor && !after.members.has(u));
  if (users.some((u) => !hasDevice(u))) return 'unknown_recipient';
  const snapshot = snapshotOf(after);
  const add = users
    .filter((u) => !pending.has(u) && pending.count(u) < maxPending)
    .map((user) => ({
      user,
      event: {
        group: item.group,
        ver: after.ver,
        op: 'invite' as const,
        by: actor,
        members: [user],
        name: after.name,
        snapshot,
      },
    }));
  return { add, drop };
}
