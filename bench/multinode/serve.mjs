// Child process: one gateway node, `postbox serve` (dist/cli/main.js) exactly as a user runs it,
// with the bench's IPC around it (bench/lib/proc.mjs `startNode`):
//   - 'ready' with the URL once the command prints its `postbox listening on URL` line;
//   - a 'stop' message is a SIGTERM (the command's graceful shutdown);
//   - it exits when the bench goes away (the IPC channel closes), so a node never outlives a
//     bench killed halfway.
//   node bench/multinode/serve.mjs serve --port 0 --store … [--cluster …]
if (!process.send) {
  process.stderr.write('this is a bench child process: run `npm run bench -- --only multinode` instead\n');
  process.exit(2);
}
process.on('disconnect', () => process.exit(0));
process.on('message', (m) => {
  if (m?.type === 'stop') process.kill(process.pid, 'SIGTERM');
});
const write = process.stdout.write.bind(process.stdout);
let announced = false;
process.stdout.write = (chunk, ...rest) => {
  const m = !announced && /postbox listening on (\S+)/.exec(String(chunk));
  if (m) {
    announced = true;
    process.send({ type: 'ready', url: m[1] });
  }
  return write(chunk, ...rest);
};
// The CLI reads process.argv.slice(2), which is `serve …` here as it is for dist/cli/main.js.
await import('../../dist/cli/main.js');
