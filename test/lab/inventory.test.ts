/**
 * The agent's view of its machine, read from sysfs on this very machine:
 * the disk the running system lives on must come out as the boot disk (so
 * that "auto" never picks it), and a loop device with its real size and
 * sector size, in use once mounted.
 */
import { afterAll, describe, expect } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { disks, macAddresses } from '../../agent/inventory.js';
import { chooseDisk } from '../../server/targets.js';
import { detachLoops, itNeeds, loopAttach, tempDir } from '../helpers.js';

const MiB = 1 << 20;

describe('agent inventory on this machine', () => {
  const dir = tempDir('inv');
  afterAll(() => detachLoops());

  itNeeds(['root'], 'reports the disk holding / as the boot disk, and auto never chooses it', () => {
    const root = execFileSync('findmnt', ['-n', '-o', 'SOURCE', '/'], { encoding: 'utf8' }).trim();
    const all = disks();
    const bootDisks = all.filter((d) => d.boot);
    expect(bootDisks.length, JSON.stringify(all)).toBeGreaterThanOrEqual(1);
    if (root.startsWith('/dev/')) expect(bootDisks.some((d) => root.startsWith(d.device!))).toBe(true);
    for (const d of all) expect(d.device).not.toMatch(/\/dev\/(loop|ram|zram)/);
    const choice = chooseDisk(all, 'auto', 1);
    if ('device' in choice) expect(bootDisks.map((d) => d.device)).not.toContain(choice.device);
    expect(macAddresses().every((m) => /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(m))).toBe(true);
  });

  itNeeds(['loop', 'mkfs'], 'reports a loop device with its size and sectors, and as in use once mounted', () => {
    const file = join(dir, 'l.img');
    execFileSync('truncate', ['-s', `${24 * MiB}`, file]);
    const dev = loopAttach(file, ['--sector-size', '4096']);
    const [d] = disks(dev);
    expect(d).toMatchObject({ device: dev, size: 24 * MiB, logicalSector: 4096, mounted: false, boot: false, removable: false });
    expect(d.model).toBe(file);
    execFileSync('mkfs.ext4', ['-q', dev]);
    const mnt = join(dir, 'mnt');
    mkdirSync(mnt);
    execFileSync('mount', [dev, mnt]);
    try {
      expect(disks(dev)[0].mounted).toBe(true);
      expect(chooseDisk(disks(dev), dev, MiB)).toMatchObject({ error: expect.stringMatching(/in use/) });
    } finally {
      spawnSync('umount', [mnt]);
    }
  });
});
