/**
 * Regression: a full data directory used to take the server down (the
 * synchronous save of machines.json threw ENOSPC out of the event loop) and
 * left empty temp files behind. Now the server keeps serving, /healthz and
 * /metrics name the file it cannot save, and the change reaches the disk
 * once there is space again. The data directory is a small ext4 on a loop
 * device, filled to the last block.
 */
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { spawn, spawnSync, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { importImage } from '../../server/store/import.js';
import { Store } from '../../server/store/store.js';
import { CLI, detachLoops, itNeeds, loopAttach, missing, serverFetch, tempDir } from '../helpers.js';
// @ts-expect-error: a plain JavaScript module
import { makeImage } from '../bench/mkimage.mjs';

const MACHINE = '02:cc:00:00:0f:01';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until<T>(f: () => Promise<T | undefined | false>, ms: number, what: string): Promise<T> {
  const end = Date.now() + ms;
  let last: unknown;
  while (Date.now() < end) {
    try {
      const v = await f();
      if (v !== undefined && v !== false) return v;
    } catch (err) {
      last = err;
    }
    await sleep(200);
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}${last ? ` (${(last as Error).message})` : ''}`);
}

function watch(child: ChildProcess): { child: ChildProcess; out: string } {
  const p = { child, out: '' };
  child.stdout!.on('data', (d) => (p.out += d));
  child.stderr!.on('data', (d) => (p.out += d));
  return p;
}

describe('state files on a full disk', () => {
  const dir = tempDir('diskfull');
  const mnt = join(dir, 'mnt');
  let server: { child: ChildProcess; out: string } | undefined;
  let agent: { child: ChildProcess; out: string } | undefined;
  let url = '';
  let token = '';
  let fingerprint = '';

  beforeAll(async () => {
    if (missing(['loop', 'mkfs']).length > 0) return;
    const img = join(dir, 'fs.img');
    execFileSync('truncate', ['-s', '8M', img]);
    const dev = loopAttach(img);
    execFileSync('mkfs.ext4', ['-q', '-F', dev]);
    mkdirSync(mnt);
    execFileSync('mount', [dev, mnt]);
    const raw = join(dir, 'tiny.raw');
    makeImage(raw, 1, { seed: 5 });
    await importImage(Store.open(mnt), raw, 'tiny', {});
    server = watch(spawn(process.execPath, [CLI, 'serve', '--data', mnt, '--listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'pipe'] }));
    await until(async () => server!.out.includes('stop with Ctrl-C') || server!.child.exitCode !== null, 15_000, 'the server to start');
    const m = /dashboard:\s+(\S+)[^]*fingerprint:\s+(\S+)[^]*token:\s+(\S+)/.exec(server.out);
    if (m === null) throw new Error(`server did not start: ${server.out}`);
    [, url, fingerprint, token] = m;
  }, 60_000);

  afterAll(() => {
    for (const p of [agent, server]) if (p !== undefined && p.child.exitCode === null) process.kill(p.child.pid!, 'SIGKILL');
    if (existsSync(mnt)) spawnSync('umount', ['-l', mnt]);
    detachLoops();
    rmSync(dir, { recursive: true, force: true });
  });

  const healthz = async () => {
    const r = await serverFetch({ url, fingerprint }, 'healthz');
    return { status: r.status, body: (await r.json()) as { ok: boolean; failing?: { file: string; error: string; since: string }[] } };
  };
  const metrics = async () => (await serverFetch({ url, fingerprint }, 'metrics', { headers: { authorization: `Bearer ${token}` } })).text();

  itNeeds(['loop', 'mkfs'], 'a server whose data directory fills up keeps serving, reports the failure, and saves once space is back', async () => {
    expect((await healthz()).status).toBe(200);
    // The server's own writes at start (sessions.json) are done before the disk fills.
    await until(async () => !/clonecast_state_dirty\{[^}]*\} 1/.test(await metrics()), 10_000, 'the start-up writes');
    // Fill the filesystem to its last block (root may use the reserved blocks, as the server does).
    spawnSync('dd', ['if=/dev/zero', `of=${join(mnt, 'filler')}`, 'bs=64k'], { stdio: 'ignore' });
    spawnSync('dd', ['if=/dev/zero', `of=${join(mnt, 'filler2')}`, 'bs=1k'], { stdio: 'ignore' });
    spawnSync('sync');
    expect(Number(execFileSync('df', ['--output=avail', '-B1', mnt], { encoding: 'utf8' }).split('\n')[1])).toBe(0);

    // A machine says hello: the registry must write machines.json, and cannot.
    const disk = join(dir, 'disk.img');
    execFileSync('truncate', ['-s', '4M', disk]);
    agent = watch(spawn(process.execPath, [CLI, 'agent', '--server', url, '--fingerprint', fingerprint, '--token', token, '--disk', disk, '--machine-id', MACHINE], { stdio: ['ignore', 'pipe', 'pipe'] }));
    const failing = await until(async () => {
      const h = await healthz();
      return h.status === 503 && h.body.failing?.some((f) => f.file === 'machines.json') ? h.body : undefined;
    }, 20_000, '/healthz to report the failing save');
    expect(failing.ok).toBe(false);
    expect(failing.failing).toContainEqual(expect.objectContaining({ file: 'machines.json', error: expect.stringMatching(/ENOSPC/) }));
    expect(JSON.stringify(failing)).not.toContain(token);
    expect(JSON.stringify(failing)).not.toContain(mnt); // no paths on the unauthenticated route
    expect(await metrics()).toMatch(/clonecast_state_write_failures_total\{file="machines.json"\} [1-9]/);
    expect(await metrics()).toMatch(/clonecast_state_dirty\{file="machines.json"\} 1/);

    // Still serving: the process lives, the API answers, the agent is known in memory.
    // A session that cannot be saved is not created: no phantom session with a live sender.
    const api = (path: string, body?: unknown) =>
      serverFetch({ url, fingerprint }, path, { method: body === undefined ? 'GET' : 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: body === undefined ? undefined : JSON.stringify(body) });
    const refused = await api('api/sessions', { image: 'tiny', rule: { machines: [MACHINE] } });
    expect(refused.status).toBe(503);
    expect(((await refused.json()) as { error: { message: string } }).error.message).toMatch(/could not be saved, so it was not created/);
    expect(await (await api('api/sessions')).json()).toEqual([]);
    expect(await metrics()).not.toMatch(/clonecast_sessions\{state="waiting"\} [1-9]/);

    await sleep(1500); // a retry or two more
    expect(server!.child.exitCode).toBeNull();
    const machines = (await (await serverFetch({ url, fingerprint }, 'api/machines', { headers: { authorization: `Bearer ${token}` } })).json()) as { id: string }[];
    expect(machines.map((m) => m.id)).toContain(MACHINE);
    expect(server!.out).toMatch(/machines\.json cannot be saved \(ENOSPC/);
    // The failed writes left no temp files.
    expect(readdirSync(mnt).filter((n) => n.includes('.tmp'))).toEqual([]);

    // Space is back: the retry (back-off at most 30 s) saves, health recovers.
    rmSync(join(mnt, 'filler'));
    rmSync(join(mnt, 'filler2'));
    await until(async () => (await healthz()).status === 200, 45_000, '/healthz to recover');
    const saved = JSON.parse(readFileSync(join(mnt, 'machines.json'), 'utf8')) as { id: string }[];
    expect(saved.map((m) => m.id)).toContain(MACHINE);
    expect(await metrics()).toMatch(/clonecast_state_dirty\{file="machines.json"\} 0/);
    expect(server!.out).toMatch(/machines\.json saved again/);
    // With space back, the same session is created and takes the machine.
    const made = await api('api/sessions', { image: 'tiny', rule: { machines: [MACHINE] } });
    expect(made.status).toBe(201);
    expect(server!.child.exitCode).toBeNull();
  }, 120_000);
});
