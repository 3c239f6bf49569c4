// Boot storm: 30 machines (network namespaces of the lab) fetch the kernel
// and the initramfs over HTTP from the server's boot listener at once, on a
// 1000 mbit link (tbf on the server's port). Measured: time until all have
// both files, bytes sent. Baseline in the same run: the same 30 fetches of
// the old boot files' size (kernel + the initramfs of the gzip'ed boot
// environment before this work: --old-initrd FILE, else a random file of its
// measured size, 40.3 MiB); and the ideal time, bytes x 8 / link rate.
// Needs root, curl, a kernel package (.ci/run) and a built clonecast.
// Usage: npm run build && flock /tmp/cc-lab.lock node test/bench/boot-storm.mjs [--boot-dir DIR] [--old-initrd FILE] [--clients N] [--mbit N] [--runs N]
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';

const root = new URL('../..', import.meta.url).pathname;
const opt = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const CLIENTS = Number(opt('--clients', 30));
const MBIT = Number(opt('--mbit', 1000));
const RUNS = Number(opt('--runs', 3));
const OLD_INITRD_BYTES = Math.round(40.3 * 1048576); // docs/pxe.md before this work: kernel 7.9 MiB, initramfs 40.3 MiB (gzip -6)
const MiB = 1048576;

const { Lab } = await import(join(root, 'dist/server/lab/netns.js'));
const dir = `/tmp/cc-boot-storm-${process.pid}`;
mkdirSync(dir, { recursive: true });
let bootDir = opt('--boot-dir');
if (bootDir === undefined) {
  const { buildBootEnv } = await import(join(root, 'dist/pxe/bootenv.js'));
  bootDir = join(dir, 'boot');
  const env = buildBootEnv({ out: bootDir, log: (m) => console.error(`  ${m}`) });
  console.log(`built the boot environment in ${env.seconds.toFixed(1)} s; inside: ${env.parts.map((p) => `${p.part} ${(p.bytes / MiB).toFixed(1)} MiB`).join(', ')}`);
}
const oldDir = join(dir, 'old');
mkdirSync(oldDir, { recursive: true });
copyFileSync(join(bootDir, 'vmlinuz'), join(oldDir, 'vmlinuz'));
const oldInitrd = opt('--old-initrd');
if (oldInitrd !== undefined) copyFileSync(oldInitrd, join(oldDir, 'initrd.img'));
else writeFileSync(join(oldDir, 'initrd.img'), randomBytes(OLD_INITRD_BYTES));

const lab = Lab.up({ clients: CLIENTS, rateMbit: MBIT });
const children = [];
const cleanup = () => {
  for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  lab.down();
  rmSync(dir, { recursive: true, force: true });
};
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(130));

async function serve(boot) {
  const data = join(dir, `data-${children.length}`);
  const p = lab.spawnIn(lab.server.ns, process.execPath, [join(root, 'bin/clonecast'), 'serve', '--data', data, '--listen', '10.77.0.1:8080', '--interface', 'eth0', '--pxe', 'full', '--boot-dir', boot]);
  children.push(p);
  let out = '';
  p.stdout.on('data', (d) => (out += d));
  p.stderr.on('data', (d) => (out += d));
  const t0 = Date.now();
  while (!out.includes('stop with Ctrl-C')) {
    if (p.exitCode !== null || Date.now() - t0 > 30_000) throw new Error(`the server did not start: ${out}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return p;
}

/** All clients fetch vmlinuz then initrd.img at once; seconds until the last has both, bytes received. */
async function storm() {
  const t0 = performance.now();
  const fetches = lab.clients.map(
    (c) =>
      new Promise((resolve, reject) => {
        const sh = `for f in vmlinuz initrd.img; do curl -sf -o /dev/null -w '%{size_download}\\n' http://10.77.0.1:8081/boot/files/$f || exit 1; done`;
        const p = spawn('ip', ['netns', 'exec', c.ns, 'sh', '-c', sh], { stdio: ['ignore', 'pipe', 'inherit'] });
        let out = '';
        p.stdout.on('data', (d) => (out += d));
        p.on('close', (code) => (code === 0 ? resolve(out.trim().split('\n').reduce((n, x) => n + Number(x), 0)) : reject(new Error(`curl in ${c.ns} failed (exit ${code})`))));
      }),
  );
  const bytes = (await Promise.all(fetches)).reduce((a, b) => a + b, 0);
  return { seconds: (performance.now() - t0) / 1000, bytes };
}

/** CPU seconds (user + system) of a process so far. */
const cpu = (pid) => {
  const [u, s] = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ').slice(11, 13).map(Number);
  return (u + s) / 100; // USER_HZ
};
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const size = (d) => statSync(join(d, 'vmlinuz')).size + statSync(join(d, 'initrd.img')).size;
const results = { new: [], old: [] };
for (const [name, d] of [['new', bootDir], ['old', oldDir]]) {
  const server = await serve(d);
  for (let r = 0; r < RUNS; r++) {
    const c0 = cpu(server.pid);
    const s = await storm();
    s.cpu = cpu(server.pid) - c0;
    if (s.bytes !== size(d) * CLIENTS) throw new Error(`${name}: ${s.bytes} bytes received, expected ${size(d) * CLIENTS}`);
    results[name].push(s);
  }
  server.kill('SIGTERM');
  await new Promise((r) => server.on('close', r));
}
const ideal = (bytes) => (bytes * 8) / (MBIT * 1e6);
console.log(`boot storm: ${CLIENTS} clients, ${MBIT} mbit link, ${RUNS} runs each, medians`);
console.log(`  new: kernel ${(statSync(join(bootDir, 'vmlinuz')).size / MiB).toFixed(1)} MiB + initramfs ${(statSync(join(bootDir, 'initrd.img')).size / MiB).toFixed(1)} MiB = ${(size(bootDir) / MiB).toFixed(1)} MiB per machine`);
console.log(`  old: kernel ${(statSync(join(oldDir, 'vmlinuz')).size / MiB).toFixed(1)} MiB + initramfs ${(statSync(join(oldDir, 'initrd.img')).size / MiB).toFixed(1)} MiB = ${(size(oldDir) / MiB).toFixed(1)} MiB per machine${oldInitrd === undefined ? ' (initramfs: random bytes of the old size)' : ''}`);
for (const name of ['new', 'old']) {
  const t = median(results[name].map((r) => r.seconds));
  const bytes = results[name][0].bytes;
  console.log(`  ${name}: ${(bytes / MiB).toFixed(0)} MiB in all, ${t.toFixed(1)} s until all ${CLIENTS} have both files (runs ${results[name].map((r) => r.seconds.toFixed(1)).join(', ')}); ideal ${ideal(bytes).toFixed(1)} s, ideal/measured ${(ideal(bytes) / t).toFixed(2)}; server CPU ${median(results[name].map((r) => r.cpu)).toFixed(1)} s`);
}
const tn = median(results.new.map((r) => r.seconds));
const to = median(results.old.map((r) => r.seconds));
console.log(`  new/old time ${(tn / to).toFixed(2)}; new/old bytes ${(size(bootDir) / size(oldDir)).toFixed(2)}; goal 25 MiB per machine: ${size(bootDir) <= 25 * MiB ? 'met' : `not met (${(size(bootDir) / MiB).toFixed(1)} MiB)`}`);
process.exit(0);
