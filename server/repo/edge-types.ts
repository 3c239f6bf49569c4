/** The options, defaults and reports of an edge server's store (edge-store.ts). */
import type { Repository } from './repository.js';
import type { RepositoryTarget } from './s3.js';

/** An edge keeps the cache counts of 4 x this many versions for a few seconds (the dashboard asks for all of them every few seconds). */
export const MANIFEST_MEMORY = 32;

/** Bytes of remote manifests an edge keeps in memory: a few very large disks' tables, or many small ones. */
export const MANIFEST_MEMORY_BYTES = 256 << 20;

/** Defaults of an edge store's timers. */
export const EDGE_DEFAULTS = Object.freeze({
  /** How often the catalogue is listed again, ms. */
  refreshMs: 60_000,
  /** First wait before a failed fetch is tried again, ms (doubles up to retryMaxMs). */
  retryMs: 1_000,
  retryMaxMs: 10_000,
  /** How long a read waits for an unreachable repository before it fails, ms. */
  patienceMs: 15 * 60_000,
  /** Chunks a background fill fetches at once. */
  fillConcurrency: 4,
});

/** Options of an edge store; undefined means the default. */
export interface EdgeOptions {
  refreshMs?: number;
  retryMs?: number;
  retryMaxMs?: number;
  patienceMs?: number;
  fillConcurrency?: number;
  log?: (level: 'info' | 'warn', message: string) => void;
  /** Opens the repository (tests); default Repository.open. */
  open?: (target: RepositoryTarget) => Promise<Repository>;
}

/** Where one version's chunks are at an edge. */
export interface CacheState {
  state: 'cached' | 'partial' | 'remote';
  /** Distinct data chunks of the version, and how many of them are here. */
  chunks: number;
  cachedChunks: number;
  /** A background fill of it is running. */
  filling: boolean;
  /** Why its last fill stopped, if it failed. */
  error?: string;
}

/** The repository as the edge sees it (no credential ever appears here). */
export interface RepositoryStatus {
  address: string;
  /** null until the first request answered or failed. */
  reachable: boolean | null;
  /** When reachable last changed (ISO time). */
  since: string;
  lastError: string | null;
  /** When the catalogue was last listed. */
  refreshedAt: string | null;
}
