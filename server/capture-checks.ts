/**
 * What an uploading agent sends, checked before it shapes an image: every
 * chunk-table record against the stored chunk it names, the partition
 * table (read again from the uploaded bytes where they hold it), the
 * progress numbers and the device name. A capture publishes only what
 * passes; anything else is refused with the record or field named.
 */
import { CHUNK, chunkLength, decodeChunk, decodeChunkHeader } from '../protocol/chunk.js';
import { ClonecastError, ERR } from '../protocol/errors.js';
import { chunkAt, ChunkKind, tableLength } from '../protocol/manifest.js';
import { readPartitionTable, type PartitionTable } from '../protocol/partitions.js';
import type { Store } from './store/store.js';
import type { CaptureProgress } from '../protocol/api.js';

const bad = (why: string) => new ClonecastError(ERR.USAGE, why);


/** Checks progress numbers: non-negative safe integers, counts bounded by the chunk count. */
export function checkProgress(p: unknown, maxChunks: number): CaptureProgress {
  if (typeof p !== 'object' || p === null) throw bad('progress must be an object');
  const o = p as Record<string, unknown>;
  const num = (k: keyof CaptureProgress, max: number) => {
    const v = o[k] ?? 0;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v > max) throw bad(`progress ${k} must be a whole number from 0 to ${max}`);
    return v;
  };
  return {
    chunksDone: num('chunksDone', maxChunks),
    chunksTotal: num('chunksTotal', maxChunks),
    bytesRead: num('bytesRead', Number.MAX_SAFE_INTEGER),
    reused: num('reused', maxChunks),
    bytesSent: num('bytesSent', Number.MAX_SAFE_INTEGER),
  };
}

/** A device path as an agent names it: printable, short. */
export function checkDevice(device: unknown): string {
  if (typeof device !== 'string' || !/^[\x21-\x7e]{1,256}$/.test(device)) throw bad('device must be a path of 1-256 printable characters');
  return device;
}

/**
 * Checks every record of a chunk table: a known kind; zero and absent
 * records carry nothing; a data record names a stored chunk whose header
 * agrees with it (length of that chunk of the disk, codec, stored length,
 * xxh64). Throws at the first record that does not hold.
 */
export function checkTable(store: Store, table: Buffer, diskSize: number, chunkSize: number): void {
  const n = tableLength(table);
  for (let i = 0; i < n; i++) {
    const r = chunkAt(table, i);
    const at = `chunk table record ${i}`;
    if (r.kind === ChunkKind.ZERO || r.kind === ChunkKind.ABSENT) {
      if (r.storedLength !== 0 || r.xxh64 !== 0n || r.compression !== 0 || r.sha256.some((b) => b !== 0)) throw bad(`${at}: a ${r.kind === ChunkKind.ZERO ? 'zero' : 'absent'} chunk carries no hash, codec or length`);
      continue;
    }
    if (r.kind !== ChunkKind.DATA) throw bad(`${at}: unknown kind ${r.kind}`);
    const stored = store.chunkHead(r.sha256);
    if (stored === null) throw new ClonecastError(ERR.CHUNK_MISSING, `${at}: chunk ${r.sha256.toString('hex')} was never uploaded`);
    const h = decodeChunkHeader(stored.head, `stored chunk ${r.sha256.toString('hex')}`);
    const want = chunkLength(i, diskSize, chunkSize);
    if (h.rawLength !== want) throw bad(`${at}: names a chunk of ${h.rawLength} bytes where the disk has ${want}`);
    if (h.compression !== r.compression || h.payloadLength !== r.storedLength || h.xxh64 !== r.xxh64) throw bad(`${at}: its codec, stored length or xxh64 differ from the stored chunk it names`);
  }
}

/** Checks the shape of a partition table an agent reports. */
export function checkPartitionTable(t: unknown, diskSize: number, sectorSize: number): PartitionTable {
  if (typeof t !== 'object' || t === null) throw bad('partitionTable must be an object');
  const o = t as Record<string, unknown>;
  const text = (v: unknown, what: string, max = 128) => {
    if (v === undefined) return undefined;
    if (typeof v !== 'string' || v.length > max || /[\x00-\x1f\x7f]/.test(v)) throw bad(`partition table ${what} must be printable text of at most ${max} characters`);
    return v;
  };
  if (o.scheme !== 'gpt' && o.scheme !== 'mbr' && o.scheme !== 'none') throw bad('partition table scheme must be gpt, mbr or none');
  if (o.sectorSize !== sectorSize) throw bad('partition table sector size differs from the disk\'s');
  if (!Array.isArray(o.partitions) || o.partitions.length > 256) throw bad('partition table partitions must be a list of at most 256');
  if (!Array.isArray(o.warnings) || o.warnings.length > 32) throw bad('partition table warnings must be a list of at most 32');
  const partitions = o.partitions.map((p: unknown, k: number) => {
    if (typeof p !== 'object' || p === null) throw bad(`partition ${k} must be an object`);
    const q = p as Record<string, unknown>;
    const int = (v: unknown, what: string) => {
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw bad(`partition ${k} ${what} must be a whole number`);
      return v;
    };
    const start = int(q.start, 'start');
    const size = int(q.size, 'size');
    if (start + size > diskSize) throw bad(`partition ${k} ends beyond the disk`);
    if (q.bootable !== undefined && typeof q.bootable !== 'boolean') throw bad(`partition ${k} bootable must be true or false`);
    return {
      number: int(q.number, 'number'),
      start,
      size,
      type: text(q.type, 'type', 64) ?? '',
      name: text(q.name, 'name', 72),
      uuid: text(q.uuid, 'uuid', 64),
      bootable: q.bootable as boolean | undefined,
      attributes: text(q.attributes, 'attributes', 64),
    };
  });
  return { scheme: o.scheme, sectorSize, diskId: text(o.diskId, 'disk id', 64), partitions, warnings: o.warnings.map((w) => text(w, 'warning', 512)!) };
}

/**
 * The partition table read again from the uploaded chunks, when they hold
 * the start of the disk (a capture of chosen partitions may not): the
 * server then trusts the bytes it stores, not the agent's word.
 */
export async function tableFromChunks(store: Store, table: Buffer, diskSize: number, chunkSize: number, sectorSize: number): Promise<PartitionTable | null> {
  const first = chunkAt(table, 0);
  if (first.kind !== ChunkKind.DATA) return null;
  // The table reader asks sector by sector (a GPT's entries are 32 sectors): each chunk is read and decoded once.
  const decoded = new Map<number, Buffer | null>();
  const raw = async (i: number): Promise<Buffer | null> => {
    if (i < 0 || i >= tableLength(table)) return null;
    if (decoded.has(i)) return decoded.get(i)!;
    const r = chunkAt(table, i);
    const data =
      r.kind === ChunkKind.ZERO ? Buffer.alloc(chunkLength(i, diskSize, chunkSize)) : r.kind === ChunkKind.DATA ? decodeChunk(await store.readChunk(r.sha256), `chunk ${i}`).raw : null;
    decoded.set(i, data);
    return data;
  };
  const head = (await raw(0))!;
  return readPartitionTable(head.subarray(0, Math.min(head.length, 1 << 20)), sectorSize, async (lba) => {
    const offset = lba * sectorSize;
    const i = Math.floor(offset / chunkSize);
    const data = await raw(i);
    if (data === null) return null;
    const at = offset - i * chunkSize;
    return at + sectorSize <= data.length ? Buffer.from(data.subarray(at, at + sectorSize)) : null;
  });
}

/** Largest stored form of one uploaded chunk of this chunk size (header + payload, never bigger than raw). */
export function maxChunkUpload(chunkSize: number): number {
  return CHUNK.HEADER_SIZE + chunkSize;
}
