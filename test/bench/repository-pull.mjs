// Pull of the 1 GiB benchmark image (test/bench/mkimage.mjs) from an image
// repository on a real S3 server (OpenStack Swift with s3api, test/swift-lab.mjs)
// into an empty edge cache, against a plain S3 client downloading the same
// objects in the same run:
//   clonecast: `clonecast image pull pc --data EMPTY` (fetch, check SHA-256 of every chunk, store, publish)
//   baseline:  `s3cmd get --recursive s3://BUCKET/PREFIX/chunks/ DIR/` (the same chunk objects, unchecked)
// Each pair runs RUNS times, alternating; medians of wall and CPU seconds
// (user+sys), peak RSS, and the ratio baseline/clonecast (goal >= 0.8x).
// Then a second version (a few MiB changed) is pushed and pulled into the
// full cache: it must fetch exactly the chunks the push uploaded.
// Run under `flock /tmp/cc-lab.lock`:
//   node test/bench/repository-pull.mjs [SIZE_MIB=1024] [RUNS=3]
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, openSync, rmSync, writeFileSync, writeSync, closeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { startSwift } from '../swift-lab.mjs';

const ROOT = resolve(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'bin', 'clonecast');
const size = Number(process.argv[2] ?? 1024);
const runs = Number(process.argv[3] ?? 3);
const dir = mkdtempSync(join(process.env.CLONECAST_TEST_TMP ?? tmpdir(), 'cc-repobench-'));
const central = join(dir, 'central');
const edge = join(dir, 'edge');
const down = join(dir, 'download');
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const f = (x) => x.toFixed(2);

/** Runs a command under /usr/bin/time: wall and CPU seconds, peak RSS in MiB, stdout. */
function timed(cmd, args, env) {
  const r = spawnSync('/usr/bin/time', ['-f', 'TIMES %e %U %S %M', cmd, ...args], { encoding: 'utf8', env, maxBuffer: 64 << 20 });
  const m = /TIMES (\S+) (\S+) (\S+) (\S+)/.exec(r.stderr);
  if (r.status !== 0 || m === null) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status}): ${r.stderr.slice(-2000)}`);
  return { wall: Number(m[1]), cpu: Number(m[2]) + Number(m[3]), peakMiB: Number(m[4]) / 1024, stdout: r.stdout };
}

const swift = await startSwift({ dir: join(dir, 'swift') });
// Ctrl-C or a kill: the Swift servers this script started go with it.
for (const sig of ['SIGINT', 'SIGTERM']) process.once(sig, () => void swift.stop().finally(() => process.exit(130)));
try {
  const env = { ...process.env, AWS_ACCESS_KEY_ID: swift.accessKey, AWS_SECRET_ACCESS_KEY: swift.secretKey, AWS_REGION: swift.region };
  const host = new URL(swift.endpoint).host;
  const s3cfg = join(dir, 's3cfg');
  writeFileSync(s3cfg, `[default]\naccess_key = ${swift.accessKey}\nsecret_key = ${swift.secretKey}\nhost_base = ${host}\nhost_bucket = ${host}\nuse_https = False\nsignature_v2 = False\nbucket_location = ${swift.region}\n`, { mode: 0o600 });
  execFileSync('s3cmd', ['-c', s3cfg, 'mb', 's3://ccbench'], { stdio: 'ignore' });
  const repo = ['--repository', 's3://ccbench/district', '--endpoint', swift.endpoint];

  const raw = join(dir, 'bench.raw');
  execFileSync(process.execPath, [join(ROOT, 'test', 'bench', 'mkimage.mjs'), raw, String(size)], { stdio: 'ignore' });
  execFileSync(CLI, ['image', 'import', raw, 'pc', '--data', central], { stdio: 'ignore' });
  const pushed = JSON.parse(execFileSync(CLI, ['image', 'push', 'pc', ...repo, '--data', central, '--json'], { env, encoding: 'utf8' }));
  console.log(`repository pull: ${size} MiB benchmark image, ${pushed.chunks} chunks, ${(pushed.uploadedBytes / 2 ** 20).toFixed(1)} MiB stored, on ${swift.endpoint} (Swift with s3api); ${runs} runs each, alternating`);

  const ours = [];
  const base = [];
  for (let i = 0; i < runs; i++) {
    rmSync(down, { recursive: true, force: true });
    mkdirSync(down);
    base.push(timed('s3cmd', ['-c', s3cfg, '--no-progress', '--quiet', 'get', '--recursive', 's3://ccbench/district/chunks/', `${down}/`], env));
    rmSync(edge, { recursive: true, force: true });
    const r = timed(CLI, ['image', 'pull', 'pc', ...repo, '--data', edge, '--json'], env);
    const j = JSON.parse(r.stdout);
    if (j.fetched !== pushed.chunks) throw new Error(`pull fetched ${j.fetched} chunks, expected ${pushed.chunks}`);
    ours.push(r);
  }
  const m = (xs, k) => median(xs.map((x) => x[k]));
  const mib = pushed.uploadedBytes / 2 ** 20;
  console.log(`  baseline s3cmd get --recursive (same objects):  ${f(m(base, 'wall'))} s (${f(mib / m(base, 'wall'))} MiB/s), CPU ${f(m(base, 'cpu'))} s, peak ${m(base, 'peakMiB').toFixed(0)} MiB`);
  console.log(`  clonecast image pull (checked, stored):         ${f(m(ours, 'wall'))} s (${f(mib / m(ours, 'wall'))} MiB/s), CPU ${f(m(ours, 'cpu'))} s, peak ${m(ours, 'peakMiB').toFixed(0)} MiB`);
  const ratio = m(base, 'wall') / m(ours, 'wall');
  console.log(`  ratio baseline/clonecast: ${f(ratio)}x (goal >= 0.8x) ${ratio >= 0.8 ? 'ok' : 'MISSED'}`);
  console.log(`  runs: baseline ${base.map((x) => f(x.wall)).join(' ')}; clonecast ${ours.map((x) => f(x.wall)).join(' ')}`);

  // A new version: 24 scattered MiB rewritten.
  const fd = openSync(raw, 'r+');
  for (let k = 0; k < 24; k++) writeSync(fd, randomBytes(1 << 20), 0, 1 << 20, Math.floor(((k + 0.5) * size) / 24) * (1 << 20));
  closeSync(fd);
  execFileSync(CLI, ['image', 'import', raw, 'pc', '--data', central], { stdio: 'ignore' });
  const p2 = JSON.parse(execFileSync(CLI, ['image', 'push', 'pc', ...repo, '--data', central, '--json'], { env, encoding: 'utf8' }));
  const r2 = timed(CLI, ['image', 'pull', 'pc', ...repo, '--data', edge, '--json'], env);
  const j2 = JSON.parse(r2.stdout);
  const same = j2.fetched === p2.uploaded && j2.fetchedBytes === p2.uploadedBytes;
  console.log(`  second version: the push uploaded ${p2.uploaded} new chunks (${(p2.uploadedBytes / 2 ** 20).toFixed(1)} MiB); the pull into the full cache fetched ${j2.fetched} chunks (${(j2.fetchedBytes / 2 ** 20).toFixed(1)} MiB) of ${j2.chunks}, in ${f(r2.wall)} s: ${same ? 'only the new chunks' : 'MISMATCH'}`);
  if (ratio < 0.8 || !same) process.exitCode = 1;
} finally {
  await swift.stop();
  rmSync(dir, { recursive: true, force: true });
}
