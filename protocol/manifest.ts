/**
 * The image manifest: one version of one image (docs/image-format.md).
 *
 * Layout, big-endian:
 *
 *   offset size field
 *        0    8 magic "CCIMAGE\0"
 *        8    2 format version (MANIFEST.VERSION)
 *       10    2 header size (32)
 *       12    4 metadata length M (UTF-8 JSON)
 *       16    4 chunk count N
 *       20    4 chunk record size (48)
 *       24    8 reserved, 0
 *   // sizeof = 32
 *       32    M metadata JSON
 *     32+M 48*N chunk table
 *        end 32 SHA-256 of every byte before it
 *
 * Chunk record (48 bytes):
 *        0    1 kind: 0 zero, 1 data, 2 absent, 3 unused
 *        1    1 compression: 0 raw, 1 lz4, 2 zstd
 *        2    2 reserved, 0
 *        4    4 stored payload length
 *        8    8 xxh64 of the uncompressed bytes
 *       16   32 SHA-256 of the uncompressed bytes (the chunk's name in the store)
 *
 * The chunk table stays one Buffer in memory (48 bytes a chunk: 12 MiB for a
 * 256 GiB disk with 1 MiB chunks) instead of an object per chunk.
 */
import { createHash } from 'node:crypto';
import { ClonecastError, ERR } from './errors.js';
import type { PartitionTable } from './partitions.js';
import { CHUNK, chunkCount, type Compression } from './chunk.js';
import { checkPartitionReads, checkUsedBytes } from './partition-reads.js';

/** Constants of the manifest format. */
export const MANIFEST = Object.freeze({
  MAGIC: Buffer.from('CCIMAGE\0', 'latin1'),
  VERSION: 1,
  HEADER_SIZE: 32,
  RECORD_SIZE: 48,
  TRAILER_SIZE: 32,
  /** Refuse metadata bigger than this (a corrupt length must not allocate gigabytes). */
  MAX_METADATA: 16 << 20,
});

/**
 * What a chunk record says about its chunk. ABSENT: an area a partial capture
 * did not take. UNUSED: no byte of it is used by a filesystem (or it lies in
 * swap): never read, stored or sent; a restore leaves it or discards it.
 */
export const ChunkKind = Object.freeze({ ZERO: 0, DATA: 1, ABSENT: 2, UNUSED: 3 } as const);
export type ChunkKind = (typeof ChunkKind)[keyof typeof ChunkKind];

/** A run of unreadable bytes, stored as zeros. */
export interface BadRange {
  offset: number;
  length: number;
}

/** The descriptive part of a manifest. */
export interface ManifestMeta {
  name: string;
  version: number;
  diskSize: number;
  sectorSize: number;
  chunkSize: number;
  createdAt: string;
  parent: number | null;
  source: { path: string; kind: 'file' | 'block-device'; description: string };
  partitionTable: PartitionTable;
  badRanges: BadRange[];
  /** Bytes this version added to the store (chunks no earlier data had). */
  newBytes: number;
  /** How each partition was read (absent in versions made before used-block imaging). */
  partitions?: PartitionRead[];
  /** Bytes the filesystems use, plus what was read raw (absent: the whole disk). */
  usedBytes?: number;
  /** Where each partition of an assembled disk came from (image assemble; absent otherwise). */
  assembledFrom?: AssembledPart[];
}

/** One partition of an assembled disk and its source. */
export interface AssembledPart {
  /** Index of the partition in meta.partitionTable.partitions. */
  index: number;
  /** The source image version and its partition number (as image info lists it). */
  image: string;
  version: number;
  partition: number;
  /** Byte offset and length of the partition on the new disk. */
  start: number;
  length: number;
  /** Byte offset of the partition on the source disk. */
  sourceStart: number;
}

/** How one partition was read at import or capture. */
export interface PartitionRead {
  /** Index of the partition in meta.partitionTable.partitions. */
  index: number;
  /** Byte offset and length of the partition on the disk. */
  start: number;
  length: number;
  /** Filesystem blkid found ('ext4', 'ntfs', 'vfat', 'swap', 'crypto_LUKS', ...), null if none. */
  fs: string | null;
  /** used-blocks: only the filesystem's used blocks; full: every byte; swap: not copied, recreated on restore. */
  method: 'used-blocks' | 'full' | 'swap';
  /** Why it was read this way, for people ("unclean journal: boot the source and shut it down fully", ...). */
  reason: string;
  /** Bytes read and kept from this partition. */
  usedBytes: number;
  /** Filesystem (or swap) UUID and label, as blkid reported them. */
  uuid?: string;
  label?: string;
}

/** One decoded chunk record. */
export interface ChunkRecord {
  kind: ChunkKind;
  compression: Compression;
  storedLength: number;
  xxh64: bigint;
  sha256: Buffer;
}

/** A manifest: metadata and the packed chunk table. */
export interface Manifest {
  meta: ManifestMeta;
  /** N * RECORD_SIZE bytes; read with chunkAt(). */
  table: Buffer;
}

/** Allocates an empty chunk table (all records ZERO) for n chunks. */
export function newChunkTable(n: number): Buffer {
  return Buffer.alloc(n * MANIFEST.RECORD_SIZE);
}

/** Writes record i of a chunk table. */
export function setChunk(table: Buffer, i: number, r: ChunkRecord): void {
  const o = i * MANIFEST.RECORD_SIZE;
  table.writeUInt8(r.kind, o);
  table.writeUInt8(r.compression, o + 1);
  table.writeUInt16BE(0, o + 2);
  table.writeUInt32BE(r.storedLength, o + 4);
  table.writeBigUInt64BE(r.xxh64, o + 8);
  r.sha256.copy(table, o + 16, 0, 32);
}

/** Reads record i of a chunk table. */
export function chunkAt(table: Buffer, i: number): ChunkRecord {
  const o = i * MANIFEST.RECORD_SIZE;
  return {
    kind: table.readUInt8(o) as ChunkKind,
    compression: table.readUInt8(o + 1) as Compression,
    storedLength: table.readUInt32BE(o + 4),
    xxh64: table.readBigUInt64BE(o + 8),
    sha256: table.subarray(o + 16, o + 48),
  };
}

/** Number of records in a chunk table. */
export function tableLength(table: Buffer): number {
  return table.length / MANIFEST.RECORD_SIZE;
}

/** Encodes a manifest with its trailing checksum. */
export function encodeManifest(m: Manifest): Buffer {
  const meta = Buffer.from(JSON.stringify(m.meta), 'utf8');
  const n = tableLength(m.table);
  const out = Buffer.alloc(MANIFEST.HEADER_SIZE + meta.length + m.table.length + MANIFEST.TRAILER_SIZE);
  MANIFEST.MAGIC.copy(out, 0);
  out.writeUInt16BE(MANIFEST.VERSION, 8);
  out.writeUInt16BE(MANIFEST.HEADER_SIZE, 10);
  out.writeUInt32BE(meta.length, 12);
  out.writeUInt32BE(n, 16);
  out.writeUInt32BE(MANIFEST.RECORD_SIZE, 20);
  meta.copy(out, MANIFEST.HEADER_SIZE);
  m.table.copy(out, MANIFEST.HEADER_SIZE + meta.length);
  const end = out.length - MANIFEST.TRAILER_SIZE;
  createHash('sha256').update(out.subarray(0, end)).digest().copy(out, end);
  return out;
}

/**
 * Decodes a manifest. A newer format is refused with MANIFEST_VERSION; any
 * damage (checksum, lengths, inconsistent metadata) is MANIFEST_CORRUPT, and
 * nothing half-read is ever returned.
 */
export function decodeManifest(data: Uint8Array, where = 'manifest'): Manifest {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const bad = (why: string) =>
    new ClonecastError(ERR.MANIFEST_CORRUPT, `${where} is corrupt (${why}); remove that version with "clonecast image rm" or restore it from a backup`);
  if (buf.length < MANIFEST.HEADER_SIZE + MANIFEST.TRAILER_SIZE) throw bad(`only ${buf.length} bytes`);
  if (!buf.subarray(0, 8).equals(MANIFEST.MAGIC)) throw bad('not a clonecast manifest: bad magic');
  const version = buf.readUInt16BE(8);
  if (version > MANIFEST.VERSION) {
    throw new ClonecastError(
      ERR.MANIFEST_VERSION,
      `${where} uses image format ${version}, but this clonecast reads formats up to ${MANIFEST.VERSION}; upgrade clonecast to use this image`,
      { version },
    );
  }
  if (version < 1) throw bad(`format version ${version}`);
  const end = buf.length - MANIFEST.TRAILER_SIZE;
  const sum = createHash('sha256').update(buf.subarray(0, end)).digest();
  if (!sum.equals(buf.subarray(end))) throw bad('checksum mismatch');
  const headerSize = buf.readUInt16BE(10);
  const metaLength = buf.readUInt32BE(12);
  const n = buf.readUInt32BE(16);
  const recordSize = buf.readUInt32BE(20);
  if (headerSize !== MANIFEST.HEADER_SIZE || recordSize !== MANIFEST.RECORD_SIZE) throw bad('unexpected header or record size');
  if (metaLength > MANIFEST.MAX_METADATA || headerSize + metaLength + n * recordSize !== end) throw bad('section lengths do not add up');
  let meta: ManifestMeta;
  try {
    meta = JSON.parse(buf.toString('utf8', headerSize, headerSize + metaLength)) as ManifestMeta;
  } catch {
    throw bad('metadata is not JSON');
  }
  checkMeta(meta, n, bad);
  const table = Buffer.from(buf.subarray(headerSize + metaLength, end));
  for (let i = 0; i < n; i++) {
    const kind = table.readUInt8(i * recordSize);
    if (kind > ChunkKind.UNUSED) throw bad(`chunk ${i} has unknown kind ${kind}`);
  }
  return { meta, table };
}

function checkMeta(meta: ManifestMeta, n: number, bad: (why: string) => Error): void {
  const int = (v: unknown) => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
  if (typeof meta !== 'object' || meta === null) throw bad('metadata is not an object');
  if (typeof meta.name !== 'string' || !int(meta.version)) throw bad('name or version missing');
  if (!int(meta.diskSize) || !int(meta.chunkSize) || !int(meta.sectorSize)) throw bad('sizes missing');
  if (meta.chunkSize < CHUNK.MIN_SIZE || meta.chunkSize > CHUNK.MAX_SIZE) throw bad(`chunk size ${meta.chunkSize} out of range`);
  if (chunkCount(meta.diskSize, meta.chunkSize) !== n) throw bad('chunk count does not match disk size');
  if (!Array.isArray(meta.badRanges)) throw bad('bad ranges missing');
  // Used-block metadata is optional (older versions have none) but checked when present.
  try {
    if (meta.partitions !== undefined) checkPartitionReads(meta.partitions, meta.diskSize);
    if (meta.usedBytes !== undefined) checkUsedBytes(meta.usedBytes, meta.diskSize);
  } catch (err) {
    throw bad((err as Error).message);
  }
}

/**
 * The whole-disk digest of an image: SHA-256 over the SHA-256 of every
 * chunk's bytes in order (zero chunks hash as zeros; absent and unused
 * chunks are left out: the image does not define their bytes). An agent computes the same over what it reads back, so a server can
 * check a finished disk without reading the image.
 */
export function diskDigest(manifest: Manifest): Buffer {
  const { meta, table } = manifest;
  const n = tableLength(table);
  const all = createHash('sha256');
  const zeroHashes = new Map<number, Buffer>();
  for (let i = 0; i < n; i++) {
    const r = chunkAt(table, i);
    if (!definesBytes(r.kind)) continue;
    if (r.kind === ChunkKind.DATA) {
      all.update(r.sha256);
      continue;
    }
    const len = Math.min(meta.chunkSize, meta.diskSize - i * meta.chunkSize);
    let h = zeroHashes.get(len);
    if (h === undefined) zeroHashes.set(len, (h = createHash('sha256').update(Buffer.alloc(len)).digest()));
    all.update(h);
  }
  return all.digest();
}

/**
 * True for the chunks whose bytes the image defines (data and zero): the
 * ones written, read back, verified and digested. Absent (not taken) and
 * unused (no byte used by a filesystem) chunks are left as the target holds
 * them, or discarded on request.
 */
export function definesBytes(kind: ChunkKind): boolean {
  return kind === ChunkKind.DATA || kind === ChunkKind.ZERO;
}

/** Appends ranges (in disk order) to into, joining ranges that touch. */
export function mergeRanges(into: BadRange[], ranges: BadRange[]): void {
  for (const r of ranges) {
    const last = into[into.length - 1];
    if (last !== undefined && last.offset + last.length === r.offset) last.length += r.length;
    else into.push({ ...r });
  }
}
