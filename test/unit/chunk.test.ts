import { describe, expect, it, beforeAll } from 'vitest';
import { randomBytes } from 'node:crypto';
import { compressSync, uncompressSync } from 'lz4-napi';
import { CHUNK, Compression, defaultCodec, decodeChunk, decodeChunkHeader, encodeChunk, isZero, chunkCount, chunkLength } from '../../protocol/chunk.js';
import { ClonecastError } from '../../protocol/errors.js';
import { initHashes, sha256, xxh64, xxh64Wasm, xxh64Implementation } from '../../protocol/hash.js';
import '../../native/addon.js';
import { lz4Implementation, lz4CompressInto, lz4DecompressInto } from '../../protocol/lz4.js';
import { texty } from '../helpers.js';

// A stored chunk of the 16 bytes "0123456789abcdef": too small to compress, kept raw.
const RAW_FIXTURE = [
  '4343484b', //          0 magic "CCHK"
  '01', //                4 format version 1
  '00', //                5 compression 0 = raw
  '0000', //              6 reserved
  '00000010', //          8 uncompressed length 16
  '00000010', //         12 payload length 16
  '5c5b90c34e376d0b', // 16 xxh64 seed 0 (as printed by `xxhsum -H64`)
  '30313233343536373839616263646566', // 24 payload
].join('');

// A stored chunk of 4096 bytes of 'a', compressed by liblz4 (LZ4_compress_default).
const LZ4_FIXTURE = [
  '4343484b', //          0 magic
  '01', //                4 version
  '01', //                5 compression 1 = lz4
  '0000', //              6 reserved
  '00001000', //          8 uncompressed length 4096
  '0000001e', //         12 payload length 30
  'ce6b4f8f1b72d1ad', // 16 xxh64 of 4096 x 'a' (checked in the test below)
  // payload: u32 LE 4096, then the LZ4 block (token 0x1f: 1 literal, match length 15+...)
  '001000001f610100fffffffffffffffffffffffffffffff6506161616161',
].join('');

beforeAll(() => initHashes());

describe('chunk format', () => {
  it('decodes the raw golden fixture field by field', () => {
    const data = Buffer.from(RAW_FIXTURE, 'hex');
    const { header, raw } = decodeChunk(data);
    expect(header).toEqual({ compression: Compression.RAW, rawLength: 16, payloadLength: 16, xxh64: 0x5c5b90c34e376d0bn });
    expect(raw.toString()).toBe('0123456789abcdef');
  });

  it('encodes the raw golden fixture byte for byte', () => {
    const { compression, data } = encodeChunk(Buffer.from('0123456789abcdef'));
    expect(compression).toBe(Compression.RAW);
    expect(data.toString('hex')).toBe(RAW_FIXTURE);
  });

  it('decodes the lz4 golden fixture, whichever lz4 implementation is loaded', () => {
    const raw4k = Buffer.alloc(4096, 0x61);
    const fixture = Buffer.from(LZ4_FIXTURE.replace('ce6b4f8f1b72d1ad', xxh64(raw4k).toString(16).padStart(16, '0')), 'hex');
    const { header, raw } = decodeChunk(fixture);
    expect(header.compression).toBe(Compression.LZ4);
    expect(raw.equals(raw4k)).toBe(true);
  });

  it('round-trips compressible, incompressible and short chunks', () => {
    for (const raw of [texty(CHUNK.DEFAULT_SIZE, 7), randomBytes(CHUNK.DEFAULT_SIZE), texty(12345, 3), randomBytes(1)]) {
      const { compression, data } = encodeChunk(raw);
      const decoded = decodeChunk(data);
      expect(decoded.raw.equals(raw)).toBe(true);
      expect(decoded.header.xxh64).toBe(xxh64(raw));
      if (raw.length > 4096 && compression === Compression.LZ4) expect(data.length).toBeLessThan(raw.length);
    }
    expect(encodeChunk(randomBytes(1 << 20)).compression).toBe(Compression.RAW);
    expect(encodeChunk(texty(1 << 20, 1)).compression).toBe(defaultCodec().compression);
    expect(encodeChunk(texty(1 << 20, 1), undefined, undefined, { compression: Compression.LZ4 }).compression).toBe(Compression.LZ4);
  });

  it('writes payloads that lz4-napi reads, and reads what lz4-napi writes', () => {
    const raw = texty(300_000, 11);
    const out = Buffer.alloc(raw.length);
    const n = lz4CompressInto(raw, out);
    expect(n).toBeGreaterThan(0);
    expect(uncompressSync(out.subarray(0, n)).equals(raw)).toBe(true);
    const theirs = compressSync(raw);
    const back = Buffer.alloc(raw.length);
    expect(lz4DecompressInto(theirs, back)).toBe(raw.length);
    expect(back.equals(raw)).toBe(true);
    expect(['liblz4', 'lz4-napi']).toContain(lz4Implementation());
  });

  it('never returns wrong bytes from a corrupted stored chunk', () => {
    // A flipped byte either fails a check, or (an LZ4 match offset pointing
    // at an identical earlier copy) still decodes to the right bytes.
    const raw = texty(5000, 5);
    const { data } = encodeChunk(raw);
    let rejected = 0;
    for (let i = 0; i < data.length; i++) {
      const bad = Buffer.from(data);
      bad[i] ^= 0x40;
      try {
        expect(decodeChunk(bad).raw.equals(raw), `byte ${i}`).toBe(true);
      } catch (err) {
        expect(err).toBeInstanceOf(ClonecastError);
        rejected++;
      }
    }
    expect(rejected).toBeGreaterThan(data.length * 0.9);
  });

  it('rejects truncated and overlong chunks', () => {
    const { data } = encodeChunk(texty(5000, 5));
    expect(() => decodeChunk(data.subarray(0, data.length - 1))).toThrow(/payload bytes/);
    expect(() => decodeChunk(Buffer.concat([data, Buffer.alloc(1)]))).toThrow(/payload bytes/);
    expect(() => decodeChunkHeader(data.subarray(0, 10))).toThrow(/shorter than/);
  });

  it('never throws anything but ClonecastError on random bytes', () => {
    for (let i = 0; i < 3000; i++) {
      const junk = randomBytes(Math.floor(Math.random() * 80));
      if (i % 3 === 0 && junk.length >= 24) junk.writeUInt32BE(CHUNK.MAGIC, 0), (junk[4] = 1), (junk[5] = i % 2);
      try {
        decodeChunk(junk);
      } catch (err) {
        expect(err).toBeInstanceOf(ClonecastError);
      }
    }
  });

  it('computes xxh64 like xxhash-wasm for every length class (tail of 0-31 bytes, stripes)', async () => {
    expect(xxh64Implementation()).toBe('native');
    for (let len = 0; len < 300; len++) {
      const b = randomBytes(len);
      expect(xxh64(b), `length ${len}`).toBe(await xxh64Wasm(b));
    }
    const big = randomBytes(CHUNK.DEFAULT_SIZE + 13);
    expect(xxh64(big)).toBe(await xxh64Wasm(big));
    expect(xxh64(big.subarray(5, 1000))).toBe(await xxh64Wasm(big.subarray(5, 1000)));
  });

  it('detects zero chunks exactly', () => {
    const z = Buffer.alloc(CHUNK.DEFAULT_SIZE + 3);
    expect(isZero(z)).toBe(true);
    z[z.length - 1] = 1;
    expect(isZero(z)).toBe(false);
    z[z.length - 1] = 0;
    z[70000] = 1;
    expect(isZero(z)).toBe(false);
    expect(isZero(Buffer.alloc(0))).toBe(true);
  });

  it('cuts a disk into chunks with a short last one', () => {
    expect(chunkCount(10 * 1024 + 1, 1024)).toBe(11);
    expect(chunkLength(10, 10 * 1024 + 1, 1024)).toBe(1);
    expect(chunkLength(9, 10 * 1024 + 1, 1024)).toBe(1024);
    expect(sha256(Buffer.from('abc')).toString('hex')).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  });
});
