/**
 * The dashboard in Debian's Chromium on loopback, fed hostile values: an
 * agent whose host name is a script payload. The page must show it as text,
 * run nothing (on its row and on its page), keep the token out of storage,
 * and ask before cancelling in the page's own confirmation dialog.
 */
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import { CONTROL, encodeAgentMessage } from '../../protocol/control.js';
import { startServer, type RunningServer } from '../../server/app.js';
import { Store } from '../../server/store/store.js';
import { importImage } from '../../server/store/import.js';
import { writeFileSync } from 'node:fs';
import { chromiumPin, dashboardLogin, itNeeds, missing, serverFetch, serverSocket, tempDir } from '../helpers.js';

const PAYLOAD = '<img src=x onerror="window.__pwned=1">';
const MAC = '02:00:00:00:0d:0d';

describe('dashboard with hostile values', () => {
  const dir = tempDir('xss');
  let srv: RunningServer;
  let ws: WebSocket;

  beforeAll(async () => {
    if (missing(['chromium']).length > 0) return;
    const store = Store.open(join(dir, 'data'));
    writeFileSync(join(dir, 'disk.img'), Buffer.alloc(1 << 20, 7));
    await importImage(store, join(dir, 'disk.img'), 'img', { workers: 1 });
    srv = await startServer({ store, listen: '127.0.0.1:0', version: 'test', heartbeatMs: 60_000 });
    ws = serverSocket(srv, CONTROL.AGENT_PATH);
    ws.on('error', () => {});
    await new Promise<void>((r) => ws.on('open', () => r()));
    ws.send(encodeAgentMessage({ type: 'hello', hello: { protocol: CONTROL.VERSION, token: srv.token, machineId: MAC, macs: [MAC], hostname: PAYLOAD, agentVersion: PAYLOAD, disks: [{ device: '/dev/vda', size: 1 << 30, logicalSector: 512, physicalSector: 512 }] } }));
  });
  afterAll(async () => {
    ws?.close();
    await srv?.close();
  });

  itNeeds(['chromium'], 'renders an agent-supplied script payload as text, runs nothing, keeps no token, and asks before cancelling', async () => {
    const { chromium } = await import('playwright-core');
    const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: chromiumPin(srv.certDir) });
    try {
      const page = await browser.newPage();
      const response = await page.goto(srv.url);
      expect(response?.headers()['content-security-policy']).toMatch(/script-src 'self'/);
      await dashboardLogin(page, srv.token);
      expect(page.url()).toBe(srv.url);
      await page.waitForSelector(`#machines tr[data-machine="${MAC}"]`);
      const row = await page.textContent(`#machines tr[data-machine="${MAC}"]`);
      expect(row).toContain(PAYLOAD);
      expect(await page.evaluate(() => (window as unknown as { __pwned?: number }).__pwned)).toBeUndefined();
      expect(await page.locator('#machines img').count()).toBe(0);
      expect(await page.evaluate(() => [localStorage.length, sessionStorage.length])).toEqual([0, 0]);

      // Cancel asks first: dismissed, the session stays; accepted, it is cancelled.
      // The machine's page (names, disks, events) shows the payload as text too.
      await page.click(`#machines tr[data-machine="${MAC}"] button[data-open]`);
      await page.waitForSelector('#panel[open] #m-events li');
      expect(await page.textContent('#panel .facts')).toContain(PAYLOAD);
      expect(await page.textContent('#m-events')).toContain(`agent ${PAYLOAD} connected`);
      expect(await page.locator('#panel img').count()).toBe(0);
      await page.keyboard.press('Escape');
      expect(await page.evaluate(() => (window as unknown as { __pwned?: number }).__pwned)).toBeUndefined();

      const s = await (await serverFetch(srv, '/api/sessions', { method: 'POST', headers: { authorization: `Bearer ${srv.token}`, 'content-type': 'application/json' }, body: JSON.stringify({ image: 'img', rule: { machines: ['02:00:00:00:0d:99'] } }) })).json();
      const button = `#sessions tr[data-session="${s.id}"] button[data-act="cancel"]`;
      await page.waitForSelector(button);
      // Cancel asks first, in the page's own dialog: dismissed, nothing is cancelled.
      await page.click(button);
      await page.waitForSelector('#confirm[open]');
      expect(await page.textContent('#confirm-title')).toBe(`Cancel session ${s.id}?`);
      expect(await page.evaluate(() => document.activeElement?.id)).toBe('confirm-no');
      await page.click('#confirm-no');
      await page.waitForFunction(() => !(document.querySelector('#confirm') as HTMLDialogElement).open);
      expect(srv.sessions.get(s.id)?.state).toBe('waiting');
      // Accepted, it is.
      await page.click(button);
      await page.waitForSelector('#confirm[open]');
      await page.click('#confirm-ok');
      await page.waitForSelector(`#sessions tr[data-session="${s.id}"][data-state="cancelled"]`);
      expect(srv.sessions.get(s.id)?.state).toBe('cancelled');
    } finally {
      await browser.close();
    }
  });
});
