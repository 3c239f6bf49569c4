// Multicast benchmark: clonecast against udpcast in the network-namespace
// lab, same image, same links, one script run. Needs root, udpcast, zstd, pv.
//
//   node test/bench/mcast.mjs            (all cells, ~15 minutes)
//   node test/bench/mcast.mjs --quick    (64 MiB images, fewer cells)
//   node test/bench/mcast.mjs --auth     (only the authentication cells: clonecast with
//                                         packet MACs on, the default, against the same build
//                                         with them off, and with --encrypt; --quick for smaller
//                                         images, --cells wire,cpu1,cpu4 and --runs N to choose)
//
// udpcast runs two ways: the raw image, and the image compressed with zstd
// ahead of time and decompressed by each receiver through --pipe (as
// Clonezilla does); clonecast is compared with the faster of the two.
// Wire-bound cells limit the server's link to 100 mbit (both tools are given
// a 95 Mbit/s maximum rate); CPU-bound cells have no limit.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { makeImage } from './mkimage.mjs';
import { Lab } from '../../dist/server/lab/netns.js';

const ROOT = resolve(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'bin', 'clonecast');
const quick = process.argv.includes('--quick');
const MiB = 1 << 20;
const work = mkdtempSync(join(process.env.CLONECAST_BENCH_TMP ?? tmpdir(), 'clonecast-mcast-'));
const results = [];

function check() {
  const needs = process.argv.includes('--auth') ? ['zstd'] : ['udp-sender', 'udp-receiver', 'zstd', 'pv'];
  for (const cmd of needs) {
    if (spawnSync('sh', ['-c', `command -v ${cmd}`]).status !== 0) throw new Error(`needs ${cmd}: apt-get install udpcast zstd pv`);
  }
  if (process.getuid() !== 0) throw new Error('needs root (network namespaces)');
}

/** Runs argv under /usr/bin/time inside namespace ns; resolves with wall, cpu and peak memory. */
function timedIn(lab, ns, argv, t0, env = process.env) {
  return new Promise((resolvePromise) => {
    const child = lab.spawnIn(ns, '/usr/bin/time', ['-f', 'TIME %e %U %S %M', ...argv], { env });
    let err = '';
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('close', (code) => {
      const m = /TIME ([\d.]+) ([\d.]+) ([\d.]+) (\d+)/.exec(err);
      resolvePromise({ code, ended: performance.now() - t0, cpu: m ? Number(m[2]) + Number(m[3]) : NaN, rssMiB: m ? Number(m[4]) / 1024 : NaN, err, out });
    });
  });
}

async function clonecast(lab, data, n, { rate, slow, imageBytes, unauthenticated = false, encrypt = false }) {
  const t0 = performance.now();
  // The benchmark-only switch (cli/transfer.ts): no MACs sent or checked, in sender and receivers alike.
  const env = { ...process.env, CLONECAST_BENCH_UNAUTHENTICATED: unauthenticated ? '1' : '0' };
  const senderArgs = [process.execPath, CLI, 'send', 'bench', '--data', data, '--address', lab.server.address, '--clients', String(n), '--rate', String(rate), '--json', ...(encrypt ? ['--encrypt'] : [])];
  const child = lab.spawnIn(lab.server.ns, '/usr/bin/time', ['-f', 'TIME %e %U %S %M', ...senderArgs], { env });
  let err = '';
  const [url, keyFile] = await new Promise((res) => child.stderr.on('data', (d) => {
    err += d;
    const m = /session: (\S+)/.exec(err);
    const k = /key file: (\S+)/.exec(err);
    if (m && k) res([m[1], k[1]]);
  }));
  const senderDone = new Promise((res) => child.on('close', () => {
    const m = /TIME ([\d.]+) ([\d.]+) ([\d.]+) (\d+)/.exec(err);
    res({ ended: performance.now() - t0, cpu: Number(m[2]) + Number(m[3]), rssMiB: Number(m[4]) / 1024 });
  }));
  const outs = lab.clients.slice(0, n).map((_, k) => join(work, `cc-${k}.img`));
  const receivers = await Promise.all(
    outs.map((out, k) => {
      const extra = slow && k === n - 1 ? ['--write-limit', String(2 * MiB)] : [];
      return timedIn(lab, lab.clients[k].ns, [process.execPath, CLI, 'receive', '--from', url, '--key-file', keyFile, '--disk', out, '--address', lab.clients[k].address, '--json', ...extra], t0, env);
    }),
  );
  const sender = await senderDone;
  return { sender, receivers, outs };
}

async function udpcast(lab, file, n, { zstd, rate, slow }) {
  const t0 = performance.now();
  const port = String(9200 + Math.floor(Math.random() * 100) * 2);
  const senderArgs = ['udp-sender', '--file', file, '--interface', 'eth0', '--min-receivers', String(n), '--nokbd', '--portbase', port, '--mcast-rdv-address', '239.77.1.1'];
  if (rate !== undefined) senderArgs.push('--max-bitrate', `${rate}m`);
  const senderDone = timedIn(lab, lab.server.ns, senderArgs, t0);
  const outs = lab.clients.slice(0, n).map((_, k) => join(work, `udp-${k}.img`));
  const receivers = await Promise.all(
    outs.map((out, k) => {
      const stages = [zstd ? 'zstd -d -q' : '', slow && k === n - 1 ? 'pv -q -L 2m' : ''].filter(Boolean);
      const args = ['udp-receiver', '--file', out, '--interface', 'eth0', '--nokbd', '--portbase', port, '--mcast-rdv-address', '239.77.1.1'];
      // udp-receiver splits --pipe on spaces and runs it without a shell: a pipeline goes in a script.
      if (stages.length === 1) args.push('--pipe', stages[0]);
      if (stages.length > 1) {
        const script = join(work, `pipe-${k}.sh`);
        writeFileSync(script, `#!/bin/sh\n${stages.join(' | ')}\n`, { mode: 0o755 });
        args.push('--pipe', script);
      }
      return timedIn(lab, lab.clients[k].ns, args, t0);
    }),
  );
  const sender = await senderDone;
  return { sender, receivers, outs };
}

function same(outs, raw) {
  return outs.every((o) => spawnSync('cmp', [o, raw]).status === 0);
}

async function cell(name, { n, loss, rateLimit, sendRate, raw, zst, data, slow }) {
  const size = statSync(raw).size;
  const row = { name, n };
  for (const [tool, fn] of [
    ['clonecast', (lab) => clonecast(lab, data, n, { rate: sendRate ?? 4000, slow })],
    ['udpcast raw', (lab) => udpcast(lab, raw, n, { zstd: false, rate: rateLimit ? sendRate : undefined, slow })],
    ['udpcast zstd', (lab) => udpcast(lab, zst, n, { zstd: true, rate: rateLimit ? sendRate : undefined, slow })],
  ]) {
    const lab = Lab.up({ clients: n, loss, rateMbit: rateLimit });
    try {
      const r = await fn(lab);
      const session = Math.max(...r.receivers.map((x) => x.ended)) / 1000;
      const others = slow ? Math.max(...r.receivers.slice(0, n - 1).map((x) => x.ended)) / 1000 : session;
      const ok = same(r.outs, raw) && r.receivers.every((x) => x.code === 0);
      row[tool] = {
        seconds: session,
        othersSeconds: others,
        goodputMiBs: size / MiB / session,
        senderCpuPerGiB: r.sender.cpu / ((size * n) / 2 ** 30),
        receiverCpuPerGiB: r.receivers.reduce((a, x) => a + x.cpu, 0) / ((size * n) / 2 ** 30),
        senderRssMiB: r.sender.rssMiB,
        receiverRssMiB: Math.max(...r.receivers.map((x) => x.rssMiB)),
        ok,
      };
      for (const o of r.outs) rmSync(o, { force: true });
    } finally {
      lab.down();
    }
  }
  results.push(row);
  print(row);
}

function print(row) {
  const c = row.clonecast;
  const raw = row['udpcast raw'];
  const z = row['udpcast zstd'];
  const best = Math.min(raw.seconds, z.seconds);
  console.log(`\n${row.name} (N=${row.n})`);
  for (const [tool, r] of [['clonecast', c], ['udpcast raw', raw], ['udpcast zstd', z]]) {
    console.log(
      `  ${tool.padEnd(13)} ${r.seconds.toFixed(1).padStart(6)} s  ${r.goodputMiBs.toFixed(1).padStart(6)} MiB/s per receiver` +
        (r.othersSeconds !== r.seconds ? `  (the ${row.n - 1} others done at ${r.othersSeconds.toFixed(1)} s)` : '') +
        `  cpu s/GiB sender ${r.senderCpuPerGiB.toFixed(2)} receivers ${r.receiverCpuPerGiB.toFixed(2)}  peak RSS sender ${r.senderRssMiB.toFixed(0)} MiB, receiver ${r.receiverRssMiB.toFixed(0)} MiB  ${r.ok ? 'identical' : 'OUTPUT DIFFERS'}`,
    );
  }
  console.log(`  ratio vs faster udpcast: ${(best / c.seconds).toFixed(2)}x; vs udpcast raw: ${(raw.seconds / c.seconds).toFixed(2)}x` + (c.othersSeconds !== c.seconds ? `; 7 others vs udpcast session: ${(best / c.othersSeconds).toFixed(2)}x` : ''));
}

/**
 * Authentication's cost: the same cell with MACs on (the default) and off, RUNS times
 * each, interleaved (this machine is shared and noisy); medians of session time and of
 * CPU seconds per GiB delivered, sender and receivers.
 */
async function authCell(name, { n, rateLimit, sendRate, raw, data, runs }) {
  const size = statSync(raw).size;
  // [name, MACs off, --encrypt]
  const modes = [['auth on', false, false], ['auth off', true, false], ['encrypt', false, true]];
  const got = Object.fromEntries(modes.map(([m]) => [m, []]));
  for (let i = 0; i < runs; i++) {
    for (const [mode, unauthenticated, encrypt] of i % 2 === 0 ? modes : [...modes].reverse()) {
      const lab = Lab.up({ clients: n, rateMbit: rateLimit });
      try {
        const r = await clonecast(lab, data, n, { rate: sendRate ?? 4000, unauthenticated, encrypt });
        const seconds = Math.max(...r.receivers.map((x) => x.ended)) / 1000;
        const ok = same(r.outs, raw) && r.receivers.every((x) => x.code === 0);
        got[mode].push({ seconds, sender: r.sender.cpu / ((size * n) / 2 ** 30), receivers: r.receivers.reduce((a, x) => a + x.cpu, 0) / ((size * n) / 2 ** 30), ok });
        for (const o of r.outs) rmSync(o, { force: true });
      } finally {
        lab.down();
      }
    }
  }
  const med = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const row = { name, n, auth: true };
  console.log(`\n${name} (N=${n}), median of ${runs}`);
  for (const [mode] of modes) {
    const rs = got[mode];
    row[mode] = { seconds: med(rs.map((r) => r.seconds)), goodputMiBs: size / MiB / med(rs.map((r) => r.seconds)), senderCpuPerGiB: med(rs.map((r) => r.sender)), receiverCpuPerGiB: med(rs.map((r) => r.receivers)), ok: rs.every((r) => r.ok), runs: rs.map((r) => r.seconds) };
    const x = row[mode];
    console.log(`  ${mode.padEnd(9)} ${x.seconds.toFixed(2).padStart(6)} s  ${x.goodputMiBs.toFixed(1).padStart(6)} MiB/s per receiver  cpu s/GiB sender ${x.senderCpuPerGiB.toFixed(2)} receivers ${x.receiverCpuPerGiB.toFixed(2)}  runs ${x.runs.map((t) => t.toFixed(2)).join(' ')}  ${x.ok ? 'identical' : 'OUTPUT DIFFERS'}`);
  }
  const ratio = row['auth on'].goodputMiBs / row['auth off'].goodputMiBs;
  row.throughputRatio = ratio;
  console.log(`  throughput auth on / off: ${ratio.toFixed(3)} (${((1 - ratio) * 100).toFixed(1)}% lost; target at most 5%)`);
  row.encryptRatio = row.encrypt.goodputMiBs / row['auth on'].goodputMiBs;
  console.log(`  throughput --encrypt / auth on: ${row.encryptRatio.toFixed(3)}; CPU s/GiB with --encrypt: sender +${(row.encrypt.senderCpuPerGiB - row['auth on'].senderCpuPerGiB).toFixed(2)}, receivers +${(row.encrypt.receiverCpuPerGiB - row['auth on'].receiverCpuPerGiB).toFixed(2)}`);
  results.push(row);
}

async function authCells(prep) {
  // --cells wire,cpu1,cpu4 picks some; --runs N sets the runs per mode.
  const at = process.argv.indexOf('--cells');
  const cells = at > 0 ? process.argv[at + 1].split(',') : ['wire', 'cpu1', 'cpu4'];
  const r = process.argv.indexOf('--runs');
  const runs = r > 0 ? Number(process.argv[r + 1]) : quick ? 3 : 5;
  if (cells.includes('wire')) {
    const wire = prep(quick ? 64 : 256, 'auth-wire');
    await authCell('auth, wire-bound, 100 mbit', { n: 4, rateLimit: 100, sendRate: 95, runs, ...wire });
  }
  if (!cells.includes('cpu1') && !cells.includes('cpu4')) return;
  const cpu = prep(quick ? 128 : 512, 'auth-cpu');
  for (const n of [1, 4]) if (cells.includes(`cpu${n}`)) await authCell('auth, CPU-bound, no link limit', { n, runs, ...cpu });
}

async function main() {
  check();
  const wireMiB = quick ? 64 : 256;
  const cpuMiB = quick ? 128 : 512;
  console.log(`clonecast vs udpcast, ${new Date().toISOString()}, wire cells ${wireMiB} MiB at 100 mbit, CPU cells ${cpuMiB} MiB unlimited`);
  const prep = (mib, tag) => {
    const raw = join(work, `${tag}.raw`);
    makeImage(raw, mib, { dense: true, seed: 3 });
    execFileSync('zstd', ['-q', '-T0', raw, '-o', `${raw}.zst`]);
    const data = join(work, `store-${tag}`);
    execFileSync(process.execPath, [CLI, 'image', 'import', raw, 'bench', '--data', data, '--json'], { stdio: 'ignore' });
    console.log(`${tag}: ${mib} MiB raw, ${(statSync(`${raw}.zst`).size / MiB).toFixed(0)} MiB zstd, clonecast stores ${(JSON.parse(execFileSync(process.execPath, [CLI, 'image', 'info', 'bench', '--data', data, '--json'], { encoding: 'utf8' })).storedBytes / MiB).toFixed(0)} MiB`);
    return { raw, zst: `${raw}.zst`, data };
  };
  if (process.argv.includes('--auth')) {
    await authCells(prep);
    console.log(`\nJSON ${JSON.stringify(results)}`);
    return;
  }
  const wire = prep(wireMiB, 'wire');
  for (const n of quick ? [1, 8] : [1, 4, 8]) await cell('wire-bound, 100 mbit, no loss', { n, rateLimit: 100, sendRate: 95, ...wire });
  await cell('wire-bound, 100 mbit, 2% loss per receiver', { n: 8, loss: 0.02, rateLimit: 100, sendRate: 95, ...wire });
  await cell('wire-bound, 100 mbit, one receiver writing at 2 MiB/s', { n: 8, rateLimit: 100, sendRate: 95, slow: true, ...wire });
  const cpu = prep(cpuMiB, 'cpu');
  for (const n of quick ? [1] : [1, 4]) await cell('CPU-bound, no link limit', { n, ...cpu });
  await authCells(prep);
  console.log(`\nJSON ${JSON.stringify(results)}`);
}

try {
  await main();
} finally {
  if (existsSync(work)) rmSync(work, { recursive: true, force: true });
}
