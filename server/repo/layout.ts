/**
 * Keys of an image repository in its bucket, under its prefix
 * (docs/repository.md, "Layout"):
 *
 *   repository.json                format marker, written once
 *   chunks/<sha256 hex>            a chunk's stored form (header + payload), immutable
 *   images/NAME/<N>.manifest       a version, written last (after every chunk it names)
 *   images/NAME/claims/<N>.<id>    a writer's claim on version number N; with the id
 *                                  0000000000000000, a tombstone: N was removed and is never reused
 *   leases/writer.<id>             a push, capture or import writing chunks now
 *   leases/sweeper.<id>            a gc deleting chunks now
 *
 * Nothing here touches the network.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';

/** The repository format this clonecast writes and reads. */
export const REPOSITORY_FORMAT = 1;

/** Fixed names and limits of the layout. */
export const LAYOUT = Object.freeze({
  MARKER: 'repository.json',
  CHUNKS: 'chunks/',
  IMAGES: 'images/',
  LEASES: 'leases/',
  /** A manifest object larger than this is refused before it is read (2^20 records and metadata fit well inside). */
  MAX_MANIFEST: 128 << 20,
  /** A lease not renewed for this long (by the server's clock) is dead. */
  LEASE_TTL_MS: 120_000,
  /** Leases are renewed this often. */
  LEASE_RENEW_MS: 30_000,
});

const SHA_RE = /^[0-9a-f]{64}$/;
const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const ID_RE = /^[0-9a-f]{16}$/;

/** Key of a chunk. */
export function chunkKey(sha: string): string {
  if (!SHA_RE.test(sha)) throw new RangeError(`not a chunk name: ${sha}`);
  return `${LAYOUT.CHUNKS}${sha}`;
}

/** Key of a version's manifest. */
export function manifestKey(name: string, version: number): string {
  return `${LAYOUT.IMAGES}${name}/${version}.manifest`;
}

/** Prefix of an image's claims, or of the claims on one number. */
export function claimPrefix(name: string, version?: number): string {
  return `${LAYOUT.IMAGES}${name}/claims/${version === undefined ? '' : `${version}.`}`;
}

/** The claim id that marks a removed version's number as used for ever. */
export const TOMBSTONE_ID = '0000000000000000';

/** A fresh random id for a lease or a claim. */
export function newId(): string {
  return randomBytes(8).toString('hex');
}

/** What a lease object says about its holder (for people: "gc waits for a push of win11 on edge-b"). */
export interface LeaseBody {
  host: string;
  pid: number;
  doing: string;
  since: string;
}

/** The body of a new lease. */
export function leaseBody(doing: string): LeaseBody {
  return { host: hostname(), pid: process.pid, doing, since: new Date().toISOString() };
}

/** What a listed key under images/ is, or null if it is nothing clonecast writes. */
export type ImageKey = { kind: 'manifest'; name: string; version: number } | { kind: 'claim'; name: string; version: number; id: string };

/** Parses a key under images/ strictly; anything else is ignored by readers. */
export function parseImageKey(key: string): ImageKey | null {
  if (!key.startsWith(LAYOUT.IMAGES)) return null;
  const parts = key.slice(LAYOUT.IMAGES.length).split('/');
  if (parts.length === 2) {
    const m = /^([1-9][0-9]{0,8})\.manifest$/.exec(parts[1]);
    if (m === null || !NAME_RE.test(parts[0])) return null;
    return { kind: 'manifest', name: parts[0], version: Number(m[1]) };
  }
  if (parts.length === 3 && parts[1] === 'claims') {
    const m = /^([1-9][0-9]{0,8})\.([0-9a-f]{16})$/.exec(parts[2]);
    if (m === null || !NAME_RE.test(parts[0])) return null;
    return { kind: 'claim', name: parts[0], version: Number(m[1]), id: m[2] };
  }
  return null;
}

/** Parses a key under leases/. */
export function parseLeaseKey(key: string): { kind: 'writer' | 'sweeper'; id: string } | null {
  const m = /^leases\/(writer|sweeper)\.([0-9a-f]{16})$/.exec(key);
  if (m === null || !ID_RE.test(m[2])) return null;
  return { kind: m[1] as 'writer' | 'sweeper', id: m[2] };
}

/** Parses a key under chunks/ (the chunk's SHA-256), or null. */
export function parseChunkKey(key: string): string | null {
  if (!key.startsWith(LAYOUT.CHUNKS)) return null;
  const sha = key.slice(LAYOUT.CHUNKS.length);
  return SHA_RE.test(sha) ? sha : null;
}
