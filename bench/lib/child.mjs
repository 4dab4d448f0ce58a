// The child side of the orchestrator's IPC: exit when the orchestrator goes away, answer
// requests, and ask the orchestrator to act at a given moment (`mark`).

if (!process.send) {
  process.stderr.write('this is a bench child process: run `npm run bench` instead\n');
  process.exit(2);
}
process.on('disconnect', () => process.exit(0));

const handlers = new Map();
let markId = 0;
const marks = new Map();

process.on('message', async (m) => {
  if (m.type === 'stop') {
    // A clean exit (unlike the SIGKILL fallback) lets `--cpu-prof` write its profile.
    process.exit(0);
  }
  if (m.type === 'marked' && marks.has(m.mark)) {
    marks.get(m.mark)(m);
    marks.delete(m.mark);
    return;
  }
  const h = handlers.get(m.type);
  if (!h) return;
  try {
    const reply = await h(m);
    process.send({ ...reply, type: `${m.type}:reply`, rid: m.rid });
  } catch (e) {
    process.send({ type: `${m.type}:reply`, rid: m.rid, error: String(e?.stack ?? e) });
  }
});

/** Answers requests of `type` with what `fn(msg)` returns (or resolves to). */
export function onRequest(type, fn) {
  handlers.set(type, fn);
}

/** Sends a one-way message to the orchestrator; resolves once it is handed to the channel. */
export function tell(msg) {
  return new Promise((resolve) => process.send(msg, undefined, undefined, () => resolve()));
}

/**
 * Tells the orchestrator that `name` happened and waits until it has acted on it (e.g. taken a
 * CPU or memory snapshot of the server); resolves with its answer.
 */
export function mark(name, data) {
  const id = ++markId;
  return new Promise((resolve) => {
    marks.set(id, resolve);
    process.send({ type: 'mark', name, mark: id, data });
  });
}

/** Reports a fatal error to the orchestrator and exits. */
export function fail(e) {
  try {
    process.send({ type: 'error', error: String(e?.stack ?? e) });
  } catch {
    // channel gone
  }
  setTimeout(() => process.exit(1), 50);
}

process.on('uncaughtException', fail);
process.on('unhandledRejection', fail);

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
