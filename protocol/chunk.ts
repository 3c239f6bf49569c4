/**
 * Chunks: the unit of storage, transfer and verification (docs/image-format.md).
 *
 * A disk is cut into fixed-size chunks. A chunk is compressed on its own with
 * zstd or lz4 (see below) and kept raw when compression saves less than
 * CHUNK.MIN_SAVING of it; each chunk records its codec, so one image may mix
 * them. All-zero chunks are never stored.
 *
 * The stored form of a chunk (a file in the store, and later the payload
 * carried by the multicast data packets) is a 24-byte header then the
 * payload. Big-endian:
 *
 *   offset size field
 *        0    4 magic "CCHK"
 *        4    1 format version (1)
 *        5    1 compression: 0 raw, 1 lz4, 2 zstd
 *        6    2 reserved, 0
 *        8    4 uncompressed length
 *       12    4 payload length
 *       16    8 xxh64 (seed 0) of the uncompressed bytes
 *   // sizeof = 24
 *
 * The lz4 payload is what lz4_flex's compress_prepend_size produces (the
 * lz4-napi block API): the uncompressed length as u32 little-endian, then one
 * LZ4 block (lz4 Block Format spec). This little-endian field belongs to the
 * library's framing and is checked against the header's length.
 *
 * The zstd payload is exactly one zstd frame (RFC 8878) whose frame header
 * declares the content size; it must equal the header's length, and the
 * frame must decode to exactly that many bytes.
 */
import { ClonecastError, ERR } from './errors.js';
import { xxh64 } from './hash.js';
import { lz4CompressInto, lz4DecompressInto } from './lz4.js';
import { ZSTD, zstdAvailable, zstdCompressInto, zstdDecompressInto } from './zstd.js';

/** Constants of the chunk format. */
export const CHUNK = Object.freeze({
  MAGIC: 0x4343484b, // "CCHK"
  VERSION: 1,
  HEADER_SIZE: 24,
  /** Default chunk size: 1 MiB (justified in docs/image-format.md). */
  DEFAULT_SIZE: 1 << 20,
  MIN_SIZE: 64 << 10,
  MAX_SIZE: 16 << 20,
  /** Compression must save at least 1/16 of a chunk, or it is stored raw. */
  MIN_SAVING: 1 / 16,
});

/** How a chunk's payload is encoded. */
export const Compression = Object.freeze({ RAW: 0, LZ4: 1, ZSTD: 2 } as const);
export type Compression = (typeof Compression)[keyof typeof Compression];

/** Names of the codecs, as the CLI and JSON output spell them. */
export const CODEC_NAMES: Readonly<Record<Compression, 'raw' | 'lz4' | 'zstd'>> = Object.freeze({ 0: 'raw', 1: 'lz4', 2: 'zstd' });

/** How to encode chunks: a codec and, for zstd, a level. */
export interface ChunkCodec {
  compression: Compression;
  /** zstd level (ZSTD.MIN_LEVEL to ZSTD.MAX_LEVEL); ignored by the others. */
  level?: number;
}

/** The codec new chunks get unless told: zstd at its default level where libzstd loads, else lz4. */
export function defaultCodec(): ChunkCodec {
  return zstdAvailable() ? { compression: Compression.ZSTD, level: ZSTD.DEFAULT_LEVEL } : { compression: Compression.LZ4 };
}

/** A decoded stored-chunk header. */
export interface ChunkHeader {
  compression: Compression;
  rawLength: number;
  payloadLength: number;
  xxh64: bigint;
}

const ZERO_PAGE = Buffer.alloc(64 << 10);

/** True if every byte of data is zero (compares against a zero page with memcmp). */
export function isZero(data: Uint8Array): boolean {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  for (let off = 0; off < buf.length; off += ZERO_PAGE.length) {
    const end = Math.min(off + ZERO_PAGE.length, buf.length);
    if (ZERO_PAGE.compare(buf, off, end, 0, end - off) !== 0) {
      // compare() orders ZERO_PAGE against the slice: any difference means non-zero.
      return false;
    }
  }
  return true;
}

/**
 * Encodes the stored form of raw chunk bytes: header followed by the
 * codec's payload (default: defaultCodec()), or by the raw bytes when
 * compression would not save CHUNK.MIN_SAVING of the chunk. With `into` (at
 * least HEADER_SIZE + raw length bytes), the stored form is written there
 * and `data` is a view of it.
 */
export function encodeChunk(raw: Buffer, hash: bigint = xxh64(raw), into?: Buffer, codec: ChunkCodec = defaultCodec()): { compression: Compression; data: Buffer } {
  const limit = Math.floor(raw.length * (1 - CHUNK.MIN_SAVING));
  const out = into ?? Buffer.allocUnsafe(CHUNK.HEADER_SIZE + raw.length);
  if (out.length < CHUNK.HEADER_SIZE + raw.length) throw new RangeError('output buffer is smaller than a chunk header plus the chunk');
  // Giving the compressor only `limit` bytes makes it give up early on incompressible data.
  const room = out.subarray(CHUNK.HEADER_SIZE, CHUNK.HEADER_SIZE + limit);
  let n = 0;
  if (codec.compression === Compression.ZSTD) n = zstdCompressInto(raw, room, codec.level ?? ZSTD.DEFAULT_LEVEL);
  else if (codec.compression === Compression.LZ4) n = lz4CompressInto(raw, room);
  const compression = n > 0 ? codec.compression : Compression.RAW;
  const payloadLength = n > 0 ? n : raw.length;
  if (n === 0) raw.copy(out, CHUNK.HEADER_SIZE);
  writeChunkHeader(out, { compression, rawLength: raw.length, payloadLength, xxh64: hash });
  return { compression, data: out.subarray(0, CHUNK.HEADER_SIZE + payloadLength) };
}

/** Writes a chunk header into the first CHUNK.HEADER_SIZE bytes of out. */
export function writeChunkHeader(out: Buffer, h: ChunkHeader): void {
  out.writeUInt32BE(CHUNK.MAGIC, 0);
  out.writeUInt8(CHUNK.VERSION, 4);
  out.writeUInt8(h.compression, 5);
  out.writeUInt16BE(0, 6);
  out.writeUInt32BE(h.rawLength, 8);
  out.writeUInt32BE(h.payloadLength, 12);
  out.writeBigUInt64BE(h.xxh64, 16);
}

/** Decodes and checks a chunk header; throws CHUNK_CORRUPT with what is wrong. */
export function decodeChunkHeader(data: Uint8Array, where = 'chunk'): ChunkHeader {
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const bad = (why: string) => new ClonecastError(ERR.CHUNK_CORRUPT, `${where} is corrupt: ${why}; run "clonecast image verify" to list damaged images`);
  if (buf.length < CHUNK.HEADER_SIZE) throw bad(`only ${buf.length} bytes, shorter than the ${CHUNK.HEADER_SIZE}-byte header`);
  if (buf.readUInt32BE(0) !== CHUNK.MAGIC) throw bad('bad magic');
  const version = buf.readUInt8(4);
  if (version !== CHUNK.VERSION) throw bad(`unknown chunk format version ${version}`);
  const compression = buf.readUInt8(5);
  if (compression !== Compression.RAW && compression !== Compression.LZ4 && compression !== Compression.ZSTD) throw bad(`unknown compression ${compression}`);
  const rawLength = buf.readUInt32BE(8);
  const payloadLength = buf.readUInt32BE(12);
  if (rawLength === 0 || rawLength > CHUNK.MAX_SIZE) throw bad(`uncompressed length ${rawLength} out of range`);
  if (compression === Compression.RAW && payloadLength !== rawLength) throw bad('raw payload length differs from chunk length');
  return { compression, rawLength, payloadLength, xxh64: buf.readBigUInt64BE(16) };
}

/**
 * Decodes a stored chunk back to its raw bytes and checks its xxh64.
 * Throws CHUNK_CORRUPT on any mismatch; never returns unchecked data. With
 * `out`, the raw bytes are written there (e.g. an aligned I/O buffer) and
 * `raw` is a view of it.
 */
export function decodeChunk(data: Uint8Array, where = 'chunk', out?: Buffer): { header: ChunkHeader; raw: Buffer } {
  const header = decodeChunkHeader(data, where);
  const buf = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  const bad = (why: string) => new ClonecastError(ERR.CHUNK_CORRUPT, `${where} is corrupt: ${why}; run "clonecast image verify" to list damaged images`);
  if (buf.length !== CHUNK.HEADER_SIZE + header.payloadLength) {
    throw bad(`${buf.length - CHUNK.HEADER_SIZE} payload bytes, header says ${header.payloadLength}`);
  }
  const payload = buf.subarray(CHUNK.HEADER_SIZE);
  const target = out ?? Buffer.allocUnsafe(header.rawLength);
  if (target.length < header.rawLength) throw new RangeError(`output buffer of ${target.length} bytes is smaller than the chunk (${header.rawLength})`);
  if (header.compression === Compression.RAW) {
    payload.copy(target);
  } else if (header.compression === Compression.ZSTD) {
    const n = zstdDecompressInto(payload, target.subarray(0, header.rawLength), where);
    if (n !== header.rawLength) throw bad(`zstd frame does not decode to exactly ${header.rawLength} bytes`);
  } else {
    if (payload.length < 4 || payload.readUInt32LE(0) !== header.rawLength) throw bad('lz4 length prefix differs from header');
    const n = lz4DecompressInto(payload, target.subarray(0, header.rawLength));
    if (n !== header.rawLength) throw bad(n < 0 ? 'lz4 block does not decode' : `decompressed to ${n} bytes, expected ${header.rawLength}`);
  }
  const raw = target.subarray(0, header.rawLength);
  if (xxh64(raw) !== header.xxh64) throw bad('xxh64 mismatch');
  return { header, raw };
}

/** Number of chunks for a disk of diskSize bytes. */
export function chunkCount(diskSize: number, chunkSize: number): number {
  return Math.ceil(diskSize / chunkSize);
}

/** Length of chunk index i (the last one may be short). */
export function chunkLength(index: number, diskSize: number, chunkSize: number): number {
  return Math.min(chunkSize, diskSize - index * chunkSize);
}
