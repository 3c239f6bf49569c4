/** Chunk files of the store: their padded size, their stored form, and the errors of opening them. */
import { closeSync, fsyncSync, openSync } from 'node:fs';
import { CHUNK } from '../../protocol/chunk.js';
import { ClonecastError, ERR } from '../../protocol/errors.js';

/** Chunk files are written with O_DIRECT in multiples of this. */
export const DIRECT_UNIT = 4096;

/** The error for a chunk file that cannot be opened: CHUNK_MISSING if it is not there. */
export function chunkOpenError(err: unknown, hex: string): unknown {
  if ((err as NodeJS.ErrnoException).code !== 'ENOENT') return err;
  return new ClonecastError(ERR.CHUNK_MISSING, `chunk ${hex} is missing from the store; run "clonecast image verify" to see which images are affected`, { sha: hex });
}

/** The stored form inside a chunk file's bytes (padding stripped and checked); CHUNK_CORRUPT otherwise. */
export function checkedStoredForm(file: Buffer, hex: string): Buffer {
  const form = file.length >= CHUNK.HEADER_SIZE ? storedForm(file, file.readUInt32BE(12)) : null;
  if (form === null) {
    throw new ClonecastError(ERR.CHUNK_CORRUPT, `chunk ${hex} is corrupt: a ${file.length}-byte file does not hold its header's payload length plus zero padding`, { sha: hex });
  }
  return form;
}

/** fsync a directory so a rename inside it is durable. */
export function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Size of a chunk file written with O_DIRECT: the stored form padded with zeros to DIRECT_UNIT. */
export function paddedChunkSize(storedLength: number): number {
  return Math.ceil(storedLength / DIRECT_UNIT) * DIRECT_UNIT;
}

/**
 * The stored form inside a chunk file's bytes: the file is either exactly
 * the stored form, or the stored form followed by zero padding to
 * DIRECT_UNIT. Returns null if the file's size or padding says otherwise.
 */
export function storedForm(file: Buffer, payloadLength: number): Buffer | null {
  const exact = CHUNK.HEADER_SIZE + payloadLength;
  if (file.length === exact) return file;
  if (file.length !== paddedChunkSize(exact)) return null;
  for (let i = exact; i < file.length; i++) if (file[i] !== 0) return null;
  return file.subarray(0, exact);
}

/** True if a chunk file of this size can hold the stored form of this payload length. */
export function chunkFileFits(fileSize: number, payloadLength: number): boolean {
  const exact = CHUNK.HEADER_SIZE + payloadLength;
  return fileSize === exact || fileSize === paddedChunkSize(exact);
}
