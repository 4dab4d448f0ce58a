import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';

// Node 20 has no global WebSocket; an app that did not install the optional peer `ws` used to
// retry forever with the reason hidden in `err.cause`. A child process whose module loader
// cannot find `ws` shows what the app sees now.
const hooks = `export async function resolve(specifier, context, next) {
  if (specifier === 'ws') throw Object.assign(new Error("Cannot find package 'ws'"), { code: 'ERR_MODULE_NOT_FOUND' });
  return next(specifier, context);
}`;
const register = `import { register } from 'node:module';
register('data:text/javascript,' + encodeURIComponent(${JSON.stringify(hooks)}));`;
const app = `
delete globalThis.WebSocket; // Node 22 has one: take it away, as Node 20 has none
const { createClient } = await import('postbox/client');
const { memoryClientStore } = await import('postbox/client/memory');
const { websocketClientTransport } = await import('postbox/transport/websocket-client');
const states = [];
const client = createClient({
  transport: websocketClientTransport({ url: 'ws://127.0.0.1:9/postbox' }),
  store: memoryClientStore(),
  credentials: () => 'x',
  backoffBaseMs: 10,
});
const timer = setTimeout(() => { console.log(JSON.stringify({ states, gaveUp: false })); process.exit(0); }, 5000);
client.on('connection', (state, error) => {
  states.push({ state, code: error?.code, message: error?.message });
  if (state === 'closed') { clearTimeout(timer); console.log(JSON.stringify({ states, gaveUp: true })); }
});
`;

describe('a client on a runtime with no WebSocket', () => {
  it('without the ws peer stops at once with misconfigured and says what to install, instead of retrying forever', () => {
    const out = execFileSync(
      process.execPath,
      ['--import', `data:text/javascript,${encodeURIComponent(register)}`, '--input-type=module', '-e', app],
      { encoding: 'utf8' },
    );
    const { states, gaveUp } = JSON.parse(out.trim().split('\n').pop()!) as {
      states: Array<{ state: string; code?: string; message?: string }>;
      gaveUp: boolean;
    };
    expect(gaveUp).toBe(true);
    const last = states.at(-1)!;
    expect(last).toMatchObject({ state: 'closed', code: 'misconfigured' });
    expect(last.message).toMatch(/npm i ws/);
    expect(states.filter((s) => s.state === 'backoff')).toEqual([]);
  });
});
