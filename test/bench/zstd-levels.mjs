// Chooses the zstd levels of import and recompress: for one disk image,
// import time and stored size at several zstd levels and with lz4, against
// `zstd -3 -T0 FILE -c > /dev/null` and `lz4 -1` on the same file in the
// same run; then recompress time and stored size at higher levels, each
// from a fresh zstd -3 import. Prints ratios against the named baselines.
//
//   node test/bench/zstd-levels.mjs FILE [--levels 1,2,3,4,6] [--recompress 9,12,15,19] [--runs 3] [--sizes]
//   node test/bench/zstd-levels.mjs --mkimage 1024 ...   (the benchmark image of mkimage.mjs, that many MiB)
//
// --sizes also prints the size of the whole file through zstd -1, -3 and -19 -T0
// (--size-levels to choose others; -19 takes minutes per GiB here).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { makeImage } from './mkimage.mjs';

const ROOT = resolve(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'bin', 'clonecast');
const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const list = (s) => (s === '' ? [] : s.split(',').map(Number));
const work = mkdtempSync(join(process.env.CLONECAST_BENCH_TMP ?? tmpdir(), 'clonecast-zstd-'));
let file = process.argv[2];
if (process.argv.includes('--mkimage')) {
  file = join(work, 'bench.img');
  makeImage(file, Number(arg('--mkimage', '1024')), { dense: true });
}
const levels = list(arg('--levels', '1,2,3,4,6'));
const recompress = list(arg('--recompress', '9,12,15,19'));
const RUNS = Number(arg('--runs', '3'));
const MiB = 1 << 20;

function timed(cmd, args) {
  const t = performance.now();
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  return { secs: (performance.now() - t) / 1000, stdout: r.stdout };
}
const sh = (cmd) => timed('sh', ['-c', cmd]).secs;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const settle = () => spawnSync('sync');

function importOnce(codecArgs, tag) {
  const data = join(work, `store-${tag}`);
  rmSync(data, { recursive: true, force: true });
  settle();
  const r = timed(CLI, ['image', 'import', file, 'bench', '--data', data, '--json', ...codecArgs]);
  return { secs: r.secs, stored: JSON.parse(r.stdout).storedBytes, data };
}

try {
  const size = statSync(file).size;
  console.log(`zstd levels on ${file}: ${(size / MiB).toFixed(0)} MiB, median of ${RUNS} interleaved runs, ${new Date().toISOString()}`);
  const cells = [['lz4', ['--codec', 'lz4']], ...levels.map((l) => [`zstd -${l}`, ['--codec', 'zstd', '--level', String(l)]])];
  const times = new Map(cells.map(([n]) => [n, []]));
  const stored = new Map();
  const zstdBase = [];
  const lz4Base = [];
  for (let i = 0; i < RUNS; i++) {
    settle();
    zstdBase.push(sh(`zstd -q -3 -T0 -c '${file}' > /dev/null`));
    settle();
    lz4Base.push(sh(`lz4 -q -1 -c '${file}' > /dev/null`));
    for (const [name, args] of cells) {
      const r = importOnce(args, name.replace(/\W/g, ''));
      times.get(name).push(r.secs);
      stored.set(name, r.stored);
    }
  }
  const zb = median(zstdBase);
  const lb = median(lz4Base);
  const lz4Import = median(times.get('lz4'));
  console.log(`baselines: zstd -3 -T0 ${zb.toFixed(2)} s (runs ${zstdBase.map((x) => x.toFixed(2)).join(' ')}); lz4 -1 ${lb.toFixed(2)} s`);
  console.log(`${'import codec'.padEnd(14)} ${'time'.padStart(8)} ${'vs zstd -3 -T0'.padStart(15)} ${'vs lz4 -1'.padStart(10)} ${'vs lz4 import'.padStart(14)} ${'stored MiB'.padStart(11)}`);
  for (const [name] of cells) {
    const t = median(times.get(name));
    console.log(`${name.padEnd(14)} ${t.toFixed(2).padStart(6)} s ${(zb / t).toFixed(2).padStart(14)}x ${(lb / t).toFixed(2).padStart(9)}x ${(lz4Import / t).toFixed(2).padStart(13)}x ${(stored.get(name) / MiB).toFixed(1).padStart(11)}   runs ${times.get(name).map((x) => x.toFixed(2)).join(' ')}`);
  }
  if (process.argv.includes('--sizes')) {
    for (const l of list(arg('--size-levels', '1,3,19'))) {
      const t = performance.now();
      const out = spawnSync('sh', ['-c', `zstd -q -${l} -T0 -c '${file}' | wc -c`], { encoding: 'utf8' }).stdout.trim();
      console.log(`whole file through zstd -${l} -T0: ${(Number(out) / MiB).toFixed(1)} MiB in ${((performance.now() - t) / 1000).toFixed(1)} s`);
    }
  }
  for (const l of recompress) {
    const base = importOnce(['--codec', 'zstd', '--level', '3'], `re${l}`);
    settle();
    const r = timed(CLI, ['image', 'recompress', 'bench', '--level', String(l), '--data', base.data, '--json']);
    const s = JSON.parse(r.stdout);
    console.log(`recompress zstd -3 -> -${l}: ${r.secs.toFixed(1)} s (${(s.bytesPerSecond / MiB).toFixed(1)} MiB/s of chunk data), stored ${(s.storedBefore / MiB).toFixed(1)} -> ${(s.storedAfter / MiB).toFixed(1)} MiB (${((100 * (s.storedBefore - s.storedAfter)) / s.storedBefore).toFixed(1)}% less), ${s.rewritten} of ${s.chunks} chunks rewritten`);
    rmSync(base.data, { recursive: true, force: true });
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
