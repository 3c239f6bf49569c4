/**
 * The dashboard as the operator's console, in a real headless Chromium
 * inside the lab's server namespace, with two agents whose host names
 * are their own (one of them markup). Everything is done from the page:
 * the machines are named and grouped on their pages, a deploy to the group
 * is created from the form (its confirmation names the machines and their
 * disks) and ends with verified disks, a capture from the form publishes a
 * version, the names and groups survive a server restart, and at 1024 and
 * 1440 px nothing overflows sideways; saving groups that a waiting session
 * names asks first, and an offline machine's page wakes it. Screenshots go
 * to test-artifacts/.
 */
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ChildProcess } from 'node:child_process';
import { importImage } from '../../server/store/import.js';
import { Store } from '../../server/store/store.js';
import { ownHostname } from '../../server/lab/cli.js';
import { chromiumPin, CLI, dashboardLogin, gotoSteady, itNeeds, missing, ROOT, tempDir } from '../helpers.js';
import { Fleet, URL_, until } from './fleet.js';
// @ts-expect-error: a plain JavaScript module
import { makeImage } from '../bench/mkimage.mjs';

const MiB = 1 << 20;
const CHROMIUM = '/usr/bin/chromium';
const ARTIFACTS = join(ROOT, 'test-artifacts');
const HOSTS = ['pc1', '<img src=x onerror=window.__pwned=1>'];

type Page = import('playwright-core').Page;

/** Nothing wider than the window: the document and every main table. */
async function overflow(page: Page): Promise<string[]> {
  return page.evaluate(() => {
    const bad: string[] = [];
    const d = document.documentElement;
    if (d.scrollWidth > d.clientWidth) bad.push(`document ${d.scrollWidth} > ${d.clientWidth}`);
    for (const t of document.querySelectorAll('main table')) if (t.scrollWidth > t.clientWidth) bad.push(`#${t.id} ${t.scrollWidth} > ${t.clientWidth}`);
    return bad;
  });
}

describe('dashboard console in a real browser', () => {
  const dir = tempDir('dashc');
  const data = join(dir, 'data');
  let fleet: Fleet;
  let image: Buffer;

  const agentProcs: ChildProcess[] = [];
  const startAgent = (k: number) => {
    // Each agent in a UTS namespace of its own, with its own host name (as `lab up` runs them).
    const [cmd, ...pre] = ownHostname(HOSTS[k]);
    fleet.agents[k] = undefined;
    agentProcs[k] = fleet.lab.spawnIn(fleet.lab.clients[k].ns, cmd, [...pre, process.execPath, CLI, 'agent', '--server', URL_, '--fingerprint', fleet.fingerprint, '--token', fleet.token, '--disk', fleet.diskPath(k)]);
  };

  beforeAll(async () => {
    if (missing(['netns', 'chromium']).length > 0) return;
    const raw = join(dir, 'img.raw');
    makeImage(raw, 16, { seed: 17 });
    image = readFileSync(raw);
    await importImage(Store.open(data), raw, 'classroom', {});
    fleet = new Fleet(dir, data, 2);
    for (let k = 0; k < 2; k++) fleet.disk(k, 24 * MiB);
    await fleet.startServer();
    for (let k = 0; k < 2; k++) startAgent(k);
    await until(async () => (await fleet.online()) === 2, 30_000, '2 agents online');
  }, 90_000);
  afterAll(() => fleet?.down());

  itNeeds(['netns', 'chromium'], 'names and groups machines, deploys to the group and captures from the forms, keeps labels across a restart, never overflows', async () => {
    const { chromium } = await import('playwright-core');
    const wrapper = join(dir, 'chromium-in-lab.sh');
    writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${fleet.lab.server.ns} ${CHROMIUM} "$@"\n`);
    chmodSync(wrapper, 0o755);
    mkdirSync(ARTIFACTS, { recursive: true });
    const browser = await chromium.launch({ executablePath: wrapper, headless: true, args: chromiumPin(join(fleet.data, 'tls')) });
    try {
      const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
      let loads = 0;
      page.on('load', () => loads++);
      await gotoSteady(page, URL_);
      // While it asks for the token the page does not claim a failed connection.
      await page.waitForSelector('#login:not([hidden])');
      expect(await page.getAttribute('#conn', 'class')).not.toBe('bad');
      await dashboardLogin(page, fleet.token);
      await page.waitForFunction(() => document.querySelectorAll('#machines tr[data-machine]').length === 2);
      // Everything the page loads comes from this server; its weight is printed (docs/operations.md).
      const weight = () => page.evaluate(() => (performance.getEntriesByType('resource') as PerformanceResourceTiming[]).concat(performance.getEntriesByType('navigation') as PerformanceResourceTiming[]).map((r) => ({ url: r.name, bytes: r.encodedBodySize })));
      const first = await weight();
      for (const r of first) expect(r.url.startsWith(URL_), r.url).toBe(true);
      const macs = [fleet.mac(0), fleet.mac(1)];

      // Host names are the machines' own, and markup in one is shown as text.
      for (let k = 0; k < 2; k++) expect(await page.textContent(`#machines tr[data-machine="${macs[k]}"] button[data-open]`)).toBe(HOSTS[k]);
      expect(await page.locator('#machines img').count()).toBe(0);

      // Named and grouped on their pages (keyboard-usable fields with labels).
      for (let k = 0; k < 2; k++) {
        await page.click(`#machines tr[data-machine="${macs[k]}"] button[data-open]`);
        await page.waitForSelector('#panel[open] #label-form');
        await page.getByLabel('Name', { exact: true }).fill(`desk-${k + 1}`);
        await page.getByLabel('Groups', { exact: true }).fill('room101, lab');
        await page.click('#label-form button');
        await page.waitForFunction(([mac, name]) => document.querySelector(`#machines tr[data-machine="${mac}"] button[data-open]`)?.textContent === name, [macs[k], `desk-${k + 1}`] as const);
        await page.keyboard.press('Escape');
      }
      expect(await page.evaluate(() => (window as unknown as { __pwned?: number }).__pwned)).toBeUndefined();

      // A deploy to the group, created from the form; its confirmation names both machines and their disks.
      await page.click('#deploy-open');
      await page.waitForSelector('#deploy-form');
      await page.selectOption('#d-image', 'classroom');
      await page.selectOption('#d-who', 'group');
      await page.selectOption('#d-group', 'room101');
      expect(await page.inputValue('#d-clients')).toBe('2');
      await page.fill('#d-rate', '200');
      await page.check('#d-wake');
      await page.click('#d-submit');
      await page.waitForSelector('#confirm[open]');
      const question = (await page.textContent('#confirm-body')) ?? '';
      for (let k = 0; k < 2; k++) expect(question).toContain(`desk-${k + 1} (${macs[k]}): ${fleet.diskPath(k)}`);
      expect(question).toContain('woken with Wake-on-LAN first');
      await page.screenshot({ path: join(ARTIFACTS, 'dashboard-deploy.png') });
      await page.click('#confirm-ok');
      await page.waitForSelector('#sessions tr[data-session]');
      await page.waitForFunction(() => /woke 2 machine/.test(document.body.textContent ?? ''));
      const id = Number(await page.getAttribute('#sessions tr[data-session]', 'data-session'));
      const session = await fleet.api('GET', `/api/sessions/${id}`);
      expect(session.rule).toMatchObject({ group: 'room101', clients: 2 });
      expect(session.rateMbit).toBe(200);
      // The session view follows it live and ends with its summary and chart.
      await page.click(`#sessions button[data-view="${id}"]`);
      await page.waitForSelector(`#sessions tr[data-session="${id}"][data-state="done"]`, { timeout: 60_000 });
      await page.waitForSelector('#s-summary');
      await page.waitForSelector('#s-chart canvas');
      expect(await page.textContent('#s-summary')).toMatch(/2 of 2 machines done/);
      const all = await weight();
      for (const r of all) expect(r.url.startsWith(URL_), r.url).toBe(true);
      const sum = (list: { bytes: number }[]) => list.reduce((a, r) => a + r.bytes, 0);
      console.log(`dashboard page weight: first load ${first.length} files ${sum(first)} bytes; with the session chart ${all.length} files ${sum(all)} bytes (${all.map((r) => `${new URL(r.url).pathname} ${r.bytes}`).join(', ')})`);
      await page.screenshot({ path: join(ARTIFACTS, 'dashboard-session.png') });
      await page.keyboard.press('Escape');
      const ended = await fleet.api('GET', `/api/sessions/${id}`);
      for (const m of Object.values(ended.machines) as { state: string; verified: boolean; digestOk: boolean }[]) expect(m).toMatchObject({ state: 'done', verified: true, digestOk: true });
      for (let k = 0; k < 2; k++) expect(readFileSync(fleet.diskPath(k)).subarray(0, image.length).equals(image), `disk ${k}`).toBe(true);

      // A capture from the form: the next version is shown before it starts, and it is published.
      await page.click(`#machines tr[data-machine="${macs[0]}"] button[data-capture]`);
      await page.waitForSelector('#capture-form');
      await page.fill('#c-image', 'classroom');
      expect(await page.textContent('#c-next')).toMatch(/becomes classroom@2/);
      await page.click('#c-submit');
      await page.waitForSelector('#captures tr[data-state="done"]', { timeout: 60_000 });
      expect(await page.textContent('#captures tr[data-state="done"]')).toMatch(/classroom@2/);
      await page.waitForFunction(() => document.querySelector('#images tr[data-image-name="classroom"]')?.textContent?.includes('@2'), undefined, { timeout: 15_000 });

      // Wide and narrow: nothing overflows sideways.
      await page.screenshot({ path: join(ARTIFACTS, 'dashboard-1440.png'), fullPage: true });
      expect(await overflow(page)).toEqual([]);
      await page.setViewportSize({ width: 1024, height: 768 });
      await page.screenshot({ path: join(ARTIFACTS, 'dashboard-1024.png'), fullPage: true });
      expect(await overflow(page)).toEqual([]);
      await page.setViewportSize({ width: 768, height: 1024 }); // a tablet held upright
      expect(await overflow(page)).toEqual([]);

      await page.click(`#machines tr[data-machine="${macs[0]}"] button[data-open]`);
      await page.waitForSelector('#panel[open] #m-events li');
      expect(await page.textContent('#panel .facts')).toMatch(/classroom@1 · .* · disk digest verified ✓/);
      expect(await page.textContent('#m-events')).toMatch(/session 1 ended: done, verified/);
      await page.screenshot({ path: join(ARTIFACTS, 'dashboard-machine.png') });
      await page.keyboard.press('Escape');

      // Names and groups survive a restart; the page reconnects by itself.
      fleet.server!.child.kill('SIGTERM');
      await fleet.server!.exited;
      await page.waitForSelector('#conn.bad');
      await fleet.startServer();
      await page.waitForSelector('#conn.ok', { timeout: 30_000 });
      await page.setViewportSize({ width: 1440, height: 900 });
      for (let k = 0; k < 2; k++) {
        await page.waitForFunction(([mac, name]) => document.querySelector(`#machines tr[data-machine="${mac}"] button[data-open]`)?.textContent === name, [macs[k], `desk-${k + 1}`] as const);
        expect(await page.textContent(`#machines tr[data-machine="${macs[k]}"]`)).toContain('room101, lab');
      }
      const after = (await fleet.api('GET', '/api/machines')) as { id: string; name: string; groups: string[] }[];
      for (let k = 0; k < 2; k++) expect(after.find((m) => m.id === macs[k])).toMatchObject({ name: `desk-${k + 1}`, groups: ['room101', 'lab'] });
      expect(loads).toBe(1);

      // Saving groups that a waiting session names asks first, naming the session and the image; Cancel changes nothing
      // (saving groups used to make an idle machine join at once and overwrite its disk). Only a connected machine
      // would join: on a busy machine its agent may still be reconnecting after the restart.
      await until(async () => (await fleet.online()) === 2, 120_000, 'both agents to reconnect after the restart');
      const waiting = await fleet.api('POST', '/api/sessions', { image: 'classroom', rule: { group: 'room202' } });
      await page.click(`#machines tr[data-machine="${macs[0]}"] button[data-open]`);
      await page.waitForSelector('#panel[open] #label-form');
      await page.getByLabel('Groups', { exact: true }).fill('room202');
      await page.click('#label-form button');
      await page.waitForSelector('#confirm[open]');
      const ask = (await page.textContent('#confirm-body')) ?? '';
      expect(ask).toContain(`session ${waiting.id}`);
      expect(ask).toContain(`classroom@${waiting.version}`);
      expect(ask).toContain(fleet.diskPath(0));
      await page.click('#confirm-no');
      expect(((await fleet.api('GET', `/api/machines/${macs[0]}`)) as { groups: string[]; activity: { kind: string } })).toMatchObject({ groups: ['room101', 'lab'], activity: { kind: 'idle' } });
      await fleet.api('POST', `/api/sessions/${waiting.id}/cancel`, {});
      await page.keyboard.press('Escape');

      // An offline machine's page has a Wake button that sends Wake-on-LAN from the server.
      agentProcs[1].kill('SIGTERM');
      await page.waitForSelector(`#machines tr[data-machine="${macs[1]}"][data-state="offline"]`, { timeout: 30_000 });
      await page.click(`#machines tr[data-machine="${macs[1]}"] button[data-open]`);
      await page.click('#panel[open] #m-wake');
      await page.waitForFunction(() => /sent \d+ Wake-on-LAN packets for desk-2/.test(document.querySelector('#notice')?.textContent ?? ''));
      await page.keyboard.press('Escape');

      // "Restore classroom…" when the newest classroom cannot be read says so; it used to open the form on another image.
      fleet.server!.child.kill('SIGTERM');
      await fleet.server!.exited;
      await page.waitForSelector('#conn.bad');
      writeFileSync(join(fleet.data, 'images', 'classroom', '2.manifest'), 'not a manifest');
      await fleet.startServer();
      await page.waitForSelector('#conn.ok', { timeout: 30_000 });
      await page.click(`#machines tr[data-machine="${macs[0]}"] button[data-open]`);
      await page.getByRole('button', { name: 'Restore classroom…' }).click();
      await page.waitForFunction(() => /cannot restore classroom: its latest version @2 cannot be read/.test(document.querySelector('#notice')?.textContent ?? ''));
      expect(await page.locator('#form-dialog[open]').count()).toBe(0);
    } finally {
      await browser.close();
    }
  }, 180_000);
});
