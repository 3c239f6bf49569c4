import { describe, expect, it } from 'vitest';
import { checkFinish, checkTable, checkUsedAgainstTable } from '../../server/capture-checks.js';
import { ChunkKind, newChunkTable, setChunk } from '../../protocol/manifest.js';
import { Store } from '../../server/store/store.js';
import { ERR } from '../../protocol/errors.js';
import { tempDir } from '../helpers.js';

// A capture's used-block record comes from the agent: hostile input like the rest of its upload.
const DISK = 4 << 20;
const CHUNK = 1 << 20;
const known = { diskSize: DISK, chunkSize: CHUNK, device: '/dev/sda', disks: [{ device: '/dev/sda', logicalSector: 512 }] };
const base = { diskSize: DISK, sectorSize: 512, chunkSize: CHUNK, partitionTable: {}, badRanges: [], device: '/dev/sda', blockDevice: true, progress: {} };
const part = { index: 0, start: 1 << 20, length: 2 << 20, fs: 'ext4', method: 'used-blocks', reason: 'partclone.extfs map of the used blocks', usedBytes: 1 << 20 };
const table = { scheme: 'gpt' as const, sectorSize: 512, partitions: [{ number: 1, start: 1 << 20, size: 2 << 20, type: 'linux' }], warnings: [] };

describe('a capture\'s used-block record', () => {
  it('is accepted when it fits the disk and the partition it names', () => {
    const m = checkFinish({ ...base, partitions: [part], usedBytes: 3 << 20 }, known);
    expect(checkUsedAgainstTable(m.used, table)).toEqual({ partitions: [part], usedBytes: 3 << 20 });
    expect(checkFinish(base, known).used).toEqual({});
  });

  const hostile: [string, Record<string, unknown>][] = [
    ['a partition past the disk end', { partitions: [{ ...part, start: DISK }] }],
    ['more used bytes than the partition', { partitions: [{ ...part, usedBytes: 3 << 20 }] }],
    ['an unknown method', { partitions: [{ ...part, method: 'trust-me' }] }],
    ['a terminal escape in a reason', { partitions: [{ ...part, reason: '\u001b]0;owned\u0007' }] }],
    ['a huge label', { partitions: [{ ...part, label: 'x'.repeat(10_000) }] }],
    ['ten thousand records', { partitions: Array.from({ length: 10_000 }, () => part) }],
    ['usedBytes over the disk size', { usedBytes: DISK + 1 }],
    ['a fractional usedBytes', { usedBytes: 1.5 }],
  ];
  for (const [what, extra] of hostile) {
    it(`refuses ${what}`, () => {
      expect(() => checkFinish({ ...base, ...extra }, known)).toThrow(expect.objectContaining({ code: ERR.USAGE }));
    });
  }

  it('refuses a record that does not match the partition it names', () => {
    const m = checkFinish({ ...base, partitions: [{ ...part, index: 3 }] }, known);
    expect(() => checkUsedAgainstTable(m.used, table)).toThrow(/does not match partition 3/);
    const shifted = checkFinish({ ...base, partitions: [{ ...part, start: 0 }] }, known);
    expect(() => checkUsedAgainstTable(shifted.used, table)).toThrow(/does not match/);
  });

  it('accepts unused chunk records that carry nothing, and refuses one that carries a hash', async () => {
    const store = Store.open(tempDir('capused'));
    const t = newChunkTable(4);
    for (let i = 0; i < 4; i++) setChunk(t, i, { kind: ChunkKind.UNUSED, compression: 0, storedLength: 0, xxh64: 0n, sha256: Buffer.alloc(32) });
    await checkTable(store, t, DISK, CHUNK);
    setChunk(t, 2, { kind: ChunkKind.UNUSED, compression: 0, storedLength: 0, xxh64: 0n, sha256: Buffer.alloc(32, 7) });
    await expect(checkTable(store, t, DISK, CHUNK)).rejects.toThrow(/chunk table record 2: an unused chunk carries no hash/);
  });
});
