/**
 * What is done to a disk after an image was written and verified, with the
 * system's own tools (shared by the agent's deploy and the server's export):
 *
 * - on a target larger than the image, the GPT backup header and entries move
 *   to the real end of the disk (sfdisk --relocate gpt-bak-std);
 * - with growLast, the last partition grows to the end of the disk (sfdisk -N,
 *   which keeps its type, GUID, name and attributes) and its filesystem with
 *   the filesystem's own tool: resize2fs, ntfsresize, xfs_growfs and
 *   `btrfs filesystem resize max` (those two on a temporary mount, nodev,
 *   nosuid, noexec). The filesystem is named by blkid on the disk, never by
 *   the image's record. A filesystem that was not cleanly shut down (a
 *   hibernated or Fast Startup Windows, a dirty NTFS, an ext4 journal or XFS
 *   log not replayed, a btrfs log tree) is not grown: the system that
 *   resumes would find its volume changed under it. XFS and btrfs grow only
 *   where mayMount is set (the agent, on the target machine): the server's
 *   export never mounts a filesystem from an image in its own kernel. FAT
 *   and exFAT have no grow tool here. A partition that is not grown keeps
 *   its size, with a warning that says why;
 * - every swap partition the image recorded (method 'swap') is recreated with
 *   `mkswap -U UUID -L LABEL`, as Clonezilla does.
 *
 * Partitions are reached through a loop device over their byte range of the
 * target (losetup -o/--sizelimit), for devices and image files alike: it
 * needs no partition device nodes (a loop device has none here).
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ClonecastError, ERR } from '../protocol/errors.js';
import type { ManifestMeta, PartitionRead } from '../protocol/manifest.js';
import type { Partition } from '../protocol/partitions.js';
import { trackLoop, trackMount, untrackLoop, untrackMount } from './cleanup.js';
import { uncleanReason } from './fs-tools.js';

/** What to do after the write. */
export interface FinishOptions {
  /** Grow the last partition and its filesystem to the end of the target. */
  growLast?: boolean;
  /**
   * XFS and btrfs grow only while mounted: set on the target machine (the agent), never on the
   * server, where the kernel would parse a filesystem someone else made.
   */
  mayMount?: boolean;
  log?: (level: 'info' | 'warn', message: string) => void;
}

/** What was done. */
export interface FinishReport {
  /** The GPT backup was moved to the end of a larger target. */
  relocatedGpt: boolean;
  /** The last partition's number and new size in bytes, when it was grown. */
  grown?: { number: number; size: number; fs: string | null; fsGrown: boolean };
  /** Why the last partition was not grown though growLast asked for it. */
  notGrown?: string;
  /** Swap partitions recreated (their UUIDs). */
  swaps: string[];
}

/** Filesystems whose own tool grows them, by blkid TYPE. */
export const GROWABLE = Object.freeze(['ext2', 'ext3', 'ext4', 'ntfs', 'xfs', 'btrfs'] as const);

/**
 * Every tool this module runs: the boot environment carries them (pxe/bootenv-tools.ts). The cleanliness
 * check before a grow (fs-tools.ts: dumpe2fs, ntfscat, ntfsinfo, xfs_logprint, btrfs) uses capture's tools, also carried.
 */
export const FINISH_TOOLS = Object.freeze(['sfdisk', 'losetup', 'blkid', 'mkswap', 'mount', 'umount', 'e2fsck', 'resize2fs', 'ntfsresize', 'xfs_growfs', 'btrfs'] as const);

/**
 * The full path of a system tool: /usr/sbin and /usr/bin first, so that in the boot environment, where
 * busybox's applets come first on PATH, the real util-linux tools run (busybox's mkswap has no -U).
 */
export function toolPath(cmd: string): string {
  for (const d of ['/usr/sbin', '/usr/bin', '/sbin', '/bin']) if (existsSync(join(d, cmd))) return join(d, cmd);
  return cmd;
}

/** Runs a tool; resolves with its stdout, or rejects with what it said. */
export function tool(cmd: string, args: string[], input?: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const p = spawn(toolPath(cmd), args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('error', (e: NodeJS.ErrnoException) =>
      reject(new ClonecastError(ERR.NOT_FOUND, e.code === 'ENOENT' ? `${cmd} is not installed; install it (util-linux, e2fsprogs, ntfs-3g, xfsprogs or btrfs-progs)` : `${cmd}: ${e.message}`)),
    );
    p.on('close', (code) => {
      if (code === 0) resolve(out);
      else reject(new ClonecastError(ERR.WRITE_ERROR, `${cmd} ${args.join(' ')} failed (exit ${code}): ${(err || out).trim().split('\n').slice(-3).join(' / ')}`));
    });
    p.stdin.on('error', () => undefined); // a tool that does not read its input
    p.stdin.end(input ?? '');
  });
}

/** Runs fn with a loop device over bytes [offset, offset+length) of target, detached afterwards. */
export async function withLoop<T>(target: string, offset: number, length: number, fn: (dev: string) => Promise<T>): Promise<T> {
  const dev = (await tool('losetup', ['-f', '--show', '-o', String(offset), '--sizelimit', String(length), target])).trim();
  // Detached at exit too: Ctrl-C ends the CLI with process.exit, and the finally below would never run.
  trackLoop(dev);
  try {
    return await fn(dev);
  } finally {
    await tool('losetup', ['-d', dev]).catch(() => undefined);
    untrackLoop(dev);
  }
}

/** Runs fn with dev mounted on a temporary folder, unmounted afterwards. */
async function withMount<T>(dev: string, fs: string, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'clonecast-grow-'));
  trackMount(dir);
  try {
    // Nothing on it is to be used: no device nodes, no set-user-ID programs, nothing run.
    await tool('mount', ['-t', fs, '-o', 'nodev,nosuid,noexec', dev, dir]);
    try {
      return await fn(dir);
    } finally {
      await tool('umount', [dir]);
    }
  } finally {
    rmdirSync(dir);
    untrackMount(dir);
  }
}

/** The partition that ends last on the disk, or undefined for a disk without partitions. */
export function lastPartition(partitions: Partition[]): Partition | undefined {
  let last: Partition | undefined;
  for (const p of partitions) if (last === undefined || p.start + p.size > last.start + last.size) last = p;
  return last;
}

/** Grows the filesystem on dev (blkid type fs) to the size of dev; false if fs has no grow tool. */
export async function growFilesystem(dev: string, fs: string | null): Promise<boolean> {
  switch (fs) {
    case 'ext2':
    case 'ext3':
    case 'ext4':
      // resize2fs wants a freshly checked filesystem; -p repairs only what is safe (exit 1 or 2: fixed; 4 and up: not).
      await tool('e2fsck', ['-f', '-p', dev]).catch((err: ClonecastError) => {
        if (!/\(exit [12]\)/.test(err.message)) throw err;
      });
      await tool('resize2fs', [dev]);
      return true;
    case 'ntfs':
      // No --force: ntfsresize itself refuses a volume marked dirty or scheduled for chkdsk.
      await tool('ntfsresize', ['--no-progress-bar', dev], 'y\n');
      return true;
    case 'xfs':
      await withMount(dev, 'xfs', (dir) => tool('xfs_growfs', [dir]));
      return true;
    case 'btrfs':
      await withMount(dev, 'btrfs', (dir) => tool('btrfs', ['filesystem', 'resize', 'max', dir]));
      return true;
    default:
      return false;
  }
}

/** The blkid TYPE of what dev holds, or null. */
export async function probeType(dev: string): Promise<string | null> {
  const out = await tool('blkid', ['-p', '-o', 'value', '-s', 'TYPE', dev]).catch(() => '');
  return out.trim() || null;
}

/**
 * Finishes a verified write of an image with metadata meta on target (a device or an image file of
 * targetSize bytes): moves the GPT backup, grows the last partition if asked, recreates swap.
 */
export async function finishDisk(target: string, targetSize: number, meta: ManifestMeta, options: FinishOptions = {}): Promise<FinishReport> {
  const report: FinishReport = { relocatedGpt: false, swaps: [] };
  const table = meta.partitionTable;
  const swaps = swapEntries(meta);
  const larger = targetSize > meta.diskSize;
  const last = lastPartition(table.partitions);
  let grownLength: number | undefined;
  if (options.growLast === true && larger && last !== undefined) {
    if (table.scheme === 'mbr' && last.number > 4) throw new ClonecastError(ERR.PARTITION_TABLE, `the last partition of ${target} is logical partition ${last.number}; --grow-last grows only a primary partition: grow the extended one with a partition editor`);
    const record = meta.partitions?.find((p) => p.start === last.start);
    // Swap is not copied (its bytes on the target are whatever was there): the checked record names it.
    // Anything else is named by what is on the disk now, not by the image's record, which its maker wrote.
    const fs = record?.method === 'swap' && swaps.some((p) => p.start === last.start) ? 'swap' : await withLoop(target, last.start, last.size, probeType);
    const refused = await growRefusal(target, last, fs, options.mayMount === true);
    if (refused !== null) {
      report.notGrown = refused;
      options.log?.('warn', `the last partition (${last.number}) keeps its size: ${refused}`);
    } else {
      // sfdisk moves the GPT backup to the end as it writes the table; ", +" is "same start, as large as possible".
      await tool('sfdisk', ['--no-reread', '--no-tell-kernel', '-N', String(last.number), target], ', +\n');
      report.relocatedGpt = table.scheme === 'gpt';
      const size = await newSize(target, last);
      grownLength = size;
      const fsGrown = fs === 'swap' ? true : await withLoop(target, last.start, size, (dev) => growFilesystem(dev, fs));
      if (!fsGrown) options.log?.('warn', `the last partition (${last.number}) grew, but its filesystem (${fs ?? 'none found'}) has no grow tool here and keeps its size`);
      report.grown = { number: last.number, size, fs, fsGrown };
    }
  }
  if (larger && table.scheme === 'gpt' && !report.relocatedGpt) {
    await tool('sfdisk', ['--no-reread', '--no-tell-kernel', '--relocate', 'gpt-bak-std', target]);
    report.relocatedGpt = true;
  }
  for (const p of swaps) {
    const length = last !== undefined && p.start === last.start && grownLength !== undefined ? grownLength : p.length;
    await recreateSwap(target, p, length);
    report.swaps.push(p.uuid ?? '');
  }
  return report;
}

/**
 * The swap entries of meta.partitions, each checked against the partition table before anything is
 * written: mkswap overwrites what it is given, so an entry must be exactly one partition of the image.
 */
export function swapEntries(meta: ManifestMeta): PartitionRead[] {
  const out: PartitionRead[] = [];
  for (const p of meta.partitions ?? []) {
    if (p.method !== 'swap') continue;
    const part = meta.partitionTable.partitions.find((q) => q.start === p.start && q.size === p.length);
    if (part === undefined || !Number.isSafeInteger(p.start) || p.start <= 0 || p.start + p.length > meta.diskSize) {
      throw new ClonecastError(ERR.MANIFEST_CORRUPT, `the image records swap at offset ${p.start} (${p.length} bytes), which is not a partition of its table; nothing was recreated (re-import the image)`);
    }
    out.push(p);
  }
  return out;
}

/** Recreates swap partition p of target, with its UUID and label (mkswap -U -L). */
export async function recreateSwap(target: string, p: PartitionRead, length = p.length): Promise<void> {
  const args: string[] = [];
  if (p.uuid !== undefined && /^[0-9a-fA-F-]{32,36}$/.test(p.uuid)) args.push('-U', p.uuid);
  // A label from the image is data: at most 16 bytes, no option-like leading dash reaches mkswap's parser.
  if (p.label !== undefined && p.label !== '') args.push('-L', p.label.slice(0, 16));
  await withLoop(target, p.start, length, (dev) => tool('mkswap', [...args, dev]));
}

/**
 * Why the last partition `part` of target, holding fs, must not be grown (null: it may be). The disk
 * is written and verified either way; only the grow is left out.
 */
export async function growRefusal(target: string, part: Partition, fs: string | null, mayMount: boolean): Promise<string | null> {
  if (fs === 'vfat' || fs === 'exfat') return `it holds ${fs}, which cannot be grown here (grow it from the installed system)`;
  if ((fs === 'xfs' || fs === 'btrfs') && !mayMount) {
    return `it holds ${fs}, which grows only while mounted, and the server does not mount filesystems from images; grow it on the machine or VM that boots it (xfs_growfs / or btrfs filesystem resize max /), or deploy with --grow-last, where the agent grows it on the target machine`;
  }
  if (fs === null || fs === 'swap' || !(GROWABLE as readonly string[]).includes(fs)) return null;
  const unclean = await withLoop(target, part.start, part.size, (dev) => uncleanReason(fs, dev));
  if (unclean === null) return null;
  return `its ${fs} filesystem was not cleanly shut down, so growing it could corrupt it (${unclean}). The image is written and verified; grow the partition after a full shutdown of the installed system`;
}

/** The size in bytes of partition `part` (by number) as the table on target now says. */
async function newSize(target: string, part: Partition): Promise<number> {
  const out = await tool('sfdisk', ['--json', target]);
  const t = JSON.parse(out) as { partitiontable: { sectorsize?: number; partitions: { node: string; start: number; size: number }[] } };
  const sector = t.partitiontable.sectorsize ?? 512;
  const found = t.partitiontable.partitions.find((p) => p.start * sector === part.start);
  if (found === undefined) throw new ClonecastError(ERR.PARTITION_TABLE, `partition ${part.number} of ${target} is gone after growing it`);
  return found.size * sector;
}

/** One line for people: what finishing a disk did. */
export function describeFinish(r: FinishReport): string {
  const parts: string[] = [];
  if (r.grown !== undefined) parts.push(`partition ${r.grown.number} grown to ${r.grown.size} bytes${r.grown.fsGrown ? ` with its ${r.grown.fs} filesystem` : ''}`);
  if (r.notGrown !== undefined) parts.push('the last partition kept its size (see the warning)');
  if (r.relocatedGpt) parts.push('GPT backup moved to the end of the disk');
  if (r.swaps.length > 0) parts.push(`${r.swaps.length} swap partition(s) recreated`);
  return parts.length > 0 ? parts.join('; ') : 'nothing to finish';
}
