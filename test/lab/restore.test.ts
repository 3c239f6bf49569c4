/**
 * Differential restore in the namespace lab: version 2 of an image differs
 * from version 1 in two chunks. Once the registry knows a disk holds a
 * version of the image, restoring another version is differential on its
 * own: each machine checks its disk, receives and writes only the chunks
 * that differ, and ends byte-identical. A forced full restore of the same
 * version is the baseline for the time saved.
 */
import { afterAll, describe, expect } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { importImage } from '../../server/store/import.js';
import { Store } from '../../server/store/store.js';
import { itNeeds, seeded, tempDir } from '../helpers.js';
import { Fleet, until } from './fleet.js';

const MiB = 1 << 20;

describe('differential restore', () => {
  const dir = tempDir('diff');
  let fleet: Fleet | undefined;
  afterAll(() => fleet?.down());

  itNeeds(['netns', 'curl'], 'restores version 2 over version 1 writing only the changed chunks', async () => {
    const data = join(dir, 'data');
    const store = Store.open(data);
    const v1 = seeded(24 * MiB, 3);
    writeFileSync(join(dir, 'v1.img'), v1);
    await importImage(store, join(dir, 'v1.img'), 'os', {});
    const v2 = Buffer.from(v1);
    seeded(MiB, 91).copy(v2, 5 * MiB);
    seeded(MiB, 92).copy(v2, 17 * MiB);
    writeFileSync(join(dir, 'v2.img'), v2);
    await importImage(store, join(dir, 'v2.img'), 'os', {});

    fleet = new Fleet(dir, data, 2);
    for (let k = 0; k < 2; k++) fleet.disk(k, 32 * MiB);
    await fleet.startServer();
    for (let k = 0; k < 2; k++) fleet.startAgent(k);
    await until(async () => (await fleet!.online()) === 2, 20_000, '2 agents online');
    const deploy = async (args: string[], body?: object) => {
      if (body !== undefined) {
        const s = await fleet!.api('POST', '/api/sessions', body);
        await until(async () => ['done', 'failed'].includes((await fleet!.api('GET', `/api/sessions/${s.id}`)).state), 60_000, 'the session to end');
        return fleet!.api('GET', `/api/sessions/${s.id}`);
      }
      const d = fleet!.deploy('os', args);
      expect(await d.exited, d.out).toBe(0);
      expect(d.out).toMatch(/2 of 2 machine\(s\) done and verified/);
      return (await fleet!.api('GET', '/api/sessions'))[0];
    };
    const rate = 40; // Mbit/s: the transfer, not the CPU, sets the time

    // Version 1 on empty disks: the registry knows nothing of them, so a full restore.
    const first = await deploy(['--any', '--clients', '2', '--rate', String(rate)]);
    expect(first.version).toBe(2); // NAME alone is the latest version
    const back = await deploy([], { image: 'os@1', rule: { any: true, clients: 2 }, rateMbit: rate });
    // ...and os@1 over os@2 is differential on its own (same image): only the 2 chunks differ.
    for (const m of Object.values(first.machines) as any[]) expect(m.skipped).toBe(0);
    for (const m of Object.values(back.machines) as any[]) {
      expect(m.state).toBe('done');
      expect(m.skipped).toBe(22);
    }
    for (let k = 0; k < 2; k++) expect(readFileSync(fleet.diskPath(k)).subarray(0, v1.length).equals(v1)).toBe(true);

    // Version 2 over version 1: automatic differential.
    const diff = await deploy([], { image: 'os@2', rule: { any: true, clients: 2 }, rateMbit: rate });
    const full = await deploy([], { image: 'os@2', rule: { any: true, clients: 2 }, rateMbit: rate, differential: false });
    const seconds = (s: any) => (Date.parse(s.endedAt) - Date.parse(s.startedAt)) / 1000;
    for (const m of Object.values(diff.machines) as any[]) {
      expect(m.state).toBe('done');
      expect(m.skipped).toBe(22);
      expect(m.bytesWritten).toBe(2 * MiB);
    }
    for (const m of Object.values(full.machines) as any[]) {
      expect(m.skipped).toBe(0);
      expect(m.bytesWritten).toBe(24 * MiB);
    }
    expect(diff.sent.bytes).toBeLessThan(full.sent.bytes / 4);
    console.log(`differential restore of os@2 over os@1: ${Object.values(diff.machines).map((m: any) => m.skipped)[0]} of 24 chunks skipped, ${(diff.sent.bytes / MiB).toFixed(1)} MiB sent, ${seconds(diff).toFixed(1)} s; full restore ${(full.sent.bytes / MiB).toFixed(1)} MiB sent, ${seconds(full).toFixed(1)} s; time saved ${(seconds(full) - seconds(diff)).toFixed(1)} s`);
    expect(seconds(diff)).toBeLessThan(seconds(full));
    for (let k = 0; k < 2; k++) expect(readFileSync(fleet.diskPath(k)).subarray(0, v2.length).equals(v2)).toBe(true);
  }, 240_000);
});

describe('unicast for a machine the multicast group does not reach', () => {
  const dir = tempDir('unicast');
  let fleet: Fleet | undefined;
  afterAll(() => fleet?.down());

  itNeeds(['netns', 'curl'], 'a remote machine behind 50 ms and 1% loss, without multicast, falls back to unicast and verifies', async () => {
    const data = join(dir, 'data');
    const image = seeded(12 * MiB, 7);
    writeFileSync(join(dir, 'img'), image);
    await importImage(Store.open(data), join(dir, 'img'), 'remote', {});
    // The server's link has 50 ms of delay each way; client 1 also loses 1% and gets no multicast at all.
    fleet = new Fleet(dir, data, 2, { delayMs: 50, loss: [0, 0.01] });
    fleet.lab.blockMulticast(1);
    for (let k = 0; k < 2; k++) fleet.disk(k, 16 * MiB);
    await fleet.startServer();
    // Machine 0 (reached by multicast) writes slowly, so that the group stays busy: machine 1
    // must notice on its own that none of it arrives, not be rescued as the last receiver.
    fleet.startAgent(0, ['--write-limit', '2000000']);
    fleet.startAgent(1);
    await until(async () => (await fleet!.online()) === 2, 20_000, '2 agents online');
    const d = fleet.deploy('remote', ['--any', '--clients', '2', '--rate', '100']);
    expect(await d.exited, d.out).toBe(0);
    expect(d.out).toMatch(/2 of 2 machine\(s\) done and verified/);
    expect(fleet.agents[1]!.out).toMatch(/no multicast data for \d+\.\d s while the sender sent \d+ packets; asking for unicast/);
    expect(fleet.agents[0]!.out).not.toMatch(/asking for unicast/);
    for (let k = 0; k < 2; k++) expect(readFileSync(fleet.diskPath(k)).subarray(0, image.length).equals(image), `disk ${k}`).toBe(true);
    expect(fleet.lab.droppedTowards(1)).toBeGreaterThan(0);
  }, 180_000);
});
