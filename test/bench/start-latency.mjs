// How soon data flows once a session may start, in the namespace lab (root):
// `clonecast serve`, N agents connected and idle, then `clonecast deploy
// --any --clients N`, RUNS times. A listener in one client namespace joins
// the session's group and notes its first DATA packet. Printed, as medians:
// deploy -> "started" (the server's log line), "started" -> first DATA, and
// deploy -> first DATA; for a baseline build (default /tmp/cc-before: the
// parent commit built in a scratch copy) and for this tree, with the ratio.
//   node test/bench/start-latency.mjs [BASELINE_ROOT] [RUNS] [N]
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { makeImage } from './mkimage.mjs';
import { Lab } from '../../dist/server/lab/netns.js';
import { fingerprintOf } from '../../dist/server/tls.js';

const ROOT = resolve(import.meta.dirname, '..', '..');
const [baseline = '/tmp/cc-before', runsArg = '5', nArg = '4'] = process.argv.slice(2);
const RUNS = Number(runsArg);
const N = Number(nArg);
const MiB = 1 << 20;
const PORT = 8080;
const URL_ = `https://10.77.0.1:${PORT}/`;

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(check, ms, what) {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}
function watch(child) {
  const p = { child, out: '', exited: new Promise((r) => child.on('close', r)) };
  child.stdout.on('data', (d) => (p.out += d));
  child.stderr.on('data', (d) => (p.out += d));
  return p;
}

// Joins group:port on the client's address; prints the wall-clock ms of the first packet from the server.
const LISTENER = `
const dgram = require('node:dgram');
const [group, port, address] = process.argv.slice(1);
const s = dgram.createSocket({ type: 'udp4', reuseAddr: true });
s.on('message', (m, r) => { if (r.address === '10.77.0.1' && m.length > 100) { console.log('FIRST ' + Date.now()); process.exit(0); } });
s.bind(Number(port), () => { s.addMembership(group, address); console.log('LISTENING'); });
`;

async function measure(name, root) {
  const cli = join(root, 'bin', 'clonecast');
  const work = mkdtempSync('/tmp/cc-start-');
  const data = join(work, 'data');
  // One image per run: a disk that holds the image already would restore differentially and get no data at all.
  for (let r = 1; r <= RUNS; r++) {
    const raw = join(work, `raw${r}`);
    makeImage(raw, 16, { seed: 9 + r });
    execFileSync(process.execPath, [cli, 'image', 'import', raw, `img${r}`, '--data', data, '--json'], { stdio: 'ignore' });
  }
  const lab = Lab.up({ clients: N });
  const rows = [];
  try {
    const server = watch(lab.spawnIn(lab.server.ns, process.execPath, [cli, 'serve', '--data', data, '--listen', `10.77.0.1:${PORT}`, '--interface', 'eth0']));
    await until(() => server.out.includes('stop with Ctrl-C'), 20_000, 'the server');
    const token = readFileSync(join(data, 'token'), 'utf8').trim();
    const fingerprint = fingerprintOf(readFileSync(join(data, 'tls', 'cert.pem'), 'utf8'));
    const agents = lab.clients.map((c, k) => {
      const disk = join(work, `disk${k}`);
      writeFileSync(disk, Buffer.alloc(0));
      execFileSync('truncate', ['-s', String(40 * MiB), disk]);
      return watch(lab.spawnIn(c.ns, process.execPath, [cli, 'agent', '--server', URL_, '--fingerprint', fingerprint, '--token', token, '--disk', disk]));
    });
    await until(() => agents.every((a) => a.out.includes('connected to')), 30_000, 'the agents');
    for (let r = 1; r <= RUNS; r++) {
      // Session r gets group 239.77.1.r and port 9000 + r (server/session-types.ts groupFor; each ends before the next).
      const listener = watch(lab.spawnIn(lab.clients[0].ns, process.execPath, ['-e', LISTENER, `239.77.1.${r}`, String(9000 + r), lab.clients[0].address]));
      await until(() => listener.out.includes('LISTENING'), 10_000, 'the listener');
      const t0 = Date.now();
      const deploy = watch(lab.spawnIn(lab.server.ns, process.execPath, [cli, 'deploy', `img${r}`, '--any', '--clients', String(N), '--server', URL_, '--fingerprint', fingerprint, '--token', token]));
      const code = await deploy.exited;
      if (code !== 0) throw new Error(`deploy failed: ${deploy.out}`);
      await Promise.race([listener.exited, sleep(20_000)]); // a run that saw no data counts as missing, not forever
      const first = Number(/FIRST (\d+)/.exec(listener.out)?.[1]);
      if (!Number.isFinite(first)) throw new Error(`run ${r}: the listener saw no data: ${listener.out}`);
      const started = Date.parse(new RegExp(`(\\S+) \\S+ +session ${r} started`).exec(server.out)?.[1] ?? 'NaN');
      rows.push({ toStarted: started - t0, startedToData: first - started, toData: first - t0 });
      await sleep(500);
    }
    for (const a of agents) a.child.kill('SIGTERM');
    server.child.kill('SIGTERM');
    await sleep(500);
  } finally {
    lab.down();
    rmSync(work, { recursive: true, force: true });
  }
  const m = { toStarted: median(rows.map((x) => x.toStarted)), startedToData: median(rows.map((x) => x.startedToData)), toData: median(rows.map((x) => x.toData)) };
  console.log(`${name.padEnd(8)} deploy->started ${m.toStarted} ms, started->first DATA ${m.startedToData} ms, deploy->first DATA ${m.toData} ms (medians of ${rows.length}; runs: ${rows.map((x) => x.toData).join(' ')})`);
  return m;
}

const before = await measure('baseline', resolve(baseline));
const after = await measure('this', ROOT);
console.log(`deploy->first DATA: this/baseline = ${(after.toData / before.toData).toFixed(2)}; started->first DATA: ${before.startedToData} -> ${after.startedToData} ms`);
