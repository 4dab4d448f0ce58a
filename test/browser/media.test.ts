// Media from a web page in real Chromium against a real `postbox serve` (HTTP/1.1, as most
// deployments behind no HTTP/2 proxy): the browser entry of `postbox/media` uploads and downloads.
// Browsers stream a fetch request body only over HTTP/2 (Chromium) or not at all, so this is
// what proves the upload's PATCH bodies are sent in a form every browser can.
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeWithServices } from '../fixtures/services.js';
import { chromiumMissing, launch, webServer, type WebServer } from './harness.js';

describeWithServices('media in real Chromium', chromiumMissing, () => {
  let server: WebServer;
  let browser: Browser;

  beforeAll(async () => {
    server = await webServer({ 'media-page': 'test/browser/media-page.ts' });
    browser = await launch();
  });
  afterAll(async () => {
    await browser?.close();
    await server?.close();
  });

  it('a 5 MB file uploads in several PATCH requests and downloads to the same bytes from a page over HTTP/1.1', async () => {
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(server.base);
    await page.addScriptTag({ url: '/media-page/media-page.js', type: 'module' });
    await page.waitForFunction(() => 'mediaRoundTrip' in window);
    const result = await page.evaluate(() =>
      (
        window as unknown as {
          mediaRoundTrip(
            size: number,
            who: string,
          ): Promise<{ equal: boolean; saves: number; error?: string }>;
        }
      ).mediaRoundTrip(5_000_000, 'alice/a1'),
    );
    expect(result.error).toBeUndefined();
    expect(result.equal).toBe(true);
    // The creation, then one save per PATCH: the first is 4 MiB, so 5 MB took two.
    expect(result.saves).toBeGreaterThanOrEqual(3);
    await context.close();
  });
});
