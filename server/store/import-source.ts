/**
 * Where an import reads a disk from when it is not a raw file or a block
 * device the workers can open themselves: a virtual disk served by
 * `qemu-nbd --read-only` and read with the NBD client. Block status
 * (base:allocation) says which ranges read as zeros; those become zero
 * chunks without being read.
 */
import { readPartitionTable, type PartitionTable } from '../../protocol/partitions.js';
import { NBD, type Extent } from '../../protocol/nbd.js';
import type { NbdClient } from '../nbd/client.js';

/** A disk the import reads through the main thread. */
export interface ChunkSource {
  /** For the manifest: what was read. */
  path: string;
  description: string;
  size: number;
  sectorSize: number;
  readTable(): Promise<PartitionTable>;
  /** True if [position, position+length) is known to read as zeros. */
  isZero(position: number, length: number): Promise<boolean>;
  read(position: number, length: number): Promise<Buffer>;
}

/** How much block status is asked for at once. */
const STATUS_WINDOW = 1 << 30;

/** A ChunkSource over an NBD export. */
export class NbdChunkSource implements ChunkSource {
  readonly size: number;
  readonly sectorSize = 512;
  /** Extents known so far, in order, from offset 0 to `known`. */
  private readonly zeroRuns: { start: number; end: number }[] = [];
  private known = 0;
  private fetching: Promise<void> = Promise.resolve();
  /** Bytes block status called zero (never read). */
  zeroBytes = 0;
  /** Bytes of chunks read (the partition table's reads not counted). */
  chunkBytesRead = 0;

  constructor(
    private readonly client: NbdClient,
    readonly path: string,
    readonly description: string,
  ) {
    this.size = client.size;
  }

  async readTable(): Promise<PartitionTable> {
    const head = await this.client.read(0, Math.min(this.size, 1 << 20));
    return readPartitionTable(head, this.sectorSize, async (lba) => {
      const at = lba * this.sectorSize;
      if (at + this.sectorSize > this.size) return null;
      try {
        return await this.client.read(at, this.sectorSize);
      } catch {
        return null;
      }
    });
  }

  async isZero(position: number, length: number): Promise<boolean> {
    if (!this.client.hasBlockStatus) return false;
    while (this.known < position + length) await this.fetchMore();
    // Runs are in order and joined: find one that holds the whole range.
    let lo = 0;
    let hi = this.zeroRuns.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = this.zeroRuns[mid];
      if (r.end <= position) lo = mid + 1;
      else if (r.start > position) hi = mid - 1;
      else {
        const zero = r.end >= position + length;
        if (zero) this.zeroBytes += length;
        return zero;
      }
    }
    return false;
  }

  read(position: number, length: number): Promise<Buffer> {
    this.chunkBytesRead += length;
    return this.client.read(position, length);
  }

  private fetchMore(): Promise<void> {
    const start = this.known;
    this.fetching = this.fetching.then(async () => {
      if (this.known !== start) return;
      const extents: Extent[] = await this.client.blockStatus(start, Math.min(STATUS_WINDOW, this.size - start));
      let at = start;
      for (const e of extents) {
        const end = Math.min(this.size, at + e.length);
        if ((e.flags & NBD.STATE_ZERO) !== 0) {
          const last = this.zeroRuns[this.zeroRuns.length - 1];
          if (last !== undefined && last.end === at) last.end = end;
          else this.zeroRuns.push({ start: at, end });
        }
        at = end;
        if (at >= this.size) break;
      }
      this.known = Math.max(this.known, at);
    });
    return this.fetching;
  }
}
