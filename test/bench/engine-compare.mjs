// Engine before/after: the same multicast cells run with two builds of
// clonecast (an old dist/ and this one), interleaved in one run, so that a
// change to the transfer engine can be checked against the build before it
// on the same machine at the same time. Needs root (network namespaces).
//
//   node test/bench/engine-compare.mjs --old /tmp/engine-before-dist [--mib 256] [--rounds 3]
//
// Cells: 4 receivers through a 100 mbit link (sender at 95 Mbit/s; wire-bound)
// and 4 receivers with no link limit (CPU-bound on 2 cores). Prints each run,
// then per cell the median seconds of each build and new/old.
import { cpSync, existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, copyFileSync, statSync } from 'node:fs';
import { execFileSync, spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { makeImage } from './mkimage.mjs';
import { Lab } from '../../dist/server/lab/netns.js';

const ROOT = resolve(import.meta.dirname, '..', '..');
const MiB = 1 << 20;
const { values } = parseArgs({ options: { old: { type: 'string' }, mib: { type: 'string', default: '256' }, rounds: { type: 'string', default: '3' } } });
if (values.old === undefined || !existsSync(join(values.old, 'server', 'cli', 'main.js'))) throw new Error('--old DIR: a dist/ folder of the build to compare with');
if (process.getuid() !== 0) throw new Error('needs root (network namespaces)');
const work = mkdtempSync(join(process.env.CLONECAST_BENCH_TMP ?? tmpdir(), 'clonecast-engine-'));

/** A project root around an old dist/: its own bin/ and dist/, this project's node_modules and native addon. */
function rootFor(dist) {
  const root = join(work, 'old-root');
  mkdirSync(join(root, 'bin'), { recursive: true });
  cpSync(dist, join(root, 'dist'), { recursive: true });
  copyFileSync(join(ROOT, 'bin', 'clonecast'), join(root, 'bin', 'clonecast'));
  copyFileSync(join(ROOT, 'package.json'), join(root, 'package.json'));
  symlinkSync(join(ROOT, 'node_modules'), join(root, 'node_modules'));
  symlinkSync(join(ROOT, 'native'), join(root, 'native'));
  return root;
}

const builds = { old: join(rootFor(resolve(values.old)), 'bin', 'clonecast'), new: join(ROOT, 'bin', 'clonecast') };

/** One session: a sender and n receivers in the lab; resolves with the session's seconds (last receiver done). */
async function session(cli, data, n, rateMbit, sendRate) {
  const lab = Lab.up({ clients: n, rateMbit });
  try {
    const t0 = performance.now();
    const sender = lab.spawnIn(lab.server.ns, process.execPath, [cli, 'send', 'bench', '--data', data, '--address', lab.server.address, '--clients', String(n), '--rate', String(sendRate), '--json']);
    let err = '';
    // "receivers run:" comes last; a build with authentication prints a key file before it.
    const [url, keyArgs] = await new Promise((res, rej) => {
      sender.stderr.on('data', (d) => {
        err += d;
        const m = /session: (\S+)/.exec(err);
        const k = /key file: (\S+)/.exec(err);
        if (m && /receivers run:/.test(err)) res([m[1], k ? ['--key-file', k[1]] : []]);
      });
      sender.on('close', () => rej(new Error(`sender exited: ${err}`)));
    });
    const senderDone = new Promise((res) => sender.on('close', (code) => res(code)));
    const ends = await Promise.all(
      lab.clients.slice(0, n).map((c, k) => new Promise((res) => {
        const out = join(work, `r${k}.img`);
        const child = lab.spawnIn(c.ns, process.execPath, [cli, 'receive', '--from', url, ...keyArgs, '--disk', out, '--address', c.address, '--json']);
        let e = '';
        child.stderr.on('data', (d) => (e += d));
        child.on('close', (code) => {
          rmSync(out, { force: true });
          res({ code, ms: performance.now() - t0, e });
        });
      })),
    );
    const code = await senderDone;
    const bad = ends.find((x) => x.code !== 0);
    if (bad !== undefined || code !== 0) throw new Error(`a session failed: sender ${code}, receiver ${bad?.code}: ${bad?.e ?? err}`);
    return Math.max(...ends.map((x) => x.ms)) / 1000;
  } finally {
    lab.down();
  }
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

try {
  const mib = Number(values.mib);
  const raw = join(work, 'image.raw');
  makeImage(raw, mib, { dense: true, seed: 3 });
  const data = join(work, 'store');
  execFileSync(process.execPath, [builds.new, 'image', 'import', raw, 'bench', '--data', data, '--json'], { stdio: 'ignore' });
  rmSync(raw);
  console.log(`engine before/after, ${new Date().toISOString()}, ${mib} MiB image, ${values.rounds} rounds, old ${values.old}`);
  const cells = [
    { name: '100 mbit, N=4', n: 4, rateMbit: 100, sendRate: 95 },
    { name: 'no link limit, N=4', n: 4, rateMbit: undefined, sendRate: 4000 },
  ];
  const summary = [];
  for (const cell of cells) {
    const times = { old: [], new: [] };
    for (let r = 0; r < Number(values.rounds); r++) {
      // Alternate which build goes first, so that neither always runs on a warmer machine.
      for (const which of r % 2 === 0 ? ['old', 'new'] : ['new', 'old']) {
        const s = await session(builds[which], data, cell.n, cell.rateMbit, cell.sendRate);
        times[which].push(s);
        console.log(`  ${cell.name.padEnd(20)} round ${r + 1} ${which.padEnd(3)} ${s.toFixed(2)} s  ${(mib / s).toFixed(1)} MiB/s per receiver`);
      }
    }
    const o = median(times.old);
    const n = median(times.new);
    summary.push({ cell: cell.name, oldSeconds: o, newSeconds: n, ratio: n / o, old: times.old, new: times.new });
    console.log(`${cell.name}: old ${o.toFixed(2)} s, new ${n.toFixed(2)} s (medians), new/old ${(n / o).toFixed(3)}`);
  }
  console.log(`JSON ${JSON.stringify(summary)}`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
