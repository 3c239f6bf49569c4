// Used-block import against Clonezilla's way, in the same run.
//
//   node test/bench/used-blocks.mjs [--size-mib 4096] [--runs 1]
//   (run it under: flock /tmp/cc-lab.lock ...)
//
// The disk: a sparse GPT image with an ext4 and an NTFS partition (half the
// disk each), 80% filled with random-content files, then 60% of the files
// deleted (their data stays in free space). It is attached as one loop
// device, and every run reads through it, so the loop device's own read
// counter (/sys/block/loopN/stat, sectors read) gives the bytes read from
// the source; page caches are dropped before each run.
//
// Runs, interleaved:
//   baseline "partclone+zstd": partclone.extfs -c and partclone.ntfs -c of
//     each partition piped into zstd -3 into files (what Clonezilla stores)
//   clonecast used-blocks: clonecast image import (default codec)
//   clonecast --raw: clonecast image import --raw
// Figures: stored bytes (goal: clonecast <= 1.05x partclone+zstd), bytes
// read from the source, wall seconds and CPU seconds (goal: clonecast no
// slower than partclone+zstd), each as a ratio to the baseline.
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, mkdirSync, openSync, writeSync, closeSync } from 'node:fs';
import { randomFillSync } from 'node:crypto';
import { tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'bin', 'clonecast');
const arg = (name, def) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : def;
};
const SIZE_MIB = arg('--size-mib', 4096);
const RUNS = arg('--runs', 1);
const FILE_MIB = 16;
const MiB = 1 << 20;
const work = mkdtempSync(join(process.env.CLONECAST_BENCH_TMP ?? tmpdir(), 'clonecast-used-bench-'));
const loops = [];
const mounts = [];

function sh(cmd, args, opts = {}) {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], maxBuffer: 1 << 26, ...opts });
}
function loop(file, extra = []) {
  const dev = sh('losetup', ['-f', '--show', ...extra, file]).trim();
  loops.unshift(dev);
  return dev;
}
function sectorsRead(dev) {
  return Number(readFileSync(`/sys/block/${basename(dev)}/stat`, 'utf8').trim().split(/\s+/)[2]);
}
function dropCaches() {
  spawnSync('sync');
  writeFileSync('/proc/sys/vm/drop_caches', '1');
}
/** Runs a shell command line; wall and CPU seconds (user+sys of it and its children). */
function timed(line) {
  const r = spawnSync('/usr/bin/time', ['-f', '%e %U %S', 'sh', '-c', line], { encoding: 'utf8', maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`${line} failed: ${r.stderr.slice(-2000)}`);
  const [e, u, s] = r.stderr.trim().split('\n').pop().split(' ').map(Number);
  return { secs: e, cpu: u + s, stdout: r.stdout };
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const gib = (n) => `${(n / 2 ** 30).toFixed(3)} GiB`;

function fill(dir, bytes, seed) {
  const names = [];
  const buf = Buffer.alloc(FILE_MIB * MiB);
  for (let i = 0; (i + 1) * buf.length <= bytes; i++) {
    randomFillSync(buf);
    const name = join(dir, `f${seed}-${i}.bin`);
    const fd = openSync(name, 'w');
    writeSync(fd, buf);
    closeSync(fd);
    names.push(name);
  }
  return names;
}

try {
  const disk = join(work, 'disk.img');
  sh('truncate', ['-s', `${SIZE_MIB}M`, disk]);
  const half = Math.floor((SIZE_MIB - 2) / 2);
  sh('sgdisk', ['-n', `1:0:+${half}M`, '-n', `2:0:0`, '-t', '2:0700', disk]);
  const parts = JSON.parse(sh('sfdisk', ['-J', disk])).partitiontable.partitions.map((p) => ({ start: p.start * 512, size: p.size * 512 }));
  const whole = loop(disk);
  const dev = parts.map((p) => loop(whole, ['-o', String(p.start), '--sizelimit', String(p.size)]));
  sh('mkfs.ext4', ['-q', '-F', dev[0]]);
  sh('mkntfs', ['-Q', '-F', dev[1]]);
  let live = 0;
  let deleted = 0;
  const t0 = performance.now();
  for (const [k, d] of dev.entries()) {
    const at = join(work, `mnt${k}`);
    mkdirSync(at);
    if (k === 0) sh('mount', [d, at]);
    else sh('ntfs-3g', [d, at]);
    mounts.unshift(at);
    const names = fill(at, parts[k].size * 0.8, k);
    spawnSync('sync');
    const gone = names.filter((_, i) => i % 5 < 3); // 60% of the files
    for (const n of gone) rmSync(n);
    live += (names.length - gone.length) * FILE_MIB * MiB;
    deleted += gone.length * FILE_MIB * MiB;
    sh('umount', [at]);
    mounts.shift();
  }
  for (const d of dev) sh('losetup', ['-d', d]);
  loops.splice(0, 2);
  console.log(`disk ${SIZE_MIB} MiB (ext4 + NTFS): live files ${gib(live)}, deleted files ${gib(deleted)}; made in ${((performance.now() - t0) / 1000).toFixed(0)} s`);

  const results = { base: [], used: [], raw: [] };
  for (let run = 0; run < RUNS; run++) {
    // Baseline: partclone -c of each partition | zstd -3 > file (Clonezilla's default pipeline, single-threaded zstd).
    {
      const pdev = parts.map((p) => loop(whole, ['-r', '-o', String(p.start), '--sizelimit', String(p.size)]));
      const outs = [join(work, 'p1.pc.zst'), join(work, 'p2.pc.zst')];
      dropCaches();
      const before = sectorsRead(whole);
      const t = timed(`partclone.extfs -c -q -s ${pdev[0]} -o - | zstd -q -3 > ${outs[0]} && partclone.ntfs -c -q -s ${pdev[1]} -o - | zstd -q -3 > ${outs[1]}`);
      const read = (sectorsRead(whole) - before) * 512;
      const stored = outs.reduce((a, f) => a + statSync(f).size, 0);
      for (const f of outs) rmSync(f);
      for (const d of pdev) sh('losetup', ['-d', d]);
      loops.splice(0, 2);
      results.base.push({ ...t, read, stored });
    }
    for (const [key, extra] of [['used', []], ['raw', ['--raw']]]) {
      const data = join(work, `store-${key}`);
      rmSync(data, { recursive: true, force: true });
      dropCaches();
      const before = sectorsRead(whole);
      const t = timed(`${process.execPath} ${CLI} image import ${whole} bench --data ${data} --json ${extra.join(' ')}`);
      const read = (sectorsRead(whole) - before) * 512;
      const s = JSON.parse(t.stdout);
      results[key].push({ ...t, read, stored: s.storedBytes, reported: s.bytesRead });
      rmSync(data, { recursive: true, force: true });
    }
  }
  const row = (name, rs) => ({ name, secs: median(rs.map((r) => r.secs)), cpu: median(rs.map((r) => r.cpu)), read: median(rs.map((r) => r.read)), stored: median(rs.map((r) => r.stored)) });
  const base = row('partclone -c | zstd -3', results.base);
  console.log(`runs: ${RUNS} (medians)`);
  for (const r of [base, row('clonecast import (used blocks)', results.used), row('clonecast import --raw', results.raw)]) {
    console.log(
      `${r.name.padEnd(32)} stored ${gib(r.stored)} (${(r.stored / base.stored).toFixed(3)}x)  read ${gib(r.read)} (${(r.read / base.read).toFixed(2)}x)  ` +
        `${r.secs.toFixed(1)} s (${(r.secs / base.secs).toFixed(2)}x)  CPU ${r.cpu.toFixed(1)} s (${(r.cpu / base.cpu).toFixed(2)}x)`,
    );
  }
  const used = row('', results.used);
  console.log(`goals: stored <= 1.05x of partclone+zstd: ${used.stored <= 1.05 * base.stored ? 'met' : 'MISSED'}; time no slower: ${used.secs <= base.secs ? 'met' : 'MISSED'}`);
  console.log(`clonecast's own count of bytes read (used blocks): ${gib(median(results.used.map((r) => r.reported)))}`);
} finally {
  for (const m of mounts) spawnSync('umount', [m]);
  for (const d of loops) spawnSync('losetup', ['-d', d]);
  rmSync(work, { recursive: true, force: true });
}
