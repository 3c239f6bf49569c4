// Virtual disk export and import against qemu-img in the same run, on the
// 1 GiB benchmark image (test/bench/mkimage.mjs):
//   export: `clonecast image export pc qcow2` (qemu-img convert reading the NBD export)
//           vs `qemu-img convert -O qcow2` from the raw file;
//   import: `clonecast image import pc.qcow2` (qemu-nbd + the NBD client + the chunk pipeline)
//           vs `qemu-img convert -O raw` of that qcow2 to a file.
// Each pair runs RUNS times, alternating; medians of wall seconds and CPU
// seconds (user+sys of the children), and the ratio baseline/ours (>= 0.8 is the goal).
// Run under `flock /tmp/cc-lab.lock`.
//   node test/bench/virtual-disks.mjs [SIZE_MIB=1024] [RUNS=3]
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'bin', 'clonecast');
const size = Number(process.argv[2] ?? 1024);
const runs = Number(process.argv[3] ?? 3);
const dir = mkdtempSync(join(process.env.CLONECAST_TEST_TMP ?? tmpdir(), 'cc-vdbench-'));
const data = join(dir, 'data');
const env = { ...process.env, CLONECAST_DATA: data };

/** CPU seconds of every child waited for so far: cutime + cstime of /proc/self/stat (ticks of 1/100 s). */
function childCpu() {
  const fields = readFileSync('/proc/self/stat', 'utf8').split(') ')[1].split(' ');
  return (Number(fields[13]) + Number(fields[14])) / 100;
}

/** Runs one command after cleanup; its wall and CPU seconds. */
function measure(cmd, args, cleanup) {
  cleanup?.();
  const c0 = childCpu();
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { env, stdio: ['ignore', 'ignore', 'pipe'] });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  return { wall: (performance.now() - t0) / 1000, cpu: childCpu() - c0 };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
try {
  const raw = join(dir, 'bench.raw');
  execFileSync(process.execPath, [join(ROOT, 'test', 'bench', 'mkimage.mjs'), raw, String(size)], { stdio: 'ignore' });
  execFileSync(CLI, ['image', 'import', raw, 'pc'], { env, stdio: 'ignore' });
  const rows = { exportOurs: [], exportBase: [], importOurs: [], importBase: [], exportRaw: [], importRaw: [] };
  const rr = join(dir, 'direct.raw');
  const q1 = join(dir, 'ours.qcow2');
  const q2 = join(dir, 'base.qcow2');
  const r2 = join(dir, 'back.raw');
  for (let i = 0; i < runs; i++) {
    rows.exportBase.push(measure('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, q2], () => rmSync(q2, { force: true })));
    rows.exportOurs.push(measure(CLI, ['image', 'export', 'pc@1', q1, '--format', 'qcow2'], () => rmSync(q1, { force: true })));
    rows.importBase.push(measure('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', q1, r2], () => rmSync(r2, { force: true })));
    rows.importOurs.push(measure(CLI, ['image', 'import', q1, `pc${i}`], undefined));
    // clonecast's own direct raw paths, for the cost of going through qemu and NBD.
    rows.exportRaw.push(measure(CLI, ['image', 'export', 'pc@1', rr], () => rmSync(rr, { force: true })));
    rows.importRaw.push(measure(CLI, ['image', 'import', raw, `raw${i}`], undefined));
  }
  const same = spawnSync('qemu-img', ['compare', q1, raw], { encoding: 'utf8' }).stdout.trim();
  const line = (what, ours, base) => {
    const o = median(ours.map((r) => r.wall));
    const b = median(base.map((r) => r.wall));
    console.log(`${what.padEnd(8)} clonecast ${o.toFixed(2)} s (cpu ${median(ours.map((r) => r.cpu)).toFixed(2)} s)   baseline ${b.toFixed(2)} s (cpu ${median(base.map((r) => r.cpu)).toFixed(2)} s)   ratio baseline/clonecast ${(b / o).toFixed(2)}x`);
  };
  console.log(`virtual disks: ${size} MiB benchmark image, ${runs} runs each, medians; export check: ${same}`);
  line('export', rows.exportOurs, rows.exportBase);
  line('import', rows.importOurs, rows.importBase);
  console.log('against clonecast\'s own raw paths (decode+check, or hash+compress+store, without qemu and NBD):');
  line('export', rows.exportOurs, rows.exportRaw);
  line('import', rows.importOurs, rows.importRaw);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
