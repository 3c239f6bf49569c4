/**
 * Server + 4 agents in the namespace lab, driven as an administrator would:
 * `clonecast serve`, `clonecast agent`, `clonecast deploy`, `clonecast
 * sessions`. Every finished disk is compared byte for byte with its image.
 */
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { importImage } from '../../server/store/import.js';
import { Store } from '../../server/store/store.js';
import { Compression } from '../../protocol/chunk.js';
import { chunkAt, ChunkKind, tableLength } from '../../protocol/manifest.js';
import { curlPin, detachLoops, itNeeds, loopAttach, missing, tempDir, texty } from '../helpers.js';
import { Fleet, until } from './fleet.js';
// @ts-expect-error: a plain JavaScript module
import { makeImage } from '../bench/mkimage.mjs';

const MiB = 1 << 20;
const N = 4;
const LONG = 120_000;

describe('deploy to 4 agents in the namespace lab', () => {
  const dir = tempDir('deploy');
  const data = join(dir, 'data');
  const images: Record<string, Buffer> = {};
  let fleet: Fleet;

  const diskHolds = (k: number, name: string) => readFileSync(fleet.diskPath(k)).subarray(0, images[name].length).equals(images[name]);
  const expectDisks = (name: string, ks: number[]) => {
    for (const k of ks) expect(diskHolds(k, name), `disk ${k} should hold image ${name}`).toBe(true);
  };
  const session = async (id: number) => fleet.api('GET', `/api/sessions/${id}`);
  const latestSession = async () => (await fleet.api('GET', '/api/sessions'))[0];

  beforeAll(async () => {
    if (missing(['netns']).length > 0) return;
    const store = Store.open(data);
    for (const [name, seed] of [['a', 11], ['b', 12]] as const) {
      const raw = join(dir, `${name}.raw`);
      makeImage(raw, 16, { seed });
      // A 16 MiB image may hold no compressible segment: 2 MiB of text make sure it does.
      const bytes = readFileSync(raw);
      texty(2 * MiB, seed).copy(bytes, MiB + 4321);
      writeFileSync(raw, bytes);
      images[name] = bytes;
      await importImage(store, raw, name, {});
    }
    fleet = new Fleet(dir, data, N);
    for (let k = 0; k < N; k++) fleet.disk(k, 20 * MiB);
    // Machine 1 writes a real block device (a loop device over its disk file).
    fleet.devices[1] = loopAttach(fleet.diskPath(1));
    await fleet.startServer();
  }, LONG);
  afterAll(() => {
    fleet?.down();
    detachLoops();
  });

  itNeeds(['netns', 'curl', 'loop'], 'an agent without the token is refused, and so is an admin client', async () => {
    const bad = fleet.startAgent(0, ['--once'], 'f'.repeat(48));
    expect(await bad.exited).toBe(6);
    expect(bad.out).toMatch(/refused this agent: wrong or missing token/);
    const admin = fleet.run(['machines'], '0'.repeat(48));
    expect(await admin.exited).toBe(6);
    expect(admin.out).toMatch(/needs the server's token/);
    const noToken = await fetchStatus(fleet, '/api/machines', 'wrong');
    expect(noToken).toBe(401);
    expect(await fleet.online()).toBe(0);
    const metrics = (await fleet.api('GET', '/metrics')) as string;
    expect(metrics).toMatch(/clonecast_control_rejected_total\{reason="unauthorized"\} 1/);
    for (let k = 0; k < N; k++) fleet.startAgent(k);
    await until(async () => (await fleet.online()) === N, 20_000, '4 agents online');
  }, LONG);

  itNeeds(['netns', 'curl', 'loop', 'zstd'], 'start rule "--clients 4": 4 verified disks, from an image stored as zstd chunks', async () => {
    const d = fleet.deploy('a', ['--any', '--clients', '4']);
    expect(await d.exited, d.out).toBe(0);
    expect(d.out).toMatch(/4 of 4 machine\(s\) done and verified; session done/);
    expectDisks('a', [0, 1, 2, 3]);
    // Imported with the default codec: the chunks that went over the wire were zstd, and the agents decoded them.
    const m = await Store.open(data).readManifest('a', 1);
    const codecs = Array.from({ length: tableLength(m.table) }, (_, i) => chunkAt(m.table, i)).filter((r) => r.kind === ChunkKind.DATA).map((r) => r.compression);
    expect(codecs.filter((c) => c === Compression.ZSTD).length).toBeGreaterThanOrEqual(2);
    expect(codecs).not.toContain(Compression.LZ4);
    const machines = await fleet.api('GET', '/api/machines');
    for (const m of machines) expect(m.lastImage).toMatchObject({ name: 'a', version: 1, verified: true });
    // The loop device was reported as a block device with its real size and sectors.
    const loop = machines.find((m: any) => m.disks[0].device === fleet.devices[1]);
    expect(loop.disks[0]).toMatchObject({ size: 20 * MiB, logicalSector: 512, mounted: false, boot: false });
  }, LONG);

  itNeeds(['netns', 'curl', 'loop'], 'start rule "--machines": only the listed machines join', async () => {
    const macs = [fleet.mac(0), fleet.mac(1)];
    const d = fleet.deploy('b', ['--machines', macs.join(',')]);
    expect(await d.exited, d.out).toBe(0);
    const s = await latestSession();
    expect(Object.keys(s.machines).sort()).toEqual([...macs].sort());
    expectDisks('b', [0, 1]);
    expectDisks('a', [2, 3]);
  }, LONG);

  itNeeds(['netns', 'curl', 'loop'], 'start rule "--wait 2": starts 2 s after the first machine joined', async () => {
    const d = fleet.deploy('a', ['--any', '--wait', '2']);
    expect(await d.exited, d.out).toBe(0);
    const s = await latestSession();
    expect(Date.parse(s.startedAt) - Date.parse(s.firstJoinAt)).toBeGreaterThanOrEqual(2000);
    expectDisks('a', [0, 1, 2, 3]);
  }, LONG);

  itNeeds(['netns', 'curl', 'loop'], 'start rule "--at": starts at the given time', async () => {
    const at = new Date(Date.now() + 3000).toISOString();
    const d = fleet.deploy('b', ['--any', '--at', at]);
    expect(await d.exited, d.out).toBe(0);
    const s = await latestSession();
    expect(Date.parse(s.startedAt)).toBeGreaterThanOrEqual(Date.parse(at));
    expectDisks('b', [0, 1, 2, 3]);
  }, LONG);

  itNeeds(['netns', 'curl', 'loop'], 'start rule "--now": starts at once; "--after reboot" is only said without --allow-power', async () => {
    const d = fleet.deploy('a', ['--any', '--now', '--after', 'reboot']);
    expect(await d.exited, d.out).toBe(0);
    const s = await latestSession();
    expect(s.rule).toMatchObject({ now: true });
    expect(Date.parse(s.startedAt) - Date.parse(s.createdAt)).toBeLessThan(1000);
    expectDisks('a', [0, 1, 2, 3]);
    await until(() => fleet.agents.every((a) => /the session asks for reboot; not doing it without --allow-power/.test(a!.out)), 5000, 'every agent to say it would reboot');
    expect(await fleet.online()).toBe(N);
  }, LONG);

  itNeeds(['netns', 'curl', 'loop'], 'a session started by hand ("clonecast sessions start") before its rule is met', async () => {
    const d = fleet.deploy('b', ['--any', '--clients', '10']);
    await until(async () => Object.values((await latestSession())?.machines ?? {}).filter((m: any) => m.state === 'waiting').length === N, 20_000, '4 machines waiting');
    const s = await latestSession();
    expect(s.state).toBe('waiting');
    const start = fleet.run(['sessions', 'start', String(s.id)]);
    expect(await start.exited, start.out).toBe(0);
    expect(await d.exited, d.out).toBe(0);
    expectDisks('b', [0, 1, 2, 3]);
  }, LONG);

  itNeeds(['netns', 'curl', 'loop'], 'a latecomer joins a running session and finishes', async () => {
    fleet.agents[3]!.child.kill('SIGTERM');
    await fleet.agents[3]!.exited;
    await until(async () => (await fleet.online()) === N - 1, 10_000, 'agent 3 offline');
    // Four named, started by three: the fourth joins the running session.
    const d = fleet.deploy('a', ['--machines', [0, 1, 2, 3].map((k) => fleet.mac(k)).join(','), '--clients', '3', '--rate', '30']);
    await until(async () => (await latestSession())?.state === 'running', 20_000, 'the session to run');
    fleet.startAgent(3);
    expect(await d.exited, d.out).toBe(0);
    expect(fleet.server!.out).toMatch(/joined the running session/);
    const s = await latestSession();
    expect(Object.keys(s.machines)).toHaveLength(4);
    expect(Date.parse(s.machines[fleet.mac(3)].joinedAt)).toBeGreaterThan(Date.parse(s.startedAt));
    expectDisks('a', [0, 1, 2, 3]);
  }, LONG);

  itNeeds(['netns', 'curl', 'loop'], 'a cancelled session leaves a session running beside it untouched', async () => {
    const slow = fleet.deploy('b', ['--machines', `${fleet.mac(0)},${fleet.mac(1)}`, '--rate', '10']);
    await until(async () => (await latestSession())?.state === 'running', 20_000, 'the slow session to run');
    const slowId = (await latestSession()).id;
    const other = fleet.deploy('b', ['--machines', `${fleet.mac(2)},${fleet.mac(3)}`]);
    await until(async () => (await latestSession())?.id === slowId + 1, 10_000, 'the second session');
    const cancel = fleet.run(['sessions', 'cancel', String(slowId)]);
    expect(await cancel.exited, cancel.out).toBe(0);
    expect(await slow.exited).toBe(1);
    expect(await other.exited, other.out).toBe(0);
    const s = await session(slowId);
    expect(s.state).toBe('cancelled');
    for (const m of Object.values(s.machines) as any[]) expect(m.state).toBe('cancelled');
    expect((await session(slowId + 1)).state).toBe('done');
    expect((await session(slowId)).group).not.toBe((await session(slowId + 1)).group);
    expectDisks('b', [2, 3]);
  }, LONG);

  itNeeds(['netns', 'curl', 'loop'], 'an image larger than one agent\'s disk fails that machine only', async () => {
    fleet.agents[3]!.child.kill('SIGTERM');
    await fleet.agents[3]!.exited;
    fleet.disk(3, 8 * MiB);
    fleet.startAgent(3);
    await until(async () => (await fleet.online()) === N, 20_000, 'agent 3 back with a small disk');
    const d = fleet.deploy('a', ['--any', '--clients', '4']);
    expect(await d.exited, d.out).toBe(1);
    const s = await latestSession();
    const small = s.machines[fleet.mac(3)];
    expect(small.state).toBe('failed');
    expect(small.error).toMatch(/the image needs 16\.0 MiB \(16777216 bytes\) but .*disk3\.img holds 8\.0 MiB/);
    expect(d.out).toMatch(/3 of 4 machine\(s\) done/);
    expectDisks('a', [0, 1, 2]);
    expect(readFileSync(fleet.diskPath(3)).every((b) => b === 0)).toBe(true);
    fleet.agents[3]!.child.kill('SIGTERM');
    await fleet.agents[3]!.exited;
    fleet.disk(3, 20 * MiB);
    fleet.startAgent(3);
    await until(async () => (await fleet.online()) === N, 20_000, 'agent 3 back');
  }, LONG);

  itNeeds(['netns', 'curl', 'loop'], 'a machine whose disk makes no progress is dropped with the reason; the session says so', async () => {
    fleet.agents[0]!.child.kill('SIGTERM');
    await fleet.agents[0]!.exited;
    fleet.startAgent(0, ['--write-limit', '40000']); // 1 MiB chunks at 40 kB/s: 26 s each
    await until(async () => (await fleet.online()) === N, 20_000, 'agent 0 back, slow');
    const d = fleet.deploy('b', ['--machines', fleet.mac(0), '--drop-after', '3']);
    expect(await d.exited, d.out).toBe(1);
    const m = (await latestSession()).machines[fleet.mac(0)];
    expect(m.state).toBe('dropped');
    expect(m.error).toMatch(/the session dropped it: it made no progress for 3 s/);
    expect(d.out).toMatch(/dropped: the session dropped it: it made no progress/);
    fleet.agents[0]!.child.kill('SIGTERM');
    await fleet.agents[0]!.exited;
    fleet.startAgent(0);
    await until(async () => (await fleet.online()) === N, 20_000, 'agent 0 back');
  }, LONG);

  itNeeds(['netns', 'curl', 'loop'], 'the server is killed mid-session and restarted: every agent resumes and finishes', async () => {
    const d = fleet.deploy('b', ['--any', '--clients', '4', '--rate', '20']);
    await until(
      async () => {
        const s = await latestSession();
        const ms = Object.values(s?.machines ?? {}) as any[];
        return s?.state === 'running' && ms.length === N && ms.every((m) => m.chunksDone >= 3);
      },
      30_000,
      'every machine to have written 3 chunks',
    );
    fleet.server!.child.kill('SIGKILL');
    await fleet.server!.exited;
    await new Promise((r) => setTimeout(r, 1000));
    await fleet.startServer();
    expect(fleet.server!.out).toMatch(/session \d+ \(b@1\) restored, running/);
    expect(await d.exited, d.out).toBe(0);
    expect(d.out).toMatch(/retrying/);
    const s = await latestSession();
    for (const m of Object.values(s.machines) as any[]) {
      expect(m.state).toBe('done');
      expect(m.digestOk).toBe(true);
      // What was written before the kill was not fetched again.
      expect(m.skipped).toBeGreaterThanOrEqual(3);
    }
    for (let k = 0; k < N; k++) expect(fleet.agents[k]!.out).toMatch(/continuing with what is already written/);
    expectDisks('b', [0, 1, 2, 3]);
    // The registry survived the kill too.
    const machines = await fleet.api('GET', '/api/machines');
    expect(machines).toHaveLength(N);
  }, LONG);
});

async function fetchStatus(fleet: Fleet, path: string, token: string): Promise<number> {
  const out = fleet.lab.execIn(fleet.lab.server.ns, 'curl', ['-s', ...curlPin(join(fleet.data, 'tls')), '-o', '/dev/null', '-w', '%{http_code}', '-H', `authorization: Bearer ${token}`, `https://10.77.0.1:8080${path}`]);
  return Number(out);
}
