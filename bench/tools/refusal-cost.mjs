// Server CPU per socket refused by the socket guard (issue 22, socket-flood): a peer over its
// address's cap reconnects as fast as it is reset, so each refusal must be cheap. An HTTP server
// in a child process holds `--cap` sockets from 127.0.0.1, then this process opens `--sockets`
// more (100 in flight), each reset by the guard; the child's CPU (user + system) over the
// refusals ÷ their count. Two subjects in one run, alternating: `guard` (guardSockets, refusing
// on the accepted handle) and `on-connection` (the same rule on the `connection` event, after
// Node built a net.Socket and the HTTP server a parser: what the guard did before).
//   npm run build && node bench/tools/refusal-cost.mjs [--sockets 20000] [--rounds 3]
import { fork } from 'node:child_process';
import { createServer } from 'node:http';
import net from 'node:net';
import { parseArgs } from 'node:util';

const CAP = 256;
if (process.argv[2] === '--child') {
  const http = createServer((_req, res) => res.end('ok'));
  if (process.argv[3] === 'guard') {
    const { guardSockets } = await import('postbox/transport/websocket');
    guardSockets(http, { maxSocketsPerAddress: CAP });
  } else {
    let open = 0;
    http.on('connection', (s) => {
      if (open >= CAP) return void s.on('error', () => {}).resetAndDestroy();
      open++;
      s.once('close', () => open--);
    });
  }
  http.listen(0, '127.0.0.1', () => process.send({ port: http.address().port }));
  process.on('message', () => {
    const u = process.cpuUsage();
    process.send({ us: u.user + u.system });
  });
} else {
  const { values } = parseArgs({
    options: { sockets: { type: 'string', default: '20000' }, rounds: { type: 'string', default: '3' } },
  });
  const N = Number(values.sockets);
  const results = { guard: [], 'on-connection': [] };
  for (let round = 0; round < Number(values.rounds); round++) {
    for (const subject of Object.keys(results)) results[subject].push(await measure(subject, N));
  }
  for (const [subject, us] of Object.entries(results)) {
    console.log(
      `${subject.padEnd(14)} µs of server CPU per refused socket: ${us.map((x) => x.toFixed(1)).join(', ')}`,
    );
  }
  const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];
  console.log(
    `ratio guard ÷ on-connection (medians): ${(median(results.guard) / median(results['on-connection'])).toFixed(2)}`,
  );
}

async function measure(subject, n) {
  const child = fork(new URL(import.meta.url).pathname, ['--child', subject]);
  const next = () => new Promise((resolve) => child.once('message', resolve));
  const { port } = await next();
  const held = [];
  for (let i = 0; i < CAP; i++) {
    held.push(
      await new Promise((resolve) =>
        net.connect(port, '127.0.0.1', function () {
          resolve(this);
        }),
      ),
    );
  }
  await new Promise((r) => setTimeout(r, 200));
  const cpu = async () => (child.send('cpu'), (await next()).us);
  const before = await cpu();
  await new Promise((resolve) => {
    let started = 0;
    let ended = 0;
    const open = () => {
      started++;
      const s = net.connect(port, '127.0.0.1');
      s.on('error', () => {});
      s.on('close', () => (++ended === n ? resolve() : started < n && open()));
    };
    for (let i = 0; i < 100; i++) open();
  });
  const us = (await cpu()) - before;
  for (const s of held) s.destroy();
  child.kill();
  return us / n;
}
