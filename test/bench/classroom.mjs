// The classroom benchmark of issue 13: clonecast as an administrator runs it
// (`clonecast serve` in the lab's server namespace, `clonecast agent` in each
// client namespace writing a file disk, the image imported, then
// `clonecast deploy`) against udpcast, raw and zstd -1 through --pipe, on the
// same links in the same run. Needs root, udpcast, zstd, pv.
//
//   node test/bench/classroom.mjs                 all cells, 1 run each
//   node test/bench/classroom.mjs --runs 3        medians of 3 runs
//   node test/bench/classroom.mjs --quick         64 MiB (256 MiB unlimited), N=4 only, no loss8
//   node test/bench/classroom.mjs --cells loss4,clean8 --json out.json
//   node test/bench/classroom.mjs --tables a.json,b.json   the tables of saved runs, merged
//   node test/bench/classroom.mjs --cells clean8 --rate 99  both tools capped at 99 Mbit/s instead of 95
//
// Cells (--cells): loss4, loss8 (100 mbit, 2% loss towards each client), clean8
// (100 mbit, no loss), nolimit4 (no link limit, 512 MiB) and slow8 (100 mbit,
// one disk writing at 2 MiB/s: time until the other N-1 are done).
//
// Each cell holds the lab lock (--lock, default /tmp/cc-lab.lock) for its runs
// only, so that other lab jobs interleave between cells.
// clonecast's time runs from starting `clonecast deploy` to the last disk the
// server recorded as done and verified (deploy returns up to 1 s later: it
// polls); udpcast's from starting udp-sender (receivers already waiting) to
// the last receiver's exit. Every disk is compared with the raw image (cmp).
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { makeImage } from './mkimage.mjs';
import { cpuOf, dataSpan, deadline, descendants, GiB, identical, killTrees, labLock, median, MiB, peakRssOf, sampleTx, timedIn, udpcast, until, watch } from './lab-tools.mjs';
import { Lab } from '../../dist/server/lab/netns.js';
import { fingerprintOf } from '../../dist/server/tls.js';

const ROOT = resolve(import.meta.dirname, '..', '..');
const CLI = join(ROOT, 'bin', 'clonecast');
const URL_ = 'https://10.77.0.1:8080/';
/** Both tools' maximum rate on the 100 mbit link (tbf), Mbit/s (--rate). */
let WIRE_RATE = 95;
/** clonecast's --rate without a link limit: high enough that the CPUs, not the pacer, decide. */
const NOLIMIT_RATE = 4000;
const SLOW_BPS = 2 * MiB;

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    cells: { type: 'string' },
    runs: { type: 'string', default: '1' },
    json: { type: 'string' },
    lock: { type: 'string', default: '/tmp/cc-lab.lock' },
    'no-lock': { type: 'boolean', default: false },
    timeout: { type: 'string', default: '300' },
    tables: { type: 'string' },
    rate: { type: 'string' },
  },
});
if (values.rate !== undefined) {
  WIRE_RATE = Number(values.rate);
  if (!(WIRE_RATE > 0 && WIRE_RATE <= 100)) throw new Error(`--rate takes Mbit/s on the 100 mbit link, above 0 and at most 100; got "${values.rate}"`);
}
const quick = values.quick;
const runs = Number(values.runs);
if (!Number.isInteger(runs) || runs < 1) throw new Error(`--runs takes a whole number of runs, 1 or more; got "${values.runs}"`);

/** The cells; goal.kind: faster (x the faster udpcast), link (fraction of the link rate), others (N-1 done, x udpcast's). */
const CELLS = {
  loss4: { title: '100 mbit, N=4, 2% loss each', n: 4, loss: 0.02, linkMbit: 100, mib: 128, goal: { kind: 'faster', min: 1.25 } },
  loss8: { title: '100 mbit, N=8, 2% loss each', n: 8, loss: 0.02, linkMbit: 100, mib: 128, goal: { kind: 'faster', min: 1.25 } },
  clean8: { title: '100 mbit, N=8, no loss', n: 8, linkMbit: 100, mib: 128, goal: { kind: 'link', min: 0.9 } },
  nolimit4: { title: 'no link limit, N=4, 512 MiB', n: 4, mib: 512, goal: { kind: 'faster', min: 1.25 } },
  slow8: { title: '100 mbit, N=8, one disk at 2 MiB/s: the other 7 done', n: 8, linkMbit: 100, mib: 128, slow: true, goal: { kind: 'others', min: 3 } },
};
if (quick) {
  // Quick: 64 MiB (256 MiB without a link limit) and at most 4 clients.
  for (const c of Object.values(CELLS)) {
    c.mib = c.linkMbit === undefined ? 256 : 64;
    if (c.n > 4) {
      c.title = c.title.replace(`N=${c.n}`, 'N=4').replace('the other 7', 'the other 3');
      c.n = 4;
    }
    c.title = c.title.replace('512 MiB', '256 MiB');
  }
}
// Quick leaves out loss8: at N=4 it would be loss4 again.
const chosen = values.cells !== undefined ? values.cells.split(',') : Object.keys(CELLS).filter((c) => !(quick && c === 'loss8'));
for (const c of chosen) if (CELLS[c] === undefined) throw new Error(`--cells: no cell "${c}"; the cells are ${Object.keys(CELLS).join(', ')}`);

/** How long one transfer may take before it is stopped and counted as failed, ms. */
const LIMIT_MS = Number(values.timeout) * 1000;

/** The lab being used now: taken down if the benchmark is interrupted. */
let current;
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => {
    // Everything this benchmark started: the lab's processes and a lock holder still waiting.
    killTrees(descendants(process.pid));
    current?.down();
    rmSync(work, { recursive: true, force: true });
    process.exit(130);
  });
}

const work = mkdtempSync(join(process.env.CLONECAST_BENCH_TMP ?? tmpdir(), 'clonecast-classroom-'));

function check() {
  for (const cmd of ['udp-sender', 'udp-receiver', 'zstd', 'pv', 'cmp', 'flock', '/usr/bin/time']) {
    if (spawnSync('sh', ['-c', `command -v ${cmd}`]).status !== 0) throw new Error(`needs ${cmd}: apt-get install udpcast zstd pv time util-linux diffutils`);
  }
  if (process.getuid() !== 0) throw new Error('needs root (network namespaces)');
  if (!existsSync(join(ROOT, 'dist', 'cli', 'main.js'))) throw new Error('needs a build: npm run build');
}

/** The raw image, its zstd -1 copy and a clonecast data directory holding it as "bench", made once per size. */
const images = new Map();
function image(mib) {
  if (images.has(mib)) return images.get(mib);
  const raw = join(work, `image-${mib}.raw`);
  // Segments of 3-10 MiB keep a 64 or 128 MiB image at the 40/35/25 mix (39/35/26 at 128 MiB).
  const mix = makeImage(raw, mib, { dense: true, seed: 3, segmentMiB: mib <= 128 ? [3, 10] : undefined });
  const zst = `${raw}.zst`;
  const z0 = performance.now();
  execFileSync('zstd', ['-q', '-1', '-T0', raw, '-o', zst]);
  const zSeconds = (performance.now() - z0) / 1000;
  const data = join(work, `data-${mib}`);
  const i0 = performance.now();
  execFileSync(process.execPath, [CLI, 'image', 'import', raw, 'bench', '--data', data, '--json'], { stdio: 'ignore' });
  const iSeconds = (performance.now() - i0) / 1000;
  const info = JSON.parse(execFileSync(process.execPath, [CLI, 'image', 'info', 'bench', '--data', data, '--json'], { encoding: 'utf8' }));
  const img = { mib, raw, zst, data, size: statSync(raw).size, zstdBytes: statSync(zst).size, storedBytes: info.storedBytes };
  console.log(
    `image ${mib} MiB (${['random', 'zero', 'text'].map((k) => `${k} ${((100 * mix[k]) / img.size).toFixed(0)}%`).join(', ')}): zstd -1 ${(img.zstdBytes / MiB).toFixed(1)} MiB (${zSeconds.toFixed(2)} s), clonecast stores ${(img.storedBytes / MiB).toFixed(1)} MiB (import ${iSeconds.toFixed(2)} s)`,
  );
  images.set(mib, img);
  return img;
}

function disk(path, size) {
  writeFileSync(path, Buffer.alloc(0));
  execFileSync('truncate', ['-s', String(size), path]);
  return path;
}

/** One clonecast deploy in a fresh lab: serve, N agents connected, then deploy; measured from the deploy command. */
async function clonecastRun(cell, img, tag) {
  const lab = (current = Lab.up({ clients: cell.n, loss: cell.loss, rateMbit: cell.linkMbit }));
  const stop = deadline(lab, LIMIT_MS);
  // A fresh server state around the imported store: copies of its small files, its chunk files
  // hard-linked (chunk files appear by rename and are never changed in place).
  const data = join(work, `run-${tag}`);
  rmSync(data, { recursive: true, force: true });
  mkdirSync(data);
  for (const e of readdirSync(img.data)) execFileSync('cp', [e === 'chunks' ? '-al' : '-a', join(img.data, e), join(data, e)]);
  const disks = lab.clients.map((_, k) => disk(join(work, `cc-${k}.img`), img.size));
  try {
    const server = watch(lab.spawnIn(lab.server.ns, process.execPath, [CLI, 'serve', '--data', data, '--listen', '10.77.0.1:8080', '--interface', 'eth0']));
    await until(() => server.err.includes('stop with Ctrl-C') || server.out.includes('stop with Ctrl-C') || server.child.exitCode !== null, 30_000, 'the server to start');
    if (server.child.exitCode !== null) throw new Error(`clonecast serve exited: ${server.err}`);
    const token = readFileSync(join(data, 'token'), 'utf8').trim();
    const fingerprint = fingerprintOf(readFileSync(join(data, 'tls', 'cert.pem'), 'utf8'));
    const agents = lab.clients.map((c, k) => {
      const extra = cell.slow && k === cell.n - 1 ? ['--write-limit', String(SLOW_BPS)] : [];
      return watch(lab.spawnIn(c.ns, process.execPath, [CLI, 'agent', '--server', URL_, '--fingerprint', fingerprint, '--token', token, '--disk', disks[k], ...extra]));
    });
    await until(() => agents.every((a) => /connected to /.test(a.err) || a.child.exitCode !== null), 60_000, 'every agent to connect');
    const dead = agents.find((a) => a.child.exitCode !== null);
    if (dead !== undefined) throw new Error(`an agent exited: ${dead.err}`);
    const macs = lab.clients.map((c) => lab.execIn(c.ns, 'cat', ['/sys/class/net/eth0/address']).trim());
    const pids = { server: server.child.pid, agents: agents.map((a) => a.child.pid) };
    const cpu0 = { server: cpuOf(pids.server), agents: pids.agents.map(cpuOf) };
    const tx = sampleTx(pids.server);
    const rate = cell.linkMbit === undefined ? NOLIMIT_RATE : WIRE_RATE;
    const t0 = Date.now();
    const deploy = timedIn(lab, lab.server.ns, [process.execPath, CLI, 'deploy', 'bench', '--machines', macs.join(','), '--rate', String(rate), '--json', '--data', data, '--server', URL_]);
    const d = await deploy.result;
    const samples = tx.stop();
    const cpu = { server: cpuOf(pids.server) - cpu0.server, agents: pids.agents.map((p, k) => cpuOf(p) - cpu0.agents[k]) };
    const rss = { server: peakRssOf(pids.server), agents: pids.agents.map(peakRssOf) };
    const list = JSON.parse(execFileSync('ip', ['netns', 'exec', lab.server.ns, process.execPath, CLI, 'sessions', '--json', '--data', data, '--server', URL_], { encoding: 'utf8' }));
    let summary;
    try {
      summary = JSON.parse(deploy.out);
    } catch {
      throw new Error(`clonecast deploy exited ${d.code} without a summary: ${deploy.err}`);
    }
    const s = list.find((x) => x.id === summary.session);
    const ms = Object.values(s.machines);
    const at = (iso) => (iso ? Date.parse(iso) : NaN);
    const ends = macs.map((mac) => at(s.machines[mac]?.endedAt));
    const verified = Math.max(...ends);
    const span = dataSpan(samples, at(s.startedAt));
    const ok = d.code === 0 && s.state === 'done' && ms.length === cell.n && ms.every((m) => m.state === 'done' && m.verified) && disks.every((f) => identical(f, img.raw));
    return {
      ok,
      error: ok ? '' : `deploy exit ${d.code}, session ${s.state}: ${s.reason}; ${deploy.err.slice(-400)}`,
      seconds: (verified - t0) / 1000,
      othersSeconds: cell.slow ? (Math.max(...ends.slice(0, cell.n - 1)) - t0) / 1000 : undefined,
      deployReturned: (d.endedAt - t0) / 1000,
      sentBytes: s.sent.bytes,
      sentPackets: s.sent.packets,
      repairPackets: s.sent.repairPackets,
      wireBytes: samples.at(-1)[1] - samples[0][1],
      timeline: {
        created: (at(s.createdAt) - t0) / 1000,
        allJoined: (Math.max(...ms.map((m) => at(m.joinedAt))) - t0) / 1000,
        started: (at(s.startedAt) - t0) / 1000,
        firstData: span.first === null ? NaN : (span.first - t0) / 1000,
        lastData: span.last === null ? NaN : (span.last - t0) / 1000,
        firstVerified: (Math.min(...ends) - t0) / 1000,
        lastVerified: (verified - t0) / 1000,
        deployReturned: (d.endedAt - t0) / 1000,
      },
      cpu: { sender: cpu.server, receivers: cpu.agents, client: d.cpu },
      rss: { sender: rss.server, receivers: rss.agents },
    };
  } finally {
    stop.cancel();
    killTrees(lab.childPids());
    lab.down();
    for (const f of disks) rmSync(f, { force: true });
    rmSync(data, { recursive: true, force: true });
  }
}

/** One udpcast transfer in a fresh lab. */
async function udpcastRun(cell, img, zstd) {
  const lab = (current = Lab.up({ clients: cell.n, loss: cell.loss, rateMbit: cell.linkMbit }));
  const stop = deadline(lab, LIMIT_MS);
  let outs = [];
  try {
    const r = await udpcast(lab, { file: zstd ? img.zst : img.raw, n: cell.n, work, zstd, rateMbit: cell.linkMbit === undefined ? undefined : WIRE_RATE, slow: cell.slow });
    outs = r.outs;
    const ends = r.receivers.map((x) => x.endedAt);
    const ok = r.sender.code === 0 && r.receivers.every((x) => x.code === 0) && outs.every((o) => identical(o, img.raw));
    return {
      ok,
      error: ok ? '' : `sender ${r.sender.code}, receivers ${r.receivers.map((x) => x.code).join(',')}: ${r.errors.find((e, k) => r.receivers[k].code !== 0)?.slice(-300) ?? 'a copy differs'}`,
      seconds: (Math.max(...ends) - r.t0) / 1000,
      othersSeconds: cell.slow ? (Math.max(...ends.slice(0, cell.n - 1)) - r.t0) / 1000 : undefined,
      attempts: r.attempts,
      cpu: { sender: r.sender.cpu, receivers: r.receivers.map((x) => x.cpu) },
      rss: { sender: r.sender.rssMiB, receivers: r.receivers.map((x) => x.rssMiB) },
    };
  } finally {
    stop.cancel();
    killTrees(lab.childPids());
    lab.down();
    for (const o of outs) rmSync(o, { force: true });
  }
}

const TOOLS = ['udpcast raw', 'udpcast zstd', 'clonecast'];
const f1 = (x) => (Number.isNaN(x) || x === undefined ? '-' : x.toFixed(1));
const f2 = (x) => (Number.isNaN(x) || x === undefined ? '-' : x.toFixed(2));

/** Per-GiB figures of one run: CPU seconds per GiB of image for the sender and for each receiver. */
function perGiB(r, size) {
  const g = size / GiB;
  return { sender: r.cpu.sender / g, receivers: r.cpu.receivers.map((c) => c / g), client: r.cpu.client === undefined ? undefined : r.cpu.client / g };
}

function printRun(cell, tool, r, img) {
  const c = perGiB(r, img.size);
  const parts = [`    ${tool.padEnd(12)} ${f2(r.seconds).padStart(7)} s`];
  if (r.othersSeconds !== undefined) parts.push(`(the ${cell.n - 1} others done at ${f2(r.othersSeconds)} s)`);
  parts.push(`cpu s/GiB sender ${f2(c.sender)}, receivers ${c.receivers.map(f2).join(' ')}${c.client !== undefined ? `, deploy command ${f2(c.client)}` : ''}`);
  parts.push(`peak RSS sender ${f1(r.rss.sender)} MiB, receivers max ${f1(Math.max(...r.rss.receivers))} MiB`);
  if (tool === 'clonecast') {
    const t = r.timeline;
    parts.push(`sent ${(r.sentBytes / MiB).toFixed(1)} MiB in ${r.sentPackets} packets (${r.repairPackets} repair)`);
    parts.push(`\n                 timeline (s from deploy): session created ${f2(t.created)}, all joined ${f2(t.allJoined)}, started ${f2(t.started)}, first data ${f2(t.firstData)}, last data ${f2(t.lastData)}, first verified ${f2(t.firstVerified)}, last verified ${f2(t.lastVerified)}, deploy returned ${f2(t.deployReturned)}`);
  }
  parts.push(r.ok ? 'every disk identical' : `FAILED: ${r.error}`);
  console.log(parts.join('  '));
}

/** Medians over the runs of one tool that succeeded (NaN if none did). */
function summarise(cell, all, img) {
  const good = all.filter((r) => r.ok);
  const rs = good.length > 0 ? good : [{ seconds: NaN, othersSeconds: NaN, cpu: { sender: NaN, receivers: [NaN] }, rss: { sender: NaN, receivers: [NaN] } }];
  const m = (f) => median(rs.map(f));
  const s = {
    runs: all.map((r) => r.seconds ?? NaN),
    ok: all.every((r) => r.ok),
    failures: all.filter((r) => !r.ok).map((r) => r.error),
    seconds: m((r) => r.seconds),
    othersSeconds: cell.slow ? m((r) => r.othersSeconds) : undefined,
    cpuPerGiB: { sender: m((r) => perGiB(r, img.size).sender), receiverMedian: m((r) => median(perGiB(r, img.size).receivers)), receiverMax: m((r) => Math.max(...perGiB(r, img.size).receivers)) },
    peakRssMiB: { sender: Math.max(...rs.map((r) => r.rss.sender)), receiver: Math.max(...rs.flatMap((r) => r.rss.receivers)) },
  };
  if (good.length > 0 && rs[0].timeline !== undefined) {
    s.deployReturned = m((r) => r.deployReturned);
    s.sentMiB = m((r) => r.sentBytes) / MiB;
    s.repairPackets = m((r) => r.repairPackets);
    s.timeline = Object.fromEntries(Object.keys(rs[0].timeline).map((k) => [k, m((r) => r.timeline[k])]));
    s.cpuPerGiB.deployCommand = m((r) => perGiB(r, img.size).client);
    // The issue's link-rate fraction: bytes clonecast sent / (deploy to last verified) / link rate.
    if (cell.linkMbit !== undefined) s.linkFraction = m((r) => (r.sentBytes * 8) / r.seconds / (cell.linkMbit * 1e6));
  }
  return s;
}

/** The verdict line of a cell against its goal. */
function verdict(cell, row) {
  const c = row.clonecast;
  const raw = row['udpcast raw'];
  const z = row['udpcast zstd'];
  const faster = raw.seconds <= z.seconds ? 'udpcast raw' : 'udpcast zstd';
  row.faster = faster;
  row.ratio = row[faster].seconds / c.seconds;
  if (cell.slow) {
    const best = Math.min(raw.othersSeconds, z.othersSeconds);
    row.othersRatio = best / c.othersSeconds;
  }
  const g = cell.goal;
  if (g.kind === 'faster') {
    row.goal = `>= ${g.min}x the faster udpcast`;
    row.met = row.ratio >= g.min;
  } else if (g.kind === 'link') {
    row.goal = `>= ${(g.min * 100).toFixed(0)}% of the link rate`;
    row.met = c.linkFraction >= g.min;
  } else {
    row.goal = `the ${cell.n - 1} others >= ${g.min}x udpcast's`;
    row.met = row.othersRatio >= g.min;
  }
  row.memoryMet = c.peakRssMiB.sender < 256 && c.peakRssMiB.receiver < 128;
  row.receiverCpuMet = c.cpuPerGiB.receiverMax <= z.cpuPerGiB.receiverMedian;
}

async function runCell(key) {
  const cell = CELLS[key];
  const img = image(cell.mib);
  console.log(`\n${key}: ${cell.title} (${cell.mib} MiB image, ${runs} run(s))`);
  const got = Object.fromEntries(TOOLS.map((t) => [t, []]));
  // The lock is held for the runs of one cell (the comparison), and let go between cells.
  const release = values['no-lock'] ? async () => {} : await labLock(values.lock);
  try {
    for (let i = 0; i < runs; i++) {
      console.log(`  run ${i + 1} (${new Date().toISOString().slice(11, 19)}, load ${readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ')})`);
      // The order turns each run, so that no tool always runs on a warmer or quieter machine.
      const order = TOOLS.map((_, j) => TOOLS[(j + i) % TOOLS.length]);
      for (const tool of order) {
        let r;
        try {
          r = tool === 'clonecast' ? await clonecastRun(cell, img, `${key}-${i}`) : await udpcastRun(cell, img, tool === 'udpcast zstd');
        } catch (err) {
          r = { ok: false, error: err.message };
        }
        got[tool].push(r);
        if (r.seconds === undefined) console.log(`    ${tool.padEnd(12)} FAILED: ${r.error}`);
        else printRun(cell, tool, r, img);
      }
    }
  } finally {
    await release();
  }
  const row = { cell: key, title: cell.title, n: cell.n, mib: cell.mib, loss: cell.loss ?? 0, linkMbit: cell.linkMbit ?? null, storedMiB: img.storedBytes / MiB, zstdMiB: img.zstdBytes / MiB };
  for (const t of TOOLS) row[t] = summarise(cell, got[t], img);
  verdict(cell, row);
  const c = row.clonecast;
  console.log(`  median: udpcast raw ${f2(row['udpcast raw'].seconds)} s, udpcast zstd ${f2(row['udpcast zstd'].seconds)} s, clonecast ${f2(c.seconds)} s (deploy returned ${f2(c.deployReturned)} s)`);
  console.log(`  clonecast vs the faster udpcast (${row.faster}): ${f2(row.ratio)}x` + (cell.slow ? `; the ${cell.n - 1} others: ${f2(row.othersRatio)}x` : '') + (c.linkFraction !== undefined ? `; link-rate fraction ${f2(c.linkFraction)}` : ''));
  console.log(`  goal ${row.goal}: ${row.met ? 'met' : 'MISSED'}; memory (sender < 256, receiver < 128 MiB): ${row.memoryMet ? 'met' : 'MISSED'}; receiver CPU/GiB <= udpcast+zstd's: ${row.receiverCpuMet ? 'met' : 'MISSED'}`);
  return row;
}

function tables(rows) {
  const out = [];
  out.push('| cell | udpcast raw | udpcast, zstd -1 through --pipe | clonecast | vs the faster | goal |');
  out.push('|---|---|---|---|---|---|');
  for (const r of rows) {
    const c = r.clonecast;
    const sec = (x, slow) => `${f1(slow ? x.othersSeconds : x.seconds)} s`;
    let vs = `${f2(r.slow ? r.othersRatio : r.ratio)}x`;
    if (r.linkMbit !== null && c.linkFraction !== undefined && r.cell.startsWith('clean')) vs += `; link ${(100 * c.linkFraction).toFixed(0)}%`;
    out.push(`| ${r.title} | ${sec(r['udpcast raw'], r.slow)} | ${sec(r['udpcast zstd'], r.slow)} | ${sec(c, r.slow)}${r.slow ? ` (all ${f1(c.seconds)} s)` : ''} | ${vs} | ${r.goal}: ${r.met ? 'met' : '**missed**'} |`);
  }
  out.push('');
  out.push('CPU seconds per GiB of image, per process (sender / median receiver / busiest receiver), and peak RSS (sender / largest receiver):');
  out.push('');
  out.push("| cell | udpcast raw | udpcast + zstd -d | clonecast (server / agent) | clonecast peak RSS | each receiver's CPU at most udpcast+zstd's; memory |");
  out.push('|---|---|---|---|---|---|');
  const cpu = (x) => `${f2(x.cpuPerGiB.sender)} / ${f2(x.cpuPerGiB.receiverMedian)} / ${f2(x.cpuPerGiB.receiverMax)}`;
  const met = (b) => (b ? 'met' : '**missed**');
  for (const r of rows) {
    out.push(`| ${r.title} | ${cpu(r['udpcast raw'])} | ${cpu(r['udpcast zstd'])} | ${cpu(r.clonecast)} | ${f1(r.clonecast.peakRssMiB.sender)} / ${f1(r.clonecast.peakRssMiB.receiver)} MiB | ${met(r.receiverCpuMet)}; ${met(r.memoryMet)} |`);
  }
  out.push('');
  out.push("Where clonecast's time goes (seconds from starting `clonecast deploy`, medians):");
  out.push('');
  out.push('| cell | session created | all joined | started | first data | last data | last verified | deploy returned | sent (repair packets) |');
  out.push('|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    const t = r.clonecast.timeline ?? {};
    out.push(`| ${r.title} | ${f2(t.created)} | ${f2(t.allJoined)} | ${f2(t.started)} | ${f2(t.firstData)} | ${f2(t.lastData)} | ${f2(t.lastVerified)} | ${f2(t.deployReturned)} | ${f1(r.clonecast.sentMiB)} MiB (${r.clonecast.repairPackets}) |`);
  }
  return out.join('\n');
}

/** --tables: prints the tables of results saved with --json (several files: their cells together). */
function savedTables(files) {
  const rows = files.flatMap((f) => JSON.parse(readFileSync(f, 'utf8')).rows);
  const order = Object.keys(CELLS);
  rows.sort((a, b) => order.indexOf(a.cell) - order.indexOf(b.cell));
  console.log(tables(rows));
}

try {
  if (values.tables !== undefined) {
    savedTables(values.tables.split(','));
    rmSync(work, { recursive: true, force: true });
    process.exit(0);
  }
  check();
  console.log(`classroom benchmark, ${new Date().toISOString()}, cells ${chosen.join(',')}, ${runs} run(s)${quick ? ', quick' : ''}; load ${readFileSync('/proc/loadavg', 'utf8').trim()}`);
  const rows = [];
  const save = () => values.json !== undefined && writeFileSync(values.json, `${JSON.stringify({ at: new Date().toISOString(), quick, runs, rows }, null, 1)}\n`);
  for (const key of chosen) {
    const row = await runCell(key);
    row.slow = CELLS[key].slow === true;
    rows.push(row);
    save(); // after every cell: a run stopped half-way keeps what it measured
  }
  // The tables in the issue's order, whatever order the cells ran in.
  const order = Object.keys(CELLS);
  rows.sort((a, b) => order.indexOf(a.cell) - order.indexOf(b.cell));
  console.log(`\n${tables(rows)}`);
  if (values.json !== undefined) console.log(`\nresults written to ${values.json}`);
  const bad = rows.filter((r) => !TOOLS.every((t) => r[t].ok));
  if (bad.length > 0) {
    console.log(`\nFAILED runs in: ${bad.map((r) => r.cell).join(', ')}`);
    process.exitCode = 1;
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
