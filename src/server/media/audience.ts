/**
 * Who may download a blob: the audience of the conversation it was attached to, read from the
 * server store when the sender attaches it (as the message itself is fanned out at send time).
 * @packageDocumentation
 */
import type { ServerStore } from '../store.js';
import type { ResolveAudience } from './http.js';

/**
 * Resolves `to` (a user, or a `#group` the sender belongs to) into the users who may download
 * and the devices (`user/device`) expected to ack: the recipient's devices, or every member's,
 * and the sender's own devices. Undefined when the sender may not send there.
 */
export function storeAudience(store: ServerStore): ResolveAudience {
  return async (sender, to) => {
    let users: string[];
    if (to.startsWith('#')) {
      const g = await store.group(to);
      if (!g || !g.members.some((m) => m.user === sender.user)) return undefined;
      users = g.members.map((m) => m.user);
    } else {
      if ((await store.devices(to)).length === 0) return undefined;
      users = [to];
    }
    users = [...new Set([sender.user, ...users])];
    const devices: string[] = [];
    for (const u of users) for (const d of await store.devices(u)) devices.push(`${u}/${d}`);
    return { users, devices };
  };
}
