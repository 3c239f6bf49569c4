/**
 * The parts of an export that concern the target's size and what comes after
 * the write: the size of a file target (--size), the refusal of a target too
 * small (with the size needed and the size used), the bytes actually written
 * (the progress total), and the finishing steps shared with deploy
 * (native/disk-finish.ts).
 */
import { chunkAt, definesBytes, tableLength, type Manifest, type ManifestMeta } from '../../protocol/manifest.js';
import { chunkLength } from '../../protocol/chunk.js';
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { finishDisk, type FinishReport } from '../../native/disk-finish.js';
import { formatBytes } from '../progress.js';

/** The error for a target of `size` bytes that cannot hold image `label`: names the size needed and the size the filesystems use. */
export function tooSmall(dest: string, size: number, label: string, meta: ManifestMeta): ClonecastError {
  const used = meta.usedBytes !== undefined ? `; its filesystems use ${formatBytes(meta.usedBytes)} (${meta.usedBytes} bytes), but shrinking the last partition to fit is not built yet` : '';
  return new ClonecastError(
    ERR.TARGET_TOO_SMALL,
    `${dest} holds ${formatBytes(size)} (${size} bytes) but ${label} needs ${formatBytes(meta.diskSize)} (${meta.diskSize} bytes)${used}; use a larger disk`,
    { targetSize: size, imageSize: meta.diskSize, usedBytes: meta.usedBytes ?? meta.diskSize },
  );
}

/** The size of a new file target: --size if given (a whole number of 512-byte sectors, at least the image's size), else the image's. */
export function fileSize(size: number | undefined, meta: ManifestMeta, dest: string): number {
  if (size === undefined) return meta.diskSize;
  if (!Number.isSafeInteger(size) || size % 512 !== 0) throw new ClonecastError(ERR.USAGE, `--size takes a whole number of 512-byte sectors in bytes; ${size} is not one`);
  if (size < meta.diskSize) throw tooSmall(dest, size, `${meta.name}@${meta.version}`, meta);
  return size;
}

/** Bytes an export or deploy writes: data and zero chunks (absent and unused ones are not written). */
export function writtenBytes(m: Manifest): number {
  let n = 0;
  for (let i = 0; i < tableLength(m.table); i++) if (definesBytes(chunkAt(m.table, i).kind)) n += chunkLength(i, m.meta.diskSize, m.meta.chunkSize);
  return n;
}

/** Finishes an exported disk as a deploy does; null when there is nothing to do. */
export async function finishExport(dest: string, targetSize: number, meta: ManifestMeta, o: { growLast?: boolean; log?: (level: 'info' | 'warn', message: string) => void }): Promise<FinishReport | null> {
  const swap = meta.partitions?.some((p) => p.method === 'swap') === true;
  const larger = targetSize > meta.diskSize && (meta.partitionTable.scheme === 'gpt' || o.growLast === true);
  if (!swap && !larger) return null;
  return finishDisk(dest, targetSize, meta, { growLast: o.growLast, log: o.log });
}
