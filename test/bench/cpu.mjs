// CPU per GiB per process: udpcast with zstd through --pipe, clonecast as built
// before a change (--before DIR: a copy of that build's dist/ and native/build/)
// and clonecast as built now, on the same image in the same lab, interleaved
// (the order rotates per round). Needs root, udpcast and zstd.
//
//   node test/bench/cpu.mjs --before /tmp/before [--mib 128] [--n 4] [--rounds 3] [--cells none,100]
//
// For each process: CPU seconds (user + system, /usr/bin/time) per GiB of the
// disk image: the sender per copy it serves, each receiver per disk it writes.
// Cells: "none" (no link limit, clonecast --rate 4000; CPU-bound) and "100" (the
// server's link at 100 mbit by tbf, both tools at 95 Mbit/s). Prints each run,
// then per cell the medians and the ratios against udpcast+zstd and the old build.
import { cpSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, copyFileSync } from 'node:fs';
import { execFileSync, spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { makeImage } from './mkimage.mjs';
import { Lab } from '../../dist/server/lab/netns.js';

const ROOT = resolve(import.meta.dirname, '..', '..');
const GiB = 2 ** 30;
const { values } = parseArgs({
  options: {
    before: { type: 'string' },
    mib: { type: 'string', default: '128' },
    n: { type: 'string', default: '4' },
    rounds: { type: 'string', default: '3' },
    cells: { type: 'string', default: 'none,100' },
  },
});
if (values.before === undefined || !existsSync(join(values.before, 'dist', 'cli', 'main.js')) || !existsSync(join(values.before, 'native', 'build', 'Release'))) {
  throw new Error('--before DIR: a folder holding dist/ and native/build/ of the build to compare with');
}
if (process.getuid() !== 0) throw new Error('needs root (network namespaces)');
for (const cmd of ['udp-sender', 'udp-receiver', 'zstd']) {
  if (spawnSync('sh', ['-c', `command -v ${cmd}`]).status !== 0) throw new Error(`needs ${cmd}: apt-get install udpcast zstd`);
}
const work = mkdtempSync(join(process.env.CLONECAST_BENCH_TMP ?? tmpdir(), 'clonecast-cpu-'));

/** A project root around the old build: its dist/ and native addon, this project's node_modules. */
function rootFor(dir) {
  const root = join(work, 'before-root');
  mkdirSync(join(root, 'bin'), { recursive: true });
  mkdirSync(join(root, 'native'), { recursive: true });
  cpSync(join(dir, 'dist'), join(root, 'dist'), { recursive: true });
  cpSync(join(dir, 'native', 'build'), join(root, 'native', 'build'), { recursive: true });
  copyFileSync(join(ROOT, 'native', 'binding.gyp'), join(root, 'native', 'binding.gyp'));
  copyFileSync(join(ROOT, 'bin', 'clonecast'), join(root, 'bin', 'clonecast'));
  copyFileSync(join(ROOT, 'package.json'), join(root, 'package.json'));
  symlinkSync(join(ROOT, 'node_modules'), join(root, 'node_modules'));
  return join(root, 'bin', 'clonecast');
}

/** Runs argv under /usr/bin/time in namespace ns; resolves with exit code, CPU seconds, peak RSS and stderr. */
function timed(lab, ns, argv, onErr) {
  return new Promise((res) => {
    const child = lab.spawnIn(ns, '/usr/bin/time', ['-f', 'TIME %e %U %S %M', ...argv]);
    let err = '';
    child.stdout.on('data', () => {});
    child.stderr.on('data', (d) => {
      err += d;
      onErr?.(err);
    });
    child.on('close', (code) => {
      const m = /TIME ([\d.]+) ([\d.]+) ([\d.]+) (\d+)/.exec(err);
      res({ code, cpu: m ? Number(m[2]) + Number(m[3]) : NaN, rssMiB: m ? Number(m[4]) / 1024 : NaN, err });
    });
  });
}

async function clonecast(cli, lab, data, n, rate) {
  let ready;
  const got = new Promise((r) => (ready = r));
  const sender = timed(lab, lab.server.ns, [process.execPath, cli, 'send', 'bench', '--data', data, '--address', lab.server.address, '--clients', String(n), '--rate', String(rate), '--json'], (err) => {
    const m = /session: (\S+)/.exec(err);
    const k = /key file: (\S+)/.exec(err);
    if (m && k) ready([m[1], k[1]]);
  });
  const [url, keyFile] = await Promise.race([got, sender.then((s) => Promise.reject(new Error(`sender exited: ${s.err}`)))]);
  const outs = lab.clients.slice(0, n).map((_, k) => join(work, `cc-${k}.img`));
  const receivers = await Promise.all(outs.map((out, k) => timed(lab, lab.clients[k].ns, [process.execPath, cli, 'receive', '--from', url, '--key-file', keyFile, '--disk', out, '--address', lab.clients[k].address, '--json'])));
  return { sender: await sender, receivers, outs };
}

async function udpcastZstd(lab, zst, n, rate) {
  const port = String(9200 + Math.floor(Math.random() * 100) * 2);
  const args = ['udp-sender', '--file', zst, '--interface', 'eth0', '--min-receivers', String(n), '--nokbd', '--portbase', port, '--mcast-rdv-address', '239.77.1.1'];
  if (rate !== undefined) args.push('--max-bitrate', `${rate}m`);
  const sender = timed(lab, lab.server.ns, args);
  const outs = lab.clients.slice(0, n).map((_, k) => join(work, `udp-${k}.img`));
  const receivers = await Promise.all(outs.map((out, k) => timed(lab, lab.clients[k].ns, ['udp-receiver', '--file', out, '--interface', 'eth0', '--nokbd', '--portbase', port, '--mcast-rdv-address', '239.77.1.1', '--pipe', 'zstd -d -q'])));
  return { sender: await sender, receivers, outs };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

try {
  const mib = Number(values.mib);
  const n = Number(values.n);
  const raw = join(work, 'image.raw');
  makeImage(raw, mib, { dense: true, seed: 3 });
  const size = statSync(raw).size;
  const zst = `${raw}.zst`;
  execFileSync('zstd', ['-q', '-1', '-T0', raw, '-o', zst]);
  const data = join(work, 'store');
  execFileSync(process.execPath, [join(ROOT, 'bin', 'clonecast'), 'image', 'import', raw, 'bench', '--data', data, '--json'], { stdio: 'ignore' });
  const tools = {
    'udpcast+zstd': (lab, cell) => udpcastZstd(lab, zst, n, cell.link ? cell.rate : undefined),
    'clonecast before': (lab, cell) => clonecast(before, lab, data, n, cell.rate),
    'clonecast now': (lab, cell) => clonecast(join(ROOT, 'bin', 'clonecast'), lab, data, n, cell.rate),
  };
  const before = rootFor(resolve(values.before));
  const names = Object.keys(tools);
  console.log(`CPU per GiB, ${new Date().toISOString()}, ${mib} MiB image (zstd -1: ${(statSync(zst).size / 2 ** 20).toFixed(1)} MiB), N=${n}, ${values.rounds} rounds, before = ${values.before}`);
  const all = { none: { name: 'no link limit', link: undefined, rate: 4000 }, 100: { name: '100 mbit', link: 100, rate: 95 } };
  const summary = [];
  for (const key of values.cells.split(',')) {
    const cell = all[key];
    if (cell === undefined) throw new Error(`unknown cell ${key}: none or 100`);
    const got = Object.fromEntries(names.map((t) => [t, []]));
    for (let r = 0; r < Number(values.rounds); r++) {
      const order = names.map((_, i) => names[(i + r) % names.length]);
      for (const tool of order) {
        const lab = Lab.up({ clients: n, rateMbit: cell.link });
        const t0 = performance.now();
        let run;
        try {
          run = await tools[tool](lab, cell);
        } finally {
          lab.down();
        }
        const seconds = (performance.now() - t0) / 1000;
        const ok = run.receivers.every((x) => x.code === 0) && run.outs.every((o) => spawnSync('cmp', [o, raw]).status === 0);
        for (const o of run.outs) rmSync(o, { force: true });
        if (!ok) throw new Error(`${tool}: a receiver failed or wrote a different disk: ${run.receivers.map((x) => x.err).join('\n')}`);
        const x = { seconds, sender: run.sender.cpu / (size / GiB), receivers: run.receivers.map((v) => v.cpu / (size / GiB)), rss: Math.max(...run.receivers.map((v) => v.rssMiB)) };
        got[tool].push(x);
        console.log(`  ${cell.name.padEnd(14)} round ${r + 1} ${tool.padEnd(17)} ${seconds.toFixed(2).padStart(6)} s  cpu s/GiB sender ${x.sender.toFixed(2)}  receivers ${x.receivers.map((v) => v.toFixed(2)).join(' ')}`);
      }
    }
    const med = Object.fromEntries(names.map((t) => {
      const runs = got[t];
      const recv = runs.flatMap((x) => x.receivers);
      return [t, { seconds: median(runs.map((x) => x.seconds)), sender: median(runs.map((x) => x.sender)), receiver: median(recv), receiverMax: median(runs.map((x) => Math.max(...x.receivers))) }];
    }));
    console.log(`${cell.name}, N=${n}: medians, CPU s per GiB of image`);
    for (const t of names) {
      const m = med[t];
      console.log(`  ${t.padEnd(17)} ${m.seconds.toFixed(2).padStart(6)} s  sender ${m.sender.toFixed(2)}  each receiver ${m.receiver.toFixed(2)} (highest per run ${m.receiverMax.toFixed(2)})`);
    }
    const now = med['clonecast now'];
    const was = med['clonecast before'];
    const udp = med['udpcast+zstd'];
    console.log(`  now/before: sender ${(now.sender / was.sender).toFixed(2)}, receiver ${(now.receiver / was.receiver).toFixed(2)}; now/udpcast+zstd: sender ${(now.sender / udp.sender).toFixed(2)}, receiver ${(now.receiver / udp.receiver).toFixed(2)} (goal: receiver ≤ 1)`);
    summary.push({ cell: cell.name, n, medians: med, runs: got });
  }
  console.log(`JSON ${JSON.stringify(summary)}`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
