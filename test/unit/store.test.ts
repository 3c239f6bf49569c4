import { describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync, statSync, readdirSync, unlinkSync, appendFileSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { Store, parseRef } from '../../server/store/store.js';
import { importImage } from '../../server/store/import.js';
import { exportImage } from '../../server/store/export.js';
import { collectGarbage, describe as describeImage, removeImage, verifyStore } from '../../server/store/maintenance.js';
import { acquireLock } from '../../server/store/lock.js';
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { MANIFEST } from '../../protocol/manifest.js';
import { tempDir, seeded, texty } from '../helpers.js';

const C = 64 << 10; // small chunks keep test images small

/** An image with data, dense zeros, holes and a size that is not a multiple of C. */
function makeDisk(path: string, seed: number, size = 40 * C + 1234): Buffer {
  const buf = Buffer.alloc(size);
  seeded(6 * C, seed).copy(buf, 0);
  texty(5 * C + 17, seed).copy(buf, 9 * C + 100);
  seeded(3 * C, seed + 1).copy(buf, 30 * C);
  buf.fill(7, size - 500);
  writeFileSync(path, buf); // zeros written out (dense)
  return buf;
}

async function expectCode(p: Promise<unknown> | (() => unknown), code: string): Promise<ClonecastError> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (err) {
    expect(err).toBeInstanceOf(ClonecastError);
    expect((err as ClonecastError).code).toBe(code);
    return err as ClonecastError;
  }
  throw new Error(`expected ${code}`);
}

describe('image store', () => {
  const dir = tempDir('store');
  const store = Store.open(join(dir, 'data'));
  const src = join(dir, 'disk.img');
  const original = makeDisk(src, 1);

  it('imports and exports byte for byte (zeros, short last chunk)', async () => {
    const s = await importImage(store, src, 'lab', { chunkSize: C, workers: 2 });
    expect(s.version).toBe(1);
    expect(s.chunks).toBe(41);
    expect(s.zeroChunks).toBeGreaterThan(20);
    expect(s.newBytes).toBeGreaterThan(0);
    const out = join(dir, 'out.img');
    const e = await exportImage(store, parseRef('lab'), out, { workers: 2 });
    expect(e.dataChunks + e.zeroChunks).toBe(41);
    expect(readFileSync(out).equals(original)).toBe(true);
    // Zero chunks are holes in the exported file.
    expect(statSync(out).blocks * 512).toBeLessThan(original.length);
  });

  it('imports a sparse file with holes and an odd size', async () => {
    const sparse = join(dir, 'sparse.img');
    const size = 33 * C + 511;
    writeFileSync(sparse, Buffer.alloc(0));
    const data = seeded(C + 5, 9);
    const { openSync, writeSync, ftruncateSync, closeSync } = await import('node:fs');
    const fd = openSync(sparse, 'r+');
    ftruncateSync(fd, size);
    writeSync(fd, data, 0, data.length, 20 * C - 3);
    closeSync(fd);
    const s = await importImage(store, sparse, 'sparse', { chunkSize: C, workers: 1 });
    expect(s.dataChunks).toBe(3);
    const out = join(dir, 'sparse.out');
    await exportImage(store, parseRef('sparse'), out);
    expect(readFileSync(out).equals(readFileSync(sparse))).toBe(true);
  });

  it('stores only changed chunks in a new version and keeps both restorable', async () => {
    const changed = Buffer.from(original);
    randomBytes(100).copy(changed, 2 * C + 10); // one chunk changes
    const v2src = join(dir, 'disk2.img');
    writeFileSync(v2src, changed);
    const before = describeImage(await store.readManifest('lab', 1));
    const s = await importImage(store, v2src, 'lab', { chunkSize: C });
    expect(s.version).toBe(2);
    expect(s.parent).toBe(1);
    expect(s.reusedChunks).toBe(before.dataChunks - 1);
    expect(s.newBytes).toBeLessThanOrEqual(C + 24);
    const info = describeImage(await store.readManifest('lab', 2));
    expect(info.meta.newBytes).toBe(s.newBytes);
    for (const [ref, want] of [['lab@1', original], ['lab@2', changed], ['lab', changed]] as const) {
      // A new file each time: export refuses to replace one that holds data.
      const out = join(dir, `v-${ref.replace('@', '-')}.img`);
      await exportImage(store, parseRef(ref), out);
      expect(readFileSync(out).equals(want), ref).toBe(true);
    }
  });

  it('counts compression and dedupe in info', async () => {
    const rep = join(dir, 'repeat.img');
    const block = texty(C, 4);
    writeFileSync(rep, Buffer.concat(Array.from({ length: 8 }, () => block)));
    await importImage(store, rep, 'repeat', { chunkSize: C });
    const info = describeImage(await store.readManifest('repeat', 1));
    expect(info.dataChunks).toBe(8);
    expect(info.uniqueChunks).toBe(1);
    expect(info.dedupeRatio).toBe(8);
    expect(info.compressionRatio).toBeGreaterThan(2);
  });

  it('names what is missing and what exists', async () => {
    expect((await expectCode(() => store.resolve(parseRef('nope')), ERR.NOT_FOUND)).message).toMatch(/images: lab/);
    expect((await expectCode(() => store.resolve(parseRef('lab@9')), ERR.NOT_FOUND)).message).toMatch(/versions: 1, 2/);
    await expectCode(() => parseRef('bad name'), ERR.BAD_NAME);
    await expectCode(() => parseRef('lab@x'), ERR.BAD_NAME);
    await expectCode(importImage(store, join(dir, 'missing.img'), 'x'), ERR.NOT_FOUND);
  });

  it('refuses a second import of the same name while one runs', async () => {
    const lock = acquireLock(join(store.root, 'locks', 'image-lab.lock'), 'image "lab"', 'importing');
    // Pretend another live process holds it: rewrite the pid to our parent.
    writeFileSync(lock.path, `${process.ppid}\nimporting /dev/sdb\n`);
    try {
      const err = await expectCode(importImage(store, src, 'lab', { chunkSize: C }), ERR.BUSY);
      expect(err.message).toMatch(new RegExp(`process ${process.ppid} is importing /dev/sdb`));
    } finally {
      lock.release();
    }
  });

  it('takes over a stale lock left by a dead process', async () => {
    writeFileSync(join(store.root, 'locks', 'image-stale.lock'), '999999999\nimporting\n');
    const s = await importImage(store, src, 'stale', { chunkSize: C });
    expect(s.version).toBe(1);
  });

  it('verify finds a damaged and a missing chunk and names the images that use them', async () => {
    const m = await store.readManifest('lab', 2);
    const shas: string[] = [];
    for (let i = 0; i < m.table.length / MANIFEST.RECORD_SIZE; i++) {
      if (m.table[i * MANIFEST.RECORD_SIZE] === 1) shas.push(m.table.subarray(i * 48 + 16, i * 48 + 48).toString('hex'));
    }
    const damaged = store.chunkPath(shas[0]);
    const saved = readFileSync(damaged);
    const bad = Buffer.from(saved);
    bad[bad.length - 1] ^= 0xff;
    writeFileSync(damaged, bad);
    const missingPath = store.chunkPath(shas[shas.length - 1]);
    const missingSaved = readFileSync(missingPath);
    unlinkSync(missingPath);
    try {
      const r = await verifyStore(store);
      expect(r.ok).toBe(false);
      const byHex = Object.fromEntries(r.damagedChunks.map((d) => [d.sha, d]));
      expect(byHex[shas[0]].problem).toMatch(/corrupt/);
      expect(byHex[shas[0]].usedBy).toContainEqual({ name: 'lab', version: 2, chunk: 0, offset: 0 });
      expect(byHex[shas[shas.length - 1]].problem).toMatch(/missing/);
      expect(r.damagedVersions).toEqual(expect.arrayContaining(['lab@1', 'lab@2', 'stale@1']));
      // Export stops rather than write a chunk that fails its check or is gone.
      const err = await exportImage(store, parseRef('lab@2'), join(dir, 'x.img')).catch((e: ClonecastError) => e);
      expect([ERR.CHUNK_CORRUPT, ERR.CHUNK_MISSING]).toContain((err as ClonecastError).code);
    } finally {
      writeFileSync(damaged, saved);
      writeFileSync(missingPath, missingSaved);
    }
    expect((await verifyStore(store)).ok).toBe(true);
  });

  it('accepts a chunk file only with all-zero padding after the stored form', async () => {
    const { storedForm, paddedChunkSize } = await import('../../server/store/store.js');
    const form = Buffer.alloc(24 + 100, 1);
    const padded = Buffer.concat([form, Buffer.alloc(paddedChunkSize(form.length) - form.length)]);
    expect(padded.length).toBe(4096);
    expect(storedForm(form, 100)?.length).toBe(124);
    expect(storedForm(padded, 100)?.length).toBe(124);
    padded[4000] = 1;
    expect(storedForm(padded, 100)).toBeNull();
    expect(storedForm(padded.subarray(0, 2000), 100)).toBeNull();
  });

  it('gc removes only chunks no kept version references', async () => {
    const orphanSrc = join(dir, 'orphan.img');
    writeFileSync(orphanSrc, seeded(4 * C, 99));
    await importImage(store, orphanSrc, 'orphan', { chunkSize: C });
    const chunksBefore = countChunks(store.root);
    removeImage(store, parseRef('orphan'));
    removeImage(store, parseRef('lab@1'));
    const r = await collectGarbage(store);
    // The orphan's 4 chunks go; lab@1's old chunk stays, since stale@1 (the same disk) still uses it.
    expect(r.removedChunks).toBe(4);
    expect(countChunks(store.root)).toBe(chunksBefore - 4);
    // Every kept version is whole: verify and export all of them.
    const v = await verifyStore(store);
    expect(v.ok).toBe(true);
    expect(v.versionsChecked.map((x) => `${x.name}@${x.version}`).sort()).toEqual(['lab@2', 'repeat@1', 'sparse@1', 'stale@1']);
    const out = join(dir, 'after-gc.img');
    await exportImage(store, parseRef('stale'), out);
    expect(readFileSync(out).equals(original)).toBe(true);
    expect((await collectGarbage(store)).removedChunks).toBe(0);
  });

  it('gc waits for readers, and readers wait for gc', async () => {
    const reader = store.lockReader('exporting');
    // Pretend the reader is another live process.
    writeFileSync(reader.path, `${process.ppid}\nexporting lab\n`);
    try {
      expect((await expectCode(collectGarbage(store), ERR.BUSY)).message).toMatch(new RegExp(`process ${process.ppid} is exporting lab \\(reader-`));
    } finally {
      reader.release();
    }
    const gc = acquireLock(join(store.root, 'locks', 'gc.lock'), 'the store', 'collecting garbage');
    writeFileSync(gc.path, `${process.ppid}\ncollecting garbage\n`);
    try {
      await expectCode(exportImage(store, parseRef('lab'), join(dir, 'y.img')), ERR.BUSY);
      await expectCode(verifyStore(store), ERR.BUSY);
      await expectCode(importImage(store, src, 'lab', { chunkSize: C }), ERR.BUSY);
    } finally {
      gc.release();
    }
  });

  it('gc refuses to run while a manifest is unreadable', async () => {
    const path = store.manifestPath('repeat', 1);
    const saved = readFileSync(path);
    appendFileSync(path, 'x');
    try {
      const err = await expectCode(collectGarbage(store), ERR.DAMAGED);
      expect(err.message).toMatch(/repeat@1 cannot be read/);
      await expectCode(store.readManifest('repeat', 1), ERR.MANIFEST_CORRUPT);
    } finally {
      writeFileSync(path, saved);
    }
  });
});

function countChunks(root: string): number {
  return readdirSync(join(root, 'chunks')).reduce((n, d) => n + readdirSync(join(root, 'chunks', d)).length, 0);
}
