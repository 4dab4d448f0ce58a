import { ESLint } from 'eslint';
import { describe, expect, it } from 'vitest';

// The import boundaries of eslint.config.js, proved on deliberately wrong imports: each fixture
// is linted as if it were a file at `filePath` in the repo.
const eslint = new ESLint({ cwd: process.cwd() });

async function restricted(filePath: string, code: string): Promise<string[]> {
  const [result] = await eslint.lintText(code, { filePath });
  return result!.messages.filter((m) => m.ruleId === 'no-restricted-imports').map((m) => m.message);
}

describe('the code keeps its import boundaries by itself', () => {
  it('the client importing the server fails the lint', async () => {
    const code = "import { PostboxServer } from '../server/engine.js';\nexport const s = PostboxServer;\n";
    expect(await restricted('src/client/fixture.ts', code)).toEqual([
      expect.stringContaining('the client never imports the server'),
    ]);
  });

  it('crypto importing the client fails the lint', async () => {
    const code = "import type { ClientStore } from '../client/store.js';\nexport type S = ClientStore;\n";
    expect(await restricted('src/crypto/fixture.ts', code)).toEqual([
      expect.stringContaining('crypto never imports the client'),
    ]);
  });

  it("a transport importing another transport's file fails the lint", async () => {
    const code =
      "import { websocketClientTransport } from './websocket-client.js';\nexport const t = websocketClientTransport;\n";
    expect(await restricted('src/transport/memory.ts', code)).toHaveLength(1);
    const helper = "import { DrainGate } from './websocket-client.js';\nexport const g = DrainGate;\n";
    expect(await restricted('src/transport/websocket.ts', helper)).toHaveLength(1);
  });

  it("the server's session reaching past its host interface fails the lint", async () => {
    const facade = "import type { PostboxServer } from './engine.js';\nexport type S = PostboxServer;\n";
    expect(await restricted('src/server/session.ts', facade)).toHaveLength(1);
    const part = "import type { Router } from './routing.js';\nexport type R = Router;\n";
    expect(await restricted('src/server/session.ts', part)).toEqual([
      expect.stringContaining('only through SessionHost'),
    ]);
    expect(await restricted('src/server/presence.ts', facade)).toEqual([
      expect.stringContaining('never import the façade'),
    ]);
    const host = "import type { SessionHost } from './session-host.js';\nexport type H = SessionHost;\n";
    expect(await restricted('src/server/session.ts', host)).toEqual([]);
  });

  it('the memory server store taking a rule from anywhere but the store kit fails the lint', async () => {
    const memory = 'src/server/stores/memory.ts';
    for (const from of [
      './planner.js',
      './relational.js',
      './invites.js',
      './gap-notices.js',
      './directory.js',
    ]) {
      const code = `import * as m from '${from}';\nexport const x = m;\n`;
      expect(await restricted(memory, code), from).toEqual([expect.stringContaining('store kit')]);
    }
    for (const from of ['../quotas.js', '../users.js']) {
      const code = `import * as m from '${from}';\nexport const x = m;\n`;
      expect(await restricted(memory, code), from).toEqual([expect.stringContaining('store kit')]);
    }
    const kit = "import { planMessage } from '../store-kit.js';\nexport const p = planMessage;\n";
    expect(await restricted(memory, kit)).toEqual([]);
    // The other stores keep their own imports (they are not the kit's example).
    const planner = "import { planMessage } from './planner.js';\nexport const p = planMessage;\n";
    expect(await restricted('src/server/stores/sqlite.ts', planner)).toEqual([]);
  });

  it('browser code importing a Node built-in fails the lint', async () => {
    for (const spec of ['node:fs', 'fs', 'crypto', 'node:crypto', 'events']) {
      const code = `import * as m from '${spec}';\nexport const x = m;\n`;
      expect(await restricted('src/client/fixture.ts', code), spec).toHaveLength(1);
      expect(await restricted('src/transport/websocket-client.ts', code), spec).toHaveLength(1);
      expect(await restricted('src/media/stream.ts', code), spec).toHaveLength(1);
    }
    // The Node-only media files may (they are not in the browser entry).
    expect(
      await restricted(
        'src/media/node-cipher.ts',
        "import * as c from 'node:crypto';\nexport const x = c;\n",
      ),
    ).toEqual([]);
  });

  it('the imports the boundaries allow pass', async () => {
    const ok = "import { PostboxError } from '../protocol/index.js';\nexport const e = PostboxError;\n";
    expect(await restricted('src/client/fixture.ts', ok)).toEqual([]);
    expect(await restricted('src/crypto/fixture.ts', ok)).toEqual([]);
    const reexport = "export { websocketClientTransport } from './websocket-client.js';\n";
    expect(await restricted('src/transport/websocket.ts', reexport)).toEqual([]);
    const node = "import { createServer } from 'node:http';\nexport const c = createServer;\n";
    expect(await restricted('src/transport/websocket.ts', node)).toEqual([]);
  });
});
