/**
 * The used-byte map of a whole disk (docs/image-format.md, "Unused
 * chunks"): which bytes import and capture must read. Each partition is
 * reached through its own device node or a read-only loop device, its
 * filesystem named by blkid, checked for a clean unmount, and mapped by
 * partclone; what cannot be mapped safely is read in full, with the reason
 * recorded. Always read raw: the first and last MiB of the disk (partition
 * tables, boot loaders, the GPT backup), every byte outside a partition,
 * and the first and last MiB of every mapped partition (boot sectors, the
 * NTFS backup boot sector). Swap is not read: restore recreates it from
 * its UUID and label.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import type { PartitionRead } from '../protocol/manifest.js';
import type { Partition, PartitionTable } from '../protocol/partitions.js';
import { addSpan, bytesWithin, complement, spanBytes, unionSpans, type Span } from '../protocol/used-map.js';
import { trackLoop, untrackLoop } from './cleanup.js';
import { partcloneMap, PARTCLONE, probe, uncleanReason } from './fs-tools.js';
import { devNumbers } from './usage.js';

/** Bytes always read raw at each end of the disk and of each mapped partition. */
export const RAW_EDGE = 1 << 20;
/** Partitions mapped at once (each runs blkid, a check and partclone). */
const PARALLEL = 2;
const MBR_CONTAINERS = new Set(['0x05', '0x0f', '0x85']);

/** The used-byte map of a disk. */
export interface UsedMap {
  /** Sorted, disjoint byte ranges to read; everything else is unused. */
  used: Span[];
  /** How each partition was read. */
  partitions: PartitionRead[];
  /** Bytes of `used`. */
  usedBytes: number;
  /** Partitions read in full for a reason people should act on. */
  warnings: string[];
}

/** Options of usedMap(). */
export interface UsedMapOptions {
  /** Told of each partition read in full for a safety reason. */
  warn?: (message: string) => void;
}

/** Maps the disk (a block device or an image file) at src, whose partition table is `table`. */
export async function usedMap(src: string, diskSize: number, table: PartitionTable, options: UsedMapOptions = {}): Promise<UsedMap> {
  const parts = table.partitions.map((p, index) => ({ p, index })).filter(({ p }) => !MBR_CONTAINERS.has(p.type) && p.size > 0 && p.start + p.size <= diskSize);
  const reads: { read: PartitionRead; spans: Span[] }[] = new Array(parts.length);
  let next = 0;
  const lane = async () => {
    while (next < parts.length) {
      const k = next++;
      reads[k] = await readPartition(src, parts[k].p, parts[k].index);
    }
  };
  await Promise.all(Array.from({ length: PARALLEL }, lane));
  const covered = unionSpans(parts.map(({ p }) => ({ start: p.start, end: p.start + p.size })));
  const all: Span[] = [...complement(covered, diskSize), { start: 0, end: Math.min(RAW_EDGE, diskSize) }, { start: Math.max(0, diskSize - RAW_EDGE), end: diskSize }];
  for (const r of reads) all.push(...r.spans);
  const used = unionSpans(all);
  const warnings: string[] = [];
  for (const { read } of reads) {
    read.usedBytes = bytesWithin(used, read.start, read.start + read.length);
    // A filesystem that could have been mapped but was not (unclean, or partclone failed) is worth a warning.
    if (read.method === 'full' && read.fs !== null && PARTCLONE[read.fs] !== undefined) {
      const w = `partition ${table.partitions[read.index].number} (${read.fs ?? 'no filesystem'}) is read in full: ${read.reason}`;
      warnings.push(w);
      options.warn?.(w);
    }
  }
  return { used, partitions: reads.map((r) => r.read), usedBytes: spanBytes(used), warnings };
}

/** The whole disk as one used range: what --raw reads. */
export function rawMap(diskSize: number): Span[] {
  return [{ start: 0, end: diskSize }];
}

async function readPartition(src: string, p: Partition, index: number): Promise<{ read: PartitionRead; spans: Span[] }> {
  const start = p.start;
  const end = p.start + p.size;
  const base = { index, start, length: p.size, usedBytes: 0 };
  const full = (fs: string | null, reason: string, extra: Partial<PartitionRead> = {}) => ({ read: { ...base, fs, method: 'full' as const, reason, ...extra }, spans: [{ start, end }] });
  let dev: PartitionDevice;
  try {
    dev = openPartition(src, p);
  } catch (err) {
    return full(null, `its partition could not be opened on its own (${(err as Error).message})`);
  }
  try {
    const info = await probe(dev.path);
    if (info.BLKID_MISSING !== undefined) return full(null, 'blkid (util-linux) is missing, so its filesystem cannot be named');
    const fs = info.TYPE ?? null;
    const ids: Partial<PartitionRead> = {};
    if (info.UUID !== undefined) ids.uuid = info.UUID;
    if (info.LABEL !== undefined) ids.label = info.LABEL;
    if (fs === null) return full(null, 'no filesystem found');
    if (fs === 'swap') return { read: { ...base, fs, method: 'swap', reason: 'swap: not copied, recreated on restore with its UUID and label', ...ids }, spans: [] };
    if (fs === 'crypto_LUKS') return full(fs, 'encrypted (LUKS): which blocks are used cannot be seen', ids);
    if (fs === 'BitLocker') return full(fs, 'encrypted (BitLocker): which blocks are used cannot be seen', ids);
    if (PARTCLONE[fs] === undefined) return full(fs, `no used-block map for ${fs}`, ids);
    const unclean = await uncleanReason(fs, dev.path);
    if (unclean !== null) return full(fs, unclean, ids);
    let spans: Span[];
    try {
      spans = await partcloneMap(fs, dev.path, start, p.size);
    } catch (err) {
      return full(fs, (err as Error).message, ids);
    }
    const withEdges: Span[] = [];
    addSpan(withEdges, { start, end: Math.min(end, start + RAW_EDGE) });
    for (const s of unionSpans([...spans, { start: Math.max(start, end - RAW_EDGE), end }])) addSpan(withEdges, s);
    return { read: { ...base, fs, method: 'used-blocks', reason: `${PARTCLONE[fs]} map of the used blocks`, ...ids }, spans: unionSpans(withEdges) };
  } finally {
    dev.release();
  }
}

/** A partition as a device of its own, and how to let it go. */
interface PartitionDevice {
  path: string;
  release: () => void;
}

/**
 * The partition's own device node when src is a block device whose kernel
 * partition has the same start and size; otherwise a read-only loop device
 * over src at the partition's offset (image files; disks whose partitions
 * the kernel did not read).
 */
function openPartition(src: string, p: Partition): PartitionDevice {
  const node = kernelPartition(src, p);
  if (node !== null) return { path: node, release: () => {} };
  const dev = execFileSync('losetup', ['-f', '--show', '-r', '-o', String(p.start), '--sizelimit', String(p.size), src], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
  if (!/^\/dev\/loop\d+$/.test(dev)) throw new Error(`losetup answered "${dev.slice(0, 80)}"`);
  // Detached at exit too: Ctrl-C ends the CLI with process.exit, and this release would never run.
  trackLoop(dev);
  return {
    path: dev,
    release: () => {
      spawnSync('losetup', ['-d', dev]);
      untrackLoop(dev);
    },
  };
}

function kernelPartition(src: string, p: Partition): string | null {
  try {
    const st = statSync(src);
    if (!st.isBlockDevice()) return null;
    const { major, minor } = devNumbers(st.rdev);
    const dir = `/sys/dev/block/${major}:${minor}`;
    for (const entry of readdirSync(dir)) {
      const startFile = join(dir, entry, 'start');
      if (!existsSync(startFile)) continue;
      // sysfs counts partitions in 512-byte units whatever the sector size.
      const s = Number(readFileSync(startFile, 'utf8')) * 512;
      const n = Number(readFileSync(join(dir, entry, 'size'), 'utf8')) * 512;
      if (s === p.start && n === p.size && existsSync(`/dev/${entry}`)) return `/dev/${entry}`;
    }
  } catch {
    // no sysfs entry: use a loop device
  }
  return null;
}
