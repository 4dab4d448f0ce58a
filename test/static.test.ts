// `postbox serve --static DIR`: the directory's files, and nothing outside it.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { staticFiles } from '../src/cli/static.js';

describe('postbox serve --static', () => {
  const root = mkdtempSync(join(tmpdir(), 'postbox-static-'));
  const dir = join(root, 'site');
  let server: Server;
  let base = '';
  beforeAll(async () => {
    mkdirSync(join(dir, 'dist'), { recursive: true });
    writeFileSync(join(dir, 'index.html'), '<h1>chat</h1>');
    writeFileSync(join(dir, 'dist', 'app.js'), 'console.log(1)');
    writeFileSync(join(root, 'secret.txt'), 'not for the web');
    const files = staticFiles(dir);
    server = createServer((req, res) => {
      void files(req, res).then((served) => served || res.writeHead(404).end('fallthrough'));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const addr = server.address();
    base = `http://127.0.0.1:${typeof addr === 'object' && addr ? addr.port : 0}`;
  });
  afterAll(() => {
    server.close();
    rmSync(root, { recursive: true, force: true });
  });

  it('serves the directory’s files with their types, / as index.html', async () => {
    const index = await fetch(`${base}/`);
    expect(index.headers.get('content-type')).toMatch(/text\/html/);
    expect(await index.text()).toBe('<h1>chat</h1>');
    const js = await fetch(`${base}/dist/app.js`);
    expect(js.headers.get('content-type')).toMatch(/text\/javascript/);
  });

  it('never serves a file outside the directory, however the path is spelled', async () => {
    for (const path of ['/../secret.txt', '/%2e%2e/secret.txt', '/dist/%2e%2e/%2e%2e/secret.txt', '/%00']) {
      const res = await fetch(`${base}${path}`);
      expect(await res.text(), path).not.toContain('not for the web');
    }
    expect((await fetch(`${base}/missing.js`)).status).toBe(404);
    expect((await fetch(`${base}/`, { method: 'POST' })).status).toBe(404);
  });
});
