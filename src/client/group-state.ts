/**
 * The groups this device knows: their views (built from the ordered membership events of its
 * inbox and kept in the store), membership requests through the durable outbox, and what a group
 * message records at send time (its recipients and the group's version).
 * @packageDocumentation
 */
import {
  PostboxError,
  assertGroupId,
  assertUserId,
  type GroupEventFrame,
  type GroupOp,
} from '../protocol/index.js';
import type { ClientContext } from './context.js';
import {
  applyGroupEvent,
  decodeView,
  encodeChange,
  encodeRecipients,
  encodeView,
  isJoinSnapshot,
  type GroupView,
} from './groups.js';
import { NS_INVITES, encodeInvite, inviteOf } from './invites.js';
import {
  NS_GROUP,
  NS_GROUP_JOINED,
  NS_GROUP_SEND,
  NS_GROUP_SEND_VER,
  encodeNumber,
  pairKey,
} from './namespaces.js';
import { storeRefused, type Outbox } from './outbox.js';
import type { OutboxEntry, StateWrite } from './store.js';

/** A membership change as the outbox stores it. */
export interface GroupChange {
  op: GroupOp;
  m?: string[];
  n?: string;
}

/** Most users one membership change names. */
const MAX_CHANGE_MEMBERS = 1024;

/** The group part of one client. */
export class GroupState {
  private readonly views = new Map<string, GroupView>();

  constructor(
    private readonly ctx: ClientContext,
    private readonly outbox: Pick<Outbox, 'waiter' | 'settleWaiter' | 'push' | 'pump'>,
    /** Members left or were removed from a group this user is in (the sealing stage rotates its key). */
    private readonly membersLeft: (group: string) => Promise<void>,
  ) {}

  /** Loads the stored views, once (later connections keep the views in memory). */
  async load(): Promise<void> {
    if (this.views.size > 0) return;
    for (const { key, value } of await this.ctx.store.listState(NS_GROUP)) {
      this.views.set(key, decodeView(key, value));
    }
  }

  /** A copy of a group's view, or undefined. */
  view(id: string): GroupView | undefined {
    const v = this.views.get(id);
    return v && { ...v, members: v.members.map((m) => ({ ...m })) };
  }

  /** Copies of every known view. */
  all(): GroupView[] {
    return [...this.views.keys()].map((id) => this.view(id)!);
  }

  /** The other members of a group as this device knows it (none for an unknown group). */
  othersIn(group: string, me: string | undefined): string[] {
    const view = this.views.get(group);
    return view ? view.members.map((m) => m.user).filter((u) => u !== me) : [];
  }

  /** The recipients a group message counts its receipts against, as this device knows the group. */
  async sendState(id: string, group: string): Promise<StateWrite[]> {
    // The views load with the first connection; a send before it reads the stored one.
    let view = this.views.get(group);
    if (!view) {
      const raw = await this.ctx.store.getState(NS_GROUP, group);
      view = raw && decodeView(group, raw);
    }
    const me = (await this.ctx.self())?.user;
    const recipients = view ? view.members.map((m) => m.user).filter((u) => u !== me) : [];
    return [
      { ns: NS_GROUP_SEND, key: id, value: encodeRecipients(recipients) },
      // The group's version when sent: who joined after it may have received it too (receipts
      // and resends are checked against it, with or without encryption).
      { ns: NS_GROUP_SEND_VER, key: id, value: encodeNumber(view?.ver ?? 0) },
    ];
  }

  /**
   * Queues a membership change through the outbox; resolves when the server committed it,
   * rejects with its refusal, `closed`, or `invalid_frame` for a malformed change.
   */
  request(group: string, change: GroupChange): Promise<void> {
    const ctx = this.ctx;
    if (ctx.state === 'closed') return Promise.reject(new PostboxError('closed', 'client is closed'));
    if (change.m && change.m.length > MAX_CHANGE_MEMBERS) {
      return Promise.reject(new PostboxError('invalid_frame', 'members: at most 1,024 user ids'));
    }
    try {
      assertGroupId(group, 'group');
      for (const u of change.m ?? []) assertUserId(u, 'member');
    } catch (e) {
      return Promise.reject(e as PostboxError);
    }
    if (change.n !== undefined && (typeof change.n !== 'string' || !change.n || change.n.length > 128)) {
      return Promise.reject(new PostboxError('invalid_frame', 'group name: 1 to 128 characters'));
    }
    const id = ctx.ulid();
    const done = this.outbox.waiter(id);
    ctx.later(async () => {
      let entry: OutboxEntry;
      try {
        entry = await ctx.store.enqueue(
          {
            id,
            kind: 'group',
            to: group,
            conv: group,
            body: encodeChange(change),
            createdAt: ctx.clock.now(),
          },
          false,
        );
      } catch (e) {
        this.outbox.settleWaiter(id, storeRefused('request', e));
        throw e;
      }
      this.outbox.push(entry);
      this.outbox.pump();
    });
    return done;
  }

  /** A membership event of the inbox: the view moves (stored first), then the app hears of it. */
  async apply(f: GroupEventFrame): Promise<void> {
    if (f.op === 'invite' || f.op === 'decline') {
      const invite = inviteOf(f);
      const value = f.op === 'invite' ? encodeInvite(invite) : undefined;
      await this.ctx.store.putState([{ ns: NS_INVITES, key: f.g, value }]);
      this.ctx.emit('groupInvite', invite, f.op === 'invite' ? 'pending' : 'declined');
      return;
    }
    const me = this.ctx.me?.user ?? '';
    const next = applyGroupEvent(this.views.get(f.g), f, me);
    if (!next) return;
    const joined =
      f.op === 'add' || f.op === 'create'
        ? f.m.map((u) => ({ ns: NS_GROUP_JOINED, key: pairKey(f.g, u), value: encodeNumber(f.v) }))
        : [];
    // Becoming a member (an accepted invite, or an add) settles any invite to the group.
    const settled = next.member ? [{ ns: NS_INVITES, key: f.g, value: undefined }] : [];
    await this.ctx.store.putState([
      { ns: NS_GROUP, key: f.g, value: encodeView(next) },
      ...joined,
      ...settled,
    ]);
    this.views.set(f.g, next);
    // Someone left: a new sender key, which the members that remain get on the next send.
    if (next.member && (f.op === 'remove' || f.op === 'leave')) await this.membersLeft(f.g);
    const sync = isJoinSnapshot(f, me);
    this.ctx.emit('group', this.view(f.g)!, {
      group: f.g,
      ver: f.v,
      op: sync ? 'sync' : f.op,
      by: f.by,
      members: sync ? [] : [...f.m],
      ts: f.ts,
    });
  }
}
