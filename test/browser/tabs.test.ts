// One device across many tabs, in real Chromium: two tabs of one user in one browser profile
// share one connection, both see every message once, and when the leader tab closes the other
// takes over, sending and receiving without losing or doubling a message.
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { describeWithServices } from '../fixtures/services.js';
import { chromiumMissing, launch, webServer, type WebServer } from './harness.js';

const opened = (page: Page) =>
  page.waitForFunction(() => document.getElementById('conn')?.textContent === 'open');
const arrives = (page: Page, text: string) =>
  page.waitForFunction(
    (t) => Array.from(document.querySelectorAll('.msg .text')).some((e) => e.textContent === t),
    text,
  );
const shown = (page: Page, text: string) =>
  page.evaluate(
    (t) => Array.from(document.querySelectorAll('.msg .text')).filter((e) => e.textContent === t).length,
    text,
  );
const role = (page: Page) => page.evaluate(() => document.getElementById('role')?.textContent ?? '');
const received = (page: Page) =>
  page.evaluate(() => (window as unknown as { postbox: { received: string[] } }).postbox.received);

describeWithServices('many tabs of one device in real Chromium', chromiumMissing, () => {
  let server: WebServer;
  let browser: Browser;

  beforeAll(async () => {
    server = await webServer();
    browser = await launch();
  });
  afterAll(async () => {
    await browser?.close();
    await server?.close();
  });

  it('two tabs of one user: one connection, both see every message once; the leader closes, the other takes over', async () => {
    const profile = await browser.newContext();
    const tabs = [await profile.newPage(), await profile.newPage()];
    for (const tab of tabs) await tab.goto(`${server.base}?user=gina&peer=hank`);
    const hankProfile = await browser.newContext();
    const hank = await hankProfile.newPage();
    await hank.goto(`${server.base}?user=hank&peer=gina`);
    for (const page of [...tabs, hank]) await opened(page);
    // Gina's two tabs and Hank: two connections, not three.
    expect(server.connections()).toBe(2);
    const roles = await Promise.all(tabs.map(role));
    expect(roles.filter((r) => r.includes('leader'))).toHaveLength(1);
    const leader = tabs[roles.findIndex((r) => r.includes('leader'))]!;
    const follower = tabs.find((t) => t !== leader)!;

    // A follower's send goes through the leader; Hank's reply reaches both tabs.
    await follower.fill('#text', 'from the follower');
    await follower.click('#send');
    await arrives(hank, 'from the follower');
    await hank.fill('#text', 'to both tabs');
    await hank.click('#send');
    for (const tab of tabs) await arrives(tab, 'to both tabs');
    for (const tab of tabs) {
      expect(await shown(tab, 'to both tabs')).toBe(1);
      const ids = await received(tab);
      expect(ids).toHaveLength(1);
    }

    // The leader's tab closes: the other leads, with its own (single) connection.
    await leader.close();
    await follower.waitForFunction(() => document.getElementById('role')?.textContent?.includes('leader'));
    await opened(follower);
    await hank.fill('#text', 'after the takeover');
    await hank.click('#send');
    await arrives(follower, 'after the takeover');
    await follower.fill('#text', 'from the new leader');
    await follower.click('#send');
    await arrives(hank, 'from the new leader');
    for (const text of ['to both tabs', 'after the takeover']) expect(await shown(follower, text)).toBe(1);
    for (const text of ['from the follower', 'from the new leader']) expect(await shown(hank, text)).toBe(1);
    expect(new Set(await received(follower)).size).toBe((await received(follower)).length);
    expect(server.connections()).toBe(2);
    await profile.close();
    await hankProfile.close();
  });
});
