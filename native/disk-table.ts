/**
 * Reads a disk's partition table through the raw-I/O module: the first MiB,
 * and the GPT backup header when the primary one is damaged. Shared by
 * import (server) and capture (agent).
 */
import { readPartitionTable, type PartitionTable } from '../protocol/partitions.js';
import type { Disk } from './disk.js';

/** Reads the partition table from the first MiB of a disk (and the GPT backup when needed). */
export async function readTable(source: Disk): Promise<PartitionTable> {
  const sector = source.logicalSectorSize;
  const headSize = Math.min(source.size, 1 << 20);
  const head = source.allocate(headSize);
  try {
    await source.read(head, 0, headSize);
  } catch (err) {
    return { scheme: 'none', sectorSize: sector, partitions: [], warnings: [`could not read the partition table: ${(err as Error).message}`] };
  }
  return readPartitionTable(head, sector, async (lba) => {
    const buf = source.allocate(sector);
    try {
      const n = await source.read(buf, lba * sector, sector);
      return n === sector ? buf : null;
    } catch {
      return null;
    }
  });
}
