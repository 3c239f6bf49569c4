/**
 * The routes of an edge server (serve --repository): where each version's
 * chunks are, the repository's status, a background prefetch of a version
 * (the dashboard's Pull), and a refresh of the catalogue. Each needs the
 * server's token (api.ts checks it before the console routes run).
 */
import { ClonecastError, ERR } from '../protocol/errors.js';
import { EdgeStore, type CacheState, type RepositoryStatus } from './repo/edge-store.js';
import { listImages, type ListEntry } from './store/maintenance.js';
import { checkName, type Store } from './store/store.js';

/** The repository's status if this server is an edge, else null. */
export function repositoryStatus(store: Store): RepositoryStatus | null {
  return store instanceof EdgeStore ? store.repositoryStatus() : null;
}

/** Where a version's chunks are, at an edge; undefined elsewhere (everything is local). */
export async function cacheStateOf(store: Store, name: string, version: number): Promise<CacheState | undefined> {
  return store instanceof EdgeStore ? store.cacheState(name, version) : undefined;
}

/**
 * POST /api/images/NAME/V/pull, GET /api/repository, POST /api/repository/refresh;
 * undefined when the route is not one of them, else [status, body].
 */
export async function edgeRoute(store: Store, method: string, path: string, imagesChanged: () => void): Promise<[number, unknown] | undefined> {
  const pull = /^\/api\/images\/([^/]{1,64})\/(\d{1,9})\/pull$/.exec(path);
  if (pull === null && path !== '/api/repository' && path !== '/api/repository/refresh') return undefined;
  if (!(store instanceof EdgeStore)) {
    throw new ClonecastError(ERR.USAGE, 'this server is not an edge of a repository: every image is in its own store (start it with --repository s3://BUCKET/PREFIX to make it one)');
  }
  if (pull !== null && method === 'POST') {
    const name = pull[1];
    checkName(name);
    const version = Number(pull[2]);
    if (!store.versions(name).includes(version)) throw new ClonecastError(ERR.NOT_FOUND, `no version ${version} of "${name}" here or in the repository`);
    const state = await store.prefetch(name, version);
    imagesChanged();
    return [202, { name, version, cache: state }];
  }
  if (path === '/api/repository' && method === 'GET') return [200, store.repositoryStatus()];
  if (path === '/api/repository/refresh' && method === 'POST') {
    await store.refresh();
    imagesChanged();
    return [200, store.repositoryStatus()];
  }
  return undefined;
}

/** An image list entry with, at an edge, where each version's chunks are. */
export type ListEntryWithCache = ListEntry & { cache?: Record<number, CacheState> };

/** listImages, with each version's cache state at an edge (the dashboard's images table). */
export async function listWithCache(store: Store): Promise<ListEntryWithCache[]> {
  const list: ListEntryWithCache[] = await listImages(store);
  if (!(store instanceof EdgeStore)) return list;
  for (const entry of list) {
    entry.cache = {};
    for (const v of entry.versions) {
      try {
        entry.cache[v] = await store.cacheState(entry.name, v);
      } catch (err) {
        entry.cache[v] = { state: 'remote', chunks: 0, cachedChunks: 0, filling: false, error: (err as Error).message };
      }
    }
  }
  return list;
}
