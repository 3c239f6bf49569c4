/**
 * The verifier: reads a disk back and checks it against the manifest, chunk
 * by chunk (SHA-256 for data, all zero for zero chunks), and digests what it
 * read so that the server can compare it with the manifest's diskDigest().
 * The same read-back finds the chunks a disk already holds before a resume.
 */
import { createHash, createHmac } from 'node:crypto';
import { chunkAt, ChunkKind, definesBytes, tableLength, type Manifest } from '../protocol/manifest.js';
import { chunkLength, isZero } from '../protocol/chunk.js';
import { sha256, xxh64 } from '../protocol/hash.js';
import type { Disk } from '../native/disk.js';

/** What reading a disk back found. */
export interface Verification {
  chunksVerified: number;
  /** Chunks that did not read back as written (the first MAX_BAD_LISTED). */
  bad: number[];
  chunksBad: number;
  /** diskDigest() of what was read back: comparable with the manifest's. */
  digest: Buffer;
  /** With a nonce: the KeyedDigest of what was read back (what the agent reports; see KeyedDigest). */
  keyed?: Buffer;
}

/**
 * The disk digest a verified machine reports under `clonecast serve`:
 * SHA-256 over HMAC-SHA256(nonce, chunk bytes) of every present chunk in
 * order (zero chunks included, absent and unused ones left out). The nonce comes in the
 * Assign, so the value cannot be computed from the manifest: only from the
 * chunks' bytes. The server computes it from its store.
 */
export class KeyedDigest {
  private readonly all = createHash('sha256');

  constructor(private readonly nonce: Uint8Array) {}

  /** Adds the next present chunk's bytes. */
  add(data: Uint8Array): void {
    this.all.update(createHmac('sha256', this.nonce).update(data).digest());
  }

  /** Adds a chunk by its HMAC, computed already (the same for every zero chunk of one length). */
  addHmac(hmac: Uint8Array): void {
    this.all.update(hmac);
  }

  digest(): Buffer {
    return this.all.digest();
  }
}

const MAX_BAD_LISTED = 32;

/** Thrown out of a read-back when stopped() said so; the caller has stopped anyway. */
export class ReadBackStopped extends Error {
  constructor() {
    super('read-back stopped');
  }
}

/**
 * Reads every present chunk back and checks it; stopped() is asked before
 * each read, so that a receiver being torn down never reads a closed disk.
 */
export async function verifyDisk(disk: Disk, manifest: Manifest, stopped: () => boolean, nonce?: Uint8Array): Promise<Verification> {
  const { meta, table } = manifest;
  const n = tableLength(table);
  const buf = disk.allocate(meta.chunkSize);
  const digest = createHash('sha256');
  const keyed = nonce !== undefined && nonce.length > 0 ? new KeyedDigest(nonce) : undefined;
  const result: Verification = { chunksVerified: 0, bad: [], chunksBad: 0, digest: Buffer.alloc(0) };
  for (let i = 0; i < n; i++) {
    const kind = chunkAt(table, i).kind;
    if (!definesBytes(kind)) continue;
    if (stopped()) throw new ReadBackStopped();
    const len = chunkLength(i, meta.diskSize, meta.chunkSize);
    await disk.read(buf, i * meta.chunkSize, len);
    const data = buf.subarray(0, len);
    // SHA-256, not xxh64 (which can be forged): the digest needs it anyway.
    const sum = sha256(data);
    const ok = kind === ChunkKind.ZERO ? isZero(data) : sum.equals(chunkAt(table, i).sha256);
    digest.update(sum);
    keyed?.add(data);
    if (ok) result.chunksVerified++;
    else {
      result.chunksBad++;
      if (result.bad.length < MAX_BAD_LISTED) result.bad.push(i);
    }
  }
  result.digest = digest.digest();
  if (keyed !== undefined) result.keyed = keyed.digest();
  return result;
}

/** Calls found(i, bytes) for every chunk in candidates(i) whose bytes on disk already match the manifest (bytes valid during the call only). */
export async function scanExisting(disk: Disk, manifest: Manifest, hashes: BigUint64Array, candidate: (i: number) => boolean, found: (i: number, data: Buffer) => void, stopped: () => boolean): Promise<void> {
  const { meta, table } = manifest;
  const n = tableLength(table);
  const buf = disk.allocate(meta.chunkSize);
  for (let i = 0; i < n && !stopped(); i++) {
    if (!candidate(i)) continue;
    const len = chunkLength(i, meta.diskSize, meta.chunkSize);
    const got = await disk.read(buf, i * meta.chunkSize, len);
    // xxh64 first (cheap, rules out most), then SHA-256: a forged chunk already on the disk is not kept.
    const data = buf.subarray(0, len);
    if (got === len && xxh64(data) === hashes[i] && sha256(data).equals(chunkAt(table, i).sha256)) found(i, data);
  }
}
