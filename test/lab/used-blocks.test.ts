/**
 * Used-block imaging on one GPT disk image holding ext4, NTFS, FAT32,
 * exFAT, XFS and btrfs partitions and a swap partition. Each filesystem
 * is filled with random files, most of them deleted (their data stays in
 * free space), and a few more added. Import reads and stores only what
 * the filesystems use; the exported raw disk mounts (or is read with the
 * filesystem's own tools) and every file's SHA-256 equals the source's;
 * a partly used chunk stores zeros in its unused ranges; an ext4 with an
 * unreplayed journal and a hibernated NTFS are read in full, with warnings.
 */
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, openSync, readFileSync, readSync, closeSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { cli, detachLoops, itNeeds, loopAttach, missing, tempDir } from '../helpers.js';
import { Store } from '../../server/store/store.js';
import { chunkAt, ChunkKind, tableLength } from '../../protocol/manifest.js';
import { decodeChunk } from '../../protocol/chunk.js';
import { chunkUse } from '../../protocol/used-map.js';
import { usedMap } from '../../native/used-blocks.js';
import { readPartitionTable } from '../../protocol/partitions.js';

const MiB = 1 << 20;
const NEEDS = ['root', 'loop', 'sgdisk', 'sfdisk', 'mkfs', 'partclone', 'fstools'];
/** Partitions of the disk: filesystem and size in MiB (XFS needs 300, btrfs 109 at least). */
const LAYOUT: [string, number][] = [['ext4', 48], ['ntfs', 48], ['vfat', 48], ['exfat', 48], ['xfs', 300], ['btrfs', 120], ['swap', 16]];
const KEPT_FILES = 2;
const DELETED_FILES = 6;
const FILE_SIZE = 3 * MiB;

function sh(cmd: string, args: string[]): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('used-block imaging of a disk with six filesystems and swap', () => {
  const dir = tempDir('used');
  const disk = join(dir, 'disk.img');
  const data = join(dir, 'data');
  const mounts: string[] = [];
  /** Live files per partition number: name -> SHA-256. */
  const live = new Map<number, Map<string, string>>();
  let deletedBytes = 0;
  let liveBytes = 0;
  const parts: { n: number; fs: string; start: number; size: number }[] = [];

  const mount = (args: string[], at: string) => {
    mkdirSync(at, { recursive: true });
    execFileSync(args[0], [...args.slice(1), at], { stdio: 'ignore' });
    mounts.push(at);
  };
  const umount = (at: string) => {
    spawnSync('umount', [at]);
    mounts.splice(mounts.indexOf(at), 1);
  };

  beforeAll(() => {
    if (missing(NEEDS).length > 0) return;
    execFileSync('truncate', ['-s', `${LAYOUT.reduce((a, [, s]) => a + s, 0) + 4}M`, disk]);
    execFileSync('sgdisk', [...LAYOUT.flatMap(([, s], k) => ['-n', `${k + 1}:0:+${s}M`]), disk], { stdio: 'ignore' });
    const table = JSON.parse(sh('sfdisk', ['-J', disk])).partitiontable;
    for (const [k, [fs]] of LAYOUT.entries()) {
      const p = table.partitions[k];
      parts.push({ n: k + 1, fs, start: p.start * 512, size: p.size * 512 });
    }
    for (const p of parts) {
      const dev = loopAttach(disk, ['-o', String(p.start), '--sizelimit', String(p.size)]);
      const mkfs: Record<string, string[]> = {
        ext4: ['mkfs.ext4', '-q', '-F', dev], ntfs: ['mkntfs', '-Q', '-F', dev], vfat: ['mkfs.vfat', '-F', '32', dev], exfat: ['mkfs.exfat', dev],
        xfs: ['mkfs.xfs', '-q', '-f', dev], btrfs: ['mkfs.btrfs', '-q', '-f', dev], swap: ['mkswap', '-L', 'lab-swap', dev],
      };
      execFileSync(mkfs[p.fs][0], mkfs[p.fs].slice(1), { stdio: 'ignore' });
      if (p.fs === 'swap') continue;
      const files = new Map<string, string>();
      live.set(p.n, files);
      const put = (name: string, content: Buffer, at: string) => {
        if (p.fs === 'vfat') {
          const tmp = join(dir, 'put.tmp');
          writeFileSync(tmp, content);
          execFileSync('mcopy', ['-i', dev, tmp, `::${name}`], { env: { ...process.env, MTOOLS_SKIP_CHECK: '1' }, stdio: 'ignore' });
        } else writeFileSync(join(at, name), content);
      };
      const del = (name: string, at: string) => {
        if (p.fs === 'vfat') execFileSync('mdel', ['-i', dev, `::${name}`], { env: { ...process.env, MTOOLS_SKIP_CHECK: '1' }, stdio: 'ignore' });
        else spawnSync('rm', [join(at, name)]);
      };
      const at = join(dir, `mnt${p.n}`);
      if (p.fs === 'ntfs') mount(['ntfs-3g', dev], at);
      else if (p.fs === 'exfat') mount(['mount.exfat-fuse', dev], at);
      else if (p.fs !== 'vfat') mount(['mount', dev], at);
      for (let i = 0; i < KEPT_FILES + DELETED_FILES; i++) {
        const content = randomBytes(FILE_SIZE);
        put(`f${i}.bin`, content, at);
        if (i < KEPT_FILES) files.set(`f${i}.bin`, sha(content));
      }
      spawnSync('sync');
      for (let i = KEPT_FILES; i < KEPT_FILES + DELETED_FILES; i++) del(`f${i}.bin`, at);
      deletedBytes += DELETED_FILES * FILE_SIZE;
      for (const name of ['late.txt', 'late2.bin']) {
        const content = name.endsWith('.txt') ? Buffer.from(`added after the deletions on ${p.fs}\n`) : randomBytes(200_000);
        put(name, content, at);
        files.set(name, sha(content));
      }
      liveBytes += KEPT_FILES * FILE_SIZE + 200_000;
      if (p.fs !== 'vfat') umount(at);
    }
    detachLoops();
  }, 120_000);

  afterAll(() => {
    for (const at of [...mounts].reverse()) spawnSync('umount', [at]);
    detachLoops();
  });

  itNeeds(NEEDS, 'import stores about the live data, not the deleted data; the exported disk holds every file', async () => {
    const r = await cli(['image', 'import', disk, 'six', '--data', data, '--json']);
    expect(r.code, r.stderr).toBe(0);
    const s = r.json;
    console.log(`used-blocks import: disk ${s.diskSize}, used ${s.usedBytes}, read ${s.bytesRead}, stored ${s.storedBytes}; live files ${liveBytes}, deleted ${deletedBytes}`);
    expect(s.storedBytes).toBeLessThan(deletedBytes / 2);
    expect(s.storedBytes).toBeGreaterThan(liveBytes * 0.9); // the live files (random, incompressible) are all there
    expect(s.bytesRead).toBeLessThan(s.diskSize / 2);
    expect(s.unusedChunks).toBeGreaterThan(0);
    const byFs = new Map<string, any>(s.partitions.map((p: any) => [p.fs, p]));
    for (const fs of ['ext4', 'ntfs', 'vfat', 'exfat', 'xfs', 'btrfs']) expect(byFs.get(fs)?.method, `${fs}: ${byFs.get(fs)?.reason}`).toBe('used-blocks');
    const swap = byFs.get('swap');
    expect(swap).toMatchObject({ method: 'swap', label: 'lab-swap', usedBytes: 0 });
    expect(swap.uuid).toMatch(/^[0-9a-f-]{36}$/);
    expect(s.warnings).toEqual([]);

    const info = await cli(['image', 'info', 'six', '--data', data]);
    expect(info.stdout + info.stderr).toMatch(/used +\d/);
    expect(info.stdout + info.stderr).toMatch(/swap +swap/);

    const out = join(dir, 'exported.img');
    const e = await cli(['image', 'export', 'six', out, '--data', data]);
    expect(e.code, e.stderr).toBe(0);
    for (const p of parts) {
      if (p.fs === 'swap') continue;
      const dev = loopAttach(out, ['-o', String(p.start), '--sizelimit', String(p.size)]);
      const check: Record<string, string[]> = {
        ext4: ['e2fsck', '-fn', dev], ntfs: ['ntfsfix', '-n', dev], vfat: ['fsck.fat', '-n', dev], exfat: ['fsck.exfat', '-n', dev], xfs: ['xfs_repair', '-n', dev], btrfs: ['btrfs', 'check', '--readonly', dev],
      };
      const fsck = spawnSync(check[p.fs][0], check[p.fs].slice(1), { encoding: 'utf8' });
      expect(fsck.status, `${p.fs}: ${fsck.stdout}${fsck.stderr}`).toBe(0);
      const at = join(dir, `check${p.n}`);
      const read = (name: string): Buffer => {
        if (p.fs === 'vfat') return execFileSync('mtype', ['-i', dev, `::${name}`], { env: { ...process.env, MTOOLS_SKIP_CHECK: '1' }, maxBuffer: 64 * MiB, stdio: ['ignore', 'pipe', 'ignore'] });
        return readFileSync(join(at, name));
      };
      if (p.fs === 'ntfs') mount(['ntfs-3g', '-o', 'ro', dev], at);
      else if (p.fs === 'exfat') mount(['mount.exfat-fuse', '-o', 'ro', dev], at);
      else if (p.fs === 'xfs') mount(['mount', '-o', 'ro,norecovery', dev], at);
      else if (p.fs !== 'vfat') mount(['mount', '-o', 'ro', dev], at);
      try {
        for (const [name, want] of live.get(p.n)!) expect(sha(read(name)), `${p.fs} ${name}`).toBe(want);
      } finally {
        if (p.fs !== 'vfat') umount(at);
      }
    }
    detachLoops();
  }, 120_000);

  itNeeds(NEEDS, 'a partly used chunk stores zeros in its unused ranges and the used bytes as they are', async () => {
    const store = Store.open(data);
    const m = await store.readManifest('six', store.versions('six').at(-1)!);
    const head = Buffer.alloc(MiB);
    const fd = openSync(disk, 'r');
    try {
      readSync(fd, head, 0, MiB, 0);
      const table = await readPartitionTable(head, 512, async (lba) => {
        const b = Buffer.alloc(512);
        readSync(fd, b, 0, 512, lba * 512);
        return b;
      });
      const map = await usedMap(disk, m.meta.diskSize, table);
      let checked = 0;
      const src = Buffer.alloc(m.meta.chunkSize);
      for (let i = 0; i < tableLength(m.table) && checked < 8; i++) {
        const use = chunkUse(map.used, i * m.meta.chunkSize, m.meta.chunkSize);
        if (use.use !== 'partial') continue;
        readSync(fd, src, 0, src.length, i * m.meta.chunkSize);
        // Only a chunk whose unused ranges hold non-zero bytes on the source proves anything.
        const keep = new Uint8Array(src.length);
        for (const [o, n] of use.keep) keep.fill(1, o, o + n);
        if (!src.some((b, k) => b !== 0 && keep[k] === 0)) continue;
        const r = chunkAt(m.table, i);
        if (r.kind === ChunkKind.ZERO) {
          // Its used bytes were all zeros: once the unused ones are zeroed it is a zero chunk, as it should be.
          expect(src.every((b, k) => keep[k] === 0 || b === 0)).toBe(true);
          continue;
        }
        expect(r.kind).toBe(ChunkKind.DATA);
        const { raw } = decodeChunk(await store.readChunk(r.sha256), `chunk ${i}`);
        for (let k = 0; k < raw.length; k++) {
          if (keep[k] === 1 ? raw[k] !== src[k] : raw[k] !== 0) throw new Error(`chunk ${i} byte ${k}: stored ${raw[k]}, source ${src[k]}, ${keep[k] ? 'used' : 'unused'}`);
        }
        checked++;
      }
      expect(checked, 'partly used chunks with deleted data in their unused ranges').toBeGreaterThan(0);
    } finally {
      closeSync(fd);
    }
  }, 60_000);

  itNeeds(NEEDS, 'an ext4 with an unreplayed journal and a hibernated NTFS are read in full, with the cause and the fix', async () => {
    const dirty = join(dir, 'dirty.img');
    execFileSync('truncate', ['-s', '72M', dirty]);
    execFileSync('sgdisk', ['-n', '1:0:+32M', '-n', '2:0:+32M', dirty], { stdio: 'ignore' });
    const table = JSON.parse(sh('sfdisk', ['-J', dirty])).partitiontable.partitions;
    const ext = loopAttach(dirty, ['-o', String(table[0].start * 512), '--sizelimit', String(table[0].size * 512)]);
    execFileSync('mkfs.ext4', ['-q', '-F', ext]);
    // The superblock flag a crash leaves behind: the journal holds changes not yet written.
    execFileSync('debugfs', ['-w', '-R', 'feature needs_recovery', ext], { stdio: 'ignore' });
    const ntfs = loopAttach(dirty, ['-o', String(table[1].start * 512), '--sizelimit', String(table[1].size * 512)]);
    execFileSync('mkntfs', ['-Q', '-F', ntfs], { stdio: 'ignore' });
    const at = join(dir, 'hib');
    mount(['ntfs-3g', ntfs], at);
    // What Windows leaves when it hibernates or shuts down with Fast Startup: hiberfil.sys starting "HIBR".
    writeFileSync(join(at, 'hiberfil.sys'), Buffer.concat([Buffer.from('HIBR'), Buffer.alloc(65532)]));
    umount(at);
    detachLoops();

    const r = await cli(['image', 'import', dirty, 'dirty', '--data', data]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/warning: partition 1 \(ext4\) is read in full: .*needs_recovery.*boot the source and shut it down fully/);
    expect(r.stderr).toMatch(/warning: partition 2 \(ntfs\) is read in full: Windows is hibernated or was shut down with Fast Startup.*shut it down fully/);
    const info = (await cli(['image', 'info', 'dirty', '--data', data, '--json'])).json;
    expect(info.meta.partitions.map((p: any) => [p.fs, p.method])).toEqual([['ext4', 'full'], ['ntfs', 'full']]);
    expect(info.meta.partitions[0].usedBytes).toBe(table[0].size * 512);
  }, 60_000);

  itNeeds(NEEDS, 'a malformed partclone map makes that partition read in full, with a warning', async () => {
    // A partclone.extfs that writes a map reaching past its partition, first on PATH.
    const bin = join(dir, 'fakebin');
    mkdirSync(bin, { recursive: true });
    const fake = join(bin, 'partclone.extfs');
    writeFileSync(fake, '#!/bin/sh\nwhile [ $# -gt 0 ]; do [ "$1" = -O ] && out=$2; shift; done\nprintf "# map\\n0x0 ?\\n0x0 0xFFFFFFFFFFF +\\n" > "$out"\n', { mode: 0o755 });
    const r = await cli(['image', 'import', disk, 'sixbadmap', '--data', data, '--json'], { PATH: `${bin}:${process.env.PATH}` });
    expect(r.code, r.stderr).toBe(0);
    const ext4 = r.json.partitions.find((p: any) => p.fs === 'ext4');
    expect(ext4).toMatchObject({ method: 'full' });
    expect(ext4.reason).toMatch(/partclone.extfs's map is malformed/);
    expect(r.stderr).toMatch(/warning: partition 1 \(ext4\) is read in full: partclone.extfs's map is malformed/);
    expect(r.json.partitions.find((p: any) => p.fs === 'xfs').method).toBe('used-blocks');
  }, 60_000);

  itNeeds(NEEDS, '--raw reads every byte and records no map', async () => {
    const r = await cli(['image', 'import', disk, 'sixraw', '--raw', '--data', data, '--json']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.json.unusedChunks).toBe(0);
    expect(r.json.partitions).toEqual([]);
    expect(r.json.storedBytes).toBeGreaterThan(deletedBytes);
  }, 60_000);
});
