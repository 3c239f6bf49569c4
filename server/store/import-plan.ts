/**
 * The read plan of an import: which chunks of the source are unused (not
 * read, not stored), which are read whole, and which byte ranges of a
 * partly used chunk are kept (the rest stored as zeros). Built from the
 * used-byte map of the disk (native/used-blocks.ts), or the whole disk
 * under --raw.
 */
import type { ManifestMeta } from '../../protocol/manifest.js';
import type { PartitionTable } from '../../protocol/partitions.js';
import { chunkUse, type ChunkUse, type Span } from '../../protocol/used-map.js';
import { usedMap, type UsedMap } from '../../native/used-blocks.js';

/** What an import reads of its source. */
export interface ImportPlan {
  /** The use of chunk [position, position+length). */
  chunk(position: number, length: number): ChunkUse;
  /** The map, or null under --raw. */
  map: UsedMap | null;
  /** Manifest fields of the map (none under --raw: the whole disk counts as used). */
  meta: Pick<ManifestMeta, 'partitions' | 'usedBytes'>;
}

/** Plans an import of src; raw reads every byte as before used-block imaging. */
export async function planImport(src: string, diskSize: number, table: PartitionTable, raw: boolean, warn?: (message: string) => void): Promise<ImportPlan> {
  if (raw) return { chunk: () => ({ use: 'whole' }), map: null, meta: {} };
  const map = await usedMap(src, diskSize, table, { warn });
  const used: Span[] = map.used;
  return { chunk: (position, length) => chunkUse(used, position, length), map, meta: { partitions: map.partitions, usedBytes: map.usedBytes } };
}
