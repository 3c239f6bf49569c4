/**
 * `serve --repository`: the server's store becomes an edge's read-through
 * cache of the repository (server/repo/edge-store.ts). Credentials come from
 * the environment or ~/.aws/credentials, as for every repository command.
 */
import type { Context } from './command.js';
import { logLine } from './command.js';
import { boundRepository, endpointFor } from './repository-options.js';
import type { Store } from '../server/store/store.js';
import type { EdgeStore } from '../server/repo/edge-store.js';

/** The store serve uses: the plain one, or (with a repository) an edge store on the same folder. */
export async function serveStore(ctx: Context): Promise<{ store: Store; edge?: EdgeStore }> {
  const plain = ctx.store();
  const bound = boundRepository(ctx);
  const url = ctx.str('repository') ?? process.env.CLONECAST_REPOSITORY ?? bound?.address;
  if (url === undefined) return { store: plain };
  const { cleartextWarning, parseRepository } = await import('../server/repo/s3.js');
  const { EdgeStore } = await import('../server/repo/edge-store.js');
  const target = parseRepository(url, endpointFor(ctx, url, bound), ctx.str('region'), ctx.str('ca-bundle'));
  const warning = cleartextWarning(target);
  if (warning !== null) logLine('warn', warning);
  const refresh = ctx.num('repository-refresh');
  const edge = await EdgeStore.openEdge(plain.root, target, { log: logLine, refreshMs: refresh === undefined ? undefined : refresh * 1000 });
  return { store: edge, edge };
}

/** The repository line of serve's banner. */
export function edgeLine(edge: EdgeStore | undefined): string {
  if (edge === undefined) return 'none (a store of its own; --repository s3://BUCKET/PREFIX makes this server an edge that caches one)';
  const s = edge.repositoryStatus();
  const cached = edge.cachedList() || 'none';
  return s.reachable === true
    ? `${s.address}, reachable; this server is its edge (cached: ${cached})`
    : `${s.address}, UNREACHABLE (${s.lastError}); serving the cached versions (${cached}) and trying again every refresh`;
}
