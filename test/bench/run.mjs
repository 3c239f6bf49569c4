// clonecast benchmarks: import and export throughput against named
// baselines run in the same script, and peak memory. Prints figures and
// ratios; exits 1 if a target is missed.
//
//   npm run bench                  (1 GiB images, 4 GiB for memory)
//   node test/bench/run.mjs --quick   (256 MiB, no 4 GiB run)
//   node test/bench/run.mjs --skip-memory   (1 GiB runs only)
//
// Baselines:
//   import (zstd, the default): `zstd -3 -T0 -c RAW > /dev/null` on the same raw file (target >= 0.8x)
//   import --codec lz4: `lz4 -1 -c RAW > /dev/null` on the same raw file (target >= 0.8x)
//   stored size: the whole raw file through `zstd -1/-3/-19 -T0` (printed, no target)
//   export: `dd if=RAW of=LOOP bs=4M oflag=direct` to the same loop device (target >= 0.8x)
//   memory: peak RSS of import and export of a 4 GiB image (target < 256 MiB)
// Each timing is the median of RUNS runs, baseline and clonecast interleaved,
// since this machine is shared and noisy.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { makeImage } from './mkimage.mjs';

const ROOT = resolve(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'bin', 'clonecast');
const quick = process.argv.includes('--quick');
const skipMemory = quick || process.argv.includes('--skip-memory');
const SIZE_MIB = quick ? 256 : 1024;
const RUNS = quick ? 3 : 5;
const work = mkdtempSync(join(process.env.CLONECAST_BENCH_TMP ?? tmpdir(), 'clonecast-bench-'));
const loops = [];
let failed = false;

/** Runs a command; returns wall seconds and peak RSS in KiB (via /usr/bin/time). */
function timed(cmd, args, opts = {}) {
  const r = spawnSync('/usr/bin/time', ['-f', '%e %M', cmd, ...args], { encoding: 'utf8', maxBuffer: 1 << 26, ...opts });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  const [secs, kib] = r.stderr.trim().split('\n').pop().split(' ').map(Number);
  return { secs, kib };
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)];
}

function report(name, bases, ourss, target) {
  const base = median(bases);
  const ours = median(ourss);
  const ratio = base / ours; // > 1: clonecast is faster
  const ok = ratio >= target;
  if (!ok) failed = true;
  console.log(`${name.padEnd(44)} baseline ${base.toFixed(2)} s  clonecast ${ours.toFixed(2)} s  ratio ${ratio.toFixed(2)}x  (target >= ${target}x) ${ok ? 'ok' : 'MISSED'}`);
  console.log(`  runs: baseline ${bases.map((x) => x.toFixed(2)).join(' ')}; clonecast ${ourss.map((x) => x.toFixed(2)).join(' ')}`);
}

function loop(file, extra = []) {
  const dev = execFileSync('losetup', ['-f', '--show', ...extra, file], { encoding: 'utf8' }).trim();
  loops.push(dev);
  return dev;
}

/** Lets writeback and discards of the previous step finish, so that no run pays for another's I/O. */
function settle() {
  spawnSync('sync');
}

/** One import into a fresh store; returns its time and the stored bytes it reports. */
function importOnce(raw, data, codecArgs) {
  rmSync(data, { recursive: true, force: true });
  settle();
  const t = performance.now();
  const r = spawnSync(CLI, ['image', 'import', raw, 'bench', '--data', data, '--json', ...codecArgs], { encoding: 'utf8', maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`import failed: ${r.stderr}`);
  return { secs: (performance.now() - t) / 1000, stored: JSON.parse(r.stdout).storedBytes };
}

function importBench(label, raw) {
  const zBase = [];
  const lBase = [];
  const zOurs = [];
  const lOurs = [];
  let stored = { zstd: 0, lz4: 0 };
  const data = join(work, `store-${label}`);
  for (let i = 0; i < RUNS; i++) {
    settle();
    zBase.push(timed('sh', ['-c', `zstd -q -3 -T0 -c '${raw}' > /dev/null`]).secs);
    settle();
    lBase.push(timed('sh', ['-c', `lz4 -1 -c '${raw}' > /dev/null`]).secs);
    const l = importOnce(raw, `${data}-lz4`, ['--codec', 'lz4']);
    lOurs.push(l.secs);
    const z = importOnce(raw, data, []);
    zOurs.push(z.secs);
    stored = { zstd: z.stored, lz4: l.stored };
  }
  rmSync(`${data}-lz4`, { recursive: true, force: true });
  report(`import ${SIZE_MIB} MiB (${label}), zstd vs zstd -3 -T0`, zBase, zOurs, 0.8);
  report(`import ${SIZE_MIB} MiB (${label}), --codec lz4 vs lz4 -1`, lBase, lOurs, 0.8);
  console.log(`  zstd import against the lz4 import: ${(median(lOurs) / median(zOurs)).toFixed(2)}x the speed; stored ${(stored.zstd / 1048576).toFixed(1)} MiB against ${(stored.lz4 / 1048576).toFixed(1)} MiB`);
  return { store: data, stored };
}

/** The whole raw file's size through zstd at a few levels, for the stored sizes to be read against. */
function zstdSizes(raw, stored) {
  const parts = [];
  for (const level of [1, 3, 19]) {
    const r = spawnSync('sh', ['-c', `zstd -q -${level} -T0 -c '${raw}' | wc -c`], { encoding: 'utf8' });
    parts.push(`zstd -${level} ${(Number(r.stdout.trim()) / 1048576).toFixed(1)} MiB`);
  }
  console.log(`stored size: clonecast zstd ${(stored.zstd / 1048576).toFixed(1)} MiB, lz4 ${(stored.lz4 / 1048576).toFixed(1)} MiB; the whole file through ${parts.join(', ')}`);
}

function exportBench(label, raw, store, loopArgs) {
  const backing = join(work, `loop-${label}.img`);
  execFileSync('truncate', ['-s', `${SIZE_MIB + 64}M`, backing]);
  const dev = loop(backing, loopArgs);
  const base = [];
  const ours = [];
  for (let i = 0; i < RUNS; i++) {
    settle();
    base.push(timed('dd', [`if=${raw}`, `of=${dev}`, 'bs=4M', 'oflag=direct', 'status=none']).secs);
    settle();
    ours.push(timed(CLI, ['image', 'export', 'bench', dev, '--data', store, '--json'], { stdio: ['ignore', 'ignore', 'pipe'] }).secs);
  }
  // dd without conv=fsync leaves a buffered loop device's data in the page
  // cache; clonecast's export ends with fdatasync. Same durability, for context:
  const synced = [];
  for (let i = 0; i < Math.min(RUNS, 3); i++) {
    settle();
    synced.push(timed('dd', [`if=${raw}`, `of=${dev}`, 'bs=4M', 'oflag=direct', 'conv=fsync', 'status=none']).secs);
  }
  const same = spawnSync('cmp', ['-n', String(SIZE_MIB * 1048576), raw, dev]).status === 0;
  if (!same) failed = true;
  report(`export ${SIZE_MIB} MiB to ${label} vs dd oflag=direct`, base, ours, 0.8);
  console.log(`  for context, dd with conv=fsync (as durable as clonecast's export): ${median(synced).toFixed(2)} s`);
  console.log(`  exported disk equals the raw image: ${same ? 'yes' : 'NO'}`);
}

try {
  // The multicast data path's per-packet and per-chunk crypto (its cost in sessions: test/bench/mcast.mjs --auth).
  await (await import('./packet-crypto.mjs')).packetCrypto();
  if (process.getuid() !== 0) console.log('note: not root, so the loop-device export benchmarks are skipped');
  console.log(`clonecast benchmarks: ${SIZE_MIB} MiB images, median of ${RUNS} runs, ${new Date().toISOString()}`);
  const dense = join(work, 'dense.img');
  const sparse = join(work, 'sparse.img');
  const c = makeImage(dense, SIZE_MIB, { dense: true });
  makeImage(sparse, SIZE_MIB, { dense: false });
  const t = c.random + c.zero + c.text;
  console.log(`image mix: ${((100 * c.random) / t).toFixed(0)}% incompressible, ${((100 * c.zero) / t).toFixed(0)}% zeros in runs of 4-48 MiB, ${((100 * c.text) / t).toFixed(0)}% files from /usr`);
  const denseImport = importBench('zeros written out', dense);
  const denseStore = denseImport.store;
  importBench('zeros as holes', sparse);
  zstdSizes(dense, denseImport.stored);
  if (process.getuid() === 0) {
    exportBench('a loop device', dense, denseStore, []);
    exportBench('a direct-io loop device', dense, denseStore, ['--direct-io=on']);
  }
  if (!skipMemory) {
    const big = join(work, 'big.img');
    makeImage(big, 4096, { dense: true, seed: 2 });
    const store = join(work, 'store-big');
    const imp = timed(CLI, ['image', 'import', big, 'big', '--data', store, '--json'], { stdio: ['ignore', 'ignore', 'pipe'] });
    const out = join(work, 'big.out');
    const exp = timed(CLI, ['image', 'export', 'big', out, '--data', store, '--json'], { stdio: ['ignore', 'ignore', 'pipe'] });
    for (const [name, r] of [['import', imp], ['export', exp]]) {
      const ok = r.kib < 256 * 1024;
      if (!ok) failed = true;
      console.log(`peak memory, ${name} of a 4 GiB image`.padEnd(44) + ` ${(r.kib / 1024).toFixed(0)} MiB in ${r.secs.toFixed(1)} s  (target < 256 MiB) ${ok ? 'ok' : 'MISSED'}`);
    }
  }
} finally {
  for (const dev of loops) spawnSync('losetup', ['-d', dev]);
  if (existsSync(work)) rmSync(work, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
