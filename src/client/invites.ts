/**
 * Group invites as a client keeps them: an invite the server sent (a user who had not consented
 * to the inviter was invited rather than added, see docs/groups.md "Consent") waits in the client
 * store until this user accepts or declines it on any of its devices.
 * @packageDocumentation
 */
import { Packr } from 'msgpackr';
import type { GroupEventFrame } from '../protocol/index.js';
import type { ClientStore } from './store.js';

/** A pending invite to a group (the `groupInvite` event, {@link PostboxClient.groupInvites}). */
export interface GroupInvite {
  group: string;
  /** The group's name when the invite was made. */
  name: string;
  /** Who invited this user. */
  by: string;
  /** The members when the invite was made, in join order. */
  members: string[];
  /** Server time of the invite. */
  ts: number;
}

/** The client store namespace of pending invites (key: group id). */
export const NS_INVITES = 'ginv';

const packr = new Packr({ useRecords: false, moreTypes: false });

/** The invite an `invite` event carries. */
export function inviteOf(f: GroupEventFrame): GroupInvite {
  return { group: f.g, name: f.n ?? '', by: f.by, members: (f.s ?? []).map(([u]) => u), ts: f.ts };
}

/** Encodes an invite for the client store. */
export function encodeInvite(i: GroupInvite): Uint8Array {
  return packr.pack([i.name, i.by, i.members, i.ts]);
}

/** Pending invites in the client store, oldest first. */
export async function listInvites(store: ClientStore): Promise<GroupInvite[]> {
  const out: GroupInvite[] = [];
  for (const { key, value } of await store.listState(NS_INVITES)) {
    const [name, by, members, ts] = packr.unpack(value) as [string, string, string[], number];
    out.push({ group: key, name, by, members, ts });
  }
  return out.sort((a, b) => a.ts - b.ts);
}
