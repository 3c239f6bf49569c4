// Time from the last chunk written to "verified", in the namespace lab
// (root): `clonecast send` to one `clonecast receive` of a SIZE MiB image
// onto a loop device, RUNS times, for a baseline build (default
// /tmp/cc-before: the parent commit built in a scratch copy) and for this
// tree. The receiver runs in-process here with two hooks on its class: the
// 'verifying' event (every chunk written) and its first report in state
// DONE (verified); the tail is the time between them. Medians, and the ratio.
//   node test/bench/verify-tail.mjs [BASELINE_ROOT] [RUNS] [SIZE_MIB]
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';

const ROOT = resolve(import.meta.dirname, '..', '..');

if (process.argv[2] === '--child') {
  // Inside the client namespace: one receive with the two hooks, printing the tail as JSON.
  const [, , , root, from, keyFile, disk, address] = process.argv;
  const { Receiver } = await import(join(root, 'dist', 'transfer', 'receiver.js'));
  const { ReceiverState } = await import(join(root, 'dist', 'protocol', 'mcast.js'));
  const { receive } = await import(join(root, 'dist', 'cli', 'transfer.js'));
  let written = 0;
  let verified = 0;
  const emit = Receiver.prototype.emit;
  Receiver.prototype.emit = function (event, ...args) {
    if (event === 'verifying' && written === 0) written = performance.now();
    return emit.call(this, event, ...args);
  };
  const report = Receiver.prototype.report;
  Receiver.prototype.report = function () {
    if (this.state === ReceiverState.DONE && verified === 0) verified = performance.now();
    return report.call(this);
  };
  const r = await receive({ from, disk, keyFile, address, resume: false, force: true, verify: true, json: true });
  console.log(JSON.stringify({ tailMs: verified - written, seconds: r.seconds, verified: r.verified }));
  process.exit(0);
}

const { makeImage } = await import('./mkimage.mjs');
const { Lab } = await import('../../dist/server/lab/netns.js');
const [baseline = '/tmp/cc-before', runsArg = '3', sizeArg = '256'] = process.argv.slice(2);
const RUNS = Number(runsArg);
const MIB = Number(sizeArg);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function once(lab, root, data, loop) {
  const cli = join(root, 'bin', 'clonecast');
  return new Promise((resolveRun, reject) => {
    const s = lab.spawnIn(lab.server.ns, process.execPath, [cli, 'send', 'img', '--data', data, '--address', '10.77.0.1', '--clients', '1', '--json']);
    let err = '';
    let started = false;
    s.stderr.on('data', (d) => {
      err += d;
      const m = /session: (\S+)/.exec(err);
      const k = /key file: (\S+)/.exec(err);
      if (!m || !k || started) return;
      started = true;
      const c = lab.spawnIn(lab.clients[0].ns, process.execPath, [import.meta.filename, '--child', root, m[1], k[1], loop, lab.clients[0].address]);
      let out = '';
      let cerr = '';
      c.stdout.on('data', (d) => (out += d));
      c.stderr.on('data', (d) => (cerr += d));
      c.on('close', () => {
        try {
          resolveRun(JSON.parse(out.trim().split('\n').pop()));
        } catch {
          reject(new Error(`receiver: ${out} ${cerr}`));
        }
      });
    });
  });
}

const results = {};
const work = mkdtempSync('/tmp/cc-tail-');
try {
  const raw = join(work, 'raw');
  makeImage(raw, MIB, { seed: 4 });
  const file = join(work, 'disk');
  writeFileSync(file, Buffer.alloc(0));
  execFileSync('truncate', ['-s', String((MIB + 8) << 20), file]);
  const loop = execFileSync('losetup', ['--find', '--show', file], { encoding: 'utf8' }).trim();
  const lab = Lab.up({ clients: 1 });
  try {
    for (const [name, root] of [['baseline', resolve(baseline)], ['this', ROOT]]) {
      const data = join(work, `data-${name}`);
      execFileSync(process.execPath, [join(root, 'bin', 'clonecast'), 'image', 'import', raw, 'img', '--data', data, '--json'], { stdio: 'ignore' });
      const tails = [];
      for (let r = 0; r < RUNS; r++) {
        execFileSync('blkdiscard', ['-f', loop], { stdio: 'ignore' }); // the disk starts empty each time
        const got = await once(lab, root, data, loop);
        if (!got.verified) throw new Error(`${name}: not verified`);
        tails.push(got.tailMs);
      }
      results[name] = median(tails);
      console.log(`${name.padEnd(8)} last chunk written -> verified: ${results[name].toFixed(0)} ms (median of ${RUNS}: ${tails.map((t) => t.toFixed(0)).join(' ')}), ${MIB} MiB image on a loop device`);
    }
  } finally {
    lab.down();
    execFileSync('losetup', ['-d', loop]);
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
console.log(`this/baseline = ${(results.this / results.baseline).toFixed(3)}`);
