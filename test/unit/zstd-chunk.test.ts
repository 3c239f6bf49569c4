import { beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CHUNK, Compression, decodeChunk, defaultCodec, encodeChunk, writeChunkHeader } from '../../protocol/chunk.js';
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { initHashes, xxh64 } from '../../protocol/hash.js';
import { nativeIfBuilt } from '../../native/addon.js';
import { useNativeZstd, ZSTD, zstdAvailable } from '../../protocol/zstd.js';
import { ChunkCheck } from '../../transfer/chunk-check.js';
import { Store } from '../../server/store/store.js';
import { importImage } from '../../server/store/import.js';
import { itNeeds, tempDir, texty } from '../helpers.js';

// A stored chunk of 4096 bytes of 'a' at zstd level 3, byte for byte what
// `zstd -3 --no-check` writes for that file (checked below when zstd is installed).
const ZSTD_FIXTURE = [
  '4343484b', //          0 magic "CCHK"
  '01', //                4 format version 1
  '02', //                5 compression 2 = zstd
  '0000', //              6 reserved
  '00001000', //          8 uncompressed length 4096
  '00000013', //         12 payload length 19
  'XXH64___________', // 16 xxh64 of 4096 x 'a' (filled in below)
  '28b52ffd', //         24 zstd frame magic (RFC 8878 3.1.1, little-endian 0xFD2FB528)
  '60', //               28 frame header descriptor: content size in 2 bytes, single segment, no checksum
  '000f', //             29 frame content size - 256, little-endian: 0x0f00 + 256 = 4096
  '4d0000', //           31 block header: last block, compressed, 9 bytes
  '1061610100fbf70116', // 34 the compressed block
].join('');

const A4K = Buffer.alloc(4096, 0x61);
const fixture = () => Buffer.from(ZSTD_FIXTURE.replace('XXH64___________', xxh64(A4K).toString(16).padStart(16, '0')), 'hex');
const ZSTD_CODEC = { compression: Compression.ZSTD, level: ZSTD.DEFAULT_LEVEL };

/** A stored zstd chunk whose header says rawLength and whose payload is `payload`. */
function storedForm(payload: Buffer, rawLength: number, hash: bigint): Buffer {
  const out = Buffer.alloc(CHUNK.HEADER_SIZE + payload.length);
  writeChunkHeader(out, { compression: Compression.ZSTD, rawLength, payloadLength: payload.length, xxh64: hash });
  payload.copy(out, CHUNK.HEADER_SIZE);
  return out;
}

function expectCorrupt(f: () => unknown): void {
  let err: unknown;
  try {
    f();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(ClonecastError);
  expect((err as ClonecastError).code).toBe(ERR.CHUNK_CORRUPT);
}

beforeAll(() => initHashes());

describe('zstd chunks', () => {
  itNeeds(['zstd'], 'decodes the zstd golden fixture field by field', () => {
    const { header, raw } = decodeChunk(fixture());
    expect(header).toEqual({ compression: Compression.ZSTD, rawLength: 4096, payloadLength: 19, xxh64: xxh64(A4K) });
    expect(raw.equals(A4K)).toBe(true);
  });

  itNeeds(['zstd'], 'encodes the golden fixture byte for byte, as the zstd command does', () => {
    const { compression, data } = encodeChunk(A4K, undefined, undefined, { compression: Compression.ZSTD, level: 3 });
    expect(compression).toBe(Compression.ZSTD);
    expect(data.toString('hex')).toBe(fixture().toString('hex'));
    if (spawnSync('zstd', ['--version']).status === 0) {
      const dir = tempDir('zstd');
      writeFileSync(join(dir, 'a'), A4K);
      execFileSync('zstd', ['-q', '-3', '--no-check', join(dir, 'a'), '-o', join(dir, 'a.zst')]);
      expect(readFileSync(join(dir, 'a.zst')).equals(data.subarray(CHUNK.HEADER_SIZE))).toBe(true);
    }
  });

  itNeeds(['zstd'], 'is the default codec where libzstd loads', () => {
    expect(defaultCodec()).toEqual({ compression: Compression.ZSTD, level: ZSTD.DEFAULT_LEVEL });
    expect(encodeChunk(texty(CHUNK.DEFAULT_SIZE, 2)).compression).toBe(Compression.ZSTD);
  });

  itNeeds(['zstd'], 'round-trips compressible, incompressible and short chunks at several levels', () => {
    for (const level of [1, 3, 9, 19]) {
      for (const raw of [texty(CHUNK.DEFAULT_SIZE, 7), randomBytes(CHUNK.DEFAULT_SIZE), texty(12345, 3), randomBytes(1), Buffer.alloc(CHUNK.MAX_SIZE, 7)]) {
        const { compression, data } = encodeChunk(raw, undefined, undefined, { compression: Compression.ZSTD, level });
        const decoded = decodeChunk(data);
        expect(decoded.raw.equals(raw)).toBe(true);
        if (compression === Compression.ZSTD) expect(data.length).toBeLessThanOrEqual(CHUNK.HEADER_SIZE + Math.floor(raw.length * (1 - CHUNK.MIN_SAVING)));
      }
    }
    // Random data saves nothing: stored raw, as with lz4.
    expect(encodeChunk(randomBytes(1 << 20), undefined, undefined, ZSTD_CODEC).compression).toBe(Compression.RAW);
  });

  itNeeds(['zstd'], 'decodes raw, lz4 and zstd chunks side by side (one image may mix them)', () => {
    const raws = [texty(1 << 20, 11), texty(1 << 20, 12), texty(1 << 20, 13), randomBytes(1 << 16)];
    const codecs = [{ compression: Compression.LZ4 }, ZSTD_CODEC, { compression: Compression.RAW }, ZSTD_CODEC];
    const stored = raws.map((r, i) => encodeChunk(r, undefined, undefined, codecs[i]));
    expect(stored.map((s) => s.compression)).toEqual([Compression.LZ4, Compression.ZSTD, Compression.RAW, Compression.RAW]);
    // zstd at the default level beats lz4 on the same bytes.
    expect(encodeChunk(raws[0], undefined, undefined, ZSTD_CODEC).data.length).toBeLessThan(stored[0].data.length);
    stored.forEach((s, i) => expect(decodeChunk(s.data).raw.equals(raws[i])).toBe(true));
  });

  itNeeds(['zstd'], 'rejects a corrupted zstd payload with CHUNK_CORRUPT, never a crash or wrong bytes', () => {
    const raw = texty(1 << 18, 5);
    const { data } = encodeChunk(raw, undefined, undefined, ZSTD_CODEC);
    let rejected = 0;
    for (let i = 0; i < 2000; i++) {
      const bad = Buffer.from(data);
      const at = CHUNK.HEADER_SIZE + ((i * 7919) % (data.length - CHUNK.HEADER_SIZE));
      bad[at] ^= 1 + (i % 255);
      try {
        const { raw: out } = decodeChunk(bad);
        expect(out.equals(raw)).toBe(true); // a flip zstd ignores may only give the right bytes
      } catch (err) {
        expect(err).toBeInstanceOf(ClonecastError);
        expect((err as ClonecastError).code).toBe(ERR.CHUNK_CORRUPT);
        rejected++;
      }
    }
    expect(rejected).toBeGreaterThan(1900);
    // Random payloads behind a valid zstd header.
    for (let i = 0; i < 2000; i++) {
      const payload = Buffer.concat([Buffer.from('28b52ffd', 'hex'), randomBytes(1 + (i % 300))]);
      expectCorrupt(() => decodeChunk(storedForm(payload, 4096, 0n)));
    }
  });

  itNeeds(['zstd'], 'rejects a frame whose length differs from the header, a truncated frame and two frames', () => {
    const f = fixture();
    const frame = f.subarray(CHUNK.HEADER_SIZE);
    const h = xxh64(A4K);
    // The header says 4095 or 4097 bytes, the frame 4096.
    expectCorrupt(() => decodeChunk(storedForm(frame, 4095, h)));
    expectCorrupt(() => decodeChunk(storedForm(frame, 4097, h)));
    // The frame declares 4097 bytes (content size field + 1) but holds 4096.
    const lying = Buffer.from(frame);
    lying[5] += 1;
    expectCorrupt(() => decodeChunk(storedForm(lying, 4097, h)));
    // Truncated at every length.
    for (let n = 0; n < frame.length; n++) expectCorrupt(() => decodeChunk(storedForm(frame.subarray(0, n), 4096, h)));
    // Two frames of 2048 bytes each: one chunk is exactly one frame.
    const half = encodeChunk(Buffer.alloc(2048, 0x61), undefined, undefined, ZSTD_CODEC).data.subarray(CHUNK.HEADER_SIZE);
    expectCorrupt(() => decodeChunk(storedForm(Buffer.concat([half, half]), 4096, h)));
    // The header's payload length disagrees with the bytes there.
    const short = Buffer.from(f);
    short.writeUInt32BE(18, 12);
    expectCorrupt(() => decodeChunk(short));
  });

  itNeeds(['zstd'], 'says what to install when libzstd is not there', async () => {
    const addon = nativeIfBuilt()!;
    const dir = tempDir('nozstd');
    writeFileSync(join(dir, 'disk.img'), texty(256 << 10, 3));
    const store = Store.open(join(dir, 'data'));
    await importImage(store, join(dir, 'disk.img'), 'z', { chunkSize: 64 << 10, workers: 1 });
    writeFileSync(join(dir, 'other.img'), texty(256 << 10, 4)); // other chunks: an import reuses a stored chunk in its stored form
    await importImage(store, join(dir, 'other.img'), 'l', { chunkSize: 64 << 10, workers: 1, codec: { compression: Compression.LZ4 } });
    const zstdManifest = await store.readManifest('z', 1);
    const lz4Manifest = await store.readManifest('l', 1);
    useNativeZstd(null);
    try {
      expect(zstdAvailable()).toBe(false);
      let err: ClonecastError | undefined;
      try {
        decodeChunk(fixture(), 'chunk 7');
      } catch (e) {
        err = e as ClonecastError;
      }
      expect(err?.code).toBe(ERR.CODEC_UNAVAILABLE);
      expect(err?.message).toMatch(/libzstd1/);
      expect(defaultCodec().compression).toBe(Compression.LZ4);
      expect(() => encodeChunk(A4K, undefined, undefined, ZSTD_CODEC)).toThrow(/libzstd1/);
      // A receiver of an image with zstd chunks says so when it starts (Receiver.run() calls usable()), instead of asking for them for ever.
      expect(() => new ChunkCheck(zstdManifest, undefined).usable()).toThrow(/this image \(its chunk \d+ and others are zstd\) needs zstd.*libzstd1/);
      expect(() => new ChunkCheck(lz4Manifest, undefined).usable()).not.toThrow();
    } finally {
      useNativeZstd(addon);
    }
    expect(decodeChunk(fixture()).raw.equals(A4K)).toBe(true);
  });

  itNeeds(['zstd'], 'checks the addon arguments strictly', () => {
    const addon = nativeIfBuilt()!;
    expect(() => addon.zstdCompress(A4K, Buffer.alloc(100), 0)).toThrow(/level/);
    expect(() => addon.zstdCompress(A4K, Buffer.alloc(100), 23)).toThrow(/level/);
    expect(() => (addon.zstdDecompress as (...a: unknown[]) => number)(A4K)).toThrow(/expected/);
    expect(addon.zstdDecompress(fixture().subarray(CHUNK.HEADER_SIZE), Buffer.alloc(4000))).toBe(-1);
  });
});
