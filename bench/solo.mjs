// Child process for the scenarios that need no server/load split (wire, codec).
//   node bench/solo.mjs '{"scenario":"codec","params":{…}}'
import { fail, tell } from './lib/child.mjs';

try {
  const { scenario, params } = JSON.parse(process.argv[2]);
  const { run } = await import(`./scenarios/${scenario}.mjs`);
  await tell({ type: 'result', result: await run(params) });
  process.exit(0);
} catch (e) {
  fail(e);
}
