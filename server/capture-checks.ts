/**
 * What an uploading agent sends, checked before it shapes an image: every
 * chunk-table record against the stored chunk it names, the partition
 * table (read again from the uploaded bytes where they hold it), the
 * progress numbers and the device name. A capture publishes only what
 * passes; anything else is refused with the record or field named.
 */
import { CHUNK, chunkCount, chunkLength, decodeChunk, decodeChunkHeader } from '../protocol/chunk.js';
import { ClonecastError, ERR } from '../protocol/errors.js';
import { chunkAt, ChunkKind, MANIFEST, setChunk, tableLength, type BadRange, type ManifestMeta } from '../protocol/manifest.js';
import { checkPartitionReads, checkUsedBytes } from '../protocol/partition-reads.js';
import { readPartitionTable, type PartitionTable } from '../protocol/partitions.js';
import type { Store } from './store/store.js';
import type { CaptureProgress } from '../protocol/api.js';

const bad = (why: string) => new ClonecastError(ERR.USAGE, why);

/**
 * Checks progress numbers against the capture's disk: whole numbers, chunk
 * counts up to the disk's chunk count, bytes read up to its size, bytes
 * sent up to every chunk stored raw with its header. Other fields are dropped.
 */
export function checkProgress(p: unknown, diskSize: number, chunkSize: number): CaptureProgress {
  if (typeof p !== 'object' || p === null || Array.isArray(p)) throw bad('progress must be an object');
  const o = p as Record<string, unknown>;
  const maxChunks = chunkCount(diskSize, chunkSize);
  const num = (k: keyof CaptureProgress, max: number) => {
    const v = o[k] ?? 0;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v > max) throw bad(`progress ${k} must be a whole number from 0 to ${max}`);
    return v;
  };
  const out = {
    chunksDone: num('chunksDone', maxChunks),
    chunksTotal: num('chunksTotal', maxChunks),
    bytesRead: num('bytesRead', diskSize),
    reused: num('reused', maxChunks),
    bytesSent: num('bytesSent', maxChunks * maxChunkUpload(chunkSize)),
  };
  if (out.chunksTotal > 0 && out.chunksDone > out.chunksTotal) throw bad(`progress chunksDone ${out.chunksDone} is over chunksTotal ${out.chunksTotal}`);
  return out;
}

/** A finish body, checked: what shapes the manifest. */
export interface FinishBody {
  diskSize: number;
  sectorSize: number;
  chunkSize: number;
  /** Checked by checkPartitionTable() where the uploaded bytes do not hold the table. */
  partitionTable: unknown;
  badRanges: BadRange[];
  device: string;
  blockDevice: boolean;
  progress: unknown;
  /** The used-block record of the capture (absent from a --raw capture or an older agent). */
  used: Pick<ManifestMeta, 'partitions' | 'usedBytes'>;
}

/** What the server knows of a capture's disk, to hold a finish body against. */
export interface KnownDisk {
  /** The disk's size as its machine reported it (0: not known). */
  diskSize: number;
  chunkSize: number;
  /** The device the capture named. */
  device: string;
  /** The disks the machine reported in its Hello. */
  disks: readonly { device?: string | null; logicalSector?: number | null }[];
}

/**
 * Checks what an agent says in its finish against what the server knows:
 * the disk's size and chunk size are the capture's, the sector size is the
 * disk's, the device is the one the capture named or one the machine
 * reported, and bad ranges lie inside the disk in order.
 */
export function checkFinish(body: unknown, known: KnownDisk): FinishBody {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw bad('finish needs a JSON object');
  const m = body as Record<string, unknown>;
  const pow2 = (n: unknown): n is number => Number.isSafeInteger(n) && Number.isInteger(Math.log2(n as number));
  const { diskSize, chunkSize, sectorSize } = m;
  if (typeof diskSize !== 'number' || !Number.isSafeInteger(diskSize) || diskSize <= 0) throw bad(`disk size ${String(diskSize).slice(0, 32)} is not a byte count`);
  if (known.diskSize > 0 && diskSize !== known.diskSize) throw bad(`disk size ${diskSize} differs from the ${known.diskSize} bytes the machine reported for ${known.device}`);
  if (!pow2(chunkSize) || chunkSize < CHUNK.MIN_SIZE || chunkSize > CHUNK.MAX_SIZE) throw bad(`chunk size ${String(chunkSize).slice(0, 32)} is not a power of two from ${CHUNK.MIN_SIZE} to ${CHUNK.MAX_SIZE}`);
  if (chunkSize !== known.chunkSize) throw bad(`chunk size ${chunkSize} is not the capture's ${known.chunkSize}`);
  if (!pow2(sectorSize) || sectorSize < 512 || sectorSize > 65536) throw bad(`sector size ${String(sectorSize).slice(0, 32)} is not a power of two from 512 to 65536`);
  const device = checkDevice(m.device);
  const disk = known.disks.find((d) => d.device === device);
  if (device !== known.device && disk === undefined) throw bad(`device ${device} is neither the capture's ${known.device} nor a disk the machine reported`);
  if (typeof disk?.logicalSector === 'number' && disk.logicalSector > 0 && disk.logicalSector !== sectorSize) throw bad(`sector size ${sectorSize} differs from the ${disk.logicalSector} the machine reported for ${device}`);
  if (m.blockDevice !== undefined && typeof m.blockDevice !== 'boolean') throw bad('blockDevice must be true or false');
  const ranges = m.badRanges ?? [];
  if (!Array.isArray(ranges) || ranges.length > chunkCount(diskSize, chunkSize)) throw bad('bad ranges must be a list of at most one range per chunk');
  let end = 0;
  const badRanges = ranges.map((r: unknown, k: number) => {
    const { offset, length } = (typeof r === 'object' && r !== null ? r : {}) as Record<string, unknown>;
    if (typeof offset !== 'number' || typeof length !== 'number' || !Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < end || length <= 0 || offset + length > diskSize) {
      throw bad(`bad range ${k} must be {offset, length} inside the disk, after the range before it`);
    }
    end = offset + length;
    return { offset, length };
  });
  const used: FinishBody['used'] = {};
  try {
    if (m.partitions !== undefined) used.partitions = checkPartitionReads(m.partitions, diskSize);
    if (m.usedBytes !== undefined) used.usedBytes = checkUsedBytes(m.usedBytes, diskSize);
  } catch (err) {
    throw bad((err as Error).message);
  }
  return { diskSize, sectorSize, chunkSize, partitionTable: m.partitionTable, badRanges, device, blockDevice: m.blockDevice === true, progress: m.progress, used };
}

/** The used-block record, each entry held against the partition it names (index, start and length). */
export function checkUsedAgainstTable(used: FinishBody['used'], table: PartitionTable): FinishBody['used'] {
  for (const [k, r] of (used.partitions ?? []).entries()) {
    const p = table.partitions[r.index];
    if (p === undefined || p.start !== r.start || p.size !== r.length) throw bad(`partitions[${k}] does not match partition ${r.index} of the partition table`);
  }
  return used;
}

/** A device path as an agent names it: printable, short. */
export function checkDevice(device: unknown): string {
  if (typeof device !== 'string' || !/^[\x21-\x7e]{1,256}$/.test(device)) throw bad('device must be a path of 1-256 printable characters');
  return device;
}

/**
 * Checks every record of a chunk table: one per chunk of the disk; a known
 * kind, reserved bytes zero; zero and absent records carry nothing; a data
 * record names (by its SHA-256, the stored chunk's identity, checked when it
 * was stored) a stored chunk whose header agrees with it: the length of that
 * chunk of the disk, xxh64, and a file that holds them. Throws at the first
 * record that does not hold, naming it. A data record's codec and stored
 * length are set to the stored chunk's (the agent may have compressed the
 * chunk otherwise than the copy the store already held).
 */
export async function checkTable(store: Store, table: Buffer, diskSize: number, chunkSize: number): Promise<void> {
  const n = tableLength(table);
  if (!Number.isInteger(n) || n !== chunkCount(diskSize, chunkSize)) throw bad(`the chunk table has ${n} records where a disk of ${diskSize} bytes has ${chunkCount(diskSize, chunkSize)} chunks of ${chunkSize}`);
  const heads = new Map<string, ReturnType<typeof decodeChunkHeader> & { size: number }>();
  for (let i = 0; i < n; i++) {
    // A big table is many header reads: the event loop (pacing, DHCP) gets its turn.
    if (i % 4096 === 4095) await new Promise((r) => setImmediate(r));
    const r = chunkAt(table, i);
    const at = `chunk table record ${i}`;
    if (table.readUInt16BE(i * MANIFEST.RECORD_SIZE + 2) !== 0) throw bad(`${at}: reserved bytes are not zero`);
    if (r.kind === ChunkKind.ZERO || r.kind === ChunkKind.ABSENT || r.kind === ChunkKind.UNUSED) {
      if (r.storedLength !== 0 || r.xxh64 !== 0n || r.compression !== 0 || r.sha256.some((b) => b !== 0)) throw bad(`${at}: ${['a zero', '', 'an absent', 'an unused'][r.kind]} chunk carries no hash, codec or length`);
      continue;
    }
    if (r.kind !== ChunkKind.DATA) throw bad(`${at}: unknown kind ${r.kind}`);
    const sha = r.sha256.toString('hex');
    let h = heads.get(sha);
    if (h === undefined) {
      const stored = store.chunkHead(r.sha256);
      if (stored === null) throw new ClonecastError(ERR.CHUNK_MISSING, `${at}: chunk ${sha} was never uploaded`);
      h = { ...decodeChunkHeader(stored.head, `stored chunk ${sha}`), size: stored.size };
      // Stored files may be padded (O_DIRECT), never short.
      if (h.size < CHUNK.HEADER_SIZE + h.payloadLength) throw new ClonecastError(ERR.CHUNK_CORRUPT, `${at}: the stored chunk ${sha} is shorter than its header says; run "clonecast image verify"`);
      heads.set(sha, h);
    }
    const want = chunkLength(i, diskSize, chunkSize);
    if (h.rawLength !== want) throw bad(`${at}: names a chunk of ${h.rawLength} bytes where the disk has ${want}`);
    if (h.xxh64 !== r.xxh64) throw bad(`${at}: its xxh64 differs from the stored chunk it names`);
    // How a chunk is stored is the store's fact, not the agent's: a chunk the
    // store already held (imported with another codec, or recompressed) keeps
    // its stored form, and the record says so.
    if (h.compression !== r.compression || h.payloadLength !== r.storedLength) setChunk(table, i, { ...r, compression: h.compression, storedLength: h.payloadLength, sha256: Buffer.from(r.sha256) });
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
  const seen = new Set<number>();
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
    const number = int(q.number, 'number');
    if (number < 1 || number > 256 || seen.has(number)) throw bad(`partition ${k} number must be 1-256 and not repeated`);
    seen.add(number);
    return {
      number,
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
