/**
 * Checks of the used-block metadata of a manifest (ManifestMeta.partitions
 * and usedBytes): it arrives in stored manifests and in captures' uploads,
 * so every field is checked against the disk before it is believed.
 */
import type { PartitionRead } from './manifest.js';

/** Most partition records one manifest may carry (GPT's usual 128 entries, MBR logicals). */
export const MAX_PARTITION_READS = 256;

const METHODS = new Set(['used-blocks', 'full', 'swap']);

/**
 * What a terminal must not be handed: C0, DEL and C1 controls (C1's CSI, U+009B, starts an escape
 * sequence on its own), the Unicode line and paragraph separators, and the bidirectional embeddings,
 * overrides and isolates (Unicode TR#9), which reorder the text printed after them.
 */
// eslint-disable-next-line no-control-regex
export const UNPRINTABLE = /[\u0000-\u001f\u007f-\u009f\u2028-\u202e\u2066-\u2069]/;

/**
 * Returns the partition records checked against a disk of diskSize bytes,
 * or throws an Error naming the first bad field: a known method, whole
 * numbers, each partition inside the disk, its used bytes at most its
 * length, printable text of bounded length.
 */
export function checkPartitionReads(value: unknown, diskSize: number): PartitionRead[] {
  if (!Array.isArray(value) || value.length > MAX_PARTITION_READS) throw new Error(`partitions must be a list of at most ${MAX_PARTITION_READS}`);
  return value.map((p: unknown, k: number) => {
    if (typeof p !== 'object' || p === null || Array.isArray(p)) throw new Error(`partitions[${k}] must be an object`);
    const o = p as Record<string, unknown>;
    const int = (v: unknown, what: string) => {
      if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) throw new Error(`partitions[${k}].${what} must be a whole number`);
      return v;
    };
    const text = (v: unknown, what: string, max: number, optional: boolean) => {
      if (v === undefined && optional) return undefined;
      if (typeof v !== 'string' || v.length > max || UNPRINTABLE.test(v)) throw new Error(`partitions[${k}].${what} must be printable text of at most ${max} characters`);
      return v;
    };
    const index = int(o.index, 'index');
    const start = int(o.start, 'start');
    const length = int(o.length, 'length');
    if (start + length > diskSize) throw new Error(`partitions[${k}] ends beyond the disk`);
    const usedBytes = int(o.usedBytes, 'usedBytes');
    if (usedBytes > length) throw new Error(`partitions[${k}].usedBytes is more than its length`);
    if (typeof o.method !== 'string' || !METHODS.has(o.method)) throw new Error(`partitions[${k}].method must be used-blocks, full or swap`);
    if (o.fs !== null && text(o.fs, 'fs', 32, false) === undefined) throw new Error(`partitions[${k}].fs must be text or null`);
    const out: PartitionRead = {
      index,
      start,
      length,
      fs: (o.fs as string | null) ?? null,
      method: o.method as PartitionRead['method'],
      reason: text(o.reason, 'reason', 512, false)!,
      usedBytes,
    };
    const uuid = text(o.uuid, 'uuid', 64, true);
    const label = text(o.label, 'label', 128, true);
    if (uuid !== undefined) out.uuid = uuid;
    if (label !== undefined) out.label = label;
    return out;
  });
}

/** Checks usedBytes: a whole number of bytes at most the disk's size. */
export function checkUsedBytes(value: unknown, diskSize: number): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 0 || value > diskSize) throw new Error(`usedBytes must be a whole number from 0 to ${diskSize}`);
  return value;
}
