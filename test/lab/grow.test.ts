/**
 * Restoring onto a disk of another size (docs/operations.md, "Larger and
 * smaller targets"): `image export --grow-last --size` grows the last
 * partition with the filesystem's own tool (ext4, NTFS), moves the GPT
 * backup to the end and recreates swap with its UUID. XFS and btrfs grow
 * only while mounted: the server's export leaves them at their size with a
 * warning, and the agent's finishing step (mayMount) grows them. A target
 * smaller than the image is refused with the size needed and the size used.
 */
import { afterAll, describe, expect } from 'vitest';
import { join } from 'node:path';
import { importImage } from '../../server/store/import.js';
import { Store } from '../../server/store/store.js';
import { finishDisk } from '../../native/disk-finish.js';
import { cli, detachLoops, itNeeds, tempDir } from '../helpers.js';
import { blkid, check, ext4FileSha, makeFsDisk, markUnused, MiB, onPart, partsNow, SWAP_UUID } from './fs-disk.js';

const LONG = 120_000;

describe('export onto a larger or smaller target', () => {
  const dir = tempDir('grow');
  const data = join(dir, 'data');
  afterAll(() => detachLoops());

  /** Exports image `name` to a new file of sizeMiB with --grow-last; returns the file, its partitions and the CLI's output. */
  async function growExport(name: string, sizeMiB: number) {
    const out = join(dir, `${name}-grown.img`);
    const r = await cli(['image', 'export', name, out, '--grow-last', '--size', String(sizeMiB * MiB), '--data', data]);
    expect(r.code, r.stderr).toBe(0);
    const parts = partsNow(out);
    // The last partition reaches the end of the disk but for the backup GPT (33 sectors) and alignment.
    expect(sizeMiB * MiB - (parts[2].start + parts[2].size)).toBeLessThan(MiB);
    expect(check('sgdisk', ['-v', out]).out).toMatch(/No problems found/);
    return { out, parts, r };
  }

  itNeeds(['loop', 'fstools'], 'ext4: grown with resize2fs, e2fsck clean, files intact, swap keeps its UUID', async () => {
    const disk = makeFsDisk(join(dir, 'ext4.img'), 40, 'ext4');
    const store = Store.open(data);
    await importImage(store, disk.file, 'ext', {});
    const unused = await markUnused(store, 'ext', 1, disk);
    expect(unused.length).toBeGreaterThan(10);
    const { out, parts, r } = await growExport('ext', 72);
    expect(r.stdout).toMatch(/partition 3 grown/);
    expect(r.stdout).toMatch(/1 swap partition\(s\) recreated/);
    onPart(out, parts[2], (dev) => {
      expect(check('e2fsck', ['-fn', dev]).code).toBe(0);
      const h = check('dumpe2fs', ['-h', dev]).out;
      const blocks = Number(/Block count:\s+(\d+)/.exec(h)![1]) * Number(/Block size:\s+(\d+)/.exec(h)![1]);
      expect(blocks).toBeGreaterThan(parts[2].size - MiB);
      expect(ext4FileSha(dev)).toBe(disk.files[3]);
    });
    onPart(out, parts[0], (dev) => expect(ext4FileSha(dev)).toBe(disk.files[1]));
    onPart(out, parts[1], (dev) => {
      expect(blkid(dev, 'TYPE')).toBe('swap');
      expect(blkid(dev, 'UUID')).toBe(SWAP_UUID);
    });
  }, LONG);

  // The kernel refuses to resize a btrfs to less than 256 MiB, and mkfs.xfs makes none under 300 MiB.
  for (const [fs, sizeMiB, grownMiB] of [['ntfs', 40, 64], ['btrfs', 160, 300], ['xfs', 340, 380]] as const) {
    const mounted = fs === 'xfs' || fs === 'btrfs';
    itNeeds(['loop', 'fstools'], `${fs}: the last partition grows with its filesystem, which checks clean${mounted ? ' (on the target machine; the server never mounts it)' : ''}`, async () => {
      const disk = makeFsDisk(join(dir, `${fs}.img`), sizeMiB, fs);
      const store = Store.open(data);
      await importImage(store, disk.file, fs, {});
      let out: string;
      let parts: ReturnType<typeof partsNow>;
      if (mounted) {
        // The server's export: the disk is written, the GPT backup moves, the partition keeps its size.
        out = join(dir, `${fs}-grown.img`);
        const r = await cli(['image', 'export', fs, out, '--grow-last', '--size', String(grownMiB * MiB), '--data', data]);
        expect(r.code, r.stderr).toBe(0);
        expect(r.stderr).toMatch(new RegExp(`warning: the last partition \\(3\\) keeps its size: it holds ${fs}, which grows only while mounted, and the server does not mount filesystems from images.*deploy with --grow-last`));
        expect(partsNow(out)[2].size).toBe(disk.parts[2].size);
        expect(check('sgdisk', ['-v', out]).out).toMatch(/No problems found/);
        // The agent's step on the target machine, where its own kernel mounts it.
        const report = await finishDisk(out, grownMiB * MiB, (await store.readManifest(fs, 1)).meta, { growLast: true, mayMount: true });
        expect(report.grown).toMatchObject({ number: 3, fs, fsGrown: true });
        parts = partsNow(out);
        expect(grownMiB * MiB - (parts[2].start + parts[2].size)).toBeLessThan(MiB);
      } else ({ out, parts } = await growExport(fs, grownMiB));
      onPart(out, parts[2], (dev) => {
        let size: number;
        if (fs === 'ntfs') {
          expect(check('ntfsfix', ['-n', dev]).code).toBe(0);
          size = Number(/Current volume size: (\d+) bytes/.exec(check('ntfsresize', ['--info', '--force', '--no-progress-bar', dev]).out)![1]);
        } else if (fs === 'xfs') {
          expect(check('xfs_repair', ['-n', dev]).code).toBe(0);
          const db = check('xfs_db', ['-r', '-c', 'sb 0', '-c', 'p dblocks', '-c', 'p blocksize', dev]).out;
          size = Number(/dblocks = (\d+)/.exec(db)![1]) * Number(/blocksize = (\d+)/.exec(db)![1]);
        } else {
          expect(check('btrfs', ['check', dev]).code).toBe(0);
          size = Number(/^total_bytes\s+(\d+)/m.exec(check('btrfs', ['inspect-internal', 'dump-super', dev]).out)![1]);
        }
        expect(size, `${fs} size after growing`).toBeGreaterThan(disk.parts[2].size + (grownMiB - sizeMiB - 2) * MiB);
      });
    }, LONG);
  }

  itNeeds(['loop', 'fstools'], 'FAT32: cannot be grown here, so the partition keeps its size, with a warning; the GPT backup still moves', async () => {
    const disk = makeFsDisk(join(dir, 'vfat.img'), 48, 'vfat');
    await importImage(Store.open(data), disk.file, 'fat', {});
    const out = join(dir, 'fat-grown.img');
    const r = await cli(['image', 'export', 'fat', out, '--grow-last', '--size', String(64 * MiB), '--data', data]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/warning: the last partition \(3\) keeps its size: it holds vfat, which cannot be grown here/);
    const parts = partsNow(out);
    expect(parts[2].size).toBe(disk.parts[2].size);
    expect(check('sgdisk', ['-v', out]).out).toMatch(/No problems found/);
    onPart(out, parts[2], (dev) => expect(check('fsck.fat', ['-n', dev]).code).toBe(0));
  }, LONG);

  itNeeds(['loop', 'fstools'], 'a target smaller than the image is refused with the size needed and the size used', async () => {
    const r = await cli(['image', 'export', 'ext', join(dir, 'small.img'), '--size', String(32 * MiB), '--data', data]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/holds 32\.0 MiB \(33554432 bytes\) but ext@1 needs 40\.0 MiB \(41943040 bytes\); its filesystems use [\d.]+ MiB \(\d+ bytes\)/);
  }, LONG);
});
