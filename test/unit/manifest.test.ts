import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { chunkAt, ChunkKind, decodeManifest, encodeManifest, MANIFEST, newChunkTable, setChunk, type Manifest } from '../../protocol/manifest.js';
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { ROOT } from '../helpers.js';

// test/fixtures/manifest-v1.hex, a format-1 manifest of a 100000-byte disk
// in 64 KiB chunks (2 chunks: one lz4 data chunk, one zero chunk):
//   0  434349 4d414745 00      magic "CCIMAGE\0"
//   8  0001                    format version 1
//  10  0020                    header size 32
//  12  <u32>                   metadata JSON length
//  16  00000002                chunk count 2
//  20  00000030                record size 48
//  24  0000000000000000        reserved
//  32  {"name":"lab",...}      metadata
//   .  01 01 0000 0000012c 0123456789abcdef aa*32   chunk 0: data, lz4, 300 bytes
//   .  00 00 0000 00000000 0000000000000000 00*32   chunk 1: zero
// end  SHA-256 of all the above
const FIXTURE = Buffer.from(readFileSync(join(ROOT, 'test/fixtures/manifest-v1.hex'), 'utf8').trim(), 'hex');

function sample(): Manifest {
  const table = newChunkTable(2);
  setChunk(table, 0, { kind: ChunkKind.DATA, compression: 1, storedLength: 300, xxh64: 0x0123456789abcdefn, sha256: Buffer.alloc(32, 0xaa) });
  return {
    table,
    meta: {
      name: 'lab', version: 1, diskSize: 100000, sectorSize: 512, chunkSize: 65536, createdAt: '2026-11-21T00:00:00.000Z', parent: null,
      source: { path: '/dev/sda', kind: 'block-device', description: 'fixture' },
      partitionTable: { scheme: 'none', sectorSize: 512, partitions: [], warnings: [] },
      badRanges: [{ offset: 512, length: 512 }],
      newBytes: 324,
    },
  };
}

describe('image manifest', () => {
  it('decodes the golden fixture field by field', () => {
    expect(FIXTURE.subarray(0, 8).toString('latin1')).toBe('CCIMAGE\0');
    expect(FIXTURE.readUInt16BE(8)).toBe(1);
    expect(FIXTURE.readUInt32BE(16)).toBe(2);
    const m = decodeManifest(FIXTURE);
    expect(m.meta).toEqual(sample().meta);
    expect(chunkAt(m.table, 0)).toEqual({ kind: ChunkKind.DATA, compression: 1, storedLength: 300, xxh64: 0x0123456789abcdefn, sha256: Buffer.alloc(32, 0xaa) });
    expect(chunkAt(m.table, 1).kind).toBe(ChunkKind.ZERO);
  });

  it('encodes the golden fixture byte for byte', () => {
    expect(encodeManifest(sample()).equals(FIXTURE)).toBe(true);
  });

  it('round-trips a large table', () => {
    const m = sample();
    m.meta.diskSize = 65536 * 5000 - 7;
    m.table = newChunkTable(5000);
    for (let i = 0; i < 5000; i += 3) setChunk(m.table, i, { kind: ChunkKind.DATA, compression: i % 2 as 0 | 1, storedLength: i, xxh64: BigInt(i) * 7919n, sha256: randomBytes(32) });
    const back = decodeManifest(encodeManifest(m));
    expect(back.table.equals(m.table)).toBe(true);
    expect(back.meta).toEqual(m.meta);
  });

  it('detects any flipped byte as corruption', () => {
    for (let i = 0; i < FIXTURE.length; i++) {
      const bad = Buffer.from(FIXTURE);
      bad[i] ^= 0x01;
      let code = '';
      try {
        decodeManifest(bad);
      } catch (err) {
        code = (err as ClonecastError).code;
      }
      // Flipping the low bit of the version byte makes "version 0" (corrupt) or a newer version.
      expect([ERR.MANIFEST_CORRUPT, ERR.MANIFEST_VERSION], `byte ${i}`).toContain(code);
    }
  });

  it('refuses a manifest from a newer format with a clear message', () => {
    const newer = Buffer.from(FIXTURE);
    newer.writeUInt16BE(MANIFEST.VERSION + 1, 8);
    expect(() => decodeManifest(newer)).toThrow(/uses image format 2.*upgrade clonecast/);
  });

  it('rejects truncated manifests and never half-reads', () => {
    for (const n of [0, 10, 31, 63, FIXTURE.length - 1]) {
      expect(() => decodeManifest(FIXTURE.subarray(0, n))).toThrow(ClonecastError);
    }
  });

  it('never throws anything but ClonecastError on random bytes', () => {
    for (let i = 0; i < 2000; i++) {
      const junk = randomBytes(Math.floor(Math.random() * 200));
      if (i % 2 && junk.length > 10) MANIFEST.MAGIC.copy(junk, 0), junk.writeUInt16BE(1, 8);
      try {
        decodeManifest(junk);
        throw new Error('random bytes decoded');
      } catch (err) {
        expect(err).toBeInstanceOf(ClonecastError);
      }
    }
  });
});
