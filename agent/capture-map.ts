/**
 * The used-byte map of a capture (native/used-blocks.ts): the whole disk's
 * map, and the manifest fields it gives, limited to the chosen partitions
 * of a --partitions capture. Null under --raw.
 */
import type { Capture } from '../protocol/control.js';
import type { ManifestMeta } from '../protocol/manifest.js';
import type { PartitionTable } from '../protocol/partitions.js';
import { bytesWithin, unionSpans } from '../protocol/used-map.js';
import { usedMap, type UsedMap } from '../native/used-blocks.js';

/** A capture's map and its manifest fields. */
export interface CaptureMap {
  map: UsedMap;
  meta: Pick<ManifestMeta, 'partitions' | 'usedBytes'>;
}

/** Maps the disk unless the capture is raw; `ranges` are the chosen areas of a --partitions capture (null: all). */
export async function captureMap(
  device: string,
  diskSize: number,
  table: PartitionTable,
  c: Capture,
  ranges: { start: number; end: number }[] | null,
  log?: (level: 'info' | 'warn', message: string) => void,
): Promise<CaptureMap | null> {
  if (c.raw === true) return null;
  const map = await usedMap(device, diskSize, table, { warn: (m) => log?.('warn', `capture: ${m}`) });
  if (ranges === null) return { map, meta: { partitions: map.partitions, usedBytes: map.usedBytes } };
  const chosen = new Set(c.partitions ?? []);
  const partitions = map.partitions.filter((r) => chosen.has(table.partitions[r.index]?.number ?? -1));
  let usedBytes = 0;
  for (const s of unionSpans(ranges)) usedBytes += bytesWithin(map.used, s.start, s.end);
  return { map, meta: { partitions, usedBytes } };
}
