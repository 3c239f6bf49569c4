/**
 * Two edge servers, each in a namespace lab of its own with two agents,
 * share one repository: a real S3 server (Swift with s3api) in a third
 * namespace, reached from each edge's server namespace through its own veth
 * (10.77.201.0/30 and 10.77.202.0/30). A version pushed from site A's side
 * deploys at site B by multicast while B fetches it from the repository
 * (disks compared byte for byte); it deploys again at B with the repository
 * killed (it is cached now), while site A, which cached nothing, refuses at
 * once; versions pushed at A appear at B after a refresh and B's Pull caches
 * one; and a deploy at B whose chunks stop coming (the repository killed
 * mid-way, over a slow link) waits and finishes when the repository is back;
 * B's dashboard shows the cache states and the repository, and its Pull works.
 */
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { importImage } from '../../server/store/import.js';
import { Store } from '../../server/store/store.js';
import { chromiumPin, CLI, dashboardLogin, gotoSteady, itNeeds, missing, tempDir, texty } from '../helpers.js';
import { startSwift, type SwiftLab } from '../swift-lab.mjs';
import { Fleet, URL_, until } from './fleet.js';
// @ts-expect-error: a plain JavaScript module
import { makeImage } from '../bench/mkimage.mjs';

const MiB = 1 << 20;
const LONG = 180_000;
const CAPS = ['netns', 'curl', 's3'];
const BUCKET = 'district';
const REPO = `s3://${BUCKET}/images`;

describe('two edge servers share one repository', () => {
  const dir = tempDir('edges');
  const central = join(dir, 'central');
  const images: Buffer[] = [];
  const tag = randomBytes(3).toString('hex');
  const swiftNs = `cc${tag}w`;
  let swift: SwiftLab | undefined;
  let a: Fleet;
  let b: Fleet;
  let port = '';
  const env: Record<string, string> = {};
  const timings = { remote: 0, cached: 0 };

  const endpoint = (site: Fleet) => `http://10.77.${site === a ? 201 : 202}.1:${port}`;
  /**
   * `clonecast image push` of the central store's version, run from site A's server namespace; resolves to its output.
   * Spawned, not run synchronously: the S3 server logs to this process, which must keep reading it.
   */
  const pushFromA = async (version: number): Promise<string> => {
    const child = a.lab.spawnIn(a.lab.server.ns, process.execPath, [CLI, 'image', 'push', `pc@${version}`, '--data', central, '--repository', REPO, '--endpoint', endpoint(a)]);
    let out = '';
    child.stdout?.on('data', (d) => (out += d));
    child.stderr?.on('data', (d) => (out += d));
    const code = await new Promise<number | null>((r) => child.on('close', r));
    if (code !== 0) throw new Error(`image push failed (${code}): ${out}`);
    return out;
  };
  const disksHold = (site: Fleet, image: Buffer) => [0, 1].every((k) => readFileSync(site.diskPath(k)).subarray(0, image.length).equals(image));

  beforeAll(async () => {
    if (missing(CAPS).length > 0) return;
    const store = Store.open(central);
    for (const seed of [31, 32, 33]) {
      const raw = join(dir, `pc${seed}.raw`);
      makeImage(raw, 16, { seed });
      const bytes = readFileSync(raw);
      texty(2 * MiB, seed).copy(bytes, MiB + 777);
      writeFileSync(raw, bytes);
      images.push(bytes);
    }
    await importImage(store, join(dir, 'pc31.raw'), 'pc', {});
    for (const site of ['a', 'b']) mkdirSync(join(dir, site));
    a = new Fleet(join(dir, 'a'), join(dir, 'a-data'), 2);
    b = new Fleet(join(dir, 'b'), join(dir, 'b-data'), 2);
    // The repository's namespace, with one veth to each site's server namespace.
    execFileSync('ip', ['netns', 'add', swiftNs]);
    execFileSync('ip', ['-n', swiftNs, 'link', 'set', 'lo', 'up']);
    for (const [site, net, ifname] of [[a, 201, 'sitea'], [b, 202, 'siteb']] as const) {
      execFileSync('ip', ['-n', swiftNs, 'link', 'add', ifname, 'type', 'veth', 'peer', 'name', 'repo', 'netns', site.lab.server.ns]);
      execFileSync('ip', ['-n', swiftNs, 'addr', 'add', `10.77.${net}.1/30`, 'dev', ifname]);
      execFileSync('ip', ['-n', site.lab.server.ns, 'addr', 'add', `10.77.${net}.2/30`, 'dev', 'repo']);
      execFileSync('ip', ['-n', swiftNs, 'link', 'set', ifname, 'up']);
      execFileSync('ip', ['-n', site.lab.server.ns, 'link', 'set', 'repo', 'up']);
    }
    swift = await startSwift({ dir: join(dir, 'swift'), spawnPrefix: ['ip', 'netns', 'exec', swiftNs], bindIp: '0.0.0.0', bucket: BUCKET });
    port = new URL(swift.endpoint).port;
    Object.assign(env, { AWS_ACCESS_KEY_ID: swift.accessKey, AWS_SECRET_ACCESS_KEY: swift.secretKey, AWS_REGION: swift.region });
    Object.assign(process.env, env); // the servers and the CLI inherit them; nothing else carries them
    await pushFromA(1);
    for (const site of [a, b]) {
      await site.startServer(['--repository', REPO, '--endpoint', endpoint(site)]);
      expect(site.server!.out).toMatch(/repository: +s3:\/\/district\/images, reachable/);
    }
    for (let k = 0; k < 2; k++) {
      b.disk(k, 20 * MiB);
      b.startAgent(k);
    }
    await until(async () => (await b.online()) === 2, 30_000, "site B's 2 agents online");
  }, LONG);

  afterAll(async () => {
    a?.down();
    b?.down();
    await swift?.stop();
    if (missing(CAPS).length === 0) execFileSync('ip', ['netns', 'del', swiftNs], { stdio: 'ignore' });
    for (const k of Object.keys(env)) delete process.env[k];
  });

  itNeeds(CAPS, 'a version pushed from site A deploys at site B by multicast, fetched from the repository as it goes; then it is cached there', async () => {
    const before = await b.api('GET', '/api/images/pc/versions');
    expect(before[0]).toMatchObject({ version: 1, cache: { state: 'remote', cachedChunks: 0 } });
    const started = performance.now();
    const d = b.deploy('pc', ['--any', '--clients', '2']);
    expect(await d.exited, d.out).toBe(0);
    timings.remote = performance.now() - started;
    expect(d.out).toMatch(/2 of 2 machine\(s\) done and verified; session done/);
    expect(disksHold(b, images[0])).toBe(true);
    await until(async () => (await b.api('GET', '/api/images/pc/versions'))[0].cache.state === 'cached', 60_000, 'pc@1 cached at site B');
    const state = await b.api('GET', '/api/state');
    expect(state.server.health.repository).toMatchObject({ address: REPO, reachable: true, lastError: null });
    expect(state.images[0]).toMatchObject({ name: 'pc', versions: [1], cache: { 1: { state: 'cached' } } });
    expect(b.server!.out).not.toContain(swift!.secretKey);
  }, LONG);

  itNeeds(CAPS, 'with the repository killed, site B deploys its cached version again; site A, which cached nothing, refuses at once naming what it could deploy', async () => {
    await swift!.killProxy();
    try {
      for (const site of [a, b]) {
        const status = await site.api('POST', '/api/repository/refresh');
        expect(status).toMatchObject({ reachable: false });
        expect(status.lastError).toMatch(/check that the repository is up/);
      }
      for (let k = 0; k < 2; k++) b.disk(k, 20 * MiB);
      const started = performance.now();
      const d = b.deploy('pc', ['--any', '--clients', '2']);
      expect(await d.exited, d.out).toBe(0);
      timings.cached = performance.now() - started;
      // Not a test of speed (none here is): the figures, for the report.
      console.log(`deploy of pc@1 (16 MiB) to 2 agents at site B: ${(timings.remote / 1000).toFixed(1)} s fetching from the repository, ${(timings.cached / 1000).toFixed(1)} s from the cache (ratio ${(timings.remote / timings.cached).toFixed(2)})`);
      expect(disksHold(b, images[0])).toBe(true);
      const refused = a.deploy('pc', ['--any', '--clients', '2']);
      expect(await refused.exited).not.toBe(0);
      expect(refused.out).toMatch(/pc@1 is not wholly cached on this edge and the repository .* is unreachable .*it has no cached version yet/);
      const state = await b.api('GET', '/api/state');
      expect(state.server.health.repository).toMatchObject({ reachable: false });
      expect(b.server!.out.match(/serves its cached versions/g)).toHaveLength(1); // one warning for the outage
    } finally {
      await swift!.startProxy();
    }
  }, LONG);

  itNeeds(CAPS, 'versions pushed at site A appear at site B after a refresh, and the Pull of one caches it', async () => {
    for (const v of [2, 3]) {
      await importImage(Store.open(central), join(dir, `pc${30 + v}.raw`), 'pc', {});
      expect(await pushFromA(v)).toMatch(new RegExp(`pushed pc@${v} to .* as pc@${v}`));
    }
    expect(await b.api('POST', '/api/repository/refresh')).toMatchObject({ reachable: true });
    const versions = await b.api('GET', '/api/images/pc/versions');
    expect(versions.map((v: { version: number }) => v.version)).toEqual([3, 2, 1]);
    expect(versions[0].cache).toMatchObject({ state: 'remote' });
    expect(versions[1].cache).toMatchObject({ state: 'remote' });
    expect(versions[2].cache).toMatchObject({ state: 'cached' });
    const pulled = await b.api('POST', '/api/images/pc/3/pull');
    expect(pulled).toMatchObject({ name: 'pc', version: 3 });
    await until(async () => (await b.api('GET', '/api/images/pc/versions'))[0].cache.state === 'cached', 60_000, 'pc@3 cached at site B');
    expect(b.server!.out).toMatch(/the repository .* is reachable again/);
  }, LONG);

  itNeeds(CAPS, 'a session whose chunks stop coming (the repository killed mid-deploy) keeps its machines waiting and finishes when it is back', async () => {
    // A slow link from the repository to site B (8 Mbit/s), so the deploy is still fetching when the repository goes.
    execFileSync('tc', ['-n', swiftNs, 'qdisc', 'add', 'dev', 'siteb', 'root', 'tbf', 'rate', '8mbit', 'burst', '32kbit', 'latency', '400ms']);
    try {
      for (let k = 0; k < 2; k++) b.disk(k, 20 * MiB);
      const warnings = () => b.server!.out.match(/serves its cached versions/g)?.length ?? 0;
      const before = warnings();
      const d = b.deploy('pc@2', ['--any', '--clients', '2']);
      await until(async () => (await b.api('GET', '/api/images/pc/versions'))[1].cache.cachedChunks >= 1, 60_000, 'the first chunks of pc@2 at site B');
      await swift!.killProxy();
      try {
        await until(() => warnings() > before, 60_000, 'site B to notice the repository is gone');
        const cut = (await b.api('GET', '/api/images/pc/versions'))[1].cache;
        expect(cut.state).toBe('partial');
        expect(cut.cachedChunks).toBeLessThan(cut.chunks);
        expect(d.child.exitCode).toBeNull(); // the session waits; its machines are not dropped
        const session = (await b.api('GET', '/api/sessions'))[0];
        expect(session.state).toBe('running');
        expect(Object.values(session.machines).map((m: any) => m.state)).not.toContain('dropped');
      } finally {
        await swift!.startProxy();
      }
      expect(await d.exited, d.out).toBe(0);
      expect(d.out).toMatch(/2 of 2 machine\(s\) done and verified; session done/);
      expect(disksHold(b, images[1])).toBe(true);
      await until(async () => (await b.api('GET', '/api/images/pc/versions'))[1].cache.state === 'cached', 60_000, 'pc@2 cached at site B');
      expect(warnings(), b.server!.out.split('\n').filter((l) => /repository/.test(l)).join('\n')).toBe(before + 1); // one warning for this outage, however many reads waited
    } finally {
      execFileSync('tc', ['-n', swiftNs, 'qdisc', 'del', 'dev', 'siteb', 'root']);
    }
  }, LONG);
  itNeeds([...CAPS, 'chromium'], "site B's dashboard shows where each version's chunks are and the repository, and its Pull caches a remote version", async () => {
    const raw = join(dir, 'pc34.raw');
    makeImage(raw, 16, { seed: 34 });
    await importImage(Store.open(central), raw, 'pc', {});
    expect(await pushFromA(4)).toMatch(/as pc@4/);
    await b.api('POST', '/api/repository/refresh');
    const { chromium } = await import('playwright-core');
    // The browser runs in site B's server namespace (Playwright talks to it over a pipe).
    const wrapper = join(dir, 'chromium-in-b.sh');
    writeFileSync(wrapper, `#!/bin/sh\nexec ip netns exec ${b.lab.server.ns} /usr/bin/chromium "$@"\n`);
    chmodSync(wrapper, 0o755);
    const browser = await chromium.launch({ executablePath: wrapper, headless: true, args: chromiumPin(join(b.data, 'tls')) });
    try {
      const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
      await gotoSteady(page, URL_);
      await dashboardLogin(page, b.token);
      await page.waitForSelector('#main:not([hidden])');
      const row = '#images tr[data-image-name="pc"]';
      await page.waitForFunction((r) => /@4 \(remote\)/.test(document.querySelector(r)?.textContent ?? ''), row, { timeout: 30_000 });
      expect(await page.textContent(row)).toMatch(/@1 \(cached\) @2 \(cached\) @3 \(cached\) @4 \(remote\)/);
      expect(await page.textContent('#repository-line')).toMatch(/^Repository s3:\/\/district\/images: reachable since /);
      await page.click(`${row} button[data-image="pc"]`);
      await page.waitForSelector('#i-versions button[data-pull="4"]');
      expect(await page.locator('#i-versions button[data-pull]').count()).toBe(1); // only the version not cached
      await page.click('#i-versions button[data-pull="4"]');
      await page.waitForFunction(() => /pc@4: .*cached in the background/.test(document.getElementById('i-result')?.textContent ?? ''), undefined, { timeout: 30_000 });
      await until(async () => (await b.api('GET', '/api/images/pc/versions'))[0].cache.state === 'cached', 60_000, 'pc@4 cached at site B');
    } finally {
      await browser.close();
    }
  }, LONG);
});
