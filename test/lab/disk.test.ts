import { afterAll, describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync, readSync, statSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { native } from '../../native/addon.js';
import { Disk } from '../../native/disk.js';
import { mounts } from '../../native/usage.js';
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { Store, parseRef } from '../../server/store/store.js';
import { importImage } from '../../server/store/import.js';
import { exportImage } from '../../server/store/export.js';
import { detachLoops, itNeeds, loopAttach, missing, seeded, tempDir } from '../helpers.js';

afterAll(detachLoops);

const MiB = 1 << 20;

/** Makes the kernel create partition devices for dev (partx works where the kernel has no partition parsers). */
function addPartitions(dev: string): void {
  spawnSync('partx', ['-d', dev]);
  execFileSync('partx', ['-a', dev]);
  for (let i = 0; i < 50 && !existsSync(`${dev}p1`); i++) execFileSync('sleep', ['0.1']);
}

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return (err as NodeJS.ErrnoException).code;
  }
  return undefined;
}

function messageOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    return (err as Error).message;
  }
  return '';
}

describe('native addon', () => {
  const dir = tempDir('native');
  const file = join(dir, 'f.bin');
  writeFileSync(file, seeded(4 * MiB + 1000, 3));
  const n = native();

  it('checks arguments with fixed messages', () => {
    const buf = Buffer.alloc(16);
    expect(messageOf(() => n.read(-1, buf, 0, 1, 0))).toBe('fd must be a non-negative integer');
    expect(codeOf(() => n.read(-1, buf, 0, 1, 0))).toBe('CLONECAST_ERR_NATIVE_ARGUMENT');
    expect(messageOf(() => n.read(0, 'x' as unknown as Buffer, 0, 1, 0))).toBe('buffer must be a Buffer');
    expect(messageOf(() => n.write(0, buf, 8, 9, 0))).toBe('offset and length must lie within the buffer');
    expect(messageOf(() => n.read(0, buf, 0, 1, 1.5))).toBe('position must be a non-negative integer');
    expect(messageOf(() => n.alignedBuffer(0, 4096))).toBe('size must be an integer from 1 to 1 GiB');
    expect(messageOf(() => n.alignedBuffer(4096, 1000))).toBe('alignment must be a power of two from 512 to 1 MiB');
    expect(messageOf(() => (n.open as (...a: unknown[]) => number)(file))).toBe('expected (path, write, direct[, create])');
    expect(messageOf(() => n.open(file, 1 as unknown as boolean, false))).toBe('write must be a boolean');
  });

  it('surfaces errno as an Error with code, errno and syscall', async () => {
    let err: NodeJS.ErrnoException | undefined;
    try {
      n.open(join(dir, 'missing'), false, false);
    } catch (e) {
      err = e as NodeJS.ErrnoException;
    }
    expect(err).toMatchObject({ code: 'ENOENT', errno: -2, syscall: 'open' });
    expect(err!.message).toBe('ENOENT: No such file or directory, open');
    const fd = n.open(file, false, false);
    await expect(n.write(fd, Buffer.alloc(4), 0, 4, 0)).rejects.toMatchObject({ code: 'EBADF', syscall: 'pwrite' });
    n.close(fd);
    const dfd = n.open(file, false, true);
    // O_DIRECT refuses a buffer that is not aligned.
    await expect(n.read(dfd, Buffer.alloc(4096 + 1).subarray(1), 0, 4096, 0)).rejects.toMatchObject({ code: 'EINVAL' });
    n.close(dfd);
  });

  it('gives aligned buffers and does O_DIRECT I/O on a file with a buffered tail', async () => {
    const d = Disk.open(file, { write: true });
    expect(d.direct).toBe(true);
    expect(d.blockDevice).toBe(false);
    expect(d.size).toBe(4 * MiB + 1000);
    const buf = d.allocate(MiB + 1000);
    expect(n.isAligned(buf, 4096)).toBe(true);
    seeded(MiB + 1000, 77).copy(buf);
    await d.write(buf, 3 * MiB); // 1 MiB direct, 1000-byte tail buffered
    await d.flush();
    const back = d.allocate(MiB + 1000);
    expect(await d.read(back, 3 * MiB)).toBe(MiB + 1000);
    expect(back.equals(buf)).toBe(true);
    expect(readFileSync(file).subarray(3 * MiB).equals(buf)).toBe(true);
    d.close();
  });

  it('zeroes a range of a file by punching a hole', async () => {
    const d = Disk.open(file, { write: true });
    const before = statSync(file).blocks;
    await d.zeroRange(MiB, 2 * MiB);
    await d.flush();
    expect(statSync(file).blocks).toBeLessThan(before);
    const data = readFileSync(file);
    expect(data.subarray(MiB, 3 * MiB).every((b) => b === 0)).toBe(true);
    expect(data.subarray(0, MiB).equals(seeded(4 * MiB + 1000, 3).subarray(0, MiB))).toBe(true);
    expect(d.isHole(MiB, 2 * MiB)).toBe(true);
    expect(d.isHole(0, MiB)).toBe(false);
    d.close();
  });
});

describe('loop devices', () => {
  const dir = tempDir('loop');

  itNeeds(['loop'], 'reports size and sector sizes of 512- and 4096-byte loop devices', () => {
    writeFileSync(join(dir, 'a.img'), Buffer.alloc(0));
    execFileSync('truncate', ['-s', '64M', join(dir, 'a.img')]);
    execFileSync('truncate', ['-s', '32M', join(dir, 'b.img')]);
    const a = Disk.open(loopAttach(join(dir, 'a.img')));
    expect(a.blockDevice).toBe(true);
    expect(a.size).toBe(64 * MiB);
    expect(a.logicalSectorSize).toBe(512);
    a.close();
    const b = Disk.open(loopAttach(join(dir, 'b.img'), ['--sector-size', '4096']));
    expect(b.size).toBe(32 * MiB);
    expect(b.logicalSectorSize).toBe(4096);
    expect(b.physicalSectorSize).toBeGreaterThanOrEqual(4096);
    expect(b.alignment).toBe(4096);
    b.close();
  });

  itNeeds(['loop'], 'lands O_DIRECT writes, zeroes with BLKZEROOUT and discards with BLKDISCARD', async () => {
    const backing = join(dir, 'c.img');
    execFileSync('truncate', ['-s', '16M', backing]);
    const dev = loopAttach(backing);
    const d = Disk.open(dev, { write: true });
    expect(d.direct).toBe(true);
    const buf = d.allocate(4 * MiB);
    seeded(4 * MiB, 5).copy(buf);
    await d.write(buf, 8 * MiB);
    await d.flush();
    // Read back through a second O_DIRECT descriptor (no page cache), and through the backing file.
    const r = Disk.open(dev);
    const back = r.allocate(4 * MiB);
    await r.read(back, 8 * MiB);
    expect(back.equals(buf)).toBe(true);
    const fd = openSync(backing, 'r');
    const raw = Buffer.alloc(4 * MiB);
    readSync(fd, raw, 0, raw.length, 8 * MiB);
    closeSync(fd);
    expect(raw.equals(buf)).toBe(true);
    await d.zeroRange(8 * MiB, MiB);
    await d.discard(10 * MiB, MiB);
    await d.flush();
    await r.read(back, 8 * MiB);
    expect(back.subarray(0, MiB).every((b) => b === 0)).toBe(true);
    expect(back.subarray(MiB, 2 * MiB).equals(buf.subarray(MiB, 2 * MiB))).toBe(true);
    expect(back.subarray(2 * MiB, 3 * MiB).every((b) => b === 0)).toBe(true);
    expect(back.subarray(3 * MiB).equals(buf.subarray(3 * MiB))).toBe(true);
    r.close();
    d.close();
  });

  itNeeds(['loop', 'mkfs'], 'refuses to write a mounted loop device unless forced', () => {
    const backing = join(dir, 'm.img');
    execFileSync('truncate', ['-s', '16M', backing]);
    const dev = loopAttach(backing);
    execFileSync('mkfs.ext4', ['-q', dev]);
    const mnt = join(dir, 'mnt');
    mkdirSync(mnt, { recursive: true });
    execFileSync('mount', [dev, mnt]);
    try {
      let err: ClonecastError | undefined;
      try {
        Disk.open(dev, { write: true });
      } catch (e) {
        err = e as ClonecastError;
      }
      expect(err?.code).toBe(ERR.DISK_IN_USE);
      expect(err?.message).toMatch(new RegExp(`${dev.replace('/dev/', '')} is mounted on ${mnt} \\(read-write\\).*Unmount it.*--force`));
      Disk.open(dev).close(); // reading is allowed
      Disk.open(dev, { write: true, force: true }).close();
    } finally {
      execFileSync('umount', [mnt]);
    }
    Disk.open(dev, { write: true }).close();
  });

  itNeeds(['loop', 'mkfs', 'sfdisk'], 'refuses a disk whose partition is mounted', () => {
    const backing = join(dir, 'p.img');
    execFileSync('truncate', ['-s', '32M', backing]);
    const dev = loopAttach(backing, ['-P']);
    execFileSync('sfdisk', ['-q', dev], { input: 'size=8M\n,\n' });
    addPartitions(dev);
    const part = `${dev}p2`;
    for (let i = 0; i < 50 && !existsSync(part); i++) execFileSync('sleep', ['0.1']);
    execFileSync('mkfs.ext4', ['-q', part]);
    const mnt = join(dir, 'pmnt');
    mkdirSync(mnt, { recursive: true });
    execFileSync('mount', [part, mnt]);
    try {
      expect(() => Disk.open(dev, { write: true })).toThrow(new RegExp(`${part.replace('/dev/', '')} is mounted on ${mnt}`));
    } finally {
      execFileSync('umount', [mnt]);
    }
  });

  itNeeds(['root'], 'refuses to write the disk the running system booted from', () => {
    const root = mounts().find((m) => m.mountPoint === '/');
    if (root === undefined || !root.source.startsWith('/dev/') || !statSync(root.source).isBlockDevice()) {
      // A container root (overlay) has no block device to protect; nothing to check here.
      expect(root).toBeDefined();
      return;
    }
    let err: ClonecastError | undefined;
    try {
      Disk.open(root.source, { write: true }).close();
    } catch (e) {
      err = e as ClonecastError;
    }
    expect([ERR.BOOT_DISK, ERR.DISK_IN_USE]).toContain(err?.code);
  });

  itNeeds(['loop', 'mkfs', 'sfdisk'], 'imports a partitioned loop device and exports it to another, byte for byte', async () => {
    const srcFile = join(dir, 'src.img');
    execFileSync('truncate', ['-s', '48M', srcFile]);
    const src = loopAttach(srcFile, ['-P']);
    execFileSync('sfdisk', ['-q', src], { input: 'label: gpt\nsize=4M, type=uefi, name=ESP\nsize=30M, type=linux, name=root\n' });
    addPartitions(src);
    for (let i = 0; i < 50 && !existsSync(`${src}p2`); i++) execFileSync('sleep', ['0.1']);
    execFileSync('mkfs.ext4', ['-q', '-L', 'labroot', `${src}p2`]);
    const mnt = join(dir, 'smnt');
    mkdirSync(mnt, { recursive: true });
    execFileSync('mount', [`${src}p2`, mnt]);
    writeFileSync(join(mnt, 'hello.txt'), 'hello from the lab\n');
    writeFileSync(join(mnt, 'noise.bin'), seeded(5 * MiB, 8));
    execFileSync('umount', [mnt]);

    const store = Store.open(join(dir, 'data'));
    // raw: the comparison below is of every byte, and the target starts full of old data
    // (an export leaves the chunks of a used-block import that no filesystem uses as they are).
    const s = await importImage(store, src, 'lab', { chunkSize: MiB, raw: true });
    expect(s.diskSize).toBe(48 * MiB);
    expect(s.partitionTable.scheme).toBe('gpt');
    expect(s.partitionTable.partitions.map((p) => p.name)).toEqual(['ESP', 'root']);
    expect(s.zeroChunks).toBeGreaterThan(10);
    if (missing(['partclone']).length === 0) {
      // Used-block import of a disk whose partitions the kernel knows: partclone reads the partition's own node.
      const u = await importImage(store, src, 'lab-used', { chunkSize: MiB });
      expect(u.partitions.map((p) => [p.fs, p.method, p.label])).toEqual([[null, 'full', undefined], ['ext4', 'used-blocks', 'labroot']]);
      expect(u.bytesRead).toBeLessThan(s.bytesRead);
    }

    const small = join(dir, 'small.img');
    execFileSync('truncate', ['-s', '40M', small]);
    const tooSmall = loopAttach(small);
    await expect(exportImage(store, parseRef('lab'), tooSmall)).rejects.toMatchObject({ code: ERR.TARGET_TOO_SMALL });

    const dstFile = join(dir, 'dst.img');
    execFileSync('truncate', ['-s', '64M', dstFile]);
    writeFileSync(dstFile, seeded(64 * MiB, 1)); // old contents that must be overwritten, zeros included
    const dst = loopAttach(dstFile, ['-P']);
    const e = await exportImage(store, parseRef('lab'), dst);
    expect(e.kind).toBe('block-device');
    const a = readFileSync(srcFile);
    const b = readFileSync(dstFile);
    // Byte for byte but the protective MBR's size and the primary GPT header (LBA 0 and 1), which now
    // name the device's real end, where the backup moved (docs/operations.md, "Larger and smaller targets").
    expect(b.subarray(0, 446).equals(a.subarray(0, 446))).toBe(true);
    expect(b.subarray(1024, a.length).equals(a.subarray(1024))).toBe(true);
    expect(b.subarray(512, 1024).equals(a.subarray(512, 1024))).toBe(false);
    expect(spawnSync('sgdisk', ['-v', dst], { encoding: 'utf8' }).stdout).toMatch(/No problems found/);
    // The written table is sound and its filesystem is clean. (This kernel has
    // no built-in partition parsers, so partx tells it about the partitions.)
    expect(JSON.parse(execFileSync('sfdisk', ['--json', dst], { encoding: 'utf8' })).partitiontable.partitions).toHaveLength(2);
    addPartitions(dst);
    const fsck = spawnSync('e2fsck', ['-fn', `${dst}p2`], { encoding: 'utf8' });
    expect(fsck.status, fsck.stdout + fsck.stderr).toBe(0);
  });
  itNeeds(['loop'], 'round-trips odd sizes through loop devices: a short last chunk, and an image not a multiple of the sector', async () => {
    const store = Store.open(join(dir, 'data-odd'));
    // A device whose size is not a multiple of the chunk size (last chunk 1536 bytes).
    const srcFile = join(dir, 'odd-src.img');
    const content = Buffer.concat([seeded(3 * MiB, 31), Buffer.alloc(2 * MiB), seeded(5 * MiB + 1536, 32)]);
    writeFileSync(srcFile, content);
    const src = loopAttach(srcFile);
    const s = await importImage(store, src, 'odd', { chunkSize: MiB });
    expect(s.diskSize).toBe(10 * MiB + 1536);
    expect(s.zeroChunks).toBe(2);
    const dstFile = join(dir, 'odd-dst.img');
    writeFileSync(dstFile, seeded(12 * MiB, 33));
    const dst = loopAttach(dstFile);
    await exportImage(store, parseRef('odd'), dst);
    expect(readFileSync(dstFile).subarray(0, content.length).equals(content)).toBe(true);
    // An image file whose size is not a multiple of 512, exported to a device:
    // the unaligned tail goes through the buffered descriptor.
    const rawFile = join(dir, 'odd.raw');
    const raw = Buffer.concat([seeded(MiB + 1000, 34)]);
    writeFileSync(rawFile, raw);
    await importImage(store, rawFile, 'odd-raw', { chunkSize: 64 << 10 });
    await exportImage(store, parseRef('odd-raw'), dst);
    expect(readFileSync(dstFile).subarray(0, raw.length).equals(raw)).toBe(true);
  });
});

describe('image export onto a disk that holds a partition table', () => {
  const dir = tempDir('export-refuse');
  itNeeds(['loop'], 'is refused (exit 6, the disk unchanged) unless --force, through the CLI', async () => {
    const { cli } = await import('../helpers.js');
    const data = join(dir, 'data');
    const src = join(dir, 'src.img');
    writeFileSync(src, seeded(2 << 20, 41));
    expect((await cli(['image', 'import', src, 'img', '--data', data])).code).toBe(0);
    for (const kind of ['MBR', 'GPT'] as const) {
      const file = join(dir, `${kind}.img`);
      const old = seeded(4 << 20, 42);
      if (kind === 'MBR') old.set([0x55, 0xaa], 510);
      else old.write('EFI PART', 512, 'latin1');
      writeFileSync(file, old);
      const dev = loopAttach(file);
      const r = await cli(['image', 'export', 'img', dev, '--data', data]);
      expect(r.code, r.stderr).toBe(6);
      expect(r.stderr).toMatch(new RegExp(`refusing to overwrite ${dev}: it holds an? ${kind} partition table .*add --force`));
      expect(readFileSync(file).equals(old)).toBe(true);
      const forced = await cli(['image', 'export', 'img', dev, '--force', '--data', data]);
      expect(forced.code, forced.stderr).toBe(0);
      expect(readFileSync(file).subarray(0, 2 << 20).equals(readFileSync(src))).toBe(true);
    }
    // A blank disk needs no --force.
    const blank = join(dir, 'blank.img');
    writeFileSync(blank, Buffer.alloc(4 << 20));
    expect((await cli(['image', 'export', 'img', loopAttach(blank), '--data', data])).code).toBe(0);
  });
});
