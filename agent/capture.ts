/**
 * Capture: the agent reads its disk and uploads it as a new version of an
 * image. It cuts the disk into chunks exactly as `image import` does (zero
 * chunks recorded, others compressed, xxh64 + SHA-256), asks the server in
 * batches which chunk hashes it already has, uploads only the missing ones,
 * then hands over the chunk table; the server publishes the version only
 * once every chunk is stored (server/captures.ts). Every call is retried
 * across network faults and server restarts; uploads are idempotent (chunks
 * are named by their hash), so a resumed capture sends only what is missing.
 */
import { chunkCount, chunkLength, CHUNK, encodeChunk, isZero } from '../protocol/chunk.js';
import type { CaptureProgress } from '../protocol/api.js';
import { ClonecastError, ERR, isError } from '../protocol/errors.js';
import { pinnedFetch, type PinnedResponse } from '../native/pinned-tls.js';
import { initHashes, sha256, xxh64 } from '../protocol/hash.js';
import { ChunkKind, newChunkTable, setChunk, type BadRange } from '../protocol/manifest.js';
import type { PartitionTable } from '../protocol/partitions.js';
import type { Capture } from '../protocol/control.js';
import { statSync } from 'node:fs';
import { Disk } from '../native/disk.js';
import { devNumbers, deviceUsage } from '../native/usage.js';
import { readAround } from '../native/read-around.js';
import { mergeRanges } from '../protocol/manifest.js';
import { readTable } from '../native/disk-table.js';
import { chunkUse, zeroOutside } from '../protocol/used-map.js';
import { captureMap } from './capture-map.js';

/** Data chunks asked about (and uploaded) per round trip. */
const BATCH = 16;
/** Retries of one HTTP call across faults, with back-off to 5 s: about 10 minutes. */
const RETRIES = 120;
/** Retries of a call the server answered with an error. */
const SERVER_RETRIES = 5;

export type { CaptureProgress };

/** How the agent reaches the server. */
export interface CaptureLink {
  server: string;
  /** SHA-256 fingerprint of the server's certificate. */
  fingerprint: string;
  token: string;
  machineId: string;
  log?: (level: 'info' | 'warn', message: string) => void;
}

/** One call of the capture API, retried across network faults (never after a certificate mismatch). */
export async function call(link: CaptureLink, method: string, path: string, body?: Buffer | string, type = 'application/json'): Promise<unknown> {
  let wait = 250;
  for (let attempt = 0; ; attempt++) {
    let res: PinnedResponse | undefined;
    try {
      res = await pinnedFetch(new URL(path, link.server), {
        method,
        pin: link.fingerprint,
        headers: { authorization: `Bearer ${link.token}`, 'x-clonecast-machine': link.machineId, ...(body !== undefined ? { 'content-type': type } : {}) },
        body,
      });
    } catch (err) {
      // Another certificate at the server's address is not a fault that goes away by retrying soon.
      if (isError(err, ERR.CERT_MISMATCH) || isError(err, ERR.USAGE)) throw err;
      if (attempt >= RETRIES) throw new ClonecastError(ERR.UNREACHABLE, `cannot reach ${link.server} for the capture: ${(err as Error).message}`);
    }
    if (res !== undefined) {
      const text = await res.text();
      if (res.ok) return text === '' ? null : JSON.parse(text);
      // 5xx and 404 (a restarting server that has not restored the capture yet) are retried a few times.
      if ((res.status < 500 && res.status !== 404) || attempt >= SERVER_RETRIES) {
        let message = text;
        try {
          message = (JSON.parse(text) as { error: { message: string } }).error.message;
        } catch {
          // plain text
        }
        throw new ClonecastError(ERR.REFUSED, `the server refused the capture: ${message}`);
      }
      if (attempt >= RETRIES) throw new ClonecastError(ERR.UNREACHABLE, `the server answered ${res.status} to ${method} ${path}`);
    }
    if (attempt === 2) link.log?.('warn', `capture: the server does not answer; retrying until it is back`);
    await new Promise((r) => setTimeout(r, wait));
    wait = Math.min(wait * 2, 5000);
  }
}

/** Byte ranges to capture: the selected partitions and the partition table areas; null for the whole disk. */
function selectedRanges(table: PartitionTable, partitions: number[], diskSize: number): { start: number; end: number }[] | null {
  if (partitions.length === 0) return null;
  const sector = table.sectorSize;
  // The tables themselves: MBR/GPT header and entries at the start, the GPT backup at the end.
  const ranges = [{ start: 0, end: Math.min(diskSize, 34 * sector) }, { start: Math.max(0, diskSize - 33 * sector), end: diskSize }];
  for (const n of partitions) {
    const p = table.partitions.find((x) => x.number === n);
    if (p === undefined) throw new ClonecastError(ERR.USAGE, `the disk has no partition ${n} (it has ${table.partitions.map((x) => x.number).join(', ') || 'none'})`);
    ranges.push({ start: p.start, end: p.start + p.size });
  }
  return ranges;
}

/** Runs one capture; resolves with what the server published. */
export async function runCapture(link: CaptureLink, c: Capture, device: string, onProgress: (p: CaptureProgress) => void): Promise<{ version: number; newBytes: number }> {
  const base = `/api/captures/${c.captureId}`;
  try {
    await initHashes();
    refuseInUse(device, c.force === true);
    const disk = Disk.open(device);
    const chunkSize = c.chunkSize || CHUNK.DEFAULT_SIZE;
    try {
      const diskSize = disk.size;
      const partitionTable = await readTable(disk);
      const ranges = selectedRanges(partitionTable, c.partitions ?? [], diskSize);
      // What the filesystems use (null under --raw): unused chunks are neither read nor sent.
      const used = await captureMap(device, diskSize, partitionTable, c, ranges, link.log);
      const n = chunkCount(diskSize, chunkSize);
      const table = newChunkTable(n);
      const raw = disk.allocate(chunkSize);
      const stored = Buffer.alloc(CHUNK.HEADER_SIZE + chunkSize + 4096);
      const bad: BadRange[] = [];
      const progress: CaptureProgress = { chunksDone: 0, chunksTotal: n, bytesRead: 0, reused: 0, bytesSent: 0 };
      let batch: { i: number; sha: string; data: Buffer }[] = [];
      const flush = async () => {
        if (batch.length === 0) return;
        const { missing } = (await call(link, 'POST', `${base}/have`, JSON.stringify({ chunks: batch.map((b) => b.sha) }))) as { missing: string[] };
        const want = new Set(missing);
        for (const b of batch) {
          if (!want.has(b.sha)) {
            progress.reused++;
            continue;
          }
          await call(link, 'PUT', `${base}/chunks/${b.sha}`, b.data, 'application/octet-stream');
          progress.bytesSent += b.data.length;
        }
        batch = [];
      };
      let lastReport = 0;
      for (let i = 0; i < n; i++) {
        const position = i * chunkSize;
        const length = chunkLength(i, diskSize, chunkSize);
        if (ranges !== null && !ranges.some((r) => r.start < position + length && r.end > position)) {
          setChunk(table, i, { kind: ChunkKind.ABSENT, compression: 0, storedLength: 0, xxh64: 0n, sha256: Buffer.alloc(32) });
        } else if (used !== null && chunkUse(used.map.used, position, length).use === 'unused') {
          setChunk(table, i, { kind: ChunkKind.UNUSED, compression: 0, storedLength: 0, xxh64: 0n, sha256: Buffer.alloc(32) });
        } else {
          const view = raw.subarray(0, length);
          mergeRanges(bad, readAround(disk, raw, position, length, c.ignoreReadErrors === true));
          progress.bytesRead += length;
          const use = used === null ? null : chunkUse(used.map.used, position, length);
          if (use?.use === 'partial') zeroOutside(view, length, use.keep);
          if (isZero(view)) setChunk(table, i, { kind: ChunkKind.ZERO, compression: 0, storedLength: 0, xxh64: 0n, sha256: Buffer.alloc(32) });
          else {
            const hash = xxh64(view);
            const sha = sha256(view);
            const { compression, data } = encodeChunk(view, hash, stored);
            setChunk(table, i, { kind: ChunkKind.DATA, compression, storedLength: data.length - CHUNK.HEADER_SIZE, xxh64: hash, sha256: sha });
            batch.push({ i, sha: sha.toString('hex'), data: Buffer.from(data) });
            if (batch.length >= BATCH) await flush();
          }
        }
        progress.chunksDone = i + 1;
        if (performance.now() - lastReport > 1000) {
          lastReport = performance.now();
          onProgress({ ...progress });
          void call(link, 'POST', `${base}/progress`, JSON.stringify(progress)).catch(() => {});
        }
      }
      await flush();
      onProgress({ ...progress });
      await call(link, 'PUT', `${base}/table`, table, 'application/octet-stream');
      const meta = { diskSize, sectorSize: disk.logicalSectorSize, chunkSize, partitionTable, badRanges: bad, device, blockDevice: disk.blockDevice, progress, ...used?.meta };
      const done = (await call(link, 'POST', `${base}/finish`, JSON.stringify(meta))) as { result: { version: number; newBytes: number } };
      return done.result;
    } finally {
      disk.close();
    }
  } catch (err) {
    await call(link, 'POST', `${base}/fail`, JSON.stringify({ error: (err as Error).message })).catch(() => {});
    throw err;
  }
}

/** A mounted disk changes while it is read: its copy would be inconsistent. */
function refuseInUse(device: string, force: boolean): void {
  if (force) return;
  const st = statSync(device);
  if (!st.isBlockDevice()) return;
  const { major, minor } = devNumbers(st.rdev);
  const usage = deviceUsage(major, minor);
  const reasons = [...usage.reasons, ...(usage.bootDisk ? ['it holds the running system'] : [])];
  if (reasons.length > 0) {
    throw new ClonecastError(
      ERR.DISK_IN_USE,
      `refusing to capture ${device}: ${reasons.join('; ')}. Its filesystems change while they are read, so the copy would be inconsistent: unmount them (or boot the machine from the network), or capture with --force`,
    );
  }
}

/** Tells the server a capture failed before it could start. */
export async function reportFailure(link: CaptureLink, id: number, error: string): Promise<void> {
  await call(link, 'POST', `/api/captures/${id}/fail`, JSON.stringify({ error })).catch(() => {});
}
