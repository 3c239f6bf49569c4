import { describe, expect, it } from 'vitest';
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, openSync, writeSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { encodeGpt, encodeMbr, encodeGuid, gptBackupBytes, mapPartitionType, randomGuid, GPT_WRITE, type TablePartition } from '../../protocol/gpt-write.js';
import { formatGuid, readPartitionTable } from '../../protocol/partitions.js';
import { isError, ERR } from '../../protocol/errors.js';
import { itNeeds, seeded, tempDir } from '../helpers.js';

const MiB = 1 << 20;
const ESP = 'c12a7328-f81f-11d2-ba4b-00a0c93ec93b';
const LINUX = '0fc63daf-8483-4772-8e79-3d69d8477de4';
const BASIC = 'ebd0a0a2-b9e5-4433-87c0-68b6b72699c7';

/** A repeatable random source: seeded bytes, a new block per call. */
function rng(seed: number): (n: number) => Buffer {
  let s = seed;
  return (n) => seeded(n, s++);
}

const PARTS: TablePartition[] = [
  { start: MiB, size: 16 * MiB, type: ESP, name: 'EFI system', attributes: '0000000000000001' },
  { start: 17 * MiB, size: 20 * MiB, type: LINUX, name: 'root ü', attributes: '8000000000000004' },
  { start: 37 * MiB, size: 10 * MiB - 512 * 7, type: BASIC, name: 'data' },
];
const DISK = 37 * MiB + 10 * MiB - 512 * 7 + gptBackupBytes(512);

function writeDisk(path: string, size: number, pieces: { at: number; data: Buffer }[]): void {
  const fd = openSync(path, 'w');
  try {
    ftruncateSync(fd, size);
    for (const p of pieces) writeSync(fd, p.data, 0, p.data.length, p.at);
  } finally {
    closeSync(fd);
  }
}

function refused(fn: () => unknown, text: RegExp): void {
  try {
    fn();
  } catch (err) {
    expect(isError(err, ERR.PARTITION_TABLE), String(err)).toBe(true);
    expect((err as Error).message).toMatch(text);
    return;
  }
  throw new Error('expected PARTITION_TABLE');
}

describe('GPT writer', () => {
  it('reads back through the reader: starts, sizes, types, names, attributes and the fresh GUIDs', async () => {
    const gpt = encodeGpt(PARTS, DISK, 512, rng(1));
    expect(gpt.head.length).toBe(34 * 512);
    expect(gpt.tail.length).toBe(33 * 512);
    expect(gpt.tailOffset + gpt.tail.length).toBe(DISK);
    const t = await readPartitionTable(Buffer.concat([gpt.head, Buffer.alloc(MiB - gpt.head.length)]), 512, async () => null);
    expect(t.scheme).toBe('gpt');
    expect(t.warnings).toEqual([]);
    expect(t.diskId).toBe(gpt.diskGuid);
    expect(t.partitions.map((p) => [p.number, p.start, p.size, p.type, p.name, p.attributes, p.uuid])).toEqual(
      PARTS.map((p, i) => [i + 1, p.start, p.size, p.type, p.name, (p.attributes ?? '0').padStart(16, '0'), gpt.partitionGuids[i]]),
    );
    // Version 4, RFC 4122 variant, all different.
    const all = [gpt.diskGuid, ...gpt.partitionGuids];
    for (const g of all) expect(g).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(new Set(all).size).toBe(all.length);
    // Another random source, other GUIDs; the same one, the same bytes.
    expect(encodeGpt(PARTS, DISK, 512, rng(2)).diskGuid).not.toBe(gpt.diskGuid);
    expect(encodeGpt(PARTS, DISK, 512, rng(1)).head.equals(gpt.head)).toBe(true);
  });

  it('writes a backup header at the last LBA that mirrors the primary, with valid CRC32s', () => {
    const gpt = encodeGpt(PARTS, DISK, 512, rng(3));
    const lastLba = DISK / 512 - 1;
    const backup = gpt.tail.subarray(32 * 512);
    expect(backup.toString('latin1', 0, 8)).toBe('EFI PART');
    expect(Number(backup.readBigUInt64LE(24))).toBe(lastLba);
    expect(Number(backup.readBigUInt64LE(32))).toBe(1);
    expect(Number(backup.readBigUInt64LE(72))).toBe(lastLba - 32);
    const h = Buffer.from(backup.subarray(0, 92));
    const crc = h.readUInt32LE(16);
    h.writeUInt32LE(0, 16);
    expect(crc32(h)).toBe(crc);
    expect(crc32(gpt.tail.subarray(0, 32 * 512))).toBe(backup.readUInt32LE(88));
    expect(gpt.tail.subarray(0, 32 * 512).equals(gpt.head.subarray(2 * 512))).toBe(true);
    // Protective MBR: one 0xEE entry from LBA 1 over the rest of the disk.
    expect(gpt.head[446 + 4]).toBe(0xee);
    expect(gpt.head.readUInt32LE(446 + 8)).toBe(1);
    expect(gpt.head.readUInt32LE(446 + 12)).toBe(lastLba);
    expect(gpt.head.readUInt16LE(510)).toBe(0xaa55);
  });

  itNeeds(['sgdisk'], 'sgdisk -v finds no problem with what it writes, and reads the same GUIDs', () => {
    const dir = tempDir('gptw');
    const file = join(dir, 'disk.img');
    const gpt = encodeGpt(PARTS, DISK, 512, rng(4));
    writeDisk(file, DISK, [{ at: 0, data: gpt.head }, { at: gpt.tailOffset, data: gpt.tail }]);
    const v = spawnSync('sgdisk', ['-v', file], { encoding: 'utf8' });
    expect(v.stdout).toContain('No problems found');
    const p = execFileSync('sgdisk', ['-p', file], { encoding: 'utf8' });
    expect(p).toContain(`Disk identifier (GUID): ${gpt.diskGuid.toUpperCase()}`);
    const i2 = execFileSync('sgdisk', ['-i', '2', file], { encoding: 'utf8' });
    expect(i2).toContain(`Partition unique GUID: ${gpt.partitionGuids[1].toUpperCase()}`);
    expect(i2).toContain("Partition name: 'root ü'");
  });

  it('round-trips GUIDs between their text and mixed-endian forms', () => {
    for (let k = 0; k < 200; k++) {
      const g = randomGuid(rng(100 + k));
      expect(formatGuid(encodeGuid(g))).toBe(g);
    }
    expect(encodeGuid(ESP).toString('hex')).toBe('28732ac11ff8d211ba4b00a0c93ec93b');
  });

  it('also writes 4096-byte-sector GPTs (6 sectors at the start, 5 at the end)', async () => {
    const parts = [{ start: MiB, size: 8 * MiB, type: LINUX }];
    const size = 9 * MiB + gptBackupBytes(4096);
    const gpt = encodeGpt(parts, size, 4096, rng(5));
    expect(gpt.head.length).toBe(6 * 4096);
    expect(gpt.tail.length).toBe(5 * 4096);
    const t = await readPartitionTable(Buffer.concat([gpt.head, Buffer.alloc(MiB - gpt.head.length)]), 4096, async () => null);
    expect(t.warnings).toEqual([]);
    expect(t.partitions[0]).toMatchObject({ start: MiB, size: 8 * MiB, type: LINUX });
  });

  it('refuses overlaps, more than 128 entries, a partition beyond the disk and other malformed layouts', () => {
    const r = rng(6);
    refused(() => encodeGpt([PARTS[0], { ...PARTS[1], start: 16 * MiB }], DISK, 512, r), /overlaps partition 1/);
    refused(() => encodeGpt(Array.from({ length: 129 }, (_, i) => ({ start: (i + 1) * MiB, size: MiB, type: LINUX })), 200 * MiB, 512, r), /more than the 128 entries/);
    refused(() => encodeGpt([{ ...PARTS[0], size: DISK }], DISK, 512, r), /beyond the last usable byte/);
    refused(() => encodeGpt([{ ...PARTS[0], start: 33 * 512 }], DISK, 512, r), /inside the GPT header/);
    refused(() => encodeGpt([{ ...PARTS[0], start: MiB + 100 }], DISK, 512, r), /whole 512-byte sectors/);
    refused(() => encodeGpt(PARTS, DISK + 1, 512, r), /not a whole number/);
    refused(() => encodeGpt(PARTS, DISK, 1024, r), /sector size 1024/);
    refused(() => encodeGpt([{ ...PARTS[0], type: 'not-a-guid' }], DISK, 512, r), /not a GUID/);
    refused(() => encodeGpt([{ ...PARTS[0], type: '00000000-0000-0000-0000-000000000000' }], DISK, 512, r), /all-zero type/);
    refused(() => encodeGpt([{ ...PARTS[0], name: 'x'.repeat(37) }], DISK, 512, r), /longer than 36/);
    refused(() => encodeGpt([{ ...PARTS[0], attributes: 'zz' }], DISK, 512, r), /attributes/);
    refused(() => encodeGpt([{ ...PARTS[0], size: -512 }], DISK, 512, r), /size -512/);
    refused(() => encodeGpt([], 16 * 512, 512, r), /too small for a GPT/);
  });

  it('either refuses random layouts with PARTITION_TABLE or writes a table that reads back as given', async () => {
    const r = rng(7);
    let written = 0;
    for (let k = 0; k < 500; k++) {
      const b = seeded(64, 1000 + k);
      const count = b[0] % 6;
      const parts: TablePartition[] = [];
      let at = (b[1] % 3) * 17 * 512;
      for (let i = 0; i < count; i++) {
        at += (b[2 + i] % 5) * 512 * 1024 - (b[10 + i] % 2) * 512;
        const size = ((b[20 + i] % 7) - 1) * 512 * 1024 + (b[30 + i] % 3);
        parts.push({ start: at, size, type: i % 2 ? LINUX : ESP });
        at += Math.max(size, 0);
      }
      const disk = (b[40] % 40) * 512 * 1024 + (b[41] % 2);
      let gpt;
      try {
        gpt = encodeGpt(parts, disk, 512, r);
      } catch (err) {
        expect(isError(err, ERR.PARTITION_TABLE), String(err)).toBe(true);
        continue;
      }
      written++;
      const head = Buffer.concat([gpt.head, Buffer.alloc(MiB)]);
      const t = await readPartitionTable(head, 512, async () => null);
      expect(t.warnings).toEqual([]);
      expect(t.partitions.map((p) => [p.start, p.size])).toEqual(parts.map((p) => [p.start, p.size]));
    }
    expect(written).toBeGreaterThan(20);
  });
});

describe('MBR writer', () => {
  const mbrParts: TablePartition[] = [
    { start: MiB, size: 100 * MiB, type: '0x07', bootable: true },
    { start: 101 * MiB, size: 20 * MiB, type: '0x83' },
  ];

  it('reads back: a fresh non-zero signature, type bytes and boot flags kept', async () => {
    const mbr = encodeMbr(mbrParts, 121 * MiB, 512, rng(8));
    expect(mbr.head.length).toBe(512);
    const t = await readPartitionTable(mbr.head, 512, async () => null);
    expect(t.scheme).toBe('mbr');
    expect(t.diskId).toBe(mbr.signature);
    expect(mbr.signature).not.toBe('00000000');
    expect(t.partitions.map((p) => [p.start, p.size, p.type, p.bootable])).toEqual([
      [MiB, 100 * MiB, '0x07', true],
      [101 * MiB, 20 * MiB, '0x83', false],
    ]);
    expect(encodeMbr(mbrParts, 121 * MiB, 512, rng(9)).signature).not.toBe(mbr.signature);
  });

  itNeeds(['sfdisk'], 'sfdisk reads what it writes as the same table', () => {
    const dir = tempDir('mbrw');
    const file = join(dir, 'disk.img');
    const mbr = encodeMbr(mbrParts, 121 * MiB, 512, rng(10));
    writeDisk(file, 121 * MiB, [{ at: 0, data: mbr.head }]);
    const j = JSON.parse(execFileSync('sfdisk', ['-J', file], { encoding: 'utf8' })).partitiontable;
    expect(j.label).toBe('dos');
    expect(j.id).toBe(`0x${mbr.signature}`);
    expect(j.partitions.map((p: { start: number; size: number; type: string; bootable?: boolean }) => [p.start, p.size, p.type, p.bootable === true])).toEqual([
      [2048, 204800, '7', true],
      [206848, 40960, '83', false],
    ]);
    expect(spawnSync('sfdisk', ['--verify', file], { encoding: 'utf8' }).status).toBe(0);
  });

  it('refuses more than 4 partitions, anything past 2 TiB, GPT types and extended/protective types', () => {
    const r = rng(11);
    refused(() => encodeMbr(Array.from({ length: 5 }, (_, i) => ({ start: (i + 1) * MiB, size: MiB, type: '0x83' })), 10 * MiB, 512, r), /more than the 4 primary/);
    const TiB = 2 ** 40;
    refused(() => encodeMbr([{ start: MiB, size: 2 * TiB, type: '0x83' }], 3 * TiB, 512, r), /beyond the 2\^32 sectors/);
    refused(() => encodeMbr([{ start: MiB, size: MiB, type: LINUX }], 4 * MiB, 512, r), /not an MBR type byte/);
    refused(() => encodeMbr([{ start: MiB, size: MiB, type: '0xee' }], 4 * MiB, 512, r), /GPT-protective/);
    refused(() => encodeMbr([{ start: 0, size: MiB, type: '0x83' }], 4 * MiB, 512, r), /inside the MBR sector/);
    refused(() => encodeMbr([{ start: MiB, size: 4 * MiB, type: '0x83' }], 4 * MiB, 512, r), /beyond the last usable/);
    // Just under the limit is fine: the last sector an MBR can address.
    const max = GPT_WRITE.MBR_MAX_SECTORS * 512;
    expect(() => encodeMbr([{ start: MiB, size: max - MiB, type: '0x83' }], max, 512, r)).not.toThrow();
  });
});

describe('partition type mapping', () => {
  it('maps MBR types to GPT GUIDs and back, keeps same-scheme types, refuses what it does not know', () => {
    expect(mapPartitionType('0x83', 'gpt')).toBe(LINUX);
    expect(mapPartitionType('0x07', 'gpt')).toBe(BASIC);
    expect(mapPartitionType('0xef', 'gpt')).toBe(ESP);
    expect(mapPartitionType('0x82', 'gpt')).toBe('0657fd6d-a4ab-43c4-84e5-0933c84b4f4f');
    expect(mapPartitionType(ESP, 'mbr')).toBe('0xef');
    expect(mapPartitionType(LINUX, 'mbr')).toBe('0x83');
    expect(mapPartitionType(BASIC, 'mbr')).toBe('0x07');
    expect(mapPartitionType('0x83', 'mbr')).toBe('0x83');
    expect(mapPartitionType('21686148-6449-6e6f-744e-656564454649', 'gpt')).toBe('21686148-6449-6e6f-744e-656564454649');
    expect(mapPartitionType('0x42', 'gpt')).toBeNull();
    expect(mapPartitionType('0x05', 'mbr')).toBeNull();
    expect(mapPartitionType('0x05', 'gpt')).toBeNull();
    expect(mapPartitionType('21686148-6449-6e6f-744e-656564454649', 'mbr')).toBeNull();
    expect(mapPartitionType('garbage', 'gpt')).toBeNull();
  });
});
