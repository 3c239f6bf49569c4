/**
 * Assembly (P2V): a new version of an image made of partitions of stored
 * versions, under a new partition table (server/store/assemble-plan.ts lays
 * it out; protocol/gpt-write.ts writes the table).
 *
 * Each chunk of the new disk is one of:
 * - reused: it lies wholly inside a partition whose source chunks line up
 *   with it (same chunk size, source and target starts both chunk-aligned)
 *   and the source chunk holds only bytes of that partition. Its record is
 *   copied as it is (any kind): nothing is read or stored.
 * - built: its bytes are put together from the new table, source partition
 *   bytes (source chunks decoded and checked against their manifest's
 *   xxh64 and SHA-256) and zeros, then stored like an import stores chunks.
 *   Source bytes of ABSENT or UNUSED chunks count as zeros there, except
 *   that a chunk made only of UNUSED source bytes stays UNUSED, and one made
 *   only of ABSENT and UNUSED bytes stays ABSENT (nothing that was never
 *   read is ever stored as if it were data).
 *
 * The version is published after one barrier makes every new chunk durable.
 */
import { randomBytes } from 'node:crypto';
import { chunkCount, chunkLength, CHUNK, decodeChunk, decodeChunkHeader, defaultCodec, encodeChunk, isZero, type ChunkCodec } from '../../protocol/chunk.js';
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { encodeGpt, encodeMbr, type RandomBytes } from '../../protocol/gpt-write.js';
import { initHashes, sha256, xxh64 } from '../../protocol/hash.js';
import { chunkAt, ChunkKind, mergeRanges, newChunkTable, setChunk, type AssembledPart, type BadRange, type ChunkRecord, type ManifestMeta } from '../../protocol/manifest.js';
import { readPartitionTable, type PartitionTable } from '../../protocol/partitions.js';
import { native } from '../../native/addon.js';
import { Progress, type ProgressOptions } from '../progress.js';
import { checkCodec, codecName } from './import.js';
import { planAssembly, type AssemblyPlan, type LayoutOptions, type PartSpec, type PlacedPart } from './assemble-plan.js';
import { chunkFileFits, DIRECT_UNIT, checkName, type Store } from './store.js';

/** Options of assembleImage(). */
export interface AssembleOptions extends LayoutOptions {
  /** How built chunks are compressed (default: defaultCodec()). */
  codec?: ChunkCodec;
  progress?: ProgressOptions;
  /** Where the fresh GUIDs and the MBR signature come from (default crypto.randomBytes). */
  random?: RandomBytes;
}

/** What an assembly did. */
export interface AssembleSummary {
  name: string;
  version: number;
  parent: number | null;
  diskSize: number;
  table: PartitionTable;
  assembledFrom: AssembledPart[];
  chunks: number;
  /** Chunk records copied from the sources (no read, no copy). */
  reusedChunks: number;
  /** Chunks put together from the table, source bytes and zeros. */
  builtChunks: number;
  /** Built chunks the store did not hold yet, and their stored bytes. */
  newChunks: number;
  newBytes: number;
  /** Source bytes decoded to build chunks. */
  bytesRead: number;
  codec: string;
  seconds: number;
}

/** Builds the next version of image name from the partitions specs name, in order. */
export async function assembleImage(store: Store, name: string, specs: readonly PartSpec[], options: AssembleOptions = {}): Promise<AssembleSummary> {
  checkName(name);
  const codec = checkCodec(options.codec ?? defaultCodec());
  const started = performance.now();
  const lock = store.lockImage(name, `assembling ${name}`);
  try {
    const reader = store.lockReader(`reading partitions to assemble ${name}`);
    try {
      const plan = await planAssembly(store, specs, options);
      return await assemble(store, name, plan, codec, options, started);
    } finally {
      reader.release();
    }
  } finally {
    lock.release();
  }
}

/** A byte range of the new disk and where its bytes come from. */
interface Piece {
  from: number;
  to: number;
  /** Bytes of the table, or of a partition (its source bytes start at sourceAt). */
  table?: Buffer;
  tableAt?: number;
  part?: PlacedPart;
}

async function assemble(store: Store, name: string, plan: AssemblyPlan, codec: ChunkCodec, options: AssembleOptions, started: number): Promise<AssembleSummary> {
  await initHashes();
  const random = options.random ?? randomBytes;
  const { diskSize, chunkSize, sectorSize } = plan;
  const entries = plan.parts.map((p) => p.entry);
  const pieces: Piece[] = [];
  let diskId: string;
  if (plan.table === 'gpt') {
    const gpt = encodeGpt(entries, diskSize, sectorSize, random);
    pieces.push({ from: 0, to: gpt.head.length, table: gpt.head, tableAt: 0 }, { from: gpt.tailOffset, to: gpt.tailOffset + gpt.tail.length, table: gpt.tail, tableAt: gpt.tailOffset });
    diskId = gpt.diskGuid;
  } else {
    const mbr = encodeMbr(entries, diskSize, sectorSize, random);
    pieces.push({ from: 0, to: mbr.head.length, table: mbr.head, tableAt: 0 });
    diskId = mbr.signature;
  }
  for (const p of plan.parts) pieces.push({ from: p.start, to: p.start + p.dataLength, part: p });
  pieces.sort((a, b) => a.from - b.from);
  // The table as the normal reader sees it: what image info, export and deploy will use.
  const head = Buffer.alloc(Math.min(diskSize, 1 << 20));
  for (const pc of pieces) if (pc.table !== undefined && pc.from < head.length) pc.table.copy(head, pc.from);
  const partitionTable = await readPartitionTable(head, sectorSize, async () => null);
  checkReadBack(partitionTable, plan, diskId);

  const n = chunkCount(diskSize, chunkSize);
  const table = newChunkTable(n);
  const builder = new ChunkBuilder(store, codec, chunkSize);
  const progress = new Progress(`assemble ${name}`, diskSize, options.progress);
  const stats = { reusedChunks: 0, builtChunks: 0 };
  let k = 0;
  for (let i = 0; i < n; i++) {
    // Empty stretches cost no await: let the event loop (the API, the sessions) run now and then.
    if (i % 4096 === 4095) await new Promise((r) => setImmediate(r));
    const a = i * chunkSize;
    const b = a + chunkLength(i, diskSize, chunkSize);
    while (k < pieces.length && pieces[k].to <= a) k++;
    const here: Piece[] = [];
    for (let j = k; j < pieces.length && pieces[j].from < b; j++) if (pieces[j].to > a) here.push(pieces[j]);
    const reused = here.length === 1 ? reusable(here[0], a, b, chunkSize) : null;
    if (reused !== null) {
      setChunk(table, i, reused);
      stats.reusedChunks++;
    } else if (here.length > 0) {
      setChunk(table, i, await builder.build(a, b, here));
      stats.builtChunks++;
    }
    progress.add(b - a);
  }
  progress.finish();
  await store.barrier();
  const versions = store.versions(name);
  const parent = versions.length > 0 ? versions[versions.length - 1] : null;
  const assembledFrom: AssembledPart[] = plan.parts.map((p, index) => ({ index, image: p.image, version: p.version, partition: p.source.number, start: p.start, length: p.length, sourceStart: p.source.start }));
  const meta: ManifestMeta = {
    name,
    version: 0,
    diskSize,
    sectorSize,
    chunkSize,
    createdAt: new Date().toISOString(),
    parent,
    source: { path: '(assembled)', kind: 'file', description: `assembled from ${plan.parts.map((p) => `${p.image}@${p.version} partition ${p.source.number}`).join(', ')}` },
    partitionTable,
    badRanges: badRanges(plan),
    newBytes: builder.newBytes,
    assembledFrom,
  };
  const version = store.publish({ meta, table });
  const seconds = (performance.now() - started) / 1000;
  return { name, version, parent, diskSize, table: partitionTable, assembledFrom, chunks: n, ...stats, newChunks: builder.newChunks, newBytes: builder.newBytes, bytesRead: builder.bytesRead, codec: codecName(codec), seconds };
}

// The record of a source chunk that can stand for target chunk [a, b) as it is, or null.
function reusable(pc: Piece, a: number, b: number, chunkSize: number): ChunkRecord | null {
  const p = pc.part;
  if (p === undefined || a < pc.from || b > pc.to) return null;
  const m = p.manifest.meta;
  const at = p.source.start + (a - p.start);
  if (m.chunkSize !== chunkSize || at % chunkSize !== 0) return null;
  const j = at / chunkSize;
  if (chunkLength(j, m.diskSize, chunkSize) !== b - a) return null;
  const r = chunkAt(p.manifest.table, j);
  return { ...r, sha256: Buffer.from(r.sha256) };
}

// A partition's table entry must read back as planned, or nothing is published.
function checkReadBack(t: PartitionTable, plan: AssemblyPlan, diskId: string): void {
  const ok =
    t.scheme === plan.table &&
    t.warnings.length === 0 &&
    t.diskId === diskId &&
    t.partitions.length === plan.parts.length &&
    plan.parts.every((p, i) => t.partitions[i].start === p.start && t.partitions[i].size === p.length);
  if (!ok) throw new ClonecastError(ERR.PARTITION_TABLE, `the new ${plan.table} table did not read back as planned (${JSON.stringify(t)}); nothing was published`);
}

// Source bad ranges inside the copied bytes, moved to where the partition now lies.
function badRanges(plan: AssemblyPlan): BadRange[] {
  const moved: BadRange[] = [];
  for (const p of plan.parts) {
    const s0 = p.source.start;
    const s1 = s0 + p.dataLength;
    for (const r of p.manifest.meta.badRanges) {
      const from = Math.max(r.offset, s0);
      const to = Math.min(r.offset + r.length, s1);
      if (from < to) moved.push({ offset: p.start + (from - s0), length: to - from });
    }
  }
  moved.sort((x, y) => x.offset - y.offset);
  const out: BadRange[] = [];
  mergeRanges(out, moved);
  return out;
}

/** Puts built chunks together and stores them (one at a time, on this thread). */
class ChunkBuilder {
  newChunks = 0;
  newBytes = 0;
  bytesRead = 0;
  private readonly raw: Buffer;
  private readonly stored: Buffer;
  // The last decoded source chunks (an unaligned partition's target chunk spans two).
  private readonly cache = new Map<string, Buffer>();

  constructor(
    private readonly store: Store,
    private readonly codec: ChunkCodec,
    private readonly chunkSize: number,
  ) {
    this.raw = Buffer.alloc(chunkSize);
    this.stored = native().alignedBuffer(Math.ceil((CHUNK.HEADER_SIZE + chunkSize) / DIRECT_UNIT) * DIRECT_UNIT, DIRECT_UNIT);
  }

  /** The record of target chunk [a, b) made of pieces (zeros between them). */
  async build(a: number, b: number, pieces: Piece[]): Promise<ChunkRecord> {
    const raw = this.raw.subarray(0, b - a);
    raw.fill(0);
    let unused = 0;
    let absent = 0;
    for (const pc of pieces) {
      const from = Math.max(a, pc.from);
      const to = Math.min(b, pc.to);
      if (pc.table !== undefined) {
        pc.table.copy(raw, from - a, from - pc.tableAt!, to - pc.tableAt!);
        continue;
      }
      const kinds = await this.copySource(pc.part!, from, to, raw.subarray(from - a, to - a));
      unused += kinds.unused;
      absent += kinds.absent;
    }
    const none = { compression: 0 as const, storedLength: 0, xxh64: 0n, sha256: Buffer.alloc(32) };
    if (unused === b - a) return { ...none, kind: ChunkKind.UNUSED };
    if (unused + absent === b - a) return { ...none, kind: ChunkKind.ABSENT };
    if (isZero(raw)) return { ...none, kind: ChunkKind.ZERO };
    return this.put(raw);
  }

  // Copies the source bytes of target range [from, to) into out; counts the bytes that were ABSENT or UNUSED.
  private async copySource(p: PlacedPart, from: number, to: number, out: Buffer): Promise<{ unused: number; absent: number }> {
    const m = p.manifest.meta;
    const counts = { unused: 0, absent: 0 };
    let s = p.source.start + (from - p.start);
    const end = s + (to - from);
    while (s < end) {
      const j = Math.floor(s / m.chunkSize);
      const c0 = j * m.chunkSize;
      const len = chunkLength(j, m.diskSize, m.chunkSize);
      const take = Math.min(end, c0 + len) - s;
      const r = chunkAt(p.manifest.table, j);
      if (r.kind === ChunkKind.DATA) {
        const bytes = await this.sourceChunk(p, j, r, len);
        bytes.copy(out, s - (p.source.start + (from - p.start)), s - c0, s - c0 + take);
        this.bytesRead += take;
      } else if (r.kind === ChunkKind.UNUSED) counts.unused += take;
      else if (r.kind === ChunkKind.ABSENT) counts.absent += take;
      s += take;
    }
    return counts;
  }

  // A source chunk's bytes, decoded and checked against its manifest record.
  private async sourceChunk(p: PlacedPart, j: number, r: ChunkRecord, len: number): Promise<Buffer> {
    const hex = r.sha256.toString('hex');
    const hit = this.cache.get(hex);
    if (hit !== undefined) return hit;
    const where = `chunk ${j} of ${p.image}@${p.version} (${hex})`;
    const { raw, header } = decodeChunk(await this.store.readChunk(hex), where);
    if (raw.length !== len || header.xxh64 !== r.xxh64 || !sha256(raw).equals(r.sha256)) {
      throw new ClonecastError(ERR.CHUNK_CORRUPT, `${where} does not match its manifest (length, xxh64 or SHA-256); nothing was published. Run "clonecast image verify"`, { sha: hex });
    }
    if (this.cache.size >= 4) this.cache.delete(this.cache.keys().next().value!);
    this.cache.set(hex, raw);
    return raw;
  }

  // Stores a built chunk unless the store holds it already (as an import does).
  private async put(raw: Buffer): Promise<ChunkRecord> {
    const hash = xxh64(raw);
    const sha = sha256(raw);
    const found = this.store.chunkHead(sha);
    let damaged = false;
    if (found !== null && found.size > 0) {
      try {
        const h = decodeChunkHeader(found.head);
        if (h.rawLength === raw.length && h.xxh64 === hash && chunkFileFits(found.size, h.payloadLength)) {
          return { kind: ChunkKind.DATA, compression: h.compression, storedLength: h.payloadLength, xxh64: hash, sha256: sha };
        }
      } catch {
        // a torn or damaged file: replaced below
      }
      damaged = true;
    }
    const { compression, data } = encodeChunk(raw, hash, this.stored, this.codec);
    const length = data.length;
    if (await this.store.putChunk(sha, this.stored, length, damaged || found?.size === 0)) {
      this.newChunks++;
      this.newBytes += length;
    } else {
      // Another writer stored it first, maybe with another codec: record the form its file holds.
      const won = this.store.chunkHead(sha);
      const h = won === null ? null : decodeChunkHeader(won.head);
      if (h !== null && h.rawLength === raw.length && h.xxh64 === hash) return { kind: ChunkKind.DATA, compression: h.compression, storedLength: h.payloadLength, xxh64: hash, sha256: sha };
    }
    return { kind: ChunkKind.DATA, compression, storedLength: length - CHUNK.HEADER_SIZE, xxh64: hash, sha256: sha };
  }
}
