// DHCP load benchmark: ISC's perfdhcp (Debian kea-admin) runs DORA exchanges
// from one network namespace against a server in another, joined by a veth
// pair (10.77.50.0/24): `clonecast serve --pxe full` and dnsmasq (--no-ping,
// the same pool), one after the other in the same run. Prints, for each,
// DISCOVER/OFFER and REQUEST/ACK sent/received and the share of DORA
// exchanges completed; for clonecast also its peak RSS and the largest
// event-loop delay it saw (clonecast_event_loop_delay_max_seconds, /metrics).
// Needs root, perfdhcp (apt-get install kea-admin), dnsmasq (dnsmasq-base)
// and Debian's ipxe package (serve --pxe copies its binaries).
// Usage: npm run build && node test/bench/dhcp.mjs [--rate 2000] [--clients 200] [--seconds 10]
//        [--baseline DIR]   also run the clonecast built in DIR (e.g. an older commit), labelled "before"
//        [--runs N]         repeat the whole comparison N times (the servers interleaved), print every run
//        [--cpu-prof DIR]   write a V8 CPU profile of this tree's server to DIR (node --cpu-prof)
import { spawn, spawnSync, execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';

const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const RATE = Number(arg('--rate', 2000));
const CLIENTS = Number(arg('--clients', 200));
const SECONDS = Number(arg('--seconds', 10));
const BASELINE = arg('--baseline', undefined);
const RUNS = Number(arg('--runs', 1));
const CPU_PROF = arg('--cpu-prof', undefined);
const root = new URL('../..', import.meta.url).pathname;
const dir = `/tmp/cc-dhcp-bench-${process.pid}`;
const ns = { server: `ccdb${process.pid}s`, client: `ccdb${process.pid}c` };
const IF = { server: 'ccdb0', client: 'ccdb1' };
const SERVER_IP = '10.77.50.1';
const POOL = ['10.77.50.10', '10.77.50.250'];

for (const tool of ['perfdhcp', 'dnsmasq']) {
  if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) {
    console.error(`dhcp bench: ${tool} is missing; apt-get install ${tool === 'perfdhcp' ? 'kea-admin' : 'dnsmasq-base'}`);
    process.exit(2);
  }
}

const children = new Set();
function cleanup() {
  for (const c of children) if (c.exitCode === null) process.kill(c.pid, 'SIGKILL');
  for (const n of Object.values(ns)) spawnSync('ip', ['netns', 'del', n]);
  rmSync(dir, { recursive: true, force: true });
}
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(130));

mkdirSync(dir, { recursive: true });
// Other work on the machine skews every figure here: say how busy it was.
const LOAD = readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
for (const n of Object.values(ns)) {
  execFileSync('ip', ['netns', 'add', n]);
  execFileSync('ip', ['-n', n, 'link', 'set', 'lo', 'up']);
}
execFileSync('ip', ['-n', ns.server, 'link', 'add', IF.server, 'type', 'veth', 'peer', 'name', IF.client, 'netns', ns.client]);
execFileSync('ip', ['-n', ns.server, 'addr', 'add', `${SERVER_IP}/24`, 'dev', IF.server]);
execFileSync('ip', ['-n', ns.client, 'addr', 'add', '10.77.50.2/24', 'dev', IF.client]);
execFileSync('ip', ['-n', ns.server, 'link', 'set', IF.server, 'up']);
execFileSync('ip', ['-n', ns.client, 'link', 'set', IF.client, 'up']);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function start(namespace, cmd, args) {
  const c = spawn('ip', ['netns', 'exec', namespace, cmd, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(c);
  c.out = '';
  c.stdout.on('data', (d) => (c.out += d));
  // Drain stderr (the server logs every lease) so a full pipe never stalls it, but keep only the tail.
  c.err = '';
  c.stderr.on('data', (d) => (c.err = (c.err + d).slice(-4000)));
  return c;
}

async function stop(c) {
  if (c.exitCode !== null) return;
  process.kill(c.pid, 'SIGTERM');
  for (let i = 0; i < 50 && c.exitCode === null; i++) await sleep(100);
  if (c.exitCode === null) process.kill(c.pid, 'SIGKILL');
  children.delete(c);
}

/** perfdhcp's sent/received counts of one exchange block. */
function block(out, name) {
  const i = out.indexOf(`Statistics for: ${name}`);
  if (i < 0) return { sent: 0, received: 0 };
  const text = out.slice(i, i + 800);
  return { sent: Number(/sent packets: (\d+)/.exec(text)?.[1] ?? 0), received: Number(/received packets: (\d+)/.exec(text)?.[1] ?? 0) };
}

async function perfdhcp() {
  const c = start(ns.client, 'perfdhcp', ['-4', '-l', IF.client, '-r', String(RATE), '-R', String(CLIENTS), '-p', String(SECONDS)]);
  await new Promise((r) => c.on('close', r));
  children.delete(c);
  const d = block(c.out, 'DISCOVER-OFFER');
  const r = block(c.out, 'REQUEST-ACK');
  if (d.sent === 0) console.error(c.out, c.err);
  return { discover: d.sent, offer: d.received, request: r.sent, ack: r.received, completed: d.sent > 0 ? (100 * r.received) / d.sent : 0 };
}

/** The server's /proc status field in kB. */
function procKb(pid, field) {
  try {
    return Number(new RegExp(`${field}:\\s+(\\d+)`).exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

async function clonecast(label, tree) {
  const data = join(dir, `data-${label}`);
  const prof = CPU_PROF !== undefined && tree === root ? ['--cpu-prof', `--cpu-prof-dir=${CPU_PROF}`] : [];
  const c = start(ns.server, process.execPath, [
    ...prof,
    join(tree, 'bin', 'clonecast'), 'serve', '--data', data, '--listen', `${SERVER_IP}:0`, '--interface', IF.server, '--pxe', 'full', '--pool', POOL.join('-'),
  ]);
  for (let i = 0; i < 150 && !c.out.includes('stop with Ctrl-C') && c.exitCode === null; i++) await sleep(100);
  if (!c.out.includes('stop with Ctrl-C')) throw new Error(`clonecast (${label}) did not start: ${c.out}${c.err}`);
  // Older builds print the token in the dashboard URL over http://; newer ones print it apart, over https://.
  const url = [/dashboard:\s+(\S+?)(?:#token=\S+)?\s/.exec(c.out)?.[1], /token:\s+([0-9a-f]+)/.exec(c.out)?.[1]];
  // `ip netns exec` execs the command: the server is the spawned process itself.
  const node = c.pid;
  const loopDelay = () => {
    try {
      const m = execFileSync('ip', ['netns', 'exec', ns.server, 'curl', '-s', '--insecure', '-H', `Authorization: Bearer ${url[1]}`, `${url[0]}metrics`]).toString();
      const v = /^clonecast_event_loop_delay_max_seconds (\S+)/m.exec(m)?.[1];
      return v === undefined ? null : Number(v);
    } catch {
      return null;
    }
  };
  // The maximum is since the server started: read it before too, to tell start-up from load.
  const loopAtStart = loopDelay();
  const result = await perfdhcp();
  const loopMax = loopDelay();
  const rssMb = procKb(node, 'VmHWM') / 1024;
  await stop(c);
  return { ...result, rssMb, loopMax, loopAtStart };
}

async function dnsmasq() {
  const c = start(ns.server, 'dnsmasq', [
    '--no-daemon', '--conf-file=/dev/null', '--port=0', '--no-ping', `--interface=${IF.server}`, '--bind-interfaces',
    `--dhcp-range=${POOL[0]},${POOL[1]},1h`, `--dhcp-leasefile=${join(dir, 'dnsmasq.leases')}`, `--pid-file=${join(dir, 'dnsmasq.pid')}`, '--log-facility=-', '--quiet-dhcp',
  ]);
  await sleep(1000);
  const result = await perfdhcp();
  await stop(c);
  return { ...result, rssMb: null, loopMax: null, loopAtStart: null };
}

const rows = [];
for (let run = 1; run <= RUNS; run++) {
  const tag = RUNS > 1 ? ` #${run}` : '';
  if (BASELINE !== undefined) rows.push([`clonecast (before)${tag}`, await clonecast(`before${run}`, BASELINE)]);
  rows.push([`clonecast${tag}`, await clonecast(`now${run}`, root)]);
  rows.push([`dnsmasq --no-ping${tag}`, await dnsmasq()]);
}

console.log(`perfdhcp -4 -r ${RATE} -R ${CLIENTS} -p ${SECONDS}, pool of ${1 + Number(POOL[1].split('.')[3]) - Number(POOL[0].split('.')[3])} addresses`);
console.log(`load average before the run: ${LOAD}`);
console.log('server                  DISCOVER   OFFER  REQUEST     ACK  completed  peak RSS  max loop delay (at start)');
for (const [name, r] of rows) {
  console.log(
    `${name.padEnd(23)} ${String(r.discover).padStart(8)} ${String(r.offer).padStart(7)} ${String(r.request).padStart(8)} ${String(r.ack).padStart(7)} ${`${r.completed.toFixed(1)}%`.padStart(10)}` +
      ` ${r.rssMb === null ? '       -' : `${r.rssMb.toFixed(0)} MB`.padStart(8)}  ${r.loopMax === null ? '-' : `${(r.loopMax * 1000).toFixed(1)} ms (${(r.loopAtStart * 1000).toFixed(1)} ms)`}`,
  );
}
