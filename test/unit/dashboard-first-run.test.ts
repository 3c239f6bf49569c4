/**
 * The dashboard of an empty server in Debian's Chromium on loopback: while
 * it asks for the token it does not show a failed connection, and once in
 * it says what to do next with the exact commands (an image, machines, a
 * deploy) instead of empty tables.
 */
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { join } from 'node:path';
import { startServer, type RunningServer } from '../../server/app.js';
import { Store } from '../../server/store/store.js';
import { chromiumPin, dashboardLogin, itNeeds, missing, tempDir } from '../helpers.js';

describe('dashboard of an empty server', () => {
  let srv: RunningServer;

  beforeAll(async () => {
    if (missing(['chromium']).length > 0) return;
    srv = await startServer({ store: Store.open(join(tempDir('first'), 'data')), listen: '127.0.0.1:0', version: 'test', heartbeatMs: 60_000 });
  });
  afterAll(async () => {
    await srv?.close();
  });

  itNeeds(['chromium'], 'asks for the token without claiming a failure, then shows the first steps with their commands', async () => {
    const { chromium } = await import('playwright-core');
    const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: chromiumPin(srv.certDir) });
    try {
      const page = await browser.newPage({ viewport: { width: 1024, height: 768 } });
      await page.goto(srv.url);
      await page.waitForSelector('#login:not([hidden]) #token');
      expect(await page.getAttribute('#conn', 'class')).toBe('wait');
      expect(await page.textContent('#conn')).toBe('sign in');
      await dashboardLogin(page, srv.token);
      await page.waitForSelector('#first-run:not([hidden])');
      const steps = await page.locator('#first-run-steps li').allTextContents();
      expect(steps).toHaveLength(3);
      expect(steps[0]).toContain('clonecast image import disk.img NAME');
      expect(steps[1]).toContain(`clonecast agent --server https://${new URL(srv.url).host}/`);
      expect(steps[2]).toContain('clonecast deploy NAME --group GROUP');
      expect(await page.textContent('#machines tbody')).toMatch(/no machine has connected yet/);
      expect(await page.getAttribute('#conn', 'class')).toBe('ok');
      // Deploy with no image says why instead of opening an empty form.
      await page.click('#deploy-open');
      expect(await page.textContent('#notice')).toMatch(/no image to deploy yet/);
    } finally {
      await browser.close();
    }
  });
});
