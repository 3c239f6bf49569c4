/**
 * The dashboard in a real headless Chromium (Debian's, driven by
 * playwright-core), run inside the lab's server namespace so that it
 * reaches the server where the agents do. Four agents take a session that
 * is started with the dashboard's "start now" button; the page must show
 * the four machines progressing to done without a reload. A screenshot is
 * kept in test-artifacts/.
 */
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { importImage } from '../../server/store/import.js';
import { Store } from '../../server/store/store.js';
import { chromiumPin, dashboardLogin, gotoSteady, itNeeds, missing, ROOT, tempDir } from '../helpers.js';
import { Fleet, URL_, until } from './fleet.js';
// @ts-expect-error: a plain JavaScript module
import { makeImage } from '../bench/mkimage.mjs';

const MiB = 1 << 20;
const CHROMIUM = '/usr/bin/chromium';
export const SCREENSHOT = join(ROOT, 'test-artifacts', 'dashboard.png');

describe('dashboard in a real browser', () => {
  const dir = tempDir('dash');
  const data = join(dir, 'data');
  let fleet: Fleet;
  let image: Buffer;

  beforeAll(async () => {
    if (missing(['netns', 'chromium']).length > 0) return;
    const raw = join(dir, 'img.raw');
    makeImage(raw, 24, { seed: 21 });
    image = readFileSync(raw);
    await importImage(Store.open(data), raw, 'classroom', {});
    fleet = new Fleet(dir, data, 4);
    for (let k = 0; k < 4; k++) fleet.disk(k, 32 * MiB);
    await fleet.startServer();
    for (let k = 0; k < 4; k++) fleet.startAgent(k);
    await until(async () => (await fleet.online()) === 4, 20_000, '4 agents online');
  }, 60_000);
  afterAll(() => fleet?.down());

  itNeeds(['netns', 'chromium'], 'shows 4 machines progressing to done, live, and starts a session from its button', async () => {
    const { chromium } = await import('playwright-core');
    // The browser runs in the server's namespace (Playwright talks to it over a pipe).
    const wrapper = join(dir, 'chromium-in-lab.sh');
    writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${fleet.lab.server.ns} ${CHROMIUM} "$@"\n`);
    chmodSync(wrapper, 0o755);
    const browser = await chromium.launch({ executablePath: wrapper, headless: true, args: chromiumPin(join(fleet.data, 'tls')) });
    try {
      const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
      let loads = 0;
      page.on('load', () => loads++);
      await gotoSteady(page, URL_);
      // The token is typed into the login field: it is never in a URL the browser keeps.
      await dashboardLogin(page, fleet.token);
      await page.waitForSelector('#main:not([hidden])');
      await page.waitForFunction(() => document.querySelectorAll('#machines tr[data-machine]').length === 4);
      expect(page.url()).toBe(URL_);

      // A session whose rule is never met by 4 machines: started from the page.
      const created = await fleet.api('POST', '/api/sessions', { image: 'classroom', rule: { any: true, clients: 10 }, rateMbit: 60 });
      const row = `#sessions tr[data-session="${created.id}"]`;
      await page.waitForSelector(`${row}[data-state="waiting"] button[data-act="start"]`);
      await page.waitForFunction(() => [...document.querySelectorAll('#machines tr[data-machine]')].every((r) => (r as HTMLElement).dataset.state === 'waiting'));
      await page.click(`${row} button[data-act="start"]`);

      // Progress shows up between 0 and 100% on some machine before the end.
      const partial = await page.waitForFunction(
        () => [...document.querySelectorAll('#machines tr[data-machine] .pct')].some((e) => {
          const v = parseInt(e.textContent ?? '', 10);
          return v > 0 && v < 100;
        }),
        undefined,
        { timeout: 30_000 },
      );
      expect(partial).toBeTruthy();
      const during = await page.locator('#machines tr[data-state="receiving"]').count();
      expect(during).toBeGreaterThan(0);

      await page.waitForFunction(() => [...document.querySelectorAll('#machines tr[data-machine]')].every((r) => (r as HTMLElement).dataset.state === 'done'), undefined, { timeout: 60_000 });
      await page.waitForSelector(`${row}[data-state="done"]`);
      expect(await page.locator('#machines tr[data-machine] .pct').allTextContents()).toEqual(['100%', '100%', '100%', '100%']);
      expect(await page.locator('#images tbody tr').first().textContent()).toMatch(/classroom/);
      expect(await page.locator('#history tbody tr').count()).toBe(4);
      expect(loads).toBe(1); // only the first load: every update came over the WebSocket
      // Capture a machine's disk from its row's button and the capture form.
      await page.click('#machines tr[data-machine] button[data-capture]');
      await page.fill('#c-image', 'from-dashboard');
      await page.click('#c-submit');
      await page.waitForSelector('#captures tr[data-state="done"]', { timeout: 60_000 });
      expect(await page.locator('#captures tr[data-state="done"]').first().textContent()).toMatch(/from-dashboard@1/);
      await page.waitForFunction(() => [...document.querySelectorAll('#images tbody tr')].some((r) => r.textContent?.includes('from-dashboard')), undefined, { timeout: 15_000 });
      mkdirSync(join(ROOT, 'test-artifacts'), { recursive: true });
      await page.screenshot({ path: SCREENSHOT, fullPage: true });
      expect(existsSync(SCREENSHOT)).toBe(true);
      for (let k = 0; k < 4; k++) expect(readFileSync(fleet.diskPath(k)).subarray(0, image.length).equals(image), `disk ${k}`).toBe(true);
    } finally {
      await browser.close();
    }
  }, 120_000);
});
