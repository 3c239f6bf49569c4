/**
 * `clonecast lab` as a user runs it (the real CLI, a private lab folder):
 * up, status through the forwarded dashboard port, down removing everything
 * by name; the demo end to end; and the classroom in the lab with 8 agents,
 * 2% loss, and one agent killed and restarted midway.
 */
import { afterAll, describe, expect } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { importImage } from '../../server/store/import.js';
import { Store } from '../../server/store/store.js';
import { cli, itNeeds, tempDir } from '../helpers.js';
import { pinnedFetch } from '../../native/pinned-tls.js';
import { Fleet, until } from './fleet.js';
// @ts-expect-error: a plain JavaScript module
import { makeImage } from '../bench/mkimage.mjs';

const MiB = 1 << 20;

describe('clonecast lab', () => {
  const dir = tempDir('labcli');
  const env = { CLONECAST_LAB_DIR: join(dir, 'lab') };
  afterAll(() => {
    spawnSync(process.execPath, [join(import.meta.dirname, '../../bin/clonecast'), 'lab', 'down'], { env: { ...process.env, ...env } });
  });

  itNeeds(['netns', 'loop'], 'says clearly that it needs root', async () => {
    const r = spawnSync('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', process.execPath, join(import.meta.dirname, '../../bin/clonecast'), 'lab', 'up', '--clients', '1'], { encoding: 'utf8', env: { ...process.env, ...env } });
    expect(r.status).toBe(6);
    expect(r.stderr).toMatch(/run it as root/);
  });

  itNeeds(['netns', 'loop'], 'up, status, down: agents on loop devices, the dashboard on the host, nothing left behind', async () => {
    const up = await cli(['lab', 'up', '--clients', '2', '--port', '18431', '--json'], env);
    expect(up.code, up.stderr).toBe(0);
    const state = up.json;
    expect(state.machines).toHaveLength(2);
    expect(state.loops).toHaveLength(2);
    await until(async () => ((await cli(['lab', 'status', '--port', '18431', '--json'], env)).json?.machines ?? []).filter((m: any) => m.online).length === 2, 20_000, '2 agents online through the forwarder');
    // The dashboard through the forwarder: TLS end to end, the same certificate.
    expect(state.dashboard).toBe('https://127.0.0.1:18431/');
    const page = await pinnedFetch(state.dashboard, { pin: state.fingerprint });
    expect(await page.text()).toMatch(/<title>clonecast<\/title>/);
    const again = await cli(['lab', 'up', '--clients', '1'], env);
    expect(again.code).toBe(5);
    expect(again.stderr).toMatch(/a lab is already up/);
    const down = await cli(['lab', 'down'], env);
    expect(down.code).toBe(0);
    const netns = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout;
    for (const ns of state.namespaces) expect(netns).not.toMatch(new RegExp(`^${ns}\\b`, 'm'));
    const loops = spawnSync('losetup', ['-a'], { encoding: 'utf8' }).stdout;
    for (const l of state.loops) expect(loops).not.toMatch(new RegExp(`^${l}:`, 'm'));
    // Gone, or a zombie waiting for whatever reaps orphans here: nothing still runs.
    const running = (pid: number) => existsSync(`/proc/${pid}/stat`) && readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0] !== 'Z';
    for (const pid of state.pids) expect(running(pid), `pid ${pid}`).toBe(false);
  }, 60_000);

  itNeeds(['netns', 'qemu', 'kernel'], 'up --vms: a VM PXE-boots from the lab server into the agent', async () => {
    const up = await cli(['lab', 'up', '--clients', '1', '--vms', '--port', '18433', '--json'], env);
    expect(up.code, up.stderr).toBe(0);
    try {
      expect(up.json.machines[0].mac).toBe('52:54:00:77:10:01');
      let last: unknown;
      await until(async () => ((last = (await cli(['lab', 'status', '--port', '18433', '--json'], env)).json)?.machines ?? []).some((m: any) => m.online && m.id === '52:54:00:77:10:01' && m.disks.length === 1), 150_000, 'the VM\'s agent to connect').catch((err: Error) => {
        // Say where the VM got to: the end of its console and what the server knew.
        const serial = readFileSync(join(env.CLONECAST_LAB_DIR, 'pc1.serial.log'), 'utf8').slice(-1500);
        throw new Error(`${err.message}; status: ${JSON.stringify(last)}; console: ${serial}`);
      });
      const serial = readFileSync(join(env.CLONECAST_LAB_DIR, 'pc1.serial.log'), 'utf8');
      expect(serial).toMatch(/clonecast-boot: network up on eth0/);
    } finally {
      expect((await cli(['lab', 'down'], env)).code).toBe(0);
    }
  }, 240_000);

  itNeeds(['netns', 'loop', 'sgdisk', 'mkfs'], 'demo: sample image, 4 agents, deploy, verified identical disks, torn down', async () => {
    const r = await cli(['lab', 'demo', '--port', '18432'], env);
    console.log(r.stdout);
    expect(r.code, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/dashboard \(live while the deploy runs\): https:\/\/127\.0\.0\.1:18432\/  token: [0-9a-f]+/);
    expect(r.stdout).not.toMatch(/#token=/);
    expect(r.stdout.match(/identical to the image; GPT with 2 partitions, sgdisk -v: no problems; e2fsck -fn: clean/g)).toHaveLength(4);
    expect(r.stdout).toMatch(/demo: all 4 disks written, verified and identical/);
    expect(spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout).not.toMatch(/^cclab/m);
  }, 120_000);
});

describe('the classroom in the namespace lab: 8 agents, 2% loss, one killed and restarted', () => {
  const dir = tempDir('class8');
  let fleet: Fleet | undefined;
  afterAll(() => fleet?.down());

  itNeeds(['netns', 'curl'], 'every machine ends verified with a byte-identical disk', async () => {
    const raw = join(dir, 'img.raw');
    makeImage(raw, 24, { seed: 8, dense: true });
    const image = readFileSync(raw);
    const data = join(dir, 'data');
    await importImage(Store.open(data), raw, 'class', {});
    fleet = new Fleet(dir, data, 8, { loss: 0.02 });
    for (let k = 0; k < 8; k++) fleet.disk(k, 32 * MiB);
    await fleet.startServer();
    for (let k = 0; k < 8; k++) fleet.startAgent(k);
    await until(async () => (await fleet!.online()) === 8, 30_000, '8 agents online');
    // Slow enough (about 10 s) that machine 5 is caught mid-way however late a poll comes on a busy machine.
    const d = fleet.deploy('class', ['--any', '--clients', '8', '--rate', '20']);
    const victim = fleet.mac(5);
    let midway = { chunksDone: 0, chunksTotal: 0 };
    await until(async () => {
      midway = (await fleet!.api('GET', '/api/sessions'))[0]?.machines?.[victim] ?? midway;
      return midway.chunksDone >= 3;
    }, 60_000, 'machine 5 to write 3 chunks');
    expect(midway.chunksDone, 'machine 5 must be killed mid-way for this test to mean anything').toBeLessThan(midway.chunksTotal);
    fleet.agents[5]!.child.kill('SIGKILL');
    await fleet.agents[5]!.exited;
    fleet.startAgent(5);
    expect(await d.exited, d.out).toBe(0);
    expect(d.out).toMatch(/8 of 8 machine\(s\) done and verified; session done/);
    const s = (await fleet.api('GET', '/api/sessions'))[0];
    expect(s.machines[victim].skipped).toBeGreaterThanOrEqual(3); // its restart read back what it had written
    expect(fleet.agents[5]!.out).toMatch(/connected to/);
    for (let k = 0; k < 8; k++) expect(readFileSync(fleet.diskPath(k)).subarray(0, image.length).equals(image), `disk ${k}`).toBe(true);
    const lossDrops = fleet.lab.droppedTowards(0) + fleet.lab.droppedTowards(7);
    expect(lossDrops).toBeGreaterThan(0);
  }, 180_000);
});
