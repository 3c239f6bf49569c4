/**
 * Store upkeep: list, info, verify, rm and gc.
 */
import { readdirSync, rmdirSync, statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import { chunkLength, CHUNK } from '../../protocol/chunk.js';
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { chunkAt, ChunkKind, tableLength, type Manifest, type ManifestMeta } from '../../protocol/manifest.js';
import { Progress, type ProgressOptions } from '../progress.js';
import { compiledSibling, DEFAULT_WORKERS, WORKER_DEPTH, WorkerPool } from './pool.js';
import { runBounded } from './import.js';
import { isAlive } from './lock.js';
import type { ImageRef, Store } from './store.js';
import type { VerifyResult, VerifyTask, WorkerSetup } from './chunk-worker.js';

/** Sizes and ratios of one version. */
export interface ImageInfo {
  meta: ManifestMeta;
  chunks: number;
  dataChunks: number;
  zeroChunks: number;
  absentChunks: number;
  /** Bytes of non-zero chunks as they are on the disk. */
  dataBytes: number;
  /** Distinct chunks this version uses and their stored bytes (compressed, with headers). */
  uniqueChunks: number;
  storedBytes: number;
  /** Raw bytes of distinct chunks / stored bytes. */
  compressionRatio: number;
  /** Data bytes / raw bytes of distinct chunks (repeats inside the disk). */
  dedupeRatio: number;
  /** diskSize / storedBytes: what the store saves overall for this version. */
  totalRatio: number;
}

/** Computes sizes and ratios of a manifest. */
export function describe(m: Manifest): ImageInfo {
  const n = tableLength(m.table);
  const seen = new Set<string>();
  const info = { chunks: n, dataChunks: 0, zeroChunks: 0, absentChunks: 0, dataBytes: 0, uniqueChunks: 0, storedBytes: 0 };
  let uniqueRaw = 0;
  for (let i = 0; i < n; i++) {
    const r = chunkAt(m.table, i);
    const len = chunkLength(i, m.meta.diskSize, m.meta.chunkSize);
    if (r.kind === ChunkKind.ZERO) info.zeroChunks++;
    else if (r.kind === ChunkKind.ABSENT) info.absentChunks++;
    else {
      info.dataChunks++;
      info.dataBytes += len;
      const key = r.sha256.toString('latin1');
      if (!seen.has(key)) {
        seen.add(key);
        info.uniqueChunks++;
        uniqueRaw += len;
        info.storedBytes += CHUNK.HEADER_SIZE + r.storedLength;
      }
    }
  }
  const ratio = (a: number, b: number) => (b > 0 ? a / b : 1);
  return {
    meta: m.meta,
    ...info,
    compressionRatio: ratio(uniqueRaw, info.storedBytes),
    dedupeRatio: ratio(info.dataBytes, uniqueRaw),
    totalRatio: ratio(m.meta.diskSize, info.storedBytes),
  };
}

/** One line of `image list`. */
export interface ListEntry {
  name: string;
  versions: number[];
  latest: { version: number; createdAt: string; diskSize: number; storedBytes: number; badRanges: number; usedBytes?: number } | { version: number; error: string };
}

/** Lists every image with its versions and its latest version's sizes. */
export async function listImages(store: Store): Promise<ListEntry[]> {
  const out: ListEntry[] = [];
  for (const name of store.images()) {
    const versions = store.versions(name);
    const version = versions[versions.length - 1];
    try {
      const info = describe(await store.readManifest(name, version));
      out.push({ name, versions, latest: { version, createdAt: info.meta.createdAt, diskSize: info.meta.diskSize, storedBytes: info.storedBytes, badRanges: info.meta.badRanges.length, ...(info.meta.usedBytes !== undefined ? { usedBytes: info.meta.usedBytes } : {}) } });
    } catch (err) {
      out.push({ name, versions, latest: { version, error: (err as Error).message } });
    }
  }
  return out;
}

/** A damaged chunk and where it is used. */
export interface Damage {
  sha: string;
  problem: string;
  usedBy: { name: string; version: number; chunk: number; offset: number }[];
}

/** What verify found. */
export interface VerifyReport {
  versionsChecked: { name: string; version: number }[];
  chunksChecked: number;
  damagedChunks: Damage[];
  damagedManifests: { name: string; version: number; problem: string }[];
  /** Damaged versions, as NAME@N. */
  damagedVersions: string[];
  /** Versions whose records give another codec or stored length than the chunk file (an interrupted recompress). */
  staleVersions: string[];
  ok: boolean;
}

/** Re-reads every chunk of ref (one version or all versions of a name) or, without ref, of the whole store. */
export async function verifyStore(store: Store, ref?: ImageRef, options: { workers?: number; progress?: ProgressOptions } = {}): Promise<VerifyReport> {
  const reader = store.lockReader('verifying');
  try {
    return await verifyLocked(store, ref, options);
  } finally {
    reader.release();
  }
}

async function verifyLocked(store: Store, ref: ImageRef | undefined, options: { workers?: number; progress?: ProgressOptions }): Promise<VerifyReport> {
  const targets: { name: string; version: number }[] = [];
  if (ref === undefined) {
    for (const name of store.images()) for (const version of store.versions(name)) targets.push({ name, version });
  } else if (ref.version !== undefined) {
    targets.push(store.resolve(ref));
  } else {
    store.resolve(ref);
    for (const version of store.versions(ref.name)) targets.push({ name: ref.name, version });
  }
  const report: VerifyReport = { versionsChecked: targets, chunksChecked: 0, damagedChunks: [], damagedManifests: [], damagedVersions: [], staleVersions: [], ok: true };
  const manifests: { name: string; version: number; m: Manifest }[] = [];
  const unique = new Map<string, number>(); // sha (latin1) -> raw length
  let total = 0;
  for (const t of targets) {
    try {
      const m = await store.readManifest(t.name, t.version);
      manifests.push({ ...t, m });
      for (let i = 0; i < tableLength(m.table); i++) {
        const r = chunkAt(m.table, i);
        if (r.kind !== ChunkKind.DATA) continue;
        const key = r.sha256.toString('latin1');
        if (!unique.has(key)) {
          const len = chunkLength(i, m.meta.diskSize, m.meta.chunkSize);
          unique.set(key, len);
          total += len;
        }
      }
    } catch (err) {
      report.damagedManifests.push({ ...t, problem: (err as Error).message });
    }
  }
  const workers = options.workers ?? DEFAULT_WORKERS;
  const chunkSize = Math.max(CHUNK.MIN_SIZE, ...manifests.map(({ m }) => m.meta.chunkSize));
  const setup: WorkerSetup = { mode: 'verify', storeRoot: store.root, chunkSize };
  const pool = new WorkerPool<VerifyTask, VerifyResult>(compiledSibling(import.meta.url, 'chunk-worker'), workers, setup);
  const progress = new Progress('verify', total, options.progress);
  const bad = new Map<string, string>(); // sha hex -> problem
  const forms = new Map<string, NonNullable<VerifyResult['form']>>(); // sha hex -> stored form of a sound chunk
  try {
    const keys = [...unique.keys()];
    await runBounded(keys.length, workers * (WORKER_DEPTH + 1), async (k) => {
      const sha = Buffer.from(keys[k], 'latin1').toString('hex');
      const rawLength = unique.get(keys[k])!;
      const r = await pool.run({ sha, rawLength });
      if (r.problem !== null) bad.set(sha, r.problem);
      else if (r.form !== undefined) forms.set(sha, r.form);
      report.chunksChecked++;
      progress.add(rawLength);
    });
    progress.finish();
  } finally {
    await pool.close();
  }
  if (bad.size > 0) {
    const byHex = new Map<string, Damage>([...bad].map(([sha, problem]) => [sha, { sha, problem, usedBy: [] }]));
    const versions = new Set<string>();
    for (const { name, version, m } of manifests) {
      for (let i = 0; i < tableLength(m.table); i++) {
        const r = chunkAt(m.table, i);
        if (r.kind !== ChunkKind.DATA) continue;
        const d = byHex.get(r.sha256.toString('hex'));
        if (d === undefined) continue;
        d.usedBy.push({ name, version, chunk: i, offset: i * m.meta.chunkSize });
        versions.add(`${name}@${version}`);
      }
    }
    report.damagedChunks = [...byHex.values()];
    report.damagedVersions = [...versions].sort();
  }
  for (const d of report.damagedManifests) report.damagedVersions.push(`${d.name}@${d.version}`);
  // A record must say how its chunk is stored: a multicast session's receivers count fragments from it.
  for (const { name, version, m } of manifests) {
    for (let i = 0; i < tableLength(m.table); i++) {
      const r = chunkAt(m.table, i);
      const f = r.kind === ChunkKind.DATA ? forms.get(r.sha256.toString('hex')) : undefined;
      if (f !== undefined && (f.compression !== r.compression || f.payloadLength !== r.storedLength)) {
        report.staleVersions.push(`${name}@${version}`);
        break;
      }
    }
  }
  report.ok = report.damagedChunks.length === 0 && report.damagedManifests.length === 0 && report.staleVersions.length === 0;
  return report;
}

/** Removes one version (NAME@N) or every version of an image (NAME). Chunks stay until gc. */
export function removeImage(store: Store, ref: ImageRef, options: { dryRun?: boolean } = {}): { name: string; removed: number[]; dryRun: boolean } {
  const { name, version } = store.resolve(ref);
  const dryRun = options.dryRun === true;
  const versions = ref.version !== undefined || ref.asOf !== undefined ? [version] : store.versions(name);
  // A dry run only names what would go: no lock (it changes nothing), no removal.
  if (dryRun) return { name, removed: versions, dryRun };
  const lock = store.lockImage(name, 'removing versions');
  try {
    for (const v of versions) store.removeVersion(name, v);
    if (store.versions(name).length === 0) {
      try {
        rmdirSync(join(store.root, 'images', name));
      } catch {
        // not empty (a stray file): leave the folder
      }
    }
    return { name, removed: versions, dryRun };
  } finally {
    lock.release();
  }
}

/** What gc did (with dryRun: what it would remove; nothing was). */
export interface GcReport {
  dryRun: boolean;
  referencedChunks: number;
  removedChunks: number;
  removedBytes: number;
  removedTempFiles: number;
}

/**
 * Removes every chunk that no version references, and temporary files of
 * processes that are gone. Refuses to run if any manifest cannot be read,
 * since its chunks could not be told apart from garbage. With dryRun it
 * counts what it would remove and removes nothing.
 */
export async function collectGarbage(store: Store, options: { dryRun?: boolean } = {}): Promise<GcReport> {
  const dryRun = options.dryRun === true;
  const lock = store.lockGc();
  try {
    const referenced = new Set<string>();
    for (const name of store.images()) {
      for (const version of store.versions(name)) {
        let m: Manifest;
        try {
          m = await store.readManifest(name, version);
        } catch (err) {
          throw new ClonecastError(
            ERR.DAMAGED,
            `gc refused: ${name}@${version} cannot be read (${(err as Error).message}), so its chunks cannot be told from garbage. Remove that version with "clonecast image rm ${name}@${version}" or repair it, then run gc again`,
          );
        }
        for (let i = 0; i < tableLength(m.table); i++) {
          const r = chunkAt(m.table, i);
          if (r.kind === ChunkKind.DATA) referenced.add(r.sha256.toString('hex'));
        }
      }
    }
    const report: GcReport = { dryRun, referencedChunks: referenced.size, removedChunks: 0, removedBytes: 0, removedTempFiles: 0 };
    const chunks = join(store.root, 'chunks');
    for (const dir of readdirSync(chunks)) {
      for (const file of readdirSync(join(chunks, dir))) {
        if (referenced.has(file)) continue;
        const path = join(chunks, dir, file);
        report.removedBytes += statSync(path).size;
        if (!dryRun) unlinkSync(path);
        report.removedChunks++;
      }
    }
    const tmp = join(store.root, 'tmp');
    for (const file of readdirSync(tmp)) {
      const pid = Number(file.split('.')[1]);
      // Temp files are named TAG.PID.RANDOM; keep those of live processes.
      if (Number.isInteger(pid) && pid !== process.pid && isAlive(pid)) continue;
      if (!dryRun) unlinkSync(join(tmp, file));
      report.removedTempFiles++;
    }
    if (!dryRun) await store.barrier();
    return report;
  } finally {
    lock.release();
  }
}

/** One version in an image's history. */
export interface HistoryEntry {
  version: number;
  createdAt: string;
  parent: number | null;
  source: string;
  diskSize: number;
  newBytes: number;
  storedBytes: number;
  badRanges: number;
}

/** Every version of an image, oldest first. */
export async function imageHistory(store: Store, name: string): Promise<HistoryEntry[]> {
  store.resolve({ name });
  const out: HistoryEntry[] = [];
  for (const version of store.versions(name)) {
    const m = await store.readManifest(name, version);
    const info = describe(m);
    out.push({
      version,
      createdAt: m.meta.createdAt,
      parent: m.meta.parent,
      source: m.meta.source.description || m.meta.source.path,
      diskSize: m.meta.diskSize,
      newBytes: m.meta.newBytes,
      storedBytes: info.storedBytes,
      badRanges: m.meta.badRanges.length,
    });
  }
  return out;
}

/** Retention rules: the latest version is always kept. */
export interface Retention {
  /** Keep the newest K versions. */
  keepLast?: number;
  /** Keep the newest version of each of the last D days (UTC), counting from now. */
  keepDaily?: number;
  now?: number;
}

/** Which versions the rules keep. */
export function retained(history: { version: number; createdAt: string }[], r: Retention): Set<number> {
  const keep = new Set<number>();
  const newest = [...history].sort((a, b) => b.version - a.version);
  if (newest.length > 0) keep.add(newest[0].version);
  for (const h of newest.slice(0, r.keepLast ?? 0)) keep.add(h.version);
  if (r.keepDaily !== undefined && r.keepDaily > 0) {
    const today = Math.floor((r.now ?? Date.now()) / 86_400_000);
    const days = new Set<number>();
    for (const h of newest) {
      const day = Math.floor(Date.parse(h.createdAt) / 86_400_000);
      if (today - day < r.keepDaily && !days.has(day)) {
        days.add(day);
        keep.add(h.version);
      }
    }
  }
  return keep;
}

/** Removes the versions of name the rules do not keep (their chunks go at the next gc). */
export async function pruneImage(store: Store, name: string, r: Retention, dryRun = false): Promise<{ name: string; kept: number[]; removed: number[] }> {
  if (r.keepLast === undefined && r.keepDaily === undefined) throw new ClonecastError(ERR.USAGE, 'prune needs --keep-last K and/or --keep-daily D');
  const history = await imageHistory(store, name);
  const keep = retained(history, r);
  const removed = history.map((h) => h.version).filter((v) => !keep.has(v));
  if (!dryRun && removed.length > 0) {
    const lock = store.lockImage(name, 'pruning versions');
    try {
      for (const v of removed) store.removeVersion(name, v);
    } finally {
      lock.release();
    }
  }
  return { name, kept: [...keep].sort((a, b) => a - b), removed };
}
