/**
 * An edge's read-through cache against a real S3 server (Swift with s3api,
 * test/swift-lab.mjs): a session-like reader gets every chunk of a remote
 * version right with one fetch per chunk; the fill then publishes it locally;
 * a damaged chunk object is refused and never stored; with the repository
 * killed, cached versions still read, remote ones are refused at once with a
 * clear message, a read that needs a missing chunk waits, and the fill
 * finishes when the repository is back, nothing published half-way.
 */
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { cpSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { Compression, decodeChunk, writeChunkHeader } from '../../protocol/chunk.js';
import { xxh64 } from '../../protocol/hash.js';
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { sha256 } from '../../protocol/hash.js';
import { chunkAt, ChunkKind, tableLength, type Manifest } from '../../protocol/manifest.js';
import { edgeRoute } from '../../server/api-edge.js';
import { EdgeStore } from '../../server/repo/edge-store.js';
import { chunkKey } from '../../server/repo/layout.js';
import { push } from '../../server/repo/push.js';
import { dataChunks, Repository, sameDisk } from '../../server/repo/repository.js';
import { parseRepository, type RepositoryTarget } from '../../server/repo/s3.js';
import { importImage } from '../../server/store/import.js';
import { verifyStore } from '../../server/store/maintenance.js';
import { Store } from '../../server/store/store.js';
import { itNeeds, missing, seeded, tempDir, texty, until } from '../helpers.js';
import { startSwift } from '../swift-lab.mjs';

const C = 64 << 10;
let dir = '';
let swift: Awaited<ReturnType<typeof startSwift>> | undefined;
let env: Record<string, string> = {};
let n = 0;
const BUCKET = `edge${process.pid.toString(36)}${Date.now().toString(36)}`;
const edges: EdgeStore[] = [];
const logs: string[] = [];

function target(): RepositoryTarget {
  return parseRepository(`s3://${BUCKET}/e${++n}`, swift!.endpoint, 'us-east-1');
}

/** A central store with image "pc": one version per seed, each `size` bytes of seeded data. */
async function central(tag: string, versions: { seed: number; size: number }[]): Promise<Store> {
  const store = Store.open(join(dir, tag));
  for (const [k, v] of versions.entries()) {
    const path = join(dir, `${tag}-${k}.raw`);
    const b = Buffer.alloc(v.size);
    seeded(v.size / 2, v.seed).copy(b, 0);
    writeFileSync(path, b);
    await importImage(store, path, 'pc', { chunkSize: C, workers: 2, raw: true });
  }
  return store;
}

async function edgeOn(t: RepositoryTarget, tag: string, o: Parameters<typeof EdgeStore.openEdge>[2] = {}): Promise<EdgeStore> {
  const e = await EdgeStore.openEdge(join(dir, tag), t, { refreshMs: 3_600_000, retryMs: 100, retryMaxMs: 500, log: (level, m) => logs.push(`${level} ${m}`), ...o });
  edges.push(e);
  return e;
}

/** Reads every data position of m as a sender would (each position, several at once), checking each chunk. */
async function readAll(e: EdgeStore, m: Manifest): Promise<number> {
  const positions = [...Array(tableLength(m.table)).keys()].filter((i) => chunkAt(m.table, i).kind === ChunkKind.DATA);
  let checked = 0;
  // Twice over, at once: a chunk asked for by several readers is fetched once.
  await Promise.all([...positions, ...positions].map(async (i) => {
    const r = chunkAt(m.table, i);
    const { raw } = decodeChunk(await e.readChunk(r.sha256), `chunk ${i}`);
    expect(sha256(raw).equals(r.sha256)).toBe(true);
    checked++;
  }));
  return checked;
}

beforeAll(async () => {
  if (missing(['s3']).length > 0) return;
  dir = tempDir('edge');
  swift = await startSwift({ dir: join(dir, 'swift'), bucket: BUCKET });
  env = { AWS_ACCESS_KEY_ID: swift.accessKey, AWS_SECRET_ACCESS_KEY: swift.secretKey, AWS_REGION: swift.region };
  Object.assign(process.env, env);
}, 120_000);

afterAll(async () => {
  for (const e of edges) e.close();
  await swift?.stop();
  for (const k of Object.keys(env)) delete process.env[k];
  if (dir !== '') rmSync(dir, { recursive: true, force: true });
});

describe('edge store: a read-through cache of a repository on a real S3 server', () => {
  itNeeds(['s3'], 'a session-like reader gets every chunk of a remote version right, each fetched once; the fill then publishes it as an ordinary cached version', async () => {
    const t = target();
    const src = await central('c1', [{ seed: 1, size: 4 << 20 }]);
    const repo = await Repository.open(t, { create: true });
    await push(repo, src, 'pc', 1);
    repo.close();
    const e = await edgeOn(t, 'edge1');
    expect(e.repositoryStatus()).toMatchObject({ reachable: true, lastError: null });
    expect(e.versions('pc')).toEqual([1]);
    expect(e.local.versions('pc')).toEqual([]);
    expect(e.resolve({ name: 'pc' })).toEqual({ name: 'pc', version: 1 });
    expect(e.resolve({ name: 'pc', asOf: new Date(Date.now() + 60_000).toISOString() })).toEqual({ name: 'pc', version: 1 });
    expect(await e.cacheState('pc', 1)).toMatchObject({ state: 'remote', cachedChunks: 0 });

    const m = await e.readManifest('pc', 1);
    const distinct = dataChunks(m).length;
    expect(distinct).toBeGreaterThan(20);
    expect(await readAll(e, m)).toBeGreaterThan(2 * distinct - 1);
    expect(e.fetched).toBe(distinct);
    // Every chunk is here now, but the version is not published until the fill has made them durable.
    expect(await e.cacheState('pc', 1)).toMatchObject({ state: 'partial', chunks: distinct, cachedChunks: distinct });
    expect(e.local.versions('pc')).toEqual([]);

    await e.warm(m);
    await until(async () => (await e.cacheState('pc', 1)).state === 'cached', 60_000, 'the version to be published in the cache');
    expect(e.fetched).toBe(distinct); // the fill found them all here
    expect(e.local.versions('pc')).toEqual([1]);
    expect(sameDisk(await e.local.readManifest('pc', 1), await src.readManifest('pc', 1))).toBe(true);
    expect(await verifyStore(e.local)).toMatchObject({ ok: true, damagedChunks: [] });
  }, 180_000);

  itNeeds(['s3'], 'a damaged chunk object in the bucket is refused and never stored; the version is not published', async () => {
    const t = target();
    const src = await central('c2', [{ seed: 2, size: 2 << 20 }]);
    const repo = await Repository.open(t, { create: true });
    await push(repo, src, 'pc', 1);
    const m = await src.readManifest('pc', 1);
    const [victim, other] = dataChunks(m);
    // The victim's object now holds another chunk: it decodes and passes its own xxh64, but does not hash to its name.
    const s3 = new S3Client({ endpoint: swift!.endpoint, region: swift!.region, forcePathStyle: true, credentials: { accessKeyId: swift!.accessKey, secretAccessKey: swift!.secretKey }, requestChecksumCalculation: 'WHEN_REQUIRED' });
    await s3.send(new PutObjectCommand({ Bucket: BUCKET, Key: t.prefix + chunkKey(victim.sha), Body: await src.readChunk(other.sha) }));
    s3.destroy();
    repo.close();

    const e = await edgeOn(t, 'edge2');
    const em = await e.readManifest('pc', 1);
    const err = await e.readChunk(victim.sha).catch((x: unknown) => x);
    expect(err).toBeInstanceOf(ClonecastError);
    expect((err as ClonecastError).code).toBe(ERR.CHUNK_CORRUPT);
    expect((err as Error).message).toMatch(/does not hash to its name/);
    expect(e.local.chunkHead(Buffer.from(victim.sha, 'hex'))).toBeNull();
    // The other chunks still come.
    expect(decodeChunk(await e.readChunk(other.sha), 'other').raw.length).toBe(other.rawLength);

    await e.warm(em);
    await until(async () => (await e.cacheState('pc', 1)).error !== undefined, 60_000, 'the fill to stop at the damaged chunk');
    const state = await e.cacheState('pc', 1);
    expect(state).toMatchObject({ state: 'partial', filling: false });
    expect(state.error).toMatch(/does not hash to its name/);
    expect(e.local.versions('pc')).toEqual([]);
    expect(e.local.chunkHead(Buffer.from(victim.sha, 'hex'))).toBeNull();
    expect(logs.filter((l) => l.includes(victim.sha) && l.includes('not stored'))).toHaveLength(1); // one warning, however often it is asked for
  }, 180_000);

  itNeeds(['s3'], 'repository killed: cached versions still read, remote ones are refused at once naming the cached ones; a waiting read and the fill go on when it is back, nothing published half-way', async () => {
    const t = target();
    // Version 2 is large enough (256 chunks) that a one-lane fill is cut off part-way.
    const src = await central('c3', [{ seed: 3, size: 2 << 20 }, { seed: 4, size: 32 << 20 }]);
    const repo = await Repository.open(t, { create: true });
    await push(repo, src, 'pc', 1);
    await push(repo, src, 'pc', 2);
    repo.close();
    const e = await edgeOn(t, 'edge3', { fillConcurrency: 1 });
    const m1 = await e.readManifest('pc', 1);
    await e.warm(m1);
    await until(async () => (await e.cacheState('pc', 1)).state === 'cached', 60_000, 'version 1 to be cached');

    const m2 = await e.readManifest('pc', 2);
    const before = e.fetched;
    await e.warm(m2);
    await until(() => e.fetched >= before + 3, 60_000, 'the fill of version 2 to begin', 5);
    await swift!.killProxy();
    const cut = await e.cacheState('pc', 2);
    expect(cut.state).toBe('partial');
    expect(cut.cachedChunks).toBeLessThan(cut.chunks);

    // A reader that needs a chunk of version 2 the edge lacks waits; it does not fail nor spin.
    const lacking = dataChunks(m2).find((c) => e.local.chunkHead(Buffer.from(c.sha, 'hex')) === null)!;
    let settled = false;
    const waiting = e.readChunk(lacking.sha).finally(() => (settled = true));
    await e.refresh(); // the catalogue's listing fails: the edge knows the repository is gone
    expect(e.repositoryStatus()).toMatchObject({ reachable: false });
    expect(e.repositoryStatus().lastError).toMatch(/check that the repository is up/);
    expect(e.repositoryStatus().lastError).not.toContain(swift!.secretKey);
    expect(logs.filter((l) => l.startsWith('warn') && l.includes('serves its cached versions'))).toHaveLength(1);

    // Cached: still read. Not wholly cached: refused at once, naming what can be deployed.
    expect(decodeChunk(await e.readChunk(dataChunks(m1)[0].sha), 'cached').raw.length).toBe(C);
    let refused: unknown;
    try {
      const e2 = await edgeOn(t, 'edge3b');
      await e2.warm(m2);
    } catch (x) {
      refused = x;
    }
    expect(refused).toBeInstanceOf(ClonecastError);
    expect((refused as ClonecastError).code).toBe(ERR.UNREACHABLE);
    expect((refused as Error).message).toMatch(/pc@2 is not wholly cached on this edge and the repository .* is unreachable/);
    const e3 = edges[edges.length - 1];
    expect(e3.versions('pc')).toEqual([]); // a new edge that never reached the repository knows nothing remote
    // The edge that cached version 1 names it.
    await e.warm(m2); // its fill is running: no second one
    const otherEdge = await edgeOn(t, 'edge3c');
    cpSync(join(dir, 'edge3', 'images'), join(dir, 'edge3c', 'images'), { recursive: true });
    cpSync(join(dir, 'edge3', 'chunks'), join(dir, 'edge3c', 'chunks'), { recursive: true });
    const msg = await (async () => {
      try {
        await otherEdge.warm(m2);
        return '';
      } catch (x) {
        return (x as Error).message;
      }
    })();
    expect(msg).toMatch(/cached versions it can deploy now: pc@1/);
    expect(e.stalledWithin(60_000)).toBe(true);
    await new Promise((r) => setTimeout(r, 1500));
    expect(settled).toBe(false);
    expect(e.local.versions('pc')).toEqual([1]); // nothing half-published

    await swift!.startProxy();
    const got = await waiting;
    expect(sha256(decodeChunk(got, 'waited').raw).toString('hex')).toBe(lacking.sha);
    await until(async () => (await e.cacheState('pc', 2)).state === 'cached', 120_000, 'the fill of version 2 to finish');
    await e.refresh();
    expect(e.repositoryStatus()).toMatchObject({ reachable: true });
    expect(logs.filter((l) => l.includes('reachable again'))).toHaveLength(1);
    expect(e.local.versions('pc')).toEqual([1, 2]);
    expect(await verifyStore(e.local)).toMatchObject({ ok: true, damagedChunks: [] });
  }, 240_000);

  itNeeds(['s3'], 'a new version at an edge (a capture) goes to the repository, then is cached here under the repository\'s number', async () => {
    const t = target();
    const src = await central('c4', [{ seed: 5, size: 2 << 20 }, { seed: 6, size: 2 << 20 }]);
    const repo = await Repository.open(t, { create: true });
    await push(repo, src, 'pc', 1);
    const e = await edgeOn(t, 'edge4');
    // The capture's chunks are in the edge's store (the agent uploaded them there).
    cpSync(join(dir, 'c4', 'chunks'), join(dir, 'edge4', 'chunks'), { recursive: true });
    const captured = await src.readManifest('pc', 2);
    const lock = e.lockImage('pc', 'a capture');
    let version: number;
    try {
      await e.barrier();
      version = await e.publishVersion({ meta: { ...captured.meta, version: 0 }, table: captured.table });
    } finally {
      lock.release();
    }
    expect(version).toBe(2);
    expect(await repo.versions('pc')).toEqual([1, 2]);
    expect(sameDisk(await repo.readManifest('pc', 2), captured)).toBe(true);
    expect(e.local.versions('pc')).toEqual([2]);
    expect(e.versions('pc')).toEqual([1, 2]);
    // A plain store's publish() of its own stays refused at an edge.
    expect(() => e.publish({ meta: { ...captured.meta }, table: captured.table })).toThrow(/new versions go to the repository/);
    repo.close();
  }, 180_000);

  itNeeds(['s3'], 'hostile and misplaced requests on the edge routes are refused with an error, never acted on', async () => {
    const t = target();
    const src = await central('c5', [{ seed: 7, size: 1 << 20 }]);
    const repo = await Repository.open(t, { create: true });
    await push(repo, src, 'pc', 1);
    repo.close();
    const e = await edgeOn(t, 'edge5');
    const changed: string[] = [];
    await expect(edgeRoute(e, 'POST', '/api/images/..%2f..%2fetc/1/pull', () => changed.push('x'))).rejects.toMatchObject({ code: ERR.BAD_NAME });
    await expect(edgeRoute(e, 'POST', '/api/images/pc/99/pull', () => changed.push('x'))).rejects.toMatchObject({ code: ERR.NOT_FOUND });
    await expect(edgeRoute(src, 'POST', '/api/images/pc/1/pull', () => changed.push('x'))).rejects.toMatchObject({ code: ERR.USAGE });
    expect(changed).toEqual([]);
    const [status, body] = (await edgeRoute(e, 'POST', '/api/images/pc/1/pull', () => changed.push('x')))!;
    expect(status).toBe(202);
    expect(body).toMatchObject({ name: 'pc', version: 1 });
    await until(async () => (await e.cacheState('pc', 1)).state === 'cached', 60_000, 'the pulled version to be cached');
    // A store with images of its own does not become an edge.
    await expect(EdgeStore.openEdge(join(dir, 'c5'), t)).rejects.toThrow(/holds images of its own/);
  }, 120_000);
  itNeeds(['s3'], 'a session announces for chunks it will fetch the lengths the repository\'s objects hold, even where the manifest records another codec', async () => {
    const t = target();
    const src = Store.open(join(dir, 'c6'));
    writeFileSync(join(dir, 'c6.raw'), texty(2 << 20, 6)); // compressible: stored compressed
    await importImage(src, join(dir, 'c6.raw'), 'pc', { chunkSize: C, workers: 2, raw: true });
    const repo = await Repository.open(t, { create: true });
    await push(repo, src, 'pc', 1);
    // Another writer's upload replaced some objects with another codec (raw) after the manifest was written.
    const m0 = await repo.readManifest('pc', 1);
    const changed = dataChunks(m0).slice(0, 5);
    for (const c of changed) {
      const { raw } = decodeChunk((await repo.bucket.get(chunkKey(c.sha), 1 << 24))!, 'chunk');
      const form = Buffer.alloc(24 + raw.length);
      writeChunkHeader(form, { compression: Compression.RAW, rawLength: raw.length, payloadLength: raw.length, xxh64: xxh64(raw) });
      raw.copy(form, 24);
      await repo.putChunk(c.sha, form, { 'cc-form': `0:${raw.length}` });
    }
    repo.close();
    const e = await edgeOn(t, 'edge6');
    const m = await e.readManifest('pc', 1);
    expect(chunkAt(m.table, 0).storedLength).not.toBe(C); // the manifest still says compressed
    await e.warm(m);
    for (let i = 0; i < tableLength(m.table); i++) {
      const r = chunkAt(m.table, i);
      if (r.kind !== ChunkKind.DATA) continue;
      const sent = await e.readChunk(r.sha256);
      expect(sent.length - 24, `chunk ${i}`).toBe(r.storedLength);
    }
    expect(changed.every((c) => dataChunks(m).find((d) => d.sha === c.sha)!.storedLength === C)).toBe(true);
  }, 120_000);
  itNeeds(['s3'], 'a flood of Pull requests caches at most three versions at once; the rest are refused with when to ask again', async () => {
    const t = target();
    const src = await central('c7', [1, 2, 3, 4].map((seed) => ({ seed: 70 + seed, size: 16 << 20 })));
    const repo = await Repository.open(t, { create: true });
    for (const v of [1, 2, 3, 4]) await push(repo, src, 'pc', v);
    repo.close();
    const e = await edgeOn(t, 'edge7', { fillConcurrency: 1 });
    for (const v of [1, 2, 3]) await e.prefetch('pc', v);
    // The repository goes away: the three fills wait for it, so they are surely still running.
    await swift!.killProxy();
    await until(() => e.repositoryStatus().reachable === false, 60_000, 'the fills to find the repository gone');
    await expect(e.prefetch('pc', 4)).rejects.toMatchObject({ code: ERR.BUSY, message: expect.stringMatching(/3 versions are being cached already/) });
    await e.prefetch('pc', 1); // the same version again is no new fill
    await swift!.startProxy();
    await until(async () => (await e.cacheState('pc', 1)).state === 'cached', 120_000, 'the first pull to finish');
    await e.prefetch('pc', 4);
  }, 240_000);
});
