/**
 * The image's all-zero chunks are never sent: the receiver zeroes their
 * ranges on the disk before reception starts, adjacent ones in one call.
 */
import { chunkAt, ChunkKind, tableLength, type Manifest } from '../protocol/manifest.js';
import { chunkLength } from '../protocol/chunk.js';
import type { Disk } from '../native/disk.js';

/** Writes the image's zero chunks, one zeroRange per run of them; zeroed(c) is called for each once its run is on the disk. */
export async function zeroChunks(disk: Disk, manifest: Manifest, zeroed: (chunk: number) => void): Promise<void> {
  const { meta, table } = manifest;
  let first = -1;
  let last = -1;
  const flush = async () => {
    if (first < 0) return;
    const start = first * meta.chunkSize;
    await disk.zeroRange(start, last * meta.chunkSize + chunkLength(last, meta.diskSize, meta.chunkSize) - start);
    for (let c = first; c <= last; c++) zeroed(c);
    first = -1;
  };
  for (let i = 0; i < tableLength(table); i++) {
    if (chunkAt(table, i).kind !== ChunkKind.ZERO) continue;
    if (first >= 0 && i === last + 1) last = i;
    else {
      await flush();
      first = last = i;
    }
  }
  await flush();
}
