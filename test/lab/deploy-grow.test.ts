/**
 * Deploy of a used-block image (unused chunks, a swap partition recorded by
 * UUID) to 2 agents in the namespace lab (one writes a file, one a loop
 * device), onto disks larger than the image and full of random bytes: the
 * unused areas keep their random bytes, the used areas equal the image, the
 * sessions verify, the swap has its UUID again (blkid) and the GPT backup is
 * at the end (sgdisk -v). Then again with --grow-last --discard: the last
 * ext4 grows to the end (e2fsck clean) and the unused areas read as zeros.
 */
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { importImage } from '../../server/store/import.js';
import { Store } from '../../server/store/store.js';
import { chunkAt, ChunkKind, tableLength, type Manifest } from '../../protocol/manifest.js';
import { detachLoops, itNeeds, loopAttach, missing, tempDir } from '../helpers.js';
import { Fleet, until } from './fleet.js';
import { blkid, check, ext4FileSha, makeFsDisk, markUnused, MiB, onPart, partsNow, SWAP_UUID, type FsDisk } from './fs-disk.js';

const LONG = 120_000;
const IMAGE_MIB = 40;
const DISK_MIB = 56;

describe('deploy a used-block image onto larger disks with --grow-last', () => {
  const dir = tempDir('deploygrow');
  const data = join(dir, 'data');
  let fleet: Fleet | undefined;
  let disk: FsDisk;
  let manifest: Manifest;
  let image: Buffer;
  const random: Buffer[] = [];

  beforeAll(async () => {
    if (missing(['netns', 'loop', 'fstools']).length > 0) return;
    disk = makeFsDisk(join(dir, 'src.img'), IMAGE_MIB, 'ext4');
    image = readFileSync(disk.file);
    const store = Store.open(data);
    await importImage(store, disk.file, 'fs', {});
    await markUnused(store, 'fs', 1, disk);
    manifest = await store.readManifest('fs', 1);
    fleet = new Fleet(dir, data, 2);
    for (let k = 0; k < 2; k++) {
      random[k] = randomBytes(DISK_MIB * MiB);
      writeFileSync(fleet.diskPath(k), random[k]);
    }
    // Machine 1 writes a real block device: a loop device passes discard on to its file as holes.
    fleet.devices[1] = loopAttach(fleet.diskPath(1));
    await fleet.startServer();
  }, LONG);
  afterAll(() => {
    fleet?.down();
    detachLoops();
  });

  /** Checks disk k chunk by chunk below the last partition: defined chunks equal the image; unused ones outside the swap hold `unused(k, a, b)`. */
  function expectChunks(k: number, unused: 'random' | 'zeros'): void {
    const got = readFileSync(fleet!.diskPath(k));
    const c = manifest.meta.chunkSize;
    const swap = disk.parts[1];
    let unusedSeen = 0;
    // From chunk 1: chunk 0 holds the primary GPT, whose header the move of the backup rewrites.
    for (let i = 1; i < tableLength(manifest.table); i++) {
      const [a, b] = [i * c, Math.min((i + 1) * c, manifest.meta.diskSize)];
      if (a >= disk.parts[2].start) break; // the grown last partition is rewritten by its filesystem's tool
      if (chunkAt(manifest.table, i).kind !== ChunkKind.UNUSED) {
        expect(got.subarray(a, b).equals(image.subarray(a, b)), `disk ${k} chunk ${i} holds the image's bytes`).toBe(true);
      } else if (a >= swap.start + swap.size || b <= swap.start) {
        unusedSeen++;
        if (unused === 'random') expect(got.subarray(a, b).equals(random[k].subarray(a, b)), `disk ${k} unused chunk ${i} kept its bytes`).toBe(true);
        else expect(got.subarray(a, b).every((x) => x === 0), `disk ${k} unused chunk ${i} discarded`).toBe(true);
      }
    }
    expect(unusedSeen).toBeGreaterThan(0);
  }

  /** The checks every finished disk passes: both ext4 clean with their files, swap UUID back, GPT backup at the end; returns the last partition's size. */
  function expectFinished(k: number): number {
    const file = fleet!.diskPath(k);
    expect(check('sgdisk', ['-v', file]).out).toMatch(/No problems found/);
    const parts = partsNow(file);
    onPart(file, parts[0], (dev) => {
      expect(check('e2fsck', ['-fn', dev]).code).toBe(0);
      expect(ext4FileSha(dev)).toBe(disk.files[1]);
    });
    onPart(file, parts[1], (dev) => expect(blkid(dev, 'UUID')).toBe(SWAP_UUID));
    onPart(file, parts[2], (dev) => {
      expect(check('e2fsck', ['-fn', dev]).code).toBe(0);
      expect(ext4FileSha(dev)).toBe(disk.files[3]);
      const h = check('dumpe2fs', ['-h', dev]).out;
      expect(Number(/Block count:\s+(\d+)/.exec(h)![1]) * Number(/Block size:\s+(\d+)/.exec(h)![1])).toBeGreaterThan(parts[2].size - MiB);
    });
    return parts[2].size;
  }

  itNeeds(['netns', 'curl', 'loop', 'fstools'], 'a plain deploy: unused areas keep their random bytes, the disks verify, swap is recreated with its UUID and the GPT backup moves to the end', async () => {
    const f = fleet!;
    for (let k = 0; k < 2; k++) f.startAgent(k);
    await until(async () => (await f.online()) === 2, 20_000, '2 agents online');
    const d = f.deploy('fs', ['--any', '--clients', '2']);
    expect(await d.exited, d.out).toBe(0);
    expect(d.out).toMatch(/2 of 2 machine\(s\) done and verified/);
    for (let k = 0; k < 2; k++) {
      expectChunks(k, 'random');
      // Not grown: the last partition keeps the image's size.
      expect(expectFinished(k)).toBe(disk.parts[2].size);
    }
  }, LONG);

  itNeeds(['netns', 'curl', 'loop', 'fstools'], 'again with --grow-last --discard: the last ext4 fills the disk and the unused areas read as zeros', async () => {
    const f = fleet!;
    const d = f.deploy('fs', ['--any', '--clients', '2', '--grow-last', '--discard']);
    expect(await d.exited, d.out).toBe(0);
    expect(d.out).toMatch(/2 of 2 machine\(s\) done and verified/);
    for (let k = 0; k < 2; k++) {
      expectChunks(k, 'zeros');
      const size = expectFinished(k);
      expect(size).toBeGreaterThan(disk.parts[2].size + (DISK_MIB - IMAGE_MIB - 1) * MiB);
      const parts = partsNow(f.diskPath(k));
      expect(DISK_MIB * MiB - (parts[2].start + parts[2].size)).toBeLessThan(MiB);
    }
    expect(f.agents.every((a) => /partition 3 grown/.test(a!.out))).toBe(true);
  }, LONG);
});
