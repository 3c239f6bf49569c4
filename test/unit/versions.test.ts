/**
 * Versions over time: NAME@DATE resolves to the latest version at or before
 * it (restore-as-of), `image history`, and retention rules with gc, which
 * must never take a chunk from a version the rules keep.
 */
import { describe, expect, it } from 'vitest';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { decodeManifest, encodeManifest } from '../../protocol/manifest.js';
import { exportImage } from '../../server/store/export.js';
import { importImage } from '../../server/store/import.js';
import { collectGarbage, imageHistory, pruneImage, retained, verifyStore } from '../../server/store/maintenance.js';
import { parseRef, Store } from '../../server/store/store.js';
import { cli, seeded, tempDir } from '../helpers.js';

const MiB = 1 << 20;

/** Sets a version's creation time (tests cannot wait days): re-encodes its manifest, trailer included. */
function backdate(store: Store, name: string, version: number, createdAt: string): void {
  const path = store.manifestPath(name, version);
  const m = decodeManifest(readFileSync(path), path);
  store.writeAtomic(path, encodeManifest({ ...m, meta: { ...m.meta, createdAt } }));
}

describe('versions, restore-as-of and retention', () => {
  const dir = tempDir('versions');
  const store = Store.open(join(dir, 'data'));
  const src = join(dir, 'disk.img');
  const contents: Buffer[] = [];
  // Five nightly captures: each changes 1 MiB of a 4 MiB disk.
  const dates = ['2026-11-15T22:00:00.000Z', '2026-11-17T22:00:00.000Z', '2026-11-19T22:00:00.000Z', '2026-11-20T22:00:00.000Z', '2026-11-20T23:30:00.000Z'];

  it('makes five versions on five dates', async () => {
    const disk = seeded(4 * MiB, 1);
    for (let i = 0; i < dates.length; i++) {
      seeded(MiB, 100 + i).copy(disk, (i % 4) * MiB);
      writeFileSync(src, disk);
      contents.push(Buffer.from(disk));
      const r = await importImage(store, src, 'lab', {});
      expect(r.version).toBe(i + 1);
      backdate(store, 'lab', r.version, dates[i]);
    }
  });

  it('NAME@DATE is the latest version at or before the end of that day, or that instant', () => {
    expect(parseRef('lab@2026-11-20')).toEqual({ name: 'lab', asOf: '2026-11-20T23:59:59.999Z' });
    expect(store.resolve(parseRef('lab@2026-11-20'))).toEqual({ name: 'lab', version: 5 });
    expect(store.resolve(parseRef('lab@2026-11-20T22:30:00Z'))).toEqual({ name: 'lab', version: 4 });
    expect(store.resolve(parseRef('lab@2026-11-18'))).toEqual({ name: 'lab', version: 2 });
    expect(store.resolve(parseRef('lab@2026-11-16'))).toEqual({ name: 'lab', version: 1 });
    expect(() => store.resolve(parseRef('lab@2026-11-01'))).toThrow(/no version at or before 2026-11-01T23:59:59.999Z \(the first is lab@1 of 2026-11-15/);
    expect(() => parseRef('lab@yesterday')).toThrow(/NAME@DATE/);
  });

  it('exports the version as of a date, byte for byte', async () => {
    const out = join(dir, 'asof.img');
    await exportImage(store, parseRef('lab@2026-11-18'), out);
    expect(readFileSync(out).equals(contents[1])).toBe(true);
  });

  it('image history lists every version with time, size and new bytes', async () => {
    const h = await imageHistory(store, 'lab');
    expect(h.map((x) => x.version)).toEqual([1, 2, 3, 4, 5]);
    expect(h.map((x) => x.createdAt)).toEqual(dates);
    expect(h[0].newBytes).toBeGreaterThan(3 * MiB); // the first stores the whole disk
    for (const x of h.slice(1)) expect(x.newBytes).toBeLessThanOrEqual(MiB + 4096); // later ones one changed chunk
    const r = await cli(['image', 'history', 'lab', '--data', store.root]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/@5 +2026-11-20T23:30:00.000Z +4\.0 MiB/);
  });

  it('retention rules: keep the last K, the newest of each of the last D days, always the latest', () => {
    const h = dates.map((createdAt, i) => ({ version: i + 1, createdAt }));
    const now = Date.parse('2026-11-21T08:00:00Z');
    expect([...retained(h, { keepLast: 2, now })].sort()).toEqual([4, 5]);
    // Last 3 days: the 21st (nothing), the 20th (@5, newest of the day), the 19th (@3).
    expect([...retained(h, { keepDaily: 3, now })].sort()).toEqual([3, 5]);
    expect([...retained(h, { keepLast: 1, keepDaily: 7, now })].sort()).toEqual([1, 2, 3, 5]);
  });

  it('prune + gc removes only what the rules drop; every kept version still verifies and exports exactly', async () => {
    const dry = await pruneImage(store, 'lab', { keepDaily: 3, now: Date.parse('2026-11-21T08:00:00Z') }, true);
    expect(dry.removed).toEqual([1, 2, 4]);
    expect(store.versions('lab')).toEqual([1, 2, 3, 4, 5]);
    const r = await pruneImage(store, 'lab', { keepDaily: 3, now: Date.parse('2026-11-21T08:00:00Z') });
    expect(r).toEqual({ name: 'lab', kept: [3, 5], removed: [1, 2, 4] });
    const gc = await collectGarbage(store);
    expect(gc.removedChunks).toBeGreaterThan(0);
    const report = await verifyStore(store);
    expect(report.ok).toBe(true);
    for (const v of r.kept) {
      const out = join(dir, `kept-${v}.img`);
      await exportImage(store, { name: 'lab', version: v }, out);
      expect(readFileSync(out).equals(contents[v - 1]), `lab@${v}`).toBe(true);
    }
  });
});
