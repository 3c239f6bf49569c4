// What the keyed result digest costs the server: one read and decode of the
// image from the store per session (server/result-digest.ts), beside the
// old digest computed from the manifest alone. Prints MiB/s and seconds.
//
//   node test/bench/result-digest.mjs [SIZE_MIB]   (default 1024; needs npm run build)
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { makeImage } from './mkimage.mjs';

const ROOT = resolve(import.meta.dirname, '..', '..');
const { Store } = await import(join(ROOT, 'dist', 'server', 'store', 'store.js'));
const { importImage } = await import(join(ROOT, 'dist', 'server', 'store', 'import.js'));
const { expectedDigest } = await import(join(ROOT, 'dist', 'server', 'result-digest.js'));
const { diskDigest } = await import(join(ROOT, 'dist', 'protocol', 'manifest.js'));

const sizeMiB = Number(process.argv[2] ?? 1024);
const work = mkdtempSync(join(process.env.CLONECAST_BENCH_TMP ?? tmpdir(), 'clonecast-digest-'));
try {
  const raw = join(work, 'disk.raw');
  makeImage(raw, sizeMiB);
  const store = Store.open(join(work, 'data'));
  await importImage(store, raw, 'img', {});
  const manifest = await store.readManifest('img', 1);
  let t = performance.now();
  diskDigest(manifest);
  const plainMs = performance.now() - t;
  const runs = [];
  const cpu0 = process.cpuUsage();
  for (let i = 0; i < 3; i++) {
    t = performance.now();
    const c = await expectedDigest(store, manifest, randomBytes(16));
    runs.push({ ms: performance.now() - t, bytes: c.bytes });
  }
  runs.sort((a, b) => a.ms - b.ms);
  const median = runs[1];
  const cpu = process.cpuUsage(cpu0);
  console.log(`image: ${sizeMiB} MiB (${(median.bytes / 2 ** 20).toFixed(0)} MiB present)`);
  console.log(`old digest from the manifest: ${plainMs.toFixed(1)} ms`);
  console.log(`keyed digest from the store (median of 3): ${(median.ms / 1000).toFixed(2)} s, ${(median.bytes / 2 ** 20 / (median.ms / 1000)).toFixed(0)} MiB/s of disk; once per session`);
  console.log(`CPU per GiB of disk: ${((cpu.user + cpu.system) / 1e6 / 3 / (median.bytes / 2 ** 30)).toFixed(2)} s`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
