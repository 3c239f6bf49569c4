/**
 * What --grow-last must not do (docs/operations.md, "Larger and smaller
 * targets"): resize a filesystem that was not cleanly shut down (a
 * hibernated Windows resuming over a resized NTFS corrupts it; an ext4
 * journal not replayed), or trust the image's record of which filesystem a
 * partition holds (the record comes from whoever made the image, and on the
 * server it chose whether the kernel mounts it). And Ctrl-C during an
 * import leaves no loop device behind.
 */
import { afterAll, describe, expect } from 'vitest';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { importImage } from '../../server/store/import.js';
import { Store } from '../../server/store/store.js';
import { finishDisk } from '../../native/disk-finish.js';
import { uncleanReason } from '../../native/fs-tools.js';
import { CLI, cli, detachLoops, itNeeds, loopAttach, ROOT, tempDir } from '../helpers.js';
import { check, makeFsDisk, MiB, onPart, partsNow } from './fs-disk.js';

const LONG = 120_000;

/** Loop devices over file (losetup -j), one line each. */
function loopsOver(file: string): string[] {
  return execFileSync('losetup', ['-j', file], { encoding: 'utf8' }).split('\n').filter((l) => l.trim() !== '');
}

describe('grow-last refuses what it must not grow', () => {
  const dir = tempDir('growsafe');
  const data = join(dir, 'data');
  afterAll(() => detachLoops());

  itNeeds(['loop', 'fstools', 'naming'], 'a hibernated NTFS (hiberfil.sys active) is not resized: the partition keeps its size, with the reason', async () => {
    const disk = makeFsDisk(join(dir, 'hib.img'), 40, 'ntfs');
    const p3 = disk.parts[2];
    const dev = loopAttach(disk.file, ['-o', String(p3.start), '--sizelimit', String(p3.size)]);
    const at = join(dir, 'hibmnt');
    mkdirSync(at);
    execFileSync('ntfs-3g', [dev, at]);
    // What Windows leaves when it hibernates or shuts down with Fast Startup: hiberfil.sys starting "HIBR".
    writeFileSync(join(at, 'hiberfil.sys'), Buffer.concat([Buffer.from('HIBR'), Buffer.alloc(65532)]));
    spawnSync('umount', [at]);
    detachLoops();
    await importImage(Store.open(data), disk.file, 'hib', {});
    const out = join(dir, 'hib-grown.img');
    const r = await cli(['image', 'export', 'hib', out, '--grow-last', '--size', String(64 * MiB), '--data', data]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/warning: the last partition \(3\) keeps its size: its ntfs filesystem was not cleanly shut down.*Windows is hibernated.*grow the partition after a full shutdown/);
    const parts = partsNow(out);
    expect(parts[2].size).toBe(p3.size);
    expect(check('sgdisk', ['-v', out]).out).toMatch(/No problems found/);
    onPart(out, parts[2], (d) => {
      const size = Number(/Current volume size: (\d+) bytes/.exec(check('ntfsresize', ['--info', '--force', '--no-progress-bar', d]).out)![1]);
      expect(size).toBeLessThanOrEqual(p3.size);
      expect(execFileSync('ntfscat', [d, 'hiberfil.sys']).subarray(0, 4).toString()).toBe('HIBR');
    });
  }, LONG);

  itNeeds(['loop', 'fstools'], 'an ext4 whose journal was not replayed (needs_recovery) is not resized', async () => {
    const disk = makeFsDisk(join(dir, 'dirty.img'), 40, 'ext4');
    const p3 = disk.parts[2];
    onPart(disk.file, p3, (d) => execFileSync('debugfs', ['-w', '-R', 'feature needs_recovery', d], { stdio: 'ignore' }));
    await importImage(Store.open(data), disk.file, 'dirty', {});
    const out = join(dir, 'dirty-grown.img');
    const r = await cli(['image', 'export', 'dirty', out, '--grow-last', '--size', String(64 * MiB), '--data', data]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/warning: the last partition \(3\) keeps its size: its ext4 filesystem was not cleanly shut down.*needs_recovery/);
    expect(partsNow(out)[2].size).toBe(p3.size);
    onPart(out, p3, (d) => expect(check('dumpe2fs', ['-h', d]).out).toMatch(/needs_recovery/));
  }, LONG);

  itNeeds(['loop', 'fstools'], 'the filesystem is named by blkid on the disk, not by the image record: an ext4 recorded as xfs is grown as ext4, never mounted', async () => {
    const disk = makeFsDisk(join(dir, 'lie.img'), 40, 'ext4');
    const store = Store.open(data);
    await importImage(store, disk.file, 'lie', {});
    const meta = (await store.readManifest('lie', 1)).meta;
    const k = meta.partitionTable.partitions.findIndex((p) => p.start === disk.parts[2].start);
    meta.partitions = [{ index: k, start: disk.parts[2].start, length: disk.parts[2].size, fs: 'xfs', method: 'full', reason: 'read in full', usedBytes: disk.parts[2].size }];
    const target = join(dir, 'lie-target.img');
    copyFileSync(disk.file, target);
    truncateSync(target, 64 * MiB);
    // As the server's export runs it: no mounts. Trusting the record, it mounted the partition as XFS.
    const report = await finishDisk(target, 64 * MiB, meta, { growLast: true });
    expect(report.grown).toMatchObject({ number: 3, fs: 'ext4', fsGrown: true });
    onPart(target, partsNow(target)[2], (d) => expect(check('e2fsck', ['-fn', d]).code).toBe(0));
  }, LONG);
});

/**
 * A restart page of $LogFile as Windows writes it (two of them, at 0 and at the system page size):
 * the restart area at 0x30 with its current LSN, the client-in-use list and the flags.
 */
function restartPage(lsn: bigint, clientInUse: number, flags: number): Buffer {
  const page = Buffer.alloc(4096);
  page.write('RSTR', 0, 'latin1');
  page.writeUInt16LE(0x1e, 0x04); // update sequence array offset
  page.writeUInt16LE(9, 0x06); // its count: 1 + 4096 / 512
  page.writeUInt32LE(4096, 0x10); // system page size
  page.writeUInt32LE(4096, 0x14); // log page size
  page.writeUInt16LE(0x30, 0x18); // restart area offset
  page.writeInt16LE(1, 0x1a);
  page.writeInt16LE(1, 0x1c);
  page.writeBigUInt64LE(lsn, 0x30); // current LSN
  page.writeUInt16LE(1, 0x38); // log clients
  page.writeUInt16LE(0xffff, 0x3a); // client free list
  page.writeUInt16LE(clientInUse, 0x3c);
  page.writeUInt16LE(flags, 0x3e);
  return page;
}

describe('an NTFS whose $LogFile was not replayed', () => {
  const dir = tempDir('logfile');

  itNeeds(['fstools'], 'counts as unclean (the check import and --grow-last share); a closed or empty $LogFile is clean', async () => {
    const vol = join(dir, 'ntfs.img');
    execFileSync('truncate', ['-s', '16M', vol]);
    execFileSync('mkntfs', ['-q', '-F', '-f', vol], { stdio: 'ignore' });
    // mkntfs leaves $LogFile empty (all 0xFF): clean.
    expect(await uncleanReason('ntfs', vol)).toBeNull();
    const cluster = Number(/Cluster Size:\s*(\d+)/.exec(execFileSync('ntfsinfo', ['-m', vol], { encoding: 'utf8' }))![1]);
    const lcn = Number.parseInt(/^\s*0x0\s+0x([0-9a-f]+)\s+0x[0-9a-f]+\s*$/im.exec(execFileSync('ntfsinfo', ['-i', '2', '-v', vol], { encoding: 'utf8' }))![1], 16);
    const write = (pages: Buffer) => execFileSync('dd', [`of=${vol}`, 'bs=4096', `seek=${(lcn * cluster) / 4096}`, 'conv=notrunc', 'status=none'], { input: pages });
    // What Windows leaves after a crash: the newer restart area (LSN 20) lists client 0 in use, not clean.
    write(Buffer.concat([restartPage(10n, 0xffff, 0), restartPage(20n, 0, 0)]));
    expect(await uncleanReason('ntfs', vol)).toMatch(/\$LogFile holds changes not yet replayed.*shut it down fully/);
    // After a clean shutdown: no client in use, or the volume-is-clean flag set.
    write(Buffer.concat([restartPage(10n, 0, 0), restartPage(20n, 0xffff, 0)]));
    expect(await uncleanReason('ntfs', vol)).toBeNull();
    write(Buffer.concat([restartPage(30n, 0, 2), restartPage(20n, 0, 0)]));
    expect(await uncleanReason('ntfs', vol)).toBeNull();
    // Neither an empty journal nor a restart page: damaged.
    write(Buffer.alloc(8192, 0x41));
    expect(await uncleanReason('ntfs', vol)).toMatch(/no restart page/);
  });
});

describe('Ctrl-C during an import', () => {
  const dir = tempDir('sigint');
  afterAll(() => detachLoops());

  for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
    itNeeds(['loop', 'fstools'], `leaves no loop device over the source behind (${signal})`, async () => {
      const disk = makeFsDisk(join(dir, `src-${signal}.img`), 40, 'ext4');
      // A partclone.extfs that says it started, then waits: the import holds its loop devices meanwhile.
      const bin = join(dir, `bin-${signal}`);
      mkdirSync(bin);
      const started = join(dir, `started-${signal}`);
      writeFileSync(join(bin, 'partclone.extfs'), `#!/bin/sh\ntouch '${started}'\nexec sleep 600\n`, { mode: 0o755 });
      const child = spawn(process.execPath, [CLI, 'image', 'import', disk.file, 'src', '--data', join(dir, `data-${signal}`)], {
        env: { ...process.env, PATH: `${bin}:${process.env.PATH}` },
        detached: true,
        stdio: 'ignore',
      });
      const exited = new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
      try {
        while (!existsSync(started)) await new Promise((r) => setTimeout(r, 50));
        expect(loopsOver(disk.file).length).toBeGreaterThan(0);
        // SIGTERM (kill, timeout, a service stop) ends Node without an exit event unless something handles it.
        child.kill(signal);
        expect(await exited).toBe(code);
        expect(loopsOver(disk.file)).toEqual([]);
      } finally {
        // The waiting tools are in the import's process group.
        try {
          process.kill(-child.pid!, 'SIGKILL');
        } catch {
          // already gone
        }
        for (const l of loopsOver(disk.file)) spawnSync('losetup', ['-d', l.split(':')[0]]);
      }
    }, LONG);
  }

  itNeeds(['loop'], 'a finishing step ended by process.exit (what Ctrl-C does) leaves no loop device or mount behind', async () => {
    const file = join(dir, 'finish.img');
    execFileSync('truncate', ['-s', '8M', file]);
    execFileSync('mkfs.ext4', ['-q', '-F', file]);
    // The compiled module, as the CLI runs it: a loop device and a mount held when the process exits.
    const script = `
      const { withLoop } = await import(${JSON.stringify(join(ROOT, 'dist', 'native', 'disk-finish.js'))});
      const { trackMount } = await import(${JSON.stringify(join(ROOT, 'dist', 'native', 'cleanup.js'))});
      const { execFileSync } = await import('node:child_process');
      const { mkdtempSync } = await import('node:fs');
      await withLoop(${JSON.stringify(file)}, 0, ${8 * MiB}, async (dev) => {
        const at = mkdtempSync('/tmp/clonecast-grow-');
        execFileSync('mount', ['-o', 'ro', dev, at]);
        trackMount(at);
        console.log(at);
        process.exit(130);
      });`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(130);
    const at = r.stdout.trim();
    expect(at).toMatch(/^\/tmp\/clonecast-grow-/);
    expect(readFileSync('/proc/mounts', 'utf8')).not.toContain(at);
    expect(existsSync(at)).toBe(false);
    expect(loopsOver(file)).toEqual([]);
  }, LONG);
});
