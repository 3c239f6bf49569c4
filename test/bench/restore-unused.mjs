// Restore of a used-block image against the same disk restored in full.
//
//   node test/bench/restore-unused.mjs [--size MIB] [--runs N]     (root: loop devices)
//
// The disk: GPT, one ext4 partition filled to ~80% with random-content files,
// then 60% of them deleted (their data stays in free space). Imported once in
// full (every non-zero chunk stored: the baseline, what clonecast stored
// before used-block imaging), and once more as used-block imaging makes it:
// chunks no used block touches are unused (partclone's map-only mode decides,
// as the read side does). Each version is exported to the same loop device,
// full of random bytes; printed: bytes written, seconds (median of N, the
// two interleaved), and the ratio used-block / full.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';

const ROOT = resolve(import.meta.dirname, '..', '..');
const arg = (name, d) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : d;
};
const SIZE_MIB = arg('--size', 256);
const RUNS = arg('--runs', 3);
const MiB = 1 << 20;
const { Store } = await import(join(ROOT, 'dist/server/store/store.js'));
const { importImage } = await import(join(ROOT, 'dist/server/store/import.js'));
const { exportImage } = await import(join(ROOT, 'dist/server/store/export.js'));
const { chunkAt, ChunkKind, setChunk, tableLength } = await import(join(ROOT, 'dist/protocol/manifest.js'));

const work = mkdtempSync(join(process.env.CLONECAST_BENCH_TMP ?? tmpdir(), 'clonecast-bench-unused-'));
const loops = [];
const sh = (cmd, args) => execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const loop = (file, extra = []) => {
  const d = sh('losetup', ['-f', '--show', ...extra, file]).trim();
  loops.push(d);
  return d;
};
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

try {
  const raw = join(work, 'disk.raw');
  sh('truncate', ['-s', `${SIZE_MIB}M`, raw]);
  sh('sgdisk', ['-n1:1M:0', '-t1:8300', raw]);
  const start = MiB;
  const size = Number(JSON.parse(sh('sfdisk', ['--json', raw])).partitiontable.partitions[0].size) * 512;
  const part = loop(raw, ['-o', String(start), '--sizelimit', String(size)]);
  sh('mkfs.ext4', ['-q', '-F', part]);
  const mnt = join(work, 'mnt');
  sh('mkdir', ['-p', mnt]);
  sh('mount', [part, mnt]);
  const files = Math.floor((size * 0.8) / (4 * MiB));
  for (let i = 0; i < files; i++) writeFileSync(join(mnt, `f${i}`), randomBytes(4 * MiB));
  for (let i = 0; i < files; i++) if (i % 5 < 3) rmSync(join(mnt, `f${i}`));
  sh('umount', [mnt]);
  sh('partclone.extfs', ['-D', '-s', part, '-o', join(work, 'map'), '-q']);
  const used = [];
  for (const line of readFileSync(join(work, 'map'), 'utf8').split('\n')) {
    const m = /^0x([0-9A-Fa-f]+)\s+0x([0-9A-Fa-f]+)\s+\+/.exec(line);
    if (m) used.push([start + parseInt(m[1], 16), start + parseInt(m[1], 16) + parseInt(m[2], 16)]);
  }

  const store = Store.open(join(work, 'data'));
  await importImage(store, raw, 'full', {});
  await importImage(store, raw, 'used', {});
  const m = await store.readManifest('used', 1);
  const c = m.meta.chunkSize;
  let unused = 0;
  for (let i = Math.ceil((start + MiB) / c); (i + 1) * c <= start + size - MiB; i++) {
    if (used.some(([a, b]) => a < (i + 1) * c && b > i * c)) continue;
    setChunk(m.table, i, { kind: ChunkKind.UNUSED, compression: 0, storedLength: 0, xxh64: 0n, sha256: Buffer.alloc(32) });
    unused++;
  }
  store.replaceManifest(m);
  const written = (man) => {
    let n = 0;
    for (let i = 0; i < tableLength(man.table); i++) if (chunkAt(man.table, i).kind === ChunkKind.DATA || chunkAt(man.table, i).kind === ChunkKind.ZERO) n += Math.min(c, man.meta.diskSize - i * c);
    return n;
  };
  const bytes = { full: written(await store.readManifest('full', 1)), used: written(m) };

  const target = join(work, 'target.img');
  writeFileSync(target, randomBytes(SIZE_MIB * MiB));
  const dev = loop(target);
  const times = { full: [], used: [] };
  for (let r = 0; r < RUNS; r++) {
    for (const name of ['full', 'used']) {
      const t = performance.now();
      await exportImage(store, { name, version: 1 }, dev, { force: true });
      times[name].push((performance.now() - t) / 1000);
    }
  }
  const f = median(times.full);
  const u = median(times.used);
  console.log(`disk ${SIZE_MIB} MiB, ext4 with ${files} files of 4 MiB written and ${files - Math.ceil((files * 2) / 5)} deleted; ${unused} of ${tableLength(m.table)} chunks unused`);
  console.log(`baseline export of the full image:  ${(bytes.full / MiB).toFixed(1)} MiB written, ${f.toFixed(2)} s (median of ${RUNS}: ${times.full.map((x) => x.toFixed(2)).join(' ')})`);
  console.log(`export of the used-block image:     ${(bytes.used / MiB).toFixed(1)} MiB written, ${u.toFixed(2)} s (median of ${RUNS}: ${times.used.map((x) => x.toFixed(2)).join(' ')})`);
  console.log(`ratio used-block / full: bytes ${(bytes.used / bytes.full).toFixed(2)}x, time ${(u / f).toFixed(2)}x`);
} finally {
  spawnSafe(() => sh('umount', [join(work, 'mnt')]));
  for (const d of loops) spawnSafe(() => sh('losetup', ['-d', d]));
  rmSync(work, { recursive: true, force: true });
}

function spawnSafe(fn) {
  try {
    fn();
  } catch {
    // already gone
  }
}
