/**
 * Partition-table writer: the inverse of protocol/partitions.ts, for disks
 * clonecast builds itself (image assemble). Pure: randomness comes in as a
 * function, so the output of a given seed is the same every time.
 *
 * GPT (UEFI 2.10 section 5.3), sizes for 512-byte sectors:
 *
 *   LBA 0            protective MBR: one entry of type 0xEE from LBA 1
 *   LBA 1            primary header (92 bytes, rest of the sector zero)
 *   LBA 2..33        entry array, 128 entries x 128 bytes
 *   LBA last-32..-1  backup entry array (same bytes)
 *   LBA last         backup header (MyLBA and AlternateLBA swapped)
 *
 * Header, little-endian (UEFI 2.10 table 5.5):
 *   offset size field
 *        0    8 signature "EFI PART"
 *        8    4 revision 0x00010000
 *       12    4 header size 92
 *       16    4 CRC32 of the header (this field taken as 0)
 *       20    4 reserved, 0
 *       24    8 MyLBA
 *       32    8 AlternateLBA
 *       40    8 FirstUsableLBA
 *       48    8 LastUsableLBA
 *       56   16 DiskGUID
 *       72    8 PartitionEntryLBA
 *       80    4 NumberOfPartitionEntries (128)
 *       84    4 SizeOfPartitionEntry (128)
 *       88    4 CRC32 of the entry array
 *   // sizeof = 92
 *
 * Entry (table 5.6): type GUID 16, unique GUID 16, first LBA 8, last LBA 8
 * (inclusive), attributes 8, name 72 bytes UTF-16LE.
 *
 * MBR (the classic layout): disk signature at 440, four 16-byte entries at
 * 446 (status 0x80 = bootable, CHS start, type, CHS end, start LBA u32,
 * sectors u32), 0x55AA at 510.
 */
import { crc32 } from 'node:zlib';
import { ClonecastError, ERR } from './errors.js';

/** Constants of the tables this module writes. */
export const GPT_WRITE = Object.freeze({
  /** Entries in the array (UEFI requires room for at least 128). */
  ENTRIES: 128,
  ENTRY_SIZE: 128,
  HEADER_SIZE: 92,
  REVISION: 0x00010000,
  /** MBR partitions address at most 2^32 sectors (2 TiB with 512-byte sectors). */
  MBR_MAX_SECTORS: 2 ** 32,
  MBR_MAX_PARTITIONS: 4,
});

/** One partition of a table to write, in bytes from the start of the disk. */
export interface TablePartition {
  start: number;
  size: number;
  /** GPT type GUID (for a GPT) or MBR type byte as "0x83" (for an MBR). */
  type: string;
  /** GPT name (at most 36 UTF-16 code units). */
  name?: string;
  /** GPT attribute bits as 16 hex digits. */
  attributes?: string;
  /** MBR boot flag. */
  bootable?: boolean;
}

/** A GPT to write: the bytes for the start of the disk and for its end. */
export interface GptImage {
  /** Protective MBR, header and entries: (2 + entry sectors) sectors, written at offset 0. */
  head: Buffer;
  /** Backup entries and header: (1 + entry sectors) sectors, written at tailOffset. */
  tail: Buffer;
  tailOffset: number;
  diskGuid: string;
  /** Fresh unique GUIDs, one per partition, in order. */
  partitionGuids: string[];
  /** Bytes the table needs after the last partition (backup entries and header). */
  backupBytes: number;
}

/** An MBR to write: one sector at offset 0. */
export interface MbrImage {
  head: Buffer;
  /** The disk signature as 8 hex digits (as partitions.ts reports it). */
  signature: string;
}

/** Random bytes (crypto.randomBytes in use, a seeded generator in tests). */
export type RandomBytes = (n: number) => Buffer;

const GUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** Encodes a GUID string in GPT's mixed-endian form (first three fields little-endian). */
export function encodeGuid(guid: string): Buffer {
  const g = guid.toLowerCase();
  if (!GUID_RE.test(g)) throw tableError(`"${guid}" is not a GUID`);
  const hex = g.replace(/-/g, '');
  const b = Buffer.from(hex, 'hex');
  return Buffer.concat([Buffer.from(b.subarray(0, 4)).reverse(), Buffer.from(b.subarray(4, 6)).reverse(), Buffer.from(b.subarray(6, 8)).reverse(), b.subarray(8, 16)]);
}

/** A random (version 4, RFC 4122 variant) GUID string from 16 random bytes. */
export function randomGuid(random: RandomBytes): string {
  const b = Buffer.from(random(16));
  if (b.length !== 16) throw new RangeError('randomGuid needs 16 random bytes');
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Sectors the GPT entry array takes. */
export function gptEntrySectors(sectorSize: number): number {
  return Math.ceil((GPT_WRITE.ENTRIES * GPT_WRITE.ENTRY_SIZE) / sectorSize);
}

/** Bytes a GPT needs at the end of the disk (backup entries plus backup header). */
export function gptBackupBytes(sectorSize: number): number {
  return (gptEntrySectors(sectorSize) + 1) * sectorSize;
}

/** Bytes a GPT needs at the start of the disk (protective MBR, header, entries). */
export function gptHeadBytes(sectorSize: number): number {
  return (gptEntrySectors(sectorSize) + 2) * sectorSize;
}

function tableError(why: string): ClonecastError {
  return new ClonecastError(ERR.PARTITION_TABLE, `cannot write this partition table: ${why}`);
}

function checkSector(sectorSize: number): void {
  if (sectorSize !== 512 && sectorSize !== 4096) throw tableError(`sector size ${sectorSize} is not 512 or 4096`);
}

// Common checks: whole sectors, in order, no overlap, inside [first, last] bytes.
function checkLayout(parts: readonly TablePartition[], sectorSize: number, first: number, end: number, what: string): void {
  let prevEnd = first;
  parts.forEach((p, i) => {
    const n = i + 1;
    if (!Number.isSafeInteger(p.start) || !Number.isSafeInteger(p.size) || p.start < 0 || p.size <= 0) throw tableError(`partition ${n} has start ${p.start} and size ${p.size}`);
    if (p.start % sectorSize !== 0 || p.size % sectorSize !== 0) throw tableError(`partition ${n} (start ${p.start}, size ${p.size}) is not in whole ${sectorSize}-byte sectors`);
    if (p.start < prevEnd) throw tableError(i === 0 ? `partition 1 starts at byte ${p.start}, inside the ${what} (first usable byte ${first})` : `partition ${n} (start ${p.start}) overlaps partition ${i}, which ends at byte ${prevEnd}`);
    if (p.start + p.size > end) throw tableError(`partition ${n} ends at byte ${p.start + p.size}, beyond the last usable byte ${end} of the disk`);
    prevEnd = p.start + p.size;
  });
}

/**
 * Writes a GPT for a disk of diskSize bytes with a fresh disk GUID and fresh
 * partition GUIDs; type GUIDs, names and attributes are as given.
 * Throws PARTITION_TABLE for anything that would not be a valid table.
 */
export function encodeGpt(parts: readonly TablePartition[], diskSize: number, sectorSize: number, random: RandomBytes): GptImage {
  checkSector(sectorSize);
  if (parts.length > GPT_WRITE.ENTRIES) throw tableError(`${parts.length} partitions, more than the ${GPT_WRITE.ENTRIES} entries of a GPT`);
  if (!Number.isSafeInteger(diskSize) || diskSize % sectorSize !== 0) throw tableError(`disk size ${diskSize} is not a whole number of ${sectorSize}-byte sectors`);
  const es = gptEntrySectors(sectorSize);
  const lastLba = diskSize / sectorSize - 1;
  const firstUsable = 2 + es;
  const lastUsable = lastLba - 1 - es;
  if (lastUsable < firstUsable) throw tableError(`a disk of ${diskSize} bytes is too small for a GPT`);
  checkLayout(parts, sectorSize, firstUsable * sectorSize, (lastUsable + 1) * sectorSize, 'GPT header and entries');
  const entries = Buffer.alloc(es * sectorSize);
  const partitionGuids: string[] = [];
  parts.forEach((p, i) => {
    const e = entries.subarray(i * GPT_WRITE.ENTRY_SIZE, (i + 1) * GPT_WRITE.ENTRY_SIZE);
    const type = encodeGuid(p.type);
    if (type.every((x) => x === 0)) throw tableError(`partition ${i + 1} has the all-zero type GUID (an unused entry)`);
    type.copy(e, 0);
    const guid = randomGuid(random);
    partitionGuids.push(guid);
    encodeGuid(guid).copy(e, 16);
    e.writeBigUInt64LE(BigInt(p.start / sectorSize), 32);
    e.writeBigUInt64LE(BigInt((p.start + p.size) / sectorSize - 1), 40);
    const attrs = p.attributes ?? '0';
    if (!/^[0-9a-fA-F]{1,16}$/.test(attrs)) throw tableError(`partition ${i + 1} has attributes "${attrs}", not up to 16 hex digits`);
    e.writeBigUInt64LE(BigInt(`0x${attrs}`), 48);
    const name = Buffer.from(p.name ?? '', 'utf16le');
    if (name.length > 72) throw tableError(`partition ${i + 1}'s name "${p.name}" is longer than 36 UTF-16 code units`);
    name.copy(e, 56);
  });
  const entriesCrc = crc32(entries.subarray(0, GPT_WRITE.ENTRIES * GPT_WRITE.ENTRY_SIZE));
  const diskGuid = randomGuid(random);
  const header = (my: number, alt: number, entriesLba: number) => {
    const h = Buffer.alloc(sectorSize);
    h.write('EFI PART', 0, 'latin1');
    h.writeUInt32LE(GPT_WRITE.REVISION, 8);
    h.writeUInt32LE(GPT_WRITE.HEADER_SIZE, 12);
    h.writeBigUInt64LE(BigInt(my), 24);
    h.writeBigUInt64LE(BigInt(alt), 32);
    h.writeBigUInt64LE(BigInt(firstUsable), 40);
    h.writeBigUInt64LE(BigInt(lastUsable), 48);
    encodeGuid(diskGuid).copy(h, 56);
    h.writeBigUInt64LE(BigInt(entriesLba), 72);
    h.writeUInt32LE(GPT_WRITE.ENTRIES, 80);
    h.writeUInt32LE(GPT_WRITE.ENTRY_SIZE, 84);
    h.writeUInt32LE(entriesCrc, 88);
    h.writeUInt32LE(crc32(h.subarray(0, GPT_WRITE.HEADER_SIZE)), 16);
    return h;
  };
  const mbr = Buffer.alloc(sectorSize);
  // UEFI 2.10 table 5.4: one 0xEE entry from LBA 1 over the whole disk (capped at 0xFFFFFFFF).
  writeMbrEntry(mbr, 0, { bootable: false, type: 0xee, startLba: 1, sectors: Math.min(lastLba, 0xffffffff) });
  mbr.writeUInt16LE(0xaa55, 510);
  const head = Buffer.concat([mbr, header(1, lastLba, 2), entries]);
  const tail = Buffer.concat([entries, header(lastLba, 1, lastLba - es)]);
  return { head, tail, tailOffset: (lastLba - es) * sectorSize, diskGuid, partitionGuids, backupBytes: tail.length };
}

// An entry's CHS address: the LBA's cylinder/head/sector for 255 heads and 63
// sectors a track, or (1023, 254, 63) when it lies beyond what CHS can say.
function chs(lba: number): Buffer {
  let c = Math.floor(lba / (255 * 63));
  let h = Math.floor(lba / 63) % 255;
  let s = (lba % 63) + 1;
  if (c > 1023) [c, h, s] = [1023, 254, 63];
  return Buffer.from([h, ((c >> 2) & 0xc0) | s, c & 0xff]);
}

function writeMbrEntry(sector: Buffer, i: number, e: { bootable: boolean; type: number; startLba: number; sectors: number }): void {
  const o = 446 + i * 16;
  sector[o] = e.bootable ? 0x80 : 0;
  chs(e.startLba).copy(sector, o + 1);
  sector[o + 4] = e.type;
  chs(e.startLba + e.sectors - 1).copy(sector, o + 5);
  sector.writeUInt32LE(e.startLba, o + 8);
  sector.writeUInt32LE(e.sectors, o + 12);
}

/**
 * Writes an MBR with a fresh non-zero disk signature and up to four primary
 * partitions (type bytes and boot flags as given). Throws PARTITION_TABLE
 * when the partitions do not fit an MBR (more than 4, beyond 2^32 sectors).
 */
export function encodeMbr(parts: readonly TablePartition[], diskSize: number, sectorSize: number, random: RandomBytes): MbrImage {
  checkSector(sectorSize);
  if (parts.length > GPT_WRITE.MBR_MAX_PARTITIONS) throw tableError(`${parts.length} partitions, more than the ${GPT_WRITE.MBR_MAX_PARTITIONS} primary partitions of an MBR (use --table gpt)`);
  if (!Number.isSafeInteger(diskSize) || diskSize % sectorSize !== 0) throw tableError(`disk size ${diskSize} is not a whole number of ${sectorSize}-byte sectors`);
  checkLayout(parts, sectorSize, sectorSize, diskSize, 'MBR sector');
  const sector = Buffer.alloc(512);
  parts.forEach((p, i) => {
    const m = /^0x([0-9a-f]{2})$/.exec(p.type.toLowerCase());
    if (m === null) throw tableError(`partition ${i + 1} has type "${p.type}", not an MBR type byte such as 0x83`);
    const type = parseInt(m[1], 16);
    if (type === 0 || type === 0xee) throw tableError(`partition ${i + 1} has MBR type ${p.type}, which marks an empty or a GPT-protective entry`);
    const startLba = p.start / sectorSize;
    const sectors = p.size / sectorSize;
    if (startLba + sectors > GPT_WRITE.MBR_MAX_SECTORS) {
      throw tableError(`partition ${i + 1} ends at sector ${startLba + sectors}, beyond the 2^32 sectors an MBR can address (${(GPT_WRITE.MBR_MAX_SECTORS * sectorSize) / 2 ** 40} TiB); use --table gpt`);
    }
    writeMbrEntry(sector, i, { bootable: p.bootable === true, type, startLba, sectors });
  });
  let sig = 0;
  while (sig === 0) sig = Buffer.from(random(4)).readUInt32LE(0);
  sector.writeUInt32LE(sig, 440);
  sector.writeUInt16LE(0xaa55, 510);
  const head = sectorSize === 512 ? sector : Buffer.concat([sector, Buffer.alloc(sectorSize - 512)]);
  return { head, signature: sig.toString(16).padStart(8, '0') };
}

/** MBR type bytes and the GPT type GUIDs they become (and back). */
export const MBR_TO_GPT: Readonly<Record<string, string>> = Object.freeze({
  '0x83': '0fc63daf-8483-4772-8e79-3d69d8477de4', // Linux filesystem
  '0x07': 'ebd0a0a2-b9e5-4433-87c0-68b6b72699c7', // Microsoft basic data (NTFS, exFAT)
  '0x06': 'ebd0a0a2-b9e5-4433-87c0-68b6b72699c7', // FAT16
  '0x0b': 'ebd0a0a2-b9e5-4433-87c0-68b6b72699c7', // FAT32
  '0x0c': 'ebd0a0a2-b9e5-4433-87c0-68b6b72699c7', // FAT32 (LBA)
  '0x0e': 'ebd0a0a2-b9e5-4433-87c0-68b6b72699c7', // FAT16 (LBA)
  '0xef': 'c12a7328-f81f-11d2-ba4b-00a0c93ec93b', // EFI System
  '0x82': '0657fd6d-a4ab-43c4-84e5-0933c84b4f4f', // Linux swap
  '0x8e': 'e6d6d379-f507-44c2-a23c-238f2a3df928', // Linux LVM
  '0xfd': 'a19d880f-05fc-4d3b-a006-743f0f84911e', // Linux RAID
  '0x27': 'de94bba4-06d1-4d40-a16a-bfd50179d6ac', // Windows recovery
});

const GPT_TO_MBR: Readonly<Record<string, string>> = Object.freeze({
  '0fc63daf-8483-4772-8e79-3d69d8477de4': '0x83',
  '4f68bce3-e8cd-4db1-96e7-fbcaf984b709': '0x83', // Linux root (x86-64)
  'ebd0a0a2-b9e5-4433-87c0-68b6b72699c7': '0x07',
  'c12a7328-f81f-11d2-ba4b-00a0c93ec93b': '0xef',
  '0657fd6d-a4ab-43c4-84e5-0933c84b4f4f': '0x82',
  'e6d6d379-f507-44c2-a23c-238f2a3df928': '0x8e',
  'a19d880f-05fc-4d3b-a006-743f0f84911e': '0xfd',
  'de94bba4-06d1-4d40-a16a-bfd50179d6ac': '0x27',
});

/**
 * The type a partition gets in the target table: kept within the same
 * scheme, mapped between MBR bytes and GPT GUIDs by the tables above.
 * Returns null for a type with no mapping (the caller says so).
 */
export function mapPartitionType(type: string, to: 'gpt' | 'mbr'): string | null {
  const t = type.toLowerCase();
  const isMbr = /^0x[0-9a-f]{2}$/.test(t);
  if (to === 'gpt') return isMbr ? (MBR_TO_GPT[t] ?? null) : GUID_RE.test(t) ? t : null;
  if (isMbr) return t === '0x05' || t === '0x0f' || t === '0x85' || t === '0x00' || t === '0xee' ? null : t;
  return GPT_TO_MBR[t] ?? null;
}
