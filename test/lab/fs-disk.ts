/**
 * Test disks with real filesystems for the restore tests: a GPT disk image
 * with a small ext4 (partition 1), a swap partition (2, with a known UUID and
 * label) and a last partition holding the filesystem under test (3). Also
 * what used-block imaging would make of it (until import does so itself):
 * the chunks no filesystem uses turned unused from partclone's map-only mode,
 * the swap partition unused, and meta.partitions filled in.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chunkAt, ChunkKind, setChunk, tableLength, type PartitionRead } from '../../protocol/manifest.js';
import type { Store } from '../../server/store/store.js';
import { loopAttach, seeded } from '../helpers.js';

export const MiB = 1 << 20;
export const SWAP_UUID = '5a1e0c1d-0000-4000-8000-00000000c0de';
export const SWAP_LABEL = 'ccswap';

/** A partition of a test disk, in bytes. */
export interface TestPart {
  number: number;
  start: number;
  size: number;
  fs: string;
}

/** A test disk and what it holds. */
export interface FsDisk {
  file: string;
  size: number;
  parts: TestPart[];
  /** SHA-256 of /data.bin in partition 1 and 3 (ext4 ones only). */
  files: Record<number, string>;
}

const sh = (cmd: string, args: string[], input?: string) => execFileSync(cmd, args, { encoding: 'utf8', input, stdio: ['pipe', 'pipe', 'pipe'] });

/** Makes a GPT disk of sizeMiB: 8 MiB ext4, 8 MiB swap, the rest `last`. Needs root and loop devices. */
export function makeFsDisk(file: string, sizeMiB: number, last: 'ext4' | 'ntfs' | 'xfs' | 'btrfs' | 'vfat'): FsDisk {
  writeFileSync(file, Buffer.alloc(0));
  sh('truncate', ['-s', `${sizeMiB}M`, file]);
  sh('sgdisk', ['-n1:1M:+8M', '-t1:8300', '-n2:0:+8M', '-t2:8200', '-n3:0:0', '-t3:0700', '-c3:last', file]);
  const table = JSON.parse(sh('sfdisk', ['--json', file])) as { partitiontable: { partitions: { start: number; size: number }[] } };
  const fsOf = ['ext4', 'swap', last];
  const parts = table.partitiontable.partitions.map((p, k) => ({ number: k + 1, start: p.start * 512, size: p.size * 512, fs: fsOf[k] }));
  const files: Record<number, string> = {};
  for (const p of parts) {
    const dev = loopAttach(file, ['-o', String(p.start), '--sizelimit', String(p.size)]);
    if (p.fs === 'swap') sh('mkswap', ['-U', SWAP_UUID, '-L', SWAP_LABEL, dev]);
    else if (p.fs === 'ext4') sh('mkfs.ext4', ['-q', '-F', '-L', `p${p.number}`, dev]);
    else if (p.fs === 'ntfs') sh('mkntfs', ['-q', '-f', '-F', '-L', 'p3', dev]);
    else if (p.fs === 'xfs') sh('mkfs.xfs', ['-q', '-f', '-L', 'p3', dev]);
    else if (p.fs === 'vfat') sh('mkfs.vfat', ['-F', '32', '-n', 'P3', dev]);
    else sh('mkfs.btrfs', ['-q', '-f', '-L', 'p3', dev]);
    if (p.fs === 'ext4') {
      // Written with debugfs: no mount, so no page cache left between this file and the loop device.
      const data = seeded(3 * MiB + 12345, p.number);
      const tmp = join(tmpdir(), `cc-fsdisk-${process.pid}-${p.number}.bin`);
      writeFileSync(tmp, data);
      sh('debugfs', ['-w', '-R', `write ${tmp} data.bin`, dev]);
      files[p.number] = createHash('sha256').update(data).digest('hex');
    }
    sh('losetup', ['-d', dev]);
  }
  return { file, size: sizeMiB * MiB, parts, files };
}

/** Used ranges of an ext4 partition (disk offsets), from partclone's map-only mode. */
function usedRanges(file: string, p: TestPart): [number, number][] {
  const dev = loopAttach(file, ['-o', String(p.start), '--sizelimit', String(p.size)]);
  const dir = mkdtempSync(join(tmpdir(), 'cc-map-'));
  try {
    sh('partclone.extfs', ['-D', '-s', dev, '-o', join(dir, 'map'), '-q']);
    const out: [number, number][] = [];
    for (const line of readFileSync(join(dir, 'map'), 'utf8').split('\n')) {
      const m = /^0x([0-9A-Fa-f]+)\s+0x([0-9A-Fa-f]+)\s+\+/.exec(line);
      if (m) out.push([p.start + parseInt(m[1], 16), p.start + parseInt(m[1], 16) + parseInt(m[2], 16)]);
    }
    return out;
  } finally {
    sh('losetup', ['-d', dev]);
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Rewrites version `version` of image `name` (imported from disk) as used-block imaging makes it:
 * chunks inside ext4 partitions that no used range touches (outside their first and last MiB) and
 * every chunk of the swap partition become unused; meta.partitions and usedBytes are set.
 * Returns the indexes of the unused chunks.
 */
export async function markUnused(store: Store, name: string, version: number, disk: FsDisk): Promise<number[]> {
  const m = await store.readManifest(name, version);
  const c = m.meta.chunkSize;
  const unused: number[] = [];
  const partitions: PartitionRead[] = [];
  for (const p of disk.parts) {
    const index = m.meta.partitionTable.partitions.findIndex((q) => q.start === p.start);
    if (p.fs === 'swap') {
      partitions.push({ index, start: p.start, length: p.size, fs: 'swap', method: 'swap', reason: 'swap is recreated on restore', usedBytes: 0, uuid: SWAP_UUID, label: SWAP_LABEL });
      for (let i = Math.ceil(p.start / c); (i + 1) * c <= p.start + p.size; i++) unused.push(i);
    } else if (p.fs === 'ext4') {
      const used = usedRanges(disk.file, p);
      partitions.push({ index, start: p.start, length: p.size, fs: 'ext4', method: 'used-blocks', reason: 'partclone map', usedBytes: used.reduce((n, [a, b]) => n + b - a, 0) });
      for (let i = Math.ceil((p.start + MiB) / c); (i + 1) * c <= p.start + p.size - MiB; i++) {
        if (!used.some(([a, b]) => a < (i + 1) * c && b > i * c)) unused.push(i);
      }
    } else {
      partitions.push({ index, start: p.start, length: p.size, fs: p.fs, method: 'full', reason: 'read in full', usedBytes: p.size });
    }
  }
  for (const i of unused) setChunk(m.table, i, { kind: ChunkKind.UNUSED, compression: 0, storedLength: 0, xxh64: 0n, sha256: Buffer.alloc(32) });
  m.meta.partitions = partitions;
  let usedBytes = 0;
  for (let i = 0; i < tableLength(m.table); i++) if (chunkAt(m.table, i).kind !== ChunkKind.UNUSED) usedBytes += Math.min(c, m.meta.diskSize - i * c);
  m.meta.usedBytes = usedBytes;
  store.replaceManifest(m);
  return unused;
}

/** Runs fn with a loop device over partition p of file (detached afterwards). */
export function onPart<T>(file: string, p: { start: number; size: number }, fn: (dev: string) => T): T {
  const dev = sh('losetup', ['-f', '--show', '-o', String(p.start), '--sizelimit', String(p.size), file]).trim();
  try {
    return fn(dev);
  } finally {
    sh('losetup', ['-d', dev]);
  }
}

/** Runs a checking tool; returns its exit code and output (a failing check is a result, not an exception). */
export function check(cmd: string, args: string[]): { code: number; out: string } {
  try {
    return { code: 0, out: sh(cmd, args) };
  } catch (err) {
    const e = err as { status: number; stdout: string; stderr: string };
    return { code: e.status, out: `${e.stdout}${e.stderr}` };
  }
}

/** The table of a disk file as sfdisk reads it now: partitions in bytes. */
export function partsNow(file: string): { start: number; size: number }[] {
  const t = JSON.parse(sh('sfdisk', ['--json', file])) as { partitiontable: { partitions: { start: number; size: number }[] } };
  return t.partitiontable.partitions.map((p) => ({ start: p.start * 512, size: p.size * 512 }));
}

/** blkid's value of tag (UUID, TYPE, LABEL) for dev. */
export function blkid(dev: string, tag: string): string {
  return check('blkid', ['-p', '-o', 'value', '-s', tag, dev]).out.trim();
}

/** SHA-256 of /data.bin in the ext4 on dev (read with debugfs, no mount). */
export function ext4FileSha(dev: string): string {
  const out = execFileSync('debugfs', ['-R', 'cat data.bin', dev], { stdio: ['ignore', 'pipe', 'ignore'], maxBuffer: 64 * MiB });
  return createHash('sha256').update(out).digest('hex');
}
