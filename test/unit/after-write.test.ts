/**
 * The steps after a verified write (agent/after-write.ts, native/disk-finish.ts):
 * nothing runs on a disk that did not verify, and a swap entry of a manifest
 * that is not exactly a partition of its table is refused before anything is
 * written (mkswap overwrites what it is given).
 */
import { describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterVerified, wantsAfterWrite } from '../../agent/after-write.js';
import { finishDisk, swapEntries } from '../../native/disk-finish.js';
import type { Assign } from '../../protocol/control.js';
import { newChunkTable, type Manifest, type ManifestMeta } from '../../protocol/manifest.js';
import type { ReceiverResult } from '../../transfer/receiver.js';
import { seeded, tempDir } from '../helpers.js';

const MiB = 1 << 20;

function meta(partitions: ManifestMeta['partitions']): ManifestMeta {
  return {
    name: 'm', version: 1, diskSize: 8 * MiB, sectorSize: 512, chunkSize: MiB, createdAt: '', parent: null, newBytes: 0, badRanges: [],
    source: { path: '/x', kind: 'file', description: '' },
    partitionTable: { scheme: 'gpt', sectorSize: 512, partitions: [{ number: 1, start: MiB, size: 2 * MiB, type: '0657fd6d-a4ab-43c4-84e5-0933c84b4f4f' }, { number: 2, start: 3 * MiB, size: 4 * MiB, type: '0fc63daf-8483-4772-8e79-3d69d8477de4' }], warnings: [] },
    partitions,
  };
}
const swap = (start: number, length: number) => ({ index: 0, start, length, fs: 'swap', method: 'swap' as const, reason: '', usedBytes: 0, uuid: '5a1e0c1d-0000-4000-8000-00000000c0de' });

describe('after a verified write', () => {
  const dir = tempDir('afterwrite');

  it('a swap entry that is not exactly a partition of the table is refused, and nothing is written', async () => {
    expect(swapEntries(meta([swap(MiB, 2 * MiB)]))).toHaveLength(1);
    const target = join(dir, 'disk.img');
    const bytes = seeded(12 * MiB, 4);
    writeFileSync(target, bytes);
    // Overlapping the data partition, shifted by a sector, past the end: each would let mkswap overwrite data.
    for (const bad of [swap(3 * MiB, 4 * MiB + 512), swap(MiB + 512, 2 * MiB), swap(7 * MiB, 2 * MiB)]) {
      await expect(finishDisk(target, 12 * MiB, meta([bad]), { growLast: true })).rejects.toThrow(/not a partition of its table; nothing was recreated/);
    }
    expect(readFileSync(target).equals(bytes)).toBe(true);
  });

  it('nothing runs on a disk that was not read back, even with --grow-last', async () => {
    const target = join(dir, 'unverified.img');
    const bytes = seeded(12 * MiB, 5);
    writeFileSync(target, bytes);
    const manifest: Manifest = { meta: meta([swap(MiB, 2 * MiB)]), table: newChunkTable(8) };
    const a = { sessionId: 3, device: target, growLast: true } as Assign;
    expect(wantsAfterWrite(a, manifest, 12 * MiB)).toBe(true);
    const logged: string[] = [];
    const err = await afterVerified(a, manifest, { verification: undefined } as ReceiverResult, (_l, m) => logged.push(m));
    expect(err).toBeUndefined();
    expect(logged.join('\n')).toMatch(/not verified, so swap is not recreated, nothing is grown and the machine is not named/);
    expect(readFileSync(target).equals(bytes)).toBe(true);
  });

  it('an image without swap on a disk of its own size asks for nothing', () => {
    const manifest: Manifest = { meta: meta([]), table: newChunkTable(8) };
    expect(wantsAfterWrite({ growLast: true } as Assign, manifest, 8 * MiB)).toBe(false);
    expect(wantsAfterWrite({} as Assign, manifest, 9 * MiB)).toBe(true); // a larger GPT disk: the backup moves
  });
});
