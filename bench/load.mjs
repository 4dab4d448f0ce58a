// Child process: the load generator for one system and one scenario (pinned to the load core).
//   node bench/load.mjs '{"system":"ws","scenario":"saturation","url":"…","params":{…}}'
import { fail, tell } from './lib/child.mjs';

const CLIENTS = {
  ws: './systems/ws.client.mjs',
  'ws-fsync': './systems/ws-fsync.client.mjs',
  socketio: './systems/socketio.client.mjs',
  mqtt: './systems/mqtt.client.mjs',
  'postbox-memory': './systems/postbox.client.mjs',
  'postbox-sqlite': './systems/postbox.client.mjs',
  'postbox-memory-notrace': './systems/postbox.client.mjs',
  'postbox-sqlite-notrace': './systems/postbox.client.mjs',
};

try {
  const { system, scenario, url, params } = JSON.parse(process.argv[2]);
  const sys = await import(CLIENTS[system]);
  const { run } = await import(`./scenarios/${scenario}.mjs`);
  const result = await run(sys, { ...params, url });
  await tell({ type: 'result', result });
  process.exit(0);
} catch (e) {
  fail(e);
}
