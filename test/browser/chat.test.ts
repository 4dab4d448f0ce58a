// The web chat (examples/web) and the IndexedDB store in real Chromium, against a real
// `postbox serve`: what a browser user does, including losing the network and reloading.
import { join } from 'node:path';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeWithServices } from '../fixtures/services.js';
import { ARTIFACTS, chromiumMissing, launch, webServer, type WebServer } from './harness.js';

/** Waits until the page's connection badge says `open`. */
const opened = (page: Page) =>
  page.waitForFunction(() => document.getElementById('conn')?.textContent === 'open');

/** How many messages of the open conversation show exactly `text`. */
const shown = (page: Page, text: string) =>
  page.evaluate(
    (t) => Array.from(document.querySelectorAll('.msg .text')).filter((e) => e.textContent === t).length,
    text,
  );

/** Waits until a message showing `text` is drawn. */
const arrives = (page: Page, text: string) =>
  page.waitForFunction(
    (t) => Array.from(document.querySelectorAll('.msg .text')).some((e) => e.textContent === t),
    text,
  );

/** Waits until the outgoing message showing `text` has one of `statuses`. */
const marked = (page: Page, text: string, statuses: string[]) =>
  page.waitForFunction(
    ([t, want]) =>
      Array.from(document.querySelectorAll('.msg.out')).some(
        (m) =>
          m.querySelector('.text')?.textContent === t &&
          want.includes((m.querySelector('.mark') as HTMLElement | null)?.dataset.status ?? ''),
      ),
    [text, statuses] as const,
  );

/** The ids of `message` events the page saw, for "each once". */
const received = (page: Page) =>
  page.evaluate(() => (window as unknown as { postbox: { received: string[] } }).postbox.received);

describeWithServices('the web chat in real Chromium', chromiumMissing, () => {
  let server: WebServer;
  let browser: Browser;
  const contexts: BrowserContext[] = [];

  beforeAll(async () => {
    server = await webServer({ conformance: 'test/browser/conformance-page.ts' });
    browser = await launch();
  });
  afterAll(async () => {
    for (const c of contexts) await c.close().catch(() => {});
    await browser?.close();
    await server?.close();
  });

  /** A fresh browser profile (its own IndexedDB and device) signed in as `user`, chatting with `peer`. */
  async function person(user: string, peer: string): Promise<{ context: BrowserContext; page: Page }> {
    const context = await browser.newContext();
    contexts.push(context);
    const page = await context.newPage();
    await page.goto(`${server.base}?user=${user}&peer=${peer}`);
    await opened(page);
    return { context, page };
  }

  it('the IndexedDB store passes the whole client-store conformance suite in Chromium', async () => {
    const context = await browser.newContext();
    contexts.push(context);
    const page = await context.newPage();
    await page.goto(server.base);
    await page.addScriptTag({ url: '/conformance/conformance-page.js', type: 'module' });
    await page.waitForFunction(() => 'conformance' in window);
    const results = await page.evaluate(() =>
      (
        window as unknown as { conformance(): Promise<Array<{ name: string; error?: string }>> }
      ).conformance(),
    );
    expect(results.length).toBeGreaterThan(20);
    expect(results.filter((r) => r.error)).toEqual([]);
  });

  it('two browsers chat: the sender sees ✓ then ✓✓ then read, presence and typing show, and a screenshot is kept', async () => {
    const alice = await person('alice', 'bob');
    const bob = await person('bob', 'alice');
    await alice.page.waitForFunction(() => document.getElementById('presence')?.textContent === 'online');
    await alice.page.fill('#text', 'hello bob');
    await alice.page.click('#send');
    await arrives(bob.page, 'hello bob');
    // Bob has the chat open and in front: his tab marks it read, and Alice sees the blue ticks.
    await marked(alice.page, 'hello bob', ['read']);
    const statuses = await alice.page.evaluate(
      () => (window as unknown as { postbox: { statuses: string[] } }).postbox.statuses,
    );
    expect(statuses.filter((s) => s !== 'pending')).toEqual(['sent', 'delivered', 'read']);
    await bob.page.fill('#text', 'hi alice');
    await bob.page.click('#send');
    await arrives(alice.page, 'hi alice');
    // Typing reaches only a user who wrote to the typist (the server's consent rule): Bob has now.
    await alice.page.fill('#text', 'typing…');
    await bob.page.waitForFunction(
      () => document.getElementById('typing')?.textContent === 'alice is typing…',
    );
    expect(await shown(bob.page, 'hello bob')).toBe(1);
    expect(await shown(alice.page, 'hi alice')).toBe(1);
    await alice.page.screenshot({ path: join(ARTIFACTS, 'chat.png') });
  });

  it('a message sent while offline is delivered once when the network is back', async () => {
    const alice = await person('carol', 'dave');
    const dave = await person('dave', 'carol');
    await alice.context.setOffline(true);
    await alice.page.fill('#text', 'sent offline');
    await alice.page.click('#send');
    await marked(alice.page, 'sent offline', ['pending']);
    await alice.context.setOffline(false);
    await arrives(dave.page, 'sent offline');
    await marked(alice.page, 'sent offline', ['delivered', 'read']);
    expect(await shown(dave.page, 'sent offline')).toBe(1);
    const ids = await received(dave.page);
    expect(new Set(ids).size).toBe(ids.length);
  });

  it('a tab reloaded right after send() resolved still delivers the message, once', async () => {
    const erin = await person('erin', 'frank');
    const frank = await person('frank', 'erin');
    // send() resolved: the message is in IndexedDB; the reload kills the page at once.
    await erin.page
      .evaluate(async () => {
        const w = window as unknown as {
          postbox: { client: { send(to: string, b: Uint8Array): Promise<string> } };
        };
        await w.postbox.client.send('frank', new TextEncoder().encode('sent then reloaded'));
        location.reload();
      })
      .catch(() => {}); // the reload may destroy the evaluation's context before it answers
    await erin.page.waitForLoadState('load');
    await opened(erin.page);
    await arrives(frank.page, 'sent then reloaded');
    await marked(erin.page, 'sent then reloaded', ['sent', 'delivered', 'read']);
    expect(await shown(frank.page, 'sent then reloaded')).toBe(1);
    expect(await shown(erin.page, 'sent then reloaded')).toBe(1);
  });
});
