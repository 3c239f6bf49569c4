import { describe, expect } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Store, parseRef } from '../../server/store/store.js';
import { importImage } from '../../server/store/import.js';
import { exportImage } from '../../server/store/export.js';
import { recompressImage } from '../../server/store/recompress.js';
import { describe as describeImage, verifyStore } from '../../server/store/maintenance.js';
import { Compression, decodeChunkHeader } from '../../protocol/chunk.js';
import { chunkAt, ChunkKind, tableLength, type Manifest } from '../../protocol/manifest.js';
import { ZSTD } from '../../protocol/zstd.js';
import { closeLive, openLive } from '../../server/session-live.js';
import type { SessionRecord } from '../../server/session-types.js';
import { cli, itNeeds, seeded, tempDir, texty } from '../helpers.js';

const C = 64 << 10;

/** A disk of text (compressible), random data (not) and zeros. */
function makeDisk(path: string, seed: number): Buffer {
  const buf = Buffer.alloc(48 * C + 777);
  texty(20 * C, seed).copy(buf, 0);
  seeded(6 * C, seed).copy(buf, 24 * C);
  texty(10 * C + 333, seed + 5).copy(buf, 34 * C);
  writeFileSync(path, buf);
  return buf;
}

/** Codec of every data record, and a check that each agrees with its chunk file's header. */
function codecs(store: Store, m: Manifest): Compression[] {
  const out: Compression[] = [];
  for (let i = 0; i < tableLength(m.table); i++) {
    const r = chunkAt(m.table, i);
    if (r.kind !== ChunkKind.DATA) continue;
    const head = store.chunkHead(r.sha256)!;
    const h = decodeChunkHeader(head.head);
    expect({ compression: r.compression, storedLength: r.storedLength, xxh64: r.xxh64 }).toEqual({ compression: h.compression, storedLength: h.payloadLength, xxh64: h.xxh64 });
    out.push(r.compression);
  }
  return out;
}

/** Records whose codec or stored length differ from their chunk file's header. */
function staleRecords(store: Store, m: Manifest): number {
  let stale = 0;
  for (let i = 0; i < tableLength(m.table); i++) {
    const r = chunkAt(m.table, i);
    if (r.kind !== ChunkKind.DATA) continue;
    const h = decodeChunkHeader(store.chunkHead(r.sha256)!.head);
    if (h.compression !== r.compression || h.payloadLength !== r.storedLength) stale++;
  }
  return stale;
}

async function exportsAs(store: Store, ref: string, expected: Buffer, dir: string): Promise<void> {
  const out = join(dir, `out-${ref.replace('@', '-')}.img`);
  await exportImage(store, parseRef(ref), out, { workers: 2, force: true });
  expect(readFileSync(out).equals(expected)).toBe(true);
}

describe('zstd import and recompress', () => {
  itNeeds(['zstd'], 'imports with zstd by default, and with lz4 or raw when asked', async () => {
    const dir = tempDir('zimport');
    const store = Store.open(join(dir, 'data'));
    const src = join(dir, 'disk.img');
    const original = makeDisk(src, 1);
    const s = await importImage(store, src, 'default', { chunkSize: C, workers: 2 });
    expect(s.codec).toBe(`zstd -${ZSTD.DEFAULT_LEVEL}`);
    const zstdCodecs = codecs(store, await store.readManifest('default', 1));
    expect(zstdCodecs).toContain(Compression.ZSTD);
    expect(zstdCodecs).toContain(Compression.RAW); // the random chunks
    expect(zstdCodecs).not.toContain(Compression.LZ4);
    await exportsAs(store, 'default', original, dir);

    // Other stores: lz4 and raw by option (a fresh store each, so nothing is reused).
    for (const [codec, want] of [[Compression.LZ4, 'lz4'], [Compression.RAW, 'raw']] as const) {
      const other = Store.open(join(dir, `data-${want}`));
      const o = await importImage(other, src, 'x', { chunkSize: C, workers: 2, codec: { compression: codec } });
      expect(o.codec).toBe(want);
      const used = new Set(codecs(other, await other.readManifest('x', 1)));
      expect(used.has(codec)).toBe(true);
      expect(used.has(Compression.ZSTD)).toBe(false);
      if (codec === Compression.LZ4) expect(o.storedBytes).toBeGreaterThan(s.storedBytes);
    }
  }, 60_000);

  itNeeds(['zstd'], 'recompresses a mixed lz4 and zstd image: fewer stored bytes, same disk, verify passes, every version sharing a chunk updated', async () => {
    const dir = tempDir('zrecompress');
    const store = Store.open(join(dir, 'data'));
    const src = join(dir, 'disk.img');
    const v1 = makeDisk(src, 2);
    await importImage(store, src, 'lab', { chunkSize: C, workers: 2, codec: { compression: Compression.LZ4 } });
    // v2 changes the tail: its new chunks are zstd, the rest are v1's lz4 chunks (one image, two codecs).
    const v2 = Buffer.from(v1);
    texty(8 * C, 99).copy(v2, 40 * C);
    writeFileSync(src, v2);
    await importImage(store, src, 'lab', { chunkSize: C, workers: 2 });
    const before = await store.readManifest('lab', 2);
    const mixed = new Set(codecs(store, before));
    expect(mixed.has(Compression.LZ4) && mixed.has(Compression.ZSTD)).toBe(true);
    await exportsAs(store, 'lab@2', v2, dir);
    const storedBefore = describeImage(before).storedBytes;

    const r = await recompressImage(store, parseRef('lab@2'), { level: 9, workers: 2 });
    expect(r.rewritten).toBeGreaterThan(0);
    expect(r.storedAfter).toBeLessThan(r.storedBefore);
    expect(r.storedBefore).toBe(storedBefore);
    expect(r.codecs.lz4).toBe(0);
    // v1 shares its lz4 chunks with v2: its manifest was updated too.
    expect(r.manifestsUpdated.sort()).toEqual(['lab@1', 'lab@2']);
    const after = await store.readManifest('lab', 2);
    expect(describeImage(after).storedBytes).toBe(r.storedAfter);
    expect(new Set(codecs(store, after)).has(Compression.LZ4)).toBe(false);
    // v1's records agree with the files; only its chunks v2 does not name are still lz4.
    const m1 = await store.readManifest('lab', 1);
    const inV2 = new Set<string>();
    for (let i = 0; i < tableLength(after.table); i++) inV2.add(chunkAt(after.table, i).sha256.toString('hex'));
    const v1Codecs = codecs(store, m1);
    let onlyV1 = 0;
    for (let i = 0; i < tableLength(m1.table); i++) {
      const rec = chunkAt(m1.table, i);
      if (rec.kind === ChunkKind.DATA && !inV2.has(rec.sha256.toString('hex')) && rec.compression === Compression.LZ4) onlyV1++;
    }
    expect(onlyV1).toBeGreaterThan(0);
    expect(v1Codecs.filter((c) => c === Compression.LZ4).length).toBe(onlyV1);
    await exportsAs(store, 'lab@2', v2, dir);
    await exportsAs(store, 'lab@1', v1, dir);
    expect((await verifyStore(store)).ok).toBe(true);

    // Again at the same level: nothing smaller to gain, nothing rewritten.
    const again = await recompressImage(store, parseRef('lab@2'), { level: 9, workers: 2 });
    expect(again.rewritten).toBe(0);
    expect(again.manifestsUpdated).toEqual([]);
    expect(again.storedAfter).toBe(r.storedAfter);
  }, 120_000);

  itNeeds(['zstd'], 'a crash after the chunk files are replaced and before the manifests leaves the image readable, and a rerun repairs the records', async () => {
    const dir = tempDir('zcrash');
    const store = Store.open(join(dir, 'data'));
    const src = join(dir, 'disk.img');
    const original = makeDisk(src, 3);
    await importImage(store, src, 'pc', { chunkSize: C, workers: 2, codec: { compression: Compression.LZ4 } });
    const crash = new Error('simulated crash before the manifests');
    await expect(recompressImage(store, parseRef('pc'), { level: 6, workers: 2, beforeManifests: () => { throw crash; } })).rejects.toBe(crash);
    // The chunk files are zstd now, the manifest still records lz4.
    const stale = await store.readManifest('pc', 1);
    expect(staleRecords(store, stale)).toBeGreaterThan(0);
    await exportsAs(store, 'pc', original, dir);
    // Every chunk is sound; verify names the version whose records are stale.
    const v = await verifyStore(store);
    expect(v.damagedChunks).toEqual([]);
    expect(v.staleVersions).toEqual(['pc@1']);
    expect(v.ok).toBe(false);
    // A session started now announces what the chunk files hold, not the stale records (its
    // receivers count fragments from them); the version on disk is left for the rerun to repair.
    const live = await openLive(store, { id: 's2', image: 'pc', version: 1, group: '239.77.9.9', port: 9999, key: 8, fragmentSize: 1424, secret: 'cd'.repeat(32), encrypt: false } as unknown as SessionRecord, '127.0.0.1', undefined, () => {});
    try {
      expect(staleRecords(store, live.manifest)).toBe(0);
    } finally {
      closeLive(live);
    }
    expect(staleRecords(store, await store.readManifest('pc', 1))).toBeGreaterThan(0);
    // The lock was released; the rerun records what the files hold.
    const r = await recompressImage(store, parseRef('pc'), { level: 6, workers: 2 });
    expect(r.manifestsUpdated).toEqual(['pc@1']);
    expect(staleRecords(store, await store.readManifest('pc', 1))).toBe(0);
    await exportsAs(store, 'pc', original, dir);
    expect((await verifyStore(store)).ok).toBe(true);
  }, 120_000);

  itNeeds(['zstd'], 'the CLI takes --codec and --level on import, recompresses and says the saving', async () => {
    const dir = tempDir('zcli');
    const src = join(dir, 'disk.img');
    makeDisk(src, 4);
    const env = { CLONECAST_DATA: join(dir, 'data') };
    const bad = await cli(['image', 'import', src, 'c', '--codec', 'brotli'], env);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--codec brotli is not one of lz4, zstd, raw/);
    const badLevel = await cli(['image', 'import', src, 'c', '--codec', 'lz4', '--level', '5'], env);
    expect(badLevel.code).toBe(2);
    const imp = await cli(['image', 'import', src, 'c', '--chunk-size', String(C), '--codec', 'zstd', '--level', '1', '--json'], env);
    expect(imp.code, imp.stderr).toBe(0);
    expect(imp.json.codec).toBe('zstd -1');
    const rec = await cli(['image', 'recompress', 'c@1', '--level', '12'], env);
    expect(rec.code, rec.stderr).toBe(0);
    expect(rec.stdout).toMatch(/recompressed c@1 with zstd -12: \d+ of \d+ chunks rewritten/);
    expect(rec.stdout).toMatch(/before, .* after: .* saved \(\d+\.\d%\)/);
    const json = await cli(['image', 'recompress', 'c', '--level', '12', '--json'], env);
    expect(json.json.storedAfter).toBeLessThanOrEqual(json.json.storedBefore);
    const verify = await cli(['image', 'verify', '--json'], env);
    expect(verify.json.ok).toBe(true);
  }, 120_000);

  itNeeds(['zstd'], 'refuses while a session sends the image (a stored form never changes under a sender), and runs once it ended', async () => {
    const dir = tempDir('zlive');
    const src = join(dir, 'disk.img');
    makeDisk(src, 6);
    const env = { CLONECAST_DATA: join(dir, 'data') };
    expect((await cli(['image', 'import', src, 'd', '--chunk-size', String(C), '--codec', 'lz4'], env)).code).toBe(0);
    const store = Store.open(join(dir, 'data'));
    const record = { id: 's1', image: 'd', version: 1, group: '239.77.9.9', port: 9999, key: 7, fragmentSize: 1424, secret: 'ab'.repeat(32), encrypt: false } as unknown as SessionRecord;
    const live = await openLive(store, record, '127.0.0.1', undefined, () => {});
    try {
      const busy = await cli(['image', 'recompress', 'd', '--level', '3'], env);
      expect(busy.code).not.toBe(0);
      expect(busy.stderr).toMatch(/session s1 \(d@1\)/);
    } finally {
      closeLive(live);
    }
    const rec = await cli(['image', 'recompress', 'd', '--level', '3'], env);
    expect(rec.code, rec.stderr).toBe(0);
  }, 120_000);
});
