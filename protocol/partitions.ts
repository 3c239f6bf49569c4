/**
 * Partition tables read from a source disk: MBR (with the extended/logical
 * chain) and GPT. These are on-disk formats defined elsewhere, so their
 * fields are little-endian as the specs say:
 * - MBR: partition entries at byte 446, 16 bytes each, signature 0x55AA at
 *   510, disk signature at 440; extended types 0x05, 0x0F, 0x85 chain EBRs.
 * - GPT: UEFI 2.10 section 5.3; header at LBA 1 ("EFI PART"), CRC32 of the
 *   header and of the entry array, 128-byte entries with UTF-16LE names.
 */
import { crc32 } from 'node:zlib';

/** One partition, in bytes from the start of the disk. */
export interface Partition {
  number: number;
  start: number;
  size: number;
  /** GPT type GUID, or the MBR type byte as "0x83". */
  type: string;
  name?: string;
  uuid?: string;
  bootable?: boolean;
  attributes?: string;
}

/** The partition table of a disk as captured in a manifest. */
export interface PartitionTable {
  scheme: 'gpt' | 'mbr' | 'none';
  sectorSize: number;
  /** GPT disk GUID, or the MBR disk signature as 8 hex digits. */
  diskId?: string;
  partitions: Partition[];
  /** Problems noticed while reading (a bad CRC, a broken EBR chain). */
  warnings: string[];
}

const MBR_EXTENDED = new Set([0x05, 0x0f, 0x85]);
const MBR_GPT_PROTECTIVE = 0xee;
const GPT_SIGNATURE = 'EFI PART';
const MAX_LOGICAL = 128;

/** Formats a GPT GUID: the first three fields are little-endian, the rest big-endian. */
export function formatGuid(b: Buffer): string {
  const h = (s: number, e: number, rev: boolean) => {
    const part = Buffer.from(b.subarray(s, e));
    return (rev ? part.reverse() : part).toString('hex');
  };
  return `${h(0, 4, true)}-${h(4, 6, true)}-${h(6, 8, true)}-${h(8, 10, false)}-${h(10, 16, false)}`;
}

interface MbrEntry {
  bootable: boolean;
  type: number;
  startLba: number;
  sectors: number;
}

/** Decodes the four primary entries of an MBR sector, or null if it has no 0x55AA signature. */
export function decodeMbr(sector: Buffer): { signature: number; entries: MbrEntry[] } | null {
  if (sector.length < 512 || sector.readUInt16LE(510) !== 0xaa55) return null;
  const entries: MbrEntry[] = [];
  for (let i = 0; i < 4; i++) {
    const o = 446 + i * 16;
    entries.push({
      bootable: sector[o] === 0x80,
      type: sector[o + 4],
      startLba: sector.readUInt32LE(o + 8),
      sectors: sector.readUInt32LE(o + 12),
    });
  }
  return { signature: sector.readUInt32LE(440), entries };
}

/** Decodes a GPT from the first bytes of a disk, or null if none is there at this sector size. */
export function decodeGpt(head: Buffer, sectorSize: number): { table: PartitionTable } | null {
  const h = sectorSize;
  if (head.length < h + 92 || head.toString('latin1', h, h + 8) !== GPT_SIGNATURE) return null;
  const warnings: string[] = [];
  const headerSize = head.readUInt32LE(h + 12);
  if (headerSize < 92 || headerSize > sectorSize) return null;
  const header = Buffer.from(head.subarray(h, h + headerSize));
  const storedCrc = header.readUInt32LE(16);
  header.writeUInt32LE(0, 16);
  if (crc32(header) !== storedCrc) warnings.push('GPT header CRC32 mismatch');
  const diskId = formatGuid(head.subarray(h + 56, h + 72));
  const entriesLba = Number(head.readBigUInt64LE(h + 72));
  const count = head.readUInt32LE(h + 80);
  const entrySize = head.readUInt32LE(h + 84);
  const entriesCrc = head.readUInt32LE(h + 88);
  const table: PartitionTable = { scheme: 'gpt', sectorSize, diskId, partitions: [], warnings };
  if (entrySize < 128 || entrySize > 4096 || count > 4096) {
    warnings.push(`GPT entry array of ${count} x ${entrySize} bytes is not plausible`);
    return { table };
  }
  const start = entriesLba * sectorSize;
  const end = start + count * entrySize;
  if (end > head.length) {
    warnings.push(`GPT entry array at LBA ${entriesLba} lies outside the first ${head.length} bytes read`);
    return { table };
  }
  const array = head.subarray(start, end);
  if (crc32(array) !== entriesCrc) warnings.push('GPT entry array CRC32 mismatch');
  for (let i = 0; i < count; i++) {
    const e = array.subarray(i * entrySize, (i + 1) * entrySize);
    if (e.subarray(0, 16).every((x) => x === 0)) continue;
    const first = Number(e.readBigUInt64LE(32));
    const last = Number(e.readBigUInt64LE(40));
    const name = e.toString('utf16le', 56, 128).replace(/\0.*$/s, '');
    table.partitions.push({
      number: i + 1,
      start: first * sectorSize,
      size: last >= first ? (last - first + 1) * sectorSize : 0,
      type: formatGuid(e.subarray(0, 16)),
      uuid: formatGuid(e.subarray(16, 32)),
      name,
      attributes: e.readBigUInt64LE(48).toString(16).padStart(16, '0'),
    });
  }
  return { table };
}

/**
 * Reads the partition table of a disk. head holds at least its first 34
 * sectors; readSector fetches one sector by LBA for the EBR chain of an MBR
 * extended partition (it may return null if the sector cannot be read).
 */
export async function readPartitionTable(
  head: Buffer,
  sectorSize: number,
  readSector: (lba: number) => Promise<Buffer | null>,
): Promise<PartitionTable> {
  const none: PartitionTable = { scheme: 'none', sectorSize, partitions: [], warnings: [] };
  const mbr = decodeMbr(head);
  if (mbr === null) return none;
  if (mbr.entries.some((e) => e.type === MBR_GPT_PROTECTIVE)) {
    for (const size of new Set([sectorSize, 512, 4096])) {
      const gpt = decodeGpt(head, size);
      if (gpt !== null) return gpt.table;
    }
    return { ...none, warnings: ['protective MBR found but no GPT header at LBA 1'] };
  }
  const table: PartitionTable = {
    scheme: 'mbr',
    sectorSize,
    diskId: mbr.signature.toString(16).padStart(8, '0'),
    partitions: [],
    warnings: [],
  };
  let extended: MbrEntry | undefined;
  mbr.entries.forEach((e, i) => {
    if (e.type === 0 || e.sectors === 0) return;
    table.partitions.push({
      number: i + 1,
      start: e.startLba * sectorSize,
      size: e.sectors * sectorSize,
      type: `0x${e.type.toString(16).padStart(2, '0')}`,
      bootable: e.bootable,
    });
    if (MBR_EXTENDED.has(e.type) && extended === undefined) extended = e;
  });
  if (extended !== undefined) await readLogical(table, extended.startLba, sectorSize, readSector);
  return table;
}

// Logical partitions: each EBR's first entry is the partition (relative to
// this EBR), its second points at the next EBR (relative to the extended partition).
async function readLogical(
  table: PartitionTable,
  extendedLba: number,
  sectorSize: number,
  readSector: (lba: number) => Promise<Buffer | null>,
): Promise<void> {
  let ebrLba = extendedLba;
  const seen = new Set<number>();
  for (let n = 5; n < 5 + MAX_LOGICAL; n++) {
    if (seen.has(ebrLba)) {
      table.warnings.push(`EBR chain loops at LBA ${ebrLba}`);
      return;
    }
    seen.add(ebrLba);
    const sector = await readSector(ebrLba);
    const ebr = sector === null ? null : decodeMbr(sector);
    if (ebr === null) {
      table.warnings.push(`no valid EBR at LBA ${ebrLba}`);
      return;
    }
    const [part, next] = ebr.entries;
    if (part.type !== 0 && part.sectors !== 0) {
      table.partitions.push({
        number: n,
        start: (ebrLba + part.startLba) * sectorSize,
        size: part.sectors * sectorSize,
        type: `0x${part.type.toString(16).padStart(2, '0')}`,
        bootable: part.bootable,
      });
    }
    if (next.type === 0 || next.startLba === 0) return;
    ebrLba = extendedLba + next.startLba;
  }
  table.warnings.push(`more than ${MAX_LOGICAL} logical partitions; the rest were not read`);
}

/** Common GPT partition type GUIDs (UEFI spec, Microsoft and freedesktop.org Discoverable Partitions). */
export const GPT_TYPE_NAMES: Readonly<Record<string, string>> = Object.freeze({
  'c12a7328-f81f-11d2-ba4b-00a0c93ec93b': 'EFI System',
  '21686148-6449-6e6f-744e-656564454649': 'BIOS boot',
  'e3c9e316-0b5c-4db8-817d-f92df00215ae': 'Microsoft reserved',
  'ebd0a0a2-b9e5-4433-87c0-68b6b72699c7': 'Microsoft basic data',
  'de94bba4-06d1-4d40-a16a-bfd50179d6ac': 'Windows recovery',
  '0fc63daf-8483-4772-8e79-3d69d8477de4': 'Linux filesystem',
  '4f68bce3-e8cd-4db1-96e7-fbcaf984b709': 'Linux root (x86-64)',
  '0657fd6d-a4ab-43c4-84e5-0933c84b4f4f': 'Linux swap',
  'e6d6d379-f507-44c2-a23c-238f2a3df928': 'Linux LVM',
  'a19d880f-05fc-4d3b-a006-743f0f84911e': 'Linux RAID',
});

/** A readable name for a partition type: GPT GUID or MBR type byte. */
export function typeName(type: string): string {
  const known = GPT_TYPE_NAMES[type];
  if (known !== undefined) return known;
  const mbr: Record<string, string> = { '0x07': 'NTFS/exFAT', '0x0b': 'FAT32', '0x0c': 'FAT32 (LBA)', '0x83': 'Linux', '0x82': 'Linux swap', '0x8e': 'Linux LVM', '0x05': 'Extended', '0x0f': 'Extended (LBA)', '0xef': 'EFI System' };
  return mbr[type] ?? type;
}
