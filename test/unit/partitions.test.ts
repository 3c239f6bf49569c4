import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { readFileSync, openSync, readSync, closeSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { readPartitionTable, formatGuid, decodeGpt, typeName } from '../../protocol/partitions.js';
import { ROOT, itNeeds, tempDir } from '../helpers.js';

interface Fixture {
  size: number;
  rows: Record<string, string>;
  ebrs: Record<string, string>;
  sfdisk: {
    label: string;
    id: string;
    sectorsize: number;
    partitions: { node: string; start: number; size: number; type: string; bootable?: boolean; uuid?: string; name?: string }[];
  };
}

function load(name: string): { head: Buffer; sector: (lba: number) => Promise<Buffer | null>; f: Fixture } {
  const f = JSON.parse(readFileSync(join(ROOT, 'test/fixtures/partitions', `${name}.json`), 'utf8')) as Fixture;
  const head = Buffer.alloc(1 << 20);
  for (const [off, hex] of Object.entries(f.rows)) Buffer.from(hex, 'hex').copy(head, Number(off));
  const sector = async (lba: number) => (f.ebrs[lba] ? Buffer.from(f.ebrs[lba], 'hex') : lba * 512 < head.length ? head.subarray(lba * 512, lba * 512 + 512) : null);
  return { head, sector, f };
}

/** Compares our reading with sfdisk's JSON reading of the same table. */
function expectSameAsSfdisk(table: Awaited<ReturnType<typeof readPartitionTable>>, f: Fixture['sfdisk']): void {
  expect(table.scheme).toBe(f.label === 'dos' ? 'mbr' : 'gpt');
  expect(table.diskId).toBe(f.label === 'dos' ? f.id.replace(/^0x/, '') : f.id.toLowerCase());
  expect(table.warnings).toEqual([]);
  expect(table.partitions).toHaveLength(f.partitions.length);
  f.partitions.forEach((p, i) => {
    const ours = table.partitions[i];
    expect(ours.number).toBe(Number(/(\d+)$/.exec(p.node)![1]));
    expect(ours.start).toBe(p.start * f.sectorsize);
    expect(ours.size).toBe(p.size * f.sectorsize);
    if (f.label === 'dos') {
      expect(ours.type).toBe(`0x${p.type.padStart(2, '0')}`);
      expect(ours.bootable).toBe(p.bootable === true);
    } else {
      expect(ours.type).toBe(p.type.toLowerCase());
      expect(ours.uuid).toBe(p.uuid!.toLowerCase());
      expect(ours.name ?? '').toBe(p.name ?? '');
    }
  });
}

describe('partition tables', () => {
  const dir = tempDir('sgdisk');
  it('reads a GPT written by sfdisk (golden fixture) as sfdisk does', async () => {
    const { head, sector, f } = load('gpt');
    const table = await readPartitionTable(head, 512, sector);
    expectSameAsSfdisk(table, f.sfdisk);
    expect(table.partitions[0]).toMatchObject({ name: 'EFI system', uuid: '11111111-2222-4333-8444-555555555555' });
    expect(typeName(table.partitions[0].type)).toBe('EFI System');
  });

  it('reads an MBR with an extended partition and logical drives (golden fixture)', async () => {
    const { head, sector, f } = load('mbr');
    const table = await readPartitionTable(head, 512, sector);
    expectSameAsSfdisk(table, f.sfdisk);
    expect(table.partitions.map((p) => p.number)).toEqual([1, 2, 3, 5, 6]);
  });

  it('notices a damaged GPT header CRC', async () => {
    const { head, sector } = load('gpt');
    head[512 + 60] ^= 1; // inside the disk GUID, covered by the header CRC
    const table = await readPartitionTable(head, 512, sector);
    expect(table.warnings).toContain('GPT header CRC32 mismatch');
  });

  it('formats GUIDs with the mixed-endian rule', () => {
    const b = Buffer.from('28732ac11ff8d211ba4b00a0c93ec93b', 'hex');
    expect(formatGuid(b)).toBe('c12a7328-f81f-11d2-ba4b-00a0c93ec93b');
  });

  it('returns "none" for a disk without a table and never throws on junk', async () => {
    expect((await readPartitionTable(Buffer.alloc(4096), 512, async () => null)).scheme).toBe('none');
    for (let i = 0; i < 500; i++) {
      const junk = randomBytes(20 * 512);
      junk.writeUInt16LE(0xaa55, 510);
      if (i % 2) junk.write('EFI PART', 512, 'latin1');
      if (i % 4 === 1) junk[446 + 4] = 0xee;
      if (i % 4 === 3) junk[446 + 4] = 0x05;
      const t = await readPartitionTable(junk, 512, async () => (Math.random() < 0.5 ? randomBytes(512) : null));
      expect(['none', 'mbr', 'gpt']).toContain(t.scheme);
    }
    expect(decodeGpt(Buffer.alloc(100), 512)).toBeNull();
  });

  itNeeds(['sgdisk', 'sfdisk'], 'reads a GPT written by sgdisk (another writer) as sfdisk reads it', async () => {
    const img = join(dir, 'disk.img');
    execFileSync('truncate', ['-s', '48M', img]);
    execFileSync('sgdisk', ['-o', '-n', '1:2048:+4M', '-t', '1:ef00', '-c', '1:ESP', '-n', '2:0:+10M', '-t', '2:8300', '-c', '2:linux root', '-n', '3:0:0', '-t', '3:0700', img], { stdio: 'ignore' });
    const head = Buffer.alloc(1 << 20);
    const fd = openSync(img, 'r');
    readSync(fd, head, 0, head.length, 0);
    closeSync(fd);
    const table = await readPartitionTable(head, 512, async () => null);
    const sf = JSON.parse(execFileSync('sfdisk', ['--json', img], { encoding: 'utf8' })).partitiontable;
    expectSameAsSfdisk(table, sf);
    expect(table.partitions.map((p) => p.name)).toEqual(['ESP', 'linux root', '']);
  });
});
