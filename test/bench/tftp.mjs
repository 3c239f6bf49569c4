// TFTP benchmark: a 100 MB file fetched by atftp (blksize 1468, windowsize
// 16) from clonecast's TFTP server and from dnsmasq's, each alone in its own
// network namespace on loopback, interleaved, 5 runs each; then 4 clients at
// once. Prints medians and the ratio dnsmasq time / clonecast time (>= 1:
// clonecast is at least as fast). Needs root, atftp and dnsmasq.
// Usage: npm run build && node test/bench/tftp.mjs [--runs N] [--mb N]
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';

const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? Number(process.argv[i + 1]) : dflt;
};
const RUNS = arg('--runs', 5);
const MB = arg('--mb', 100);
const root = new URL('../..', import.meta.url).pathname;
const dir = `/tmp/cc-tftp-bench-${process.pid}`;
const files = join(dir, 'root');
mkdirSync(files, { recursive: true });
const data = Buffer.alloc(MB * 1_000_000);
for (let o = 0; o < data.length; o += 1 << 20) randomBytes(Math.min(1 << 20, data.length - o)).copy(data, o);
writeFileSync(join(files, 'big.bin'), data);

const ns = { clonecast: `cctb${process.pid}c`, dnsmasq: `cctb${process.pid}d` };
const children = [];
function cleanup() {
  for (const c of children) c.kill('SIGKILL');
  for (const n of Object.values(ns)) spawnSync('ip', ['netns', 'del', n]);
  rmSync(dir, { recursive: true, force: true });
}
process.on('exit', cleanup);
for (const n of Object.values(ns)) {
  execFileSync('ip', ['netns', 'add', n]);
  execFileSync('ip', ['-n', n, 'link', 'set', 'lo', 'up']);
}
const server = `import { TftpServer } from ${JSON.stringify(join(root, 'dist/pxe/tftp-server.js'))};
const s = new TftpServer({ root: ${JSON.stringify(files)}, address: '127.0.0.1', port: 69 });
await s.start();
console.log('ready');`;
writeFileSync(join(dir, 'server.mjs'), server);
children.push(spawn('ip', ['netns', 'exec', ns.clonecast, process.execPath, join(dir, 'server.mjs')], { stdio: 'ignore' }));
children.push(
  spawn('ip', ['netns', 'exec', ns.dnsmasq, 'dnsmasq', '--no-daemon', '--port=0', '--enable-tftp', `--tftp-root=${files}`, '--listen-address=127.0.0.1', '--bind-interfaces', `--pid-file=${join(dir, 'dnsmasq.pid')}`], { stdio: 'ignore' }),
);
await new Promise((r) => setTimeout(r, 1500));

function fetch(n, clients) {
  const t0 = performance.now();
  const runs = [];
  for (let i = 0; i < clients; i++) {
    const out = join(dir, `out-${i}`);
    runs.push(
      new Promise((resolve, reject) => {
        const c = spawn('ip', ['netns', 'exec', n, 'atftp', '--option', 'blksize 1468', '--option', 'windowsize 16', '-g', '-r', 'big.bin', '-l', out, '127.0.0.1', '69'], { stdio: 'ignore' });
        c.on('close', (code) => (code === 0 && statSync(out).size === data.length ? resolve() : reject(new Error(`atftp from ${n} failed (exit ${code})`))));
      }),
    );
  }
  return Promise.all(runs).then(() => (performance.now() - t0) / 1000);
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const results = {};
for (const clients of [1, 4]) {
  const t = { clonecast: [], dnsmasq: [] };
  for (let r = 0; r < RUNS; r++) {
    for (const name of r % 2 === 0 ? ['dnsmasq', 'clonecast'] : ['clonecast', 'dnsmasq']) t[name].push(await fetch(ns[name], clients));
  }
  const m = { clonecast: median(t.clonecast), dnsmasq: median(t.dnsmasq) };
  results[clients] = m;
  const rate = (s) => ((clients * data.length) / s / 1e6).toFixed(0);
  console.log(`${clients} client(s), ${MB} MB each, atftp blksize 1468 windowsize 16, median of ${RUNS}:`);
  console.log(`  dnsmasq   ${m.dnsmasq.toFixed(2)} s (${rate(m.dnsmasq)} MB/s)   runs ${t.dnsmasq.map((x) => x.toFixed(2)).join(' ')}`);
  console.log(`  clonecast ${m.clonecast.toFixed(2)} s (${rate(m.clonecast)} MB/s)   runs ${t.clonecast.map((x) => x.toFixed(2)).join(' ')}`);
  console.log(`  ratio (dnsmasq / clonecast): ${(m.dnsmasq / m.clonecast).toFixed(2)}x`);
}
process.exit(results[1].dnsmasq / results[1].clonecast >= 1 ? 0 : 1);
