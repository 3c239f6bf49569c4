/**
 * The check every received chunk passes before it may be written: opened
 * (when the session is encrypted: the GCM tag first, nothing is decompressed
 * before it verifies), decoded, and compared with the manifest. The
 * manifest's hashes decide, not the packet's: xxh64 is a quick first look
 * (it can be forged: docs/security.md), SHA-256 the check.
 */
import { chunkAt, ChunkKind, tableLength, type Manifest } from '../protocol/manifest.js';
import { CHUNK, chunkLength, Compression, decodeChunk } from '../protocol/chunk.js';
import { requireZstd } from '../protocol/zstd.js';
import { sha256 } from '../protocol/hash.js';
import { open } from './seal.js';

/** Decodes chunk c's stored form into out; throws if it is not exactly the manifest's chunk. */
export class ChunkCheck {
  /** Where an encrypted chunk's stored form is opened into (one chunk at a time). */
  private plain: Buffer | undefined;

  constructor(
    private readonly manifest: Manifest,
    private readonly encryptKey: Uint8Array | undefined,
  ) {}

  /** Throws if some chunk could never be decoded here (zstd without libzstd): said at the start, not by asking for it for ever. */
  usable(): void {
    const { table } = this.manifest;
    for (let i = 0; i < tableLength(table); i++) {
      const r = chunkAt(table, i);
      if (r.kind === ChunkKind.DATA && r.compression === Compression.ZSTD) return requireZstd(`this image (its chunk ${i} and others are zstd)`);
    }
  }

  decode(c: number, stored: Buffer, out: Buffer, expectedXxh64: bigint): void {
    const { meta } = this.manifest;
    if (this.encryptKey !== undefined) {
      const opened = open(this.encryptKey, c, stored, this.plain ??= Buffer.allocUnsafe(CHUNK.HEADER_SIZE + meta.chunkSize));
      if (opened === null) throw new Error('the encryption tag does not verify');
      stored = opened;
    }
    const { header, raw } = decodeChunk(stored, `chunk ${c}`, out);
    if (header.xxh64 !== expectedXxh64 || header.rawLength !== chunkLength(c, meta.diskSize, meta.chunkSize)) throw new Error('does not match the manifest');
    if (!sha256(raw).equals(chunkAt(this.manifest.table, c).sha256)) throw new Error('SHA-256 differs from the manifest');
  }
}
