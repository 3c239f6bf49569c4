// Assembly of a ~4 GiB disk from aligned partitions of two stored images,
// against assembling the same disk by hand in the same run (the baseline):
// `image export` of both sources to raw files, `dd` of each partition into a
// new sparse file, `sgdisk` for the same table, `image import` of the result.
// Both are timed with /usr/bin/time (wall, CPU user+sys, peak RSS); RUNS
// alternating runs, medians. The sources (makeImage: 40% random, 35% zeros,
// 25% text) are made and imported once, untimed.
// With "unaligned", B's partition starts at sector 63 (off every chunk
// boundary), so assembly re-chunks all of it: the cost of the slow path.
//   node test/bench/assemble.mjs [RUNS] [SOURCE_MIB] [unaligned]
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { makeImage } from './mkimage.mjs';

const ROOT = resolve(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'bin', 'clonecast');
const [runsArg = '3', sourceArg = '2100', mode = 'aligned'] = process.argv.slice(2);
const UNALIGNED = mode === 'unaligned';
const RUNS = Number(runsArg);
const SOURCE_MIB = Number(sourceArg);
const MiB = 1 << 20;
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const dir = mkdtempSync(join(process.env.CLONECAST_TEST_TMP ?? tmpdir(), 'clonecast-bench-assemble-'));
const data = join(dir, 'data');

/** Runs a shell script under /usr/bin/time; returns wall and CPU seconds, peak RSS in MiB and stdout. */
function timed(script) {
  const r = spawnSync('/usr/bin/time', ['-f', 'TIMES %e %U %S %M', 'bash', '-euo', 'pipefail', '-c', script], { encoding: 'utf8', maxBuffer: 64 << 20 });
  const m = /TIMES (\S+) (\S+) (\S+) (\S+)/.exec(r.stderr);
  if (r.status !== 0 || m === null) throw new Error(`failed (${r.status}): ${script}\n${r.stderr.slice(-2000)}`);
  return { seconds: Number(m[1]), cpu: Number(m[2]) + Number(m[3]), peakMiB: Number(m[4]) / 1024, stdout: r.stdout };
}

const cc = (args) => `${process.execPath} ${CLI} ${args} --data ${data}`;

try {
  // Sources: A is a GPT disk (256 MiB ESP, the rest a root), B an MBR disk with one big data partition.
  const a = join(dir, 'a.img');
  const b = join(dir, 'b.img');
  makeImage(a, SOURCE_MIB, { seed: 11 });
  makeImage(b, SOURCE_MIB, { seed: 12 });
  execFileSync('sgdisk', ['-n1:2048:+256M', '-t1:ef00', '-c1:ESP', '-n2:0:0', '-t2:8300', '-c2:root', a], { stdio: 'ignore' });
  execFileSync('sfdisk', ['-q', b], { input: `label: dos\nstart=${UNALIGNED ? 63 : 2048}, size=${(SOURCE_MIB - 2) * 2048}, type=7\n` });
  for (const [file, name] of [[a, 'srca'], [b, 'srcb']]) execFileSync(process.execPath, [CLI, 'image', 'import', file, name, '--data', data, '--json'], { stdio: ['ignore', 'ignore', 'inherit'] });
  const parts = ['srca:1', 'srca:2', 'srcb:1'];
  const ours = [];
  const byHand = [];
  for (let run = 0; run < RUNS; run++) {
    // image assemble
    const t = timed(cc(`image assemble pc ${parts.map((p) => `--part ${p}`).join(' ')} --json`));
    const s = JSON.parse(t.stdout);
    ours.push({ ...t, newBytes: s.newBytes, reused: s.reusedChunks, chunks: s.chunks, diskSize: s.diskSize });
    // By hand: the same layout (the partitions' places from the assembled table), then import.
    const src = JSON.parse(execFileSync(process.execPath, [CLI, 'image', 'info', 'srca', '--data', data, '--json'], { encoding: 'utf8' })).meta.partitionTable.partitions;
    const srcB = JSON.parse(execFileSync(process.execPath, [CLI, 'image', 'info', 'srcb', '--data', data, '--json'], { encoding: 'utf8' })).meta.partitionTable.partitions;
    const from = [[join(dir, 'a.raw'), src[0]], [join(dir, 'a.raw'), src[1]], [join(dir, 'b.raw'), srcB[0]]];
    const out = join(dir, 'new.raw');
    const dd = s.table.partitions
      .map((p, i) => `dd if=${from[i][0]} of=${out} bs=4M iflag=skip_bytes,count_bytes oflag=seek_bytes skip=${from[i][1].start} seek=${p.start} count=${p.size} conv=notrunc,sparse status=none`)
      .join('\n');
    const sg = s.table.partitions.map((p, i) => `-n${i + 1}:${p.start / 512}:${(p.start + p.size) / 512 - 1} -t${i + 1}:${['ef00', '8300', '0700'][i]}`).join(' ');
    rmSync(join(dir, 'a.raw'), { force: true });
    rmSync(join(dir, 'b.raw'), { force: true });
    rmSync(out, { force: true });
    const h = timed(`${cc(`image export srca ${join(dir, 'a.raw')} --json`)} >/dev/null
${cc(`image export srcb ${join(dir, 'b.raw')} --json`)} >/dev/null
truncate -s ${s.diskSize} ${out}
${dd}
sgdisk ${sg} ${out} >/dev/null
${cc(`image import ${out} byhand --json`)}`);
    byHand.push({ ...h, newBytes: JSON.parse(h.stdout.slice(h.stdout.indexOf('{'))).newBytes });
  }
  const m = (xs, k) => median(xs.map((x) => x[k]));
  const f = (x) => x.toFixed(2);
  console.log(`assemble: a ${(ours[0].diskSize / 2 ** 30).toFixed(2)} GiB disk from 3 ${UNALIGNED ? 'partitions (2 aligned; the last, the largest, at sector 63)' : 'aligned partitions'} of 2 stored images (${ours[0].chunks} chunks), ${RUNS} runs, medians`);
  console.log(`  baseline by hand (export both, dd, sgdisk, import): ${f(m(byHand, 'seconds'))} s, CPU ${f(m(byHand, 'cpu'))} s, peak ${m(byHand, 'peakMiB').toFixed(0)} MiB, new in the store ${(m(byHand, 'newBytes') / 1024).toFixed(1)} KiB`);
  console.log(`  image assemble:                                     ${f(m(ours, 'seconds'))} s, CPU ${f(m(ours, 'cpu'))} s, peak ${m(ours, 'peakMiB').toFixed(0)} MiB, new in the store ${(m(ours, 'newBytes') / 1024).toFixed(1)} KiB, ${m(ours, 'reused')} of ${ours[0].chunks} chunk records reused`);
  console.log(`  ratio (baseline / assemble): ${f(m(byHand, 'seconds') / m(ours, 'seconds'))}x wall, ${f(m(byHand, 'cpu') / m(ours, 'cpu'))}x CPU`);
  console.log(`  runs: assemble ${ours.map((x) => f(x.seconds)).join(', ')} s; by hand ${byHand.map((x) => f(x.seconds)).join(', ')} s`);
  // Only the first run stores new chunks (later runs find them in the store), and its caches are cold.
  console.log(`  first run: assemble ${f(ours[0].seconds)} s, new ${(ours[0].newBytes / MiB).toFixed(1)} MiB; by hand ${f(byHand[0].seconds)} s, new ${(byHand[0].newBytes / MiB).toFixed(1)} MiB`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
