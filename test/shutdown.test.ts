import { describe, expect, it } from 'vitest';
import { makeWorld, text } from './helpers.js';

describe('server shutdown', () => {
  it('close() leaves no timer of the server running, so an embedding process exits at once', async () => {
    const world = await makeWorld();
    const alice = await world.device('alice');
    const bob = await world.device('bob');
    await alice.client.send('bob', text('hi'));
    await world.advance(200);
    expect(bob.messages).toHaveLength(1);
    // Clients first (their own timers go with them), then the server: what remains is the server's.
    await alice.client.close();
    await bob.client.close();
    await world.advance(10);
    await world.server.close();
    expect(world.clock.pendingTimers).toBe(0);
  });
});
