/**
 * What an NBD export serves: one stored version, read chunk by chunk through
 * the store, each chunk decoded and checked against the manifest (length and
 * xxh64, as the raw export does) before a byte of it is sent. Zero, absent and unused
 * chunks are holes that read as zeros. A small cache keeps the last few
 * decoded chunks, so memory stays bounded whatever the image size.
 *
 * A "difference" source (base given) serves the same bytes, but its block
 * status calls every chunk whose record equals the base's a hole that is
 * not known to be zero: `qemu-img convert -B` then leaves those to the
 * backing file and writes only what changed.
 */
import { chunkLength } from '../../protocol/chunk.js';
import { decodeChunk } from '../../protocol/chunk.js';
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { chunkAt, ChunkKind, MANIFEST, tableLength, type Manifest } from '../../protocol/manifest.js';
import { NBD, type Extent } from '../../protocol/nbd.js';
import type { Store } from '../store/store.js';

/** Bytes of decoded chunks kept (at least two chunks). */
export const DEFAULT_CACHE_BYTES = 16 << 20;

/** One piece of a read: data bytes, or a hole of zeros. */
export type Piece = { offset: number; hole: true; length: number } | { offset: number; hole: false; data: Buffer };

/** Counters for tests and the API. */
export interface SourceStats {
  chunksDecoded: number;
  bytesDecoded: number;
  cacheHits: number;
}

/** A stored version as a read-only block device. */
export class ImageSource {
  readonly size: number;
  readonly chunkSize: number;
  readonly stats: SourceStats = { chunksDecoded: 0, bytesDecoded: 0, cacheHits: 0 };
  private readonly cache = new Map<number, Promise<Buffer>>();
  private readonly cacheChunks: number;

  constructor(
    private readonly store: Store,
    readonly manifest: Manifest,
    private readonly base?: Manifest,
    cacheBytes = DEFAULT_CACHE_BYTES,
  ) {
    this.size = manifest.meta.diskSize;
    this.chunkSize = manifest.meta.chunkSize;
    this.cacheChunks = Math.max(2, Math.floor(cacheBytes / this.chunkSize));
    if (base !== undefined && (base.meta.chunkSize !== this.chunkSize)) {
      throw new ClonecastError(ERR.USAGE, `${base.meta.name}@${base.meta.version} has ${base.meta.chunkSize}-byte chunks and ${manifest.meta.name}@${manifest.meta.version} has ${this.chunkSize}: a difference needs the same chunk size; export a full image instead`);
    }
  }

  private isHole(i: number): boolean {
    return chunkAt(this.manifest.table, i).kind !== ChunkKind.DATA;
  }

  /** True if chunk i has the same record in the base (same bytes, same place). */
  private sameAsBase(i: number): boolean {
    const b = this.base;
    if (b === undefined || i >= tableLength(b.table)) return false;
    if (chunkLength(i, b.meta.diskSize, this.chunkSize) !== chunkLength(i, this.size, this.chunkSize)) return false;
    const r = MANIFEST.RECORD_SIZE;
    const mine = chunkAt(this.manifest.table, i);
    const theirs = chunkAt(b.table, i);
    if (mine.kind !== ChunkKind.DATA || theirs.kind !== ChunkKind.DATA) return (mine.kind === ChunkKind.DATA) === (theirs.kind === ChunkKind.DATA);
    return this.manifest.table.subarray(i * r + 16, i * r + 48).equals(b.table.subarray(i * r + 16, i * r + 48));
  }

  /** base:allocation flags of chunk i. */
  private flags(i: number): number {
    if (this.base !== undefined && this.sameAsBase(i)) return NBD.STATE_HOLE;
    return this.isHole(i) ? NBD.STATE_HOLE | NBD.STATE_ZERO : 0;
  }

  /** Block status of [offset, offset+length): extents of equal flags, at most maxExtents of them. */
  extents(offset: number, length: number, maxExtents: number): Extent[] {
    const out: Extent[] = [];
    const end = Math.min(this.size, offset + length);
    let at = offset;
    while (at < end) {
      const i = Math.floor(at / this.chunkSize);
      const stop = Math.min(end, (i + 1) * this.chunkSize);
      const flags = this.flags(i);
      const last = out[out.length - 1];
      // An extent length is a u32: cap merged runs below 4 GiB.
      if (last !== undefined && last.flags === flags && last.length + (stop - at) <= 0xfff00000) last.length += stop - at;
      else {
        if (out.length === maxExtents) break;
        out.push({ length: stop - at, flags });
      }
      at = stop;
    }
    return out;
  }

  /** The bytes of [offset, offset+length) as pieces in order (holes joined). */
  async read(offset: number, length: number): Promise<Piece[]> {
    const pieces: Piece[] = [];
    let at = offset;
    const end = offset + length;
    while (at < end) {
      const i = Math.floor(at / this.chunkSize);
      const start = i * this.chunkSize;
      const stop = Math.min(end, start + this.chunkSize);
      if (this.isHole(i)) {
        const last = pieces[pieces.length - 1];
        if (last !== undefined && last.hole) last.length += stop - at;
        else pieces.push({ offset: at, hole: true, length: stop - at });
      } else {
        const raw = await this.chunk(i);
        pieces.push({ offset: at, hole: false, data: raw.subarray(at - start, stop - start) });
      }
      at = stop;
    }
    return pieces;
  }

  /** Decoded chunk i, from the cache or the store. */
  private chunk(i: number): Promise<Buffer> {
    const hit = this.cache.get(i);
    if (hit !== undefined) {
      this.stats.cacheHits++;
      this.cache.delete(i);
      this.cache.set(i, hit);
      return hit;
    }
    const p = this.load(i);
    this.cache.set(i, p);
    p.catch(() => this.cache.delete(i));
    while (this.cache.size > this.cacheChunks) this.cache.delete(this.cache.keys().next().value!);
    return p;
  }

  private async load(i: number): Promise<Buffer> {
    const rec = chunkAt(this.manifest.table, i);
    const sha = rec.sha256.toString('hex');
    const { header, raw } = decodeChunk(await this.store.readChunk(sha), `chunk ${sha}`);
    const length = chunkLength(i, this.size, this.chunkSize);
    // As the raw export does (server/store/export.ts): decodeChunk checked the bytes against the chunk's
    // own xxh64, and that must be the manifest's; `image verify` re-hashes SHA-256.
    if (raw.length !== length || header.xxh64 !== rec.xxh64) {
      throw new ClonecastError(ERR.CHUNK_CORRUPT, `chunk ${sha} does not match the manifest for chunk ${i}; run "clonecast image verify"`, { sha, index: i });
    }
    this.stats.chunksDecoded++;
    this.stats.bytesDecoded += raw.length;
    return raw;
  }
}
