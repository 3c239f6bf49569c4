/**
 * The image repository against a real S3 server (OpenStack Swift with its
 * s3api middleware, started by test/swift-lab.mjs): push, pull, dedupe,
 * concurrent pushes, gc beside a push, a repository killed mid-pull, hostile
 * objects in the bucket, and credentials never printed.
 */
import { afterAll, beforeAll, describe, expect } from 'vitest';
import { mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Compression } from '../../protocol/chunk.js';
import { ERR } from '../../protocol/errors.js';
import { chunkAt, ChunkKind, encodeManifest, tableLength } from '../../protocol/manifest.js';
import { collectRepository } from '../../server/repo/gc.js';
import { chunkKey, manifestKey } from '../../server/repo/layout.js';
import { pull } from '../../server/repo/pull.js';
import { push } from '../../server/repo/push.js';
import { dataChunks, Repository, sameDisk } from '../../server/repo/repository.js';
import { parseRepository, type RepositoryTarget } from '../../server/repo/s3.js';
import { importImage } from '../../server/store/import.js';
import { verifyStore } from '../../server/store/maintenance.js';
import { Store } from '../../server/store/store.js';
import { cli, itNeeds, missing, seeded, tempDir } from '../helpers.js';
import { startSwift } from '../swift-lab.mjs';

const C = 64 << 10; // small chunks: many objects from a small disk
const SIZE = 4 << 20;
let dir = '';
let swift: Awaited<ReturnType<typeof startSwift>> | undefined;
let env: Record<string, string> = {};
let n = 0;
const BUCKET = `cc${process.pid.toString(36)}${Date.now().toString(36)}`;

/** A fresh repository target (its own prefix) in the test bucket. */
function target(): RepositoryTarget {
  return parseRepository(`s3://${BUCKET}/t${++n}-${Date.now().toString(36)}`, swift!.endpoint, 'us-east-1');
}

/** A disk file: seeded data with zero runs, and `changed` chunks altered by seed. */
function disk(name: string, seed: number, changed: number[] = []): string {
  const b = Buffer.alloc(SIZE);
  seeded(SIZE / 2, 7).copy(b, 0);
  for (const i of changed) seeded(C, seed + i).copy(b, i * C);
  const path = join(dir, name);
  writeFileSync(path, b);
  return path;
}

/** A store holding image "pc": version 1 from the base disk, then one version per change list. */
async function storeWith(tag: string, ...changes: number[][]): Promise<Store> {
  const store = Store.open(join(dir, tag));
  await importImage(store, disk(`${tag}-1.raw`, 100), 'pc', { chunkSize: C, workers: 2, raw: true });
  for (const [k, changed] of changes.entries()) await importImage(store, disk(`${tag}-${k + 2}.raw`, 100 * (k + 2), changed), 'pc', { chunkSize: C, workers: 2, raw: true });
  return store;
}

beforeAll(async () => {
  if (missing(['s3']).length > 0) return;
  dir = tempDir('repo');
  swift = await startSwift({ dir: join(dir, 'swift'), bucket: BUCKET });
  env = { AWS_ACCESS_KEY_ID: swift.accessKey, AWS_SECRET_ACCESS_KEY: swift.secretKey, AWS_REGION: swift.region };
  Object.assign(process.env, env);
}, 120_000);

afterAll(async () => {
  await swift?.stop();
  for (const k of Object.keys(env)) delete process.env[k];
  if (dir !== '') rmSync(dir, { recursive: true, force: true });
});

describe('image repository on a real S3 server', () => {
  itNeeds(['s3'], 'push, then pull into an empty edge store: the same disk, every chunk checked, only new chunks move the second time', async () => {
    const t = target();
    const central = await storeWith('central', [3, 40]);
    const repo = await Repository.open(t, { create: true });
    try {
      const p1 = await push(repo, central, 'pc', 1);
      expect(p1.version).toBe(1);
      const m1 = await central.readManifest('pc', 1);
      expect(p1.uploaded).toBe(dataChunks(m1).length);
      expect(p1.uploaded).toBeGreaterThan(10);
      // The same version again writes nothing.
      const again = await push(repo, central, 'pc', 1);
      expect(again).toMatchObject({ alreadyThere: true, version: 1 });
      const p2 = await push(repo, central, 'pc', 2);
      expect(p2.version).toBe(2);
      expect(p2.uploaded).toBe(2); // the two changed chunks

      const edge = Store.open(join(dir, 'edge'));
      const r1 = await pull(repo, edge, { name: 'pc', version: 1 });
      expect(r1.fetched).toBe(p1.uploaded);
      expect(sameDisk(await edge.readManifest('pc', 1), m1)).toBe(true);
      const r2 = await pull(repo, edge, { name: 'pc' });
      expect(r2).toMatchObject({ version: 2, fetched: 2 });
      const verified = await verifyStore(edge);
      expect(verified).toMatchObject({ ok: true, damagedChunks: [], staleVersions: [] });
      expect(verified.versionsChecked).toHaveLength(2);
      // A third pull of a cached version fetches nothing.
      expect((await pull(repo, edge, { name: 'pc', version: 2 })).fetched).toBe(0);
    } finally {
      repo.close();
    }
  }, 180_000);

  itNeeds(['s3'], 'two stores pushing versions of the same image at once get two numbers; neither version is lost', async () => {
    const t = target();
    const a = await storeWith('race-a', [5]);
    const b = await storeWith('race-b', [9, 10]);
    const ra = await Repository.open(t, { create: true });
    const rb = await Repository.open(t, { create: true });
    try {
      const [pa, pb] = await Promise.all([push(ra, a, 'pc', 2), push(rb, b, 'pc', 2)]);
      expect(new Set([pa.version, pb.version])).toEqual(new Set([1, 2]));
      expect(sameDisk(await ra.readManifest('pc', pa.version), await a.readManifest('pc', 2))).toBe(true);
      expect(sameDisk(await ra.readManifest('pc', pb.version), await b.readManifest('pc', 2))).toBe(true);
    } finally {
      ra.close();
      rb.close();
    }
  }, 180_000);

  itNeeds(['s3'], 'gc beside a push: it waits for the push, keeps every chunk of the new version and removes only garbage', async () => {
    const t = target();
    const central = await storeWith('gc', [1, 2, 3], [20]);
    const repo = await Repository.open(t, { create: true });
    try {
      // Version 1 becomes garbage: it is removed, its chunks stay.
      await push(repo, central, 'pc', 1);
      await repo.removeVersion('pc', 1);
      // Pushing version 3 finds most of those chunks already there (HEAD) and does not upload them:
      // a gc that swept them now would leave version 3 with missing chunks.
      let gc: Promise<Awaited<ReturnType<typeof collectRepository>>> | undefined;
      let waited = '';
      const pushed = await push(repo, central, 'pc', 3, {
        concurrency: 2,
        onProgress: (p) => {
          if (gc === undefined && p.done >= 3) gc = collectRepository(repo, { graceMs: 0, waitMs: 120_000, onWait: (why) => (waited = why) });
        },
      });
      const report = await gc!;
      expect(waited).toContain('push of pc@3');
      const m3 = await central.readManifest('pc', 3);
      for (const c of dataChunks(m3)) expect(await repo.chunkSize(c.sha), `chunk ${c.sha}`).not.toBeNull();
      // The chunks only version 1 had (changed in 3) were removed.
      const only1 = dataChunks(await central.readManifest('pc', 1)).filter((c) => !dataChunks(m3).some((d) => d.sha === c.sha));
      expect(only1.length).toBe(1);
      expect(report.removed).toBe(only1.length);
      expect(await repo.chunkSize(only1[0].sha)).toBeNull();
      expect(pushed.version).toBe(2); // a removed version's number is never reused
      // And a pull of it verifies.
      const edge = Store.open(join(dir, 'gc-edge'));
      await pull(repo, edge, { name: 'pc', version: 2 });
      expect(await verifyStore(edge)).toMatchObject({ ok: true, damagedChunks: [] });
    } finally {
      repo.close();
    }
  }, 180_000);

  itNeeds(['s3'], 'gc keeps unused chunks younger than its grace period', async () => {
    const t = target();
    const central = await storeWith('grace');
    const repo = await Repository.open(t, { create: true });
    try {
      await push(repo, central, 'pc', 1);
      await repo.removeVersion('pc', 1);
      const r = await collectRepository(repo, { graceMs: 3_600_000 });
      expect(r.removed).toBe(0);
      expect(r.young).toBe(dataChunks(await central.readManifest('pc', 1)).length);
    } finally {
      repo.close();
    }
  }, 120_000);

  itNeeds(['s3'], 'a repository killed mid-pull: nothing is published, the chunks fetched are kept, and the next pull fetches only the rest', async () => {
    const t = target();
    const central = await storeWith('kill');
    const repo = await Repository.open(t, { create: true });
    const edge = Store.open(join(dir, 'kill-edge'));
    const total = dataChunks(await central.readManifest('pc', 1)).length;
    try {
      await push(repo, central, 'pc', 1);
      let killed = false;
      const first = pull(repo, edge, { name: 'pc' }, {
        concurrency: 2,
        onProgress: (p) => {
          if (!killed && p.moved >= 5) {
            killed = true;
            swift!.killProxy();
          }
        },
      });
      await expect(first).rejects.toMatchObject({ code: ERR.UNREACHABLE });
      expect(edge.versions('pc')).toEqual([]);
      const kept = dataChunks(await central.readManifest('pc', 1)).filter((c) => edge.chunkHead(Buffer.from(c.sha, 'hex')) !== null).length;
      expect(kept).toBeGreaterThanOrEqual(5);
      expect(kept).toBeLessThan(total);
      await swift!.startProxy();
      const second = await pull(repo, edge, { name: 'pc' });
      expect(second.fetched).toBe(total - kept);
      expect(edge.versions('pc')).toEqual([1]);
      expect(await verifyStore(edge)).toMatchObject({ ok: true, damagedChunks: [] });
    } finally {
      await swift!.startProxy().catch(() => undefined);
      repo.close();
    }
  }, 180_000);

  itNeeds(['s3'], 'hostile objects in the bucket: a damaged chunk, a chunk of the wrong length and a manifest under another name are refused, and nothing is stored', async () => {
    const t = target();
    const central = await storeWith('hostile');
    const repo = await Repository.open(t, { create: true });
    try {
      await push(repo, central, 'pc', 1);
      const m = await central.readManifest('pc', 1);
      const victim = dataChunks(m)[2];
      const good = await repo.bucket.get(chunkKey(victim.sha), 1 << 24);
      // A damaged chunk: one flipped payload byte.
      const bad = Buffer.from(good!);
      bad[bad.length - 1] ^= 0xff;
      await repo.bucket.put(chunkKey(victim.sha), bad);
      const edge = Store.open(join(dir, 'hostile-edge'));
      await expect(pull(repo, edge, { name: 'pc' })).rejects.toMatchObject({ code: ERR.CHUNK_CORRUPT });
      expect(edge.versions('pc')).toEqual([]);
      expect(edge.chunkHead(Buffer.from(victim.sha, 'hex'))).toBeNull();
      // Another chunk's valid stored form under this name: it decodes but does not hash to the name.
      const other = dataChunks(m)[3];
      await repo.bucket.put(chunkKey(victim.sha), (await repo.bucket.get(chunkKey(other.sha), 1 << 24))!);
      await expect(pull(repo, edge, { name: 'pc' })).rejects.toMatchObject({ code: ERR.CHUNK_CORRUPT });
      expect(edge.chunkHead(Buffer.from(victim.sha, 'hex'))).toBeNull();
      await repo.bucket.put(chunkKey(victim.sha), good!);
      // A manifest copied under another image's key.
      await repo.bucket.put(manifestKey('other', 1), encodeManifest(m));
      await expect(repo.readManifest('other', 1)).rejects.toMatchObject({ code: ERR.MANIFEST_CORRUPT });
      await expect(pull(repo, edge, { name: 'other' })).rejects.toMatchObject({ code: ERR.MANIFEST_CORRUPT });
      expect(edge.versions('other')).toEqual([]);
      // Garbage under a manifest key.
      await repo.bucket.put(manifestKey('junk', 1), Buffer.from('not a manifest'));
      await expect(repo.readManifest('junk', 1)).rejects.toMatchObject({ code: ERR.MANIFEST_CORRUPT });
      // And with the good chunk back, the pull goes through.
      await pull(repo, edge, { name: 'pc' });
      expect(edge.versions('pc')).toEqual([1]);
    } finally {
      repo.close();
    }
  }, 180_000);

  itNeeds(['s3'], 'the CLI: push, list, pull, gc; a wrong secret is refused with what to do; credentials never printed', async () => {
    const central = join(dir, 'cli-central');
    const edge = join(dir, 'cli-edge');
    const raw = disk('cli.raw', 5);
    expect((await cli(['image', 'import', raw, 'lab', '--data', central, '--chunk-size', String(C), '--raw'])).code).toBe(0);
    const addr = `s3://${BUCKET}/cli-${Date.now().toString(36)}`;
    const common = ['--repository', addr, '--endpoint', swift!.endpoint];
    const outputs: string[] = [];
    const run = async (args: string[], e = env) => {
      const r = await cli(args, e);
      outputs.push(r.stdout, r.stderr);
      return r;
    };
    // Not a repository yet: a typo in the address must not read as "no images".
    const none = await run(['repository', 'list', ...common]);
    expect(none.code).not.toBe(0);
    expect(none.stderr).toContain('no clonecast repository');
    const pushed = await run(['image', 'push', 'lab', ...common, '--data', central]);
    expect(pushed.code, pushed.stderr).toBe(0);
    expect(pushed.stdout).toContain('as lab@1');
    const list = await run(['repository', 'list', ...common, '--json']);
    expect(list.json.images).toEqual([{ name: 'lab', versions: [1] }]);
    const pulled = await run(['image', 'pull', 'lab', ...common, '--data', edge]);
    expect(pulled.code, pulled.stderr).toBe(0);
    // The edge's store is now a cache: its own imports are refused with the way to do it.
    const own = await run(['image', 'import', raw, 'mine', '--data', edge, '--raw']);
    expect(own.code).not.toBe(0);
    expect(own.stderr).toContain('image push');
    // A pull without --repository uses the one the store caches.
    expect((await run(['image', 'pull', 'lab', '--endpoint', swift!.endpoint, '--data', edge])).code).toBe(0);
    const gc = await run(['repository', 'gc', ...common, '--json']);
    expect(gc.json).toMatchObject({ versions: 1, removed: 0 });
    const wrong = await run(['repository', 'list', ...common], { ...env, AWS_SECRET_ACCESS_KEY: 'wrong-secret-1234' });
    expect(wrong.code).not.toBe(0);
    expect(wrong.stderr).toMatch(/refused.*check the access key/);
    outputs.push(wrong.stdout, wrong.stderr);
    const noCreds = await run(['repository', 'list', ...common], { AWS_ACCESS_KEY_ID: '', AWS_SECRET_ACCESS_KEY: '', HOME: dir });
    expect(noCreds.code).not.toBe(0);
    const all = outputs.join('\n');
    for (const secret of [swift!.secretKey, 'wrong-secret-1234']) expect(all).not.toContain(secret);
    expect(all).not.toMatch(/Signature=|Credential=/);
  }, 240_000);

  itNeeds(['s3'], 'addresses are checked before anything is sent', async () => {
    for (const [url, ep] of [
      ['s3://Bad_Bucket/x', swift!.endpoint],
      [`s3://${BUCKET}/../up`, swift!.endpoint],
      [`http://${BUCKET}/x`, swift!.endpoint],
      [`s3://${BUCKET}/x`, 'http://user:pass@127.0.0.1:1/'],
      [`s3://${BUCKET}/x`, 'ftp://127.0.0.1/'],
    ]) {
      const r = await cli(['repository', 'list', '--repository', url, '--endpoint', ep], env);
      expect(r.code, `${url} ${ep}`).toBe(2);
      expect(r.stderr).not.toContain('pass');
    }
  }, 60_000);

  itNeeds(['s3'], 'a repository made again under the same address is not taken for the one an edge caches', async () => {
    const t = target();
    const central = await storeWith('again');
    const edge = Store.open(join(dir, 'again-edge'));
    let repo = await Repository.open(t, { create: true });
    try {
      await push(repo, central, 'pc', 1);
      const address = `s3://${t.bucket}/${t.prefix.slice(0, -1)}`;
      await pull(repo, edge, { name: 'pc' }, { bind: { address, endpoint: t.endpoint, id: repo.id } });
      expect(repo.id).toMatch(/^[0-9a-f]{16}$/);
      // The prefix is wiped and filled again: its numbers start afresh.
      for await (const o of repo.bucket.list('')) await repo.bucket.delete(o.key);
      repo.close();
      repo = await Repository.open(t, { create: true });
      await push(repo, await storeWith('again2', [1]), 'pc', 2);
      await expect(pull(repo, edge, { name: 'pc' }, { bind: { address, endpoint: t.endpoint, id: repo.id } })).rejects.toMatchObject({ code: ERR.EXISTS });
      expect(edge.versions('pc')).toEqual([1]);
    } finally {
      repo.close();
    }
  }, 120_000);

  itNeeds(['s3'], 'a secret from ~/.aws/credentials is never printed either', async () => {
    const home = join(dir, 'home');
    mkdirSync(join(home, '.aws'), { recursive: true });
    writeFileSync(join(home, '.aws', 'credentials'), `[default]\naws_access_key_id = ${swift!.accessKey}\naws_secret_access_key = file-secret-5678\n`, { mode: 0o600 });
    const r = await cli(['repository', 'list', '--repository', `s3://${BUCKET}/x`, '--endpoint', swift!.endpoint], { HOME: home, AWS_ACCESS_KEY_ID: '', AWS_SECRET_ACCESS_KEY: '' });
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/refused.*check the access key/);
    expect(r.stdout + r.stderr).not.toContain('file-secret-5678');
  }, 60_000);

  itNeeds(['s3'], 'a writer whose claim lands late (a slow or retried request) never takes a number another version was published under', async () => {
    const t = target();
    const a = await storeWith('late-a', [4]);
    const b = await storeWith('late-b', [8]);
    const ra = await Repository.open(t, { create: true });
    const rb = await Repository.open(t, { create: true });
    try {
      let release!: () => void;
      const gate = new Promise<void>((r) => (release = r));
      let gated!: () => void;
      const blocked = new Promise<void>((r) => (gated = r));
      const put = rb.bucket.put.bind(rb.bucket);
      let once = false;
      rb.bucket.put = async (key, body, type, meta) => {
        if (key.includes('/claims/') && !once) {
          once = true;
          gated();
          await gate;
        }
        return put(key, body, type, meta);
      };
      const pb = push(rb, b, 'pc', 2);
      await blocked; // B listed the image's versions and is about to claim the number after them
      const pa = await push(ra, a, 'pc', 2);
      release();
      const rB = await pb;
      expect([pa.version, rB.version]).toEqual([1, 2]);
      expect(await ra.versions('pc')).toEqual([1, 2]);
      expect(sameDisk(await ra.readManifest('pc', pa.version), await a.readManifest('pc', 2))).toBe(true);
      expect(sameDisk(await ra.readManifest('pc', rB.version), await b.readManifest('pc', 2))).toBe(true);
    } finally {
      ra.close();
      rb.close();
    }
  }, 180_000);

  itNeeds(['s3'], 'two stores pushing the same new chunks in two codecs: every manifest in the repository says what its objects hold', async () => {
    const t = target();
    const raw = disk('codec.raw', 300, [0, 1, 2, 3]);
    const lz = Store.open(join(dir, 'codec-lz4'));
    const zs = Store.open(join(dir, 'codec-zstd'));
    await importImage(lz, raw, 'pc', { chunkSize: C, workers: 2, raw: true, codec: { compression: Compression.LZ4 } });
    await importImage(zs, raw, 'pc', { chunkSize: C, workers: 2, raw: true, codec: { compression: Compression.ZSTD, level: 3 } });
    const r1 = await Repository.open(t, { create: true });
    const r2 = await Repository.open(t, { create: true });
    try {
      const results = await Promise.all([push(r1, lz, 'pc', 1, { concurrency: 4 }), push(r2, zs, 'pc', 1, { concurrency: 4 })]);
      for (const v of new Set(results.map((r) => r.version))) {
        const m = await r1.readManifest('pc', v);
        for (let i = 0; i < tableLength(m.table); i++) {
          const rec = chunkAt(m.table, i);
          if (rec.kind !== ChunkKind.DATA) continue;
          const h = await r1.chunkHeader(rec.sha256.toString('hex'));
          expect({ compression: h!.compression, payloadLength: h!.payloadLength }, `pc@${v} chunk ${i}`).toEqual({ compression: rec.compression, payloadLength: rec.storedLength });
        }
      }
      const edge = Store.open(join(dir, 'codec-edge'));
      await pull(r1, edge, { name: 'pc', version: results[0].version });
      expect(await verifyStore(edge)).toMatchObject({ ok: true, damagedChunks: [], staleVersions: [] });
    } finally {
      r1.close();
      r2.close();
    }
  }, 180_000);

  itNeeds(['s3'], 'a local gc during a pull is refused: what the pull fetched is not removed before it is published', async () => {
    const t = target();
    const central = await storeWith('lgc');
    const repo = await Repository.open(t, { create: true });
    const edge = Store.open(join(dir, 'lgc-edge'));
    try {
      await push(repo, central, 'pc', 1);
      // gc runs as its own process, as an operator would run it beside a nightly pull.
      let gc: ReturnType<typeof cli> | undefined;
      await pull(repo, edge, { name: 'pc' }, {
        concurrency: 2,
        onProgress: (p) => {
          if (gc === undefined && p.moved >= 3) gc = cli(['image', 'gc', '--data', edge.root]);
        },
      });
      const refused = await gc!;
      expect(refused.code).not.toBe(0);
      expect(refused.stderr).toContain('pulling pc@1');
      expect(await verifyStore(edge)).toMatchObject({ ok: true, damagedChunks: [] });
    } finally {
      repo.close();
    }
  }, 120_000);

  itNeeds(['s3'], 'a hostile endpoint streaming an endless object is cut off at the size limit', async () => {
    let sent = 0;
    let closed!: () => void;
    const done = new Promise<void>((r) => (closed = r));
    const server = createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' }); // chunked: no length to refuse up front
      const block = Buffer.alloc(1 << 20, 0x41);
      const more = () => {
        while (sent < 256 << 20) {
          sent += block.length;
          if (!res.write(block)) return void res.once('drain', more);
        }
        res.end();
      };
      res.on('close', closed);
      more();
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const port = (server.address() as AddressInfo).port;
      await expect(Repository.open(parseRepository('s3://ccfake/x', `http://127.0.0.1:${port}`, 'us-east-1'))).rejects.toMatchObject({ code: ERR.TOO_LARGE });
      await done;
      expect(sent).toBeLessThan(64 << 20); // the client stopped reading long before the 256 MiB were sent
    } finally {
      server.close();
    }
  }, 60_000);

  itNeeds(['s3'], 'a failed pull leaves the store unbound, and an endpoint with a key in it is never echoed', async () => {
    const data = join(dir, 'unbound');
    const r = await cli(['image', 'pull', 'nosuch', '--repository', `s3://${BUCKET}/t1`, '--endpoint', swift!.endpoint, '--data', data], env);
    expect(r.code).not.toBe(0);
    expect(Store.open(data).repository()).toBeUndefined();
    for (const ep of ['http://AKIAEXAMPLE:wJalrXUtnFEMI/K7MDENG+bPxRfiCY@minio.example:9000', 'https://AKIAEXAMPLE:se/cret@h:9000/path?x=1']) {
      const bad = await cli(['repository', 'list', '--repository', `s3://${BUCKET}/x`, '--endpoint', ep, '--json'], env);
      expect(bad.code).toBe(2);
      expect(bad.stdout + bad.stderr).not.toMatch(/wJalr|se\/cret|AKIAEXAMPLE/);
    }
  }, 60_000);
});

// The other tests count chunks: the image must have both data and zero chunks for them to mean anything.
describe('test disks', () => {
  itNeeds(['s3'], 'the test image has data and zero chunks', async () => {
    const store = await storeWith('shape');
    const m = await store.readManifest('pc', 1);
    const kinds = new Set(Array.from({ length: tableLength(m.table) }, (_, i) => chunkAt(m.table, i).kind));
    expect(kinds).toEqual(new Set([ChunkKind.DATA, ChunkKind.ZERO]));
    expect(readdirSync(join(dir, 'shape', 'images', 'pc'))).toEqual(['1.manifest']);
  }, 60_000);
});
