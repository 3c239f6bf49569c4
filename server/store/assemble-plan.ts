/**
 * The plan of an assembled disk (image assemble): which stored partitions,
 * where each lands, how large the disk is and what table it gets. Nothing
 * here writes; assemble.ts carries the plan out.
 *
 * Layout: the first partition starts at ALIGN, each next one at the first
 * ALIGN boundary after the previous one's end, where ALIGN is 1 MiB or the
 * chunk size if that is larger (so a partition whose source start is
 * chunk-aligned lands chunk-aligned and its chunks are reused). The disk
 * ends just past the last partition plus the backup GPT (33 sectors with
 * 512-byte sectors; nothing for an MBR), unless --size says more.
 */
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { gptBackupBytes, mapPartitionType, type TablePartition } from '../../protocol/gpt-write.js';
import type { Manifest } from '../../protocol/manifest.js';
import { typeName, type Partition } from '../../protocol/partitions.js';
import { formatBytes } from '../progress.js';
import { parseRef, type ImageRef, type Store } from './store.js';

/** Largest assembled disk: 64 TiB, as native/qemu-img.ts MAX_VIRTUAL_SIZE takes for an imported virtual disk. */
export const MAX_ASSEMBLED_SIZE = 64 * 2 ** 40;
/** Most chunks in an assembled disk (4 TiB at 4 MiB chunks): its chunk table is built in memory, in the server process for the API. */
export const MAX_ASSEMBLED_CHUNKS = 2 ** 20;

/** Partitions start on multiples of this (or of the chunk size, if larger). */
export const ASSEMBLY_ALIGN = 1 << 20;

/** One --part argument: SRC[@V]:N. */
export interface PartSpec {
  ref: ImageRef;
  partition: number;
  /** As typed, for messages. */
  text: string;
}

/** A partition as it will be placed on the new disk. */
export interface PlacedPart {
  image: string;
  version: number;
  manifest: Manifest;
  /** The source partition as the source's table lists it. */
  source: Partition;
  /** Byte offset and length on the new disk (length > source size only for --grow-last). */
  start: number;
  length: number;
  /** Bytes copied from the source (its size); the rest of length reads as zeros. */
  dataLength: number;
  /** The entry in the new table. */
  entry: TablePartition;
}

/** A whole plan. */
export interface AssemblyPlan {
  table: 'gpt' | 'mbr';
  sectorSize: number;
  chunkSize: number;
  diskSize: number;
  parts: PlacedPart[];
}

/** Options of the layout. */
export interface LayoutOptions {
  table?: 'gpt' | 'mbr';
  /** The disk size in bytes; undefined: just as large as needed. */
  size?: number;
  /** Make the last partition fill the disk (needs size). */
  growLast?: boolean;
}

function usage(message: string, details: Record<string, unknown> = {}): ClonecastError {
  return new ClonecastError(ERR.USAGE, message, details);
}

/** Parses "SRC[@V]:N"; throws USAGE (or BAD_NAME from the image reference) with the form. */
export function parsePartSpec(text: string): PartSpec {
  const colon = text.lastIndexOf(':');
  const n = colon < 0 ? '' : text.slice(colon + 1);
  if (colon <= 0 || !/^[1-9][0-9]{0,3}$/.test(n)) {
    throw usage(`--part "${text}" is not of the form IMAGE[@V]:N, where N is a partition number as "clonecast image info IMAGE" lists it (e.g. --part pc1@3:2)`);
  }
  return { ref: parseRef(text.slice(0, colon)), partition: Number(n), text };
}

/** Resolves each spec against the store and lays the partitions out. The caller holds a reader's lock. */
export async function planAssembly(store: Store, specs: readonly PartSpec[], options: LayoutOptions = {}): Promise<AssemblyPlan> {
  if (specs.length === 0) throw usage('name at least one partition with --part IMAGE[@V]:N');
  const table = options.table ?? 'gpt';
  if (options.growLast === true && options.size === undefined) throw usage('--grow-last makes the last partition fill the disk: give the disk size with --size BYTES');
  const manifests = new Map<string, Manifest>();
  const chosen: { image: string; version: number; manifest: Manifest; source: Partition; spec: PartSpec }[] = [];
  for (const spec of specs) {
    const { name, version } = store.resolve(spec.ref);
    const key = `${name}@${version}`;
    let manifest = manifests.get(key);
    if (manifest === undefined) manifests.set(key, (manifest = await store.readManifest(name, version)));
    const t = manifest.meta.partitionTable;
    const source = t.partitions.find((p) => p.number === spec.partition);
    if (source === undefined) {
      const list = t.partitions.map((p) => `${p.number} (${typeName(p.type)}${p.name ? ` "${p.name}"` : ''}, ${formatBytes(p.size)})`).join(', ');
      throw new ClonecastError(
        ERR.NOT_FOUND,
        `${key} has no partition ${spec.partition}: ${t.partitions.length === 0 ? `it has no partition table (${t.scheme})` : `its ${t.scheme} table lists ${list}`}; nothing was made`,
        { image: name, version, partition: spec.partition, partitions: t.partitions.map((p) => p.number) },
      );
    }
    const m = manifest.meta;
    if (source.size <= 0 || source.start % m.sectorSize !== 0 || source.size % m.sectorSize !== 0 || source.start + source.size > m.diskSize) {
      throw new ClonecastError(ERR.PARTITION_TABLE, `partition ${source.number} of ${key} (start ${source.start}, size ${source.size}) does not lie in whole sectors inside its ${m.diskSize}-byte disk; its table is damaged, so it cannot be copied`);
    }
    if (chosen.some((c) => c.image === name && c.version === version && c.source.number === source.number)) {
      throw usage(`partition ${source.number} of ${key} is named twice; a disk holds each partition once`);
    }
    chosen.push({ image: name, version, manifest, source, spec });
  }
  const sectorSize = chosen[0].manifest.meta.sectorSize;
  const other = chosen.find((c) => c.manifest.meta.sectorSize !== sectorSize);
  if (other !== undefined) {
    throw usage(`${chosen[0].spec.text} comes from a disk with ${sectorSize}-byte sectors and ${other.spec.text} from one with ${other.manifest.meta.sectorSize}-byte sectors; a disk has one sector size, so assemble them separately`);
  }
  const chunkSize = chosen[0].manifest.meta.chunkSize;
  const align = Math.max(ASSEMBLY_ALIGN, chunkSize);
  const backup = table === 'gpt' ? gptBackupBytes(sectorSize) : 0;
  const parts: PlacedPart[] = [];
  let end = 0;
  for (const c of chosen) {
    const type = mapPartitionType(c.source.type, table);
    if (type === null) {
      throw usage(`partition ${c.source.number} of ${c.image}@${c.version} has type ${c.source.type} (${typeName(c.source.type)}), which has no ${table === 'gpt' ? 'GPT' : 'MBR'} equivalent clonecast knows; choose --table ${table === 'gpt' ? 'mbr' : 'gpt'} or leave it out`);
    }
    const start = Math.ceil(Math.max(end, 1) / align) * align;
    const fromGpt = !c.source.type.startsWith('0x');
    if (fromGpt && c.source.attributes !== undefined && !/^[0-9a-f]{1,16}$/i.test(c.source.attributes)) {
      throw new ClonecastError(ERR.PARTITION_TABLE, `partition ${c.source.number} of ${c.image}@${c.version} has attributes "${String(c.source.attributes).slice(0, 40)}", not 16 hex digits; its table record is damaged, so it cannot be copied`);
    }
    // Legacy BIOS bootable is GPT attribute bit 2 (UEFI 2.10 table 5.7): the MBR boot flag maps to it and back.
    const attrs = fromGpt ? BigInt(`0x${c.source.attributes ?? '0'}`) : c.source.bootable ? 4n : 0n;
    const entry: TablePartition =
      table === 'gpt'
        ? { start, size: c.source.size, type, name: fromGpt ? c.source.name : undefined, attributes: attrs.toString(16).padStart(16, '0') }
        : { start, size: c.source.size, type, bootable: fromGpt ? (attrs & 4n) !== 0n : c.source.bootable === true };
    parts.push({ image: c.image, version: c.version, manifest: c.manifest, source: c.source, start, length: c.source.size, dataLength: c.source.size, entry });
    end = start + c.source.size;
  }
  const needed = end + backup;
  let diskSize = needed;
  const most = Math.min(MAX_ASSEMBLED_SIZE, MAX_ASSEMBLED_CHUNKS * chunkSize);
  // The same cap without --size: partitions of large images could add up to more than any chunk table here.
  if (needed > most) throw usage(`these partitions need a ${formatBytes(needed)} disk, larger than the ${formatBytes(most)} an assembled disk may have (${MAX_ASSEMBLED_CHUNKS} chunks of ${formatBytes(chunkSize)}); assemble fewer or smaller partitions`, { most, needed });
  if (options.size !== undefined) {
    if (!Number.isSafeInteger(options.size) || options.size % sectorSize !== 0) throw usage(`--size ${options.size} is not a whole number of ${sectorSize}-byte sectors`);
    if (options.size < needed) throw usage(`--size ${options.size} is smaller than the ${needed} bytes (${formatBytes(needed)}) these partitions and the table need; give at least ${needed}, or leave --size out`, { needed });
    if (options.size > most) throw usage(`--size ${options.size} is larger than the ${most} bytes (${formatBytes(most)}) an assembled disk may have (${MAX_ASSEMBLED_CHUNKS} chunks of ${formatBytes(chunkSize)}, at most ${formatBytes(MAX_ASSEMBLED_SIZE)}); give a smaller --size`, { most });
    diskSize = options.size;
  }
  if (options.growLast === true) {
    const last = parts[parts.length - 1];
    last.length = diskSize - backup - last.start;
    last.entry.size = last.length;
  }
  return { table, sectorSize, chunkSize, diskSize, parts };
}
