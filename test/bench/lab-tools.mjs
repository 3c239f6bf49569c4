// Helpers for the benchmarks that run in the network-namespace lab
// (classroom.mjs): the shared lab lock, /usr/bin/time and /proc readings,
// udpcast runs, and a sampler of a namespace's interface counters.
import { spawn, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export const MiB = 1 << 20;
export const GiB = 1 << 30;
const TICKS = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

/**
 * Takes the lab lock (flock on path) that every lab test and benchmark on this
 * machine holds while it runs; resolves with a release function. The lock is
 * held by a child `flock ... cat` and goes when its stdin closes (also when
 * this process dies).
 */
export function labLock(path) {
  return new Promise((resolvePromise, reject) => {
    const child = spawn('flock', [path, 'sh', '-c', 'echo locked; exec cat >/dev/null'], { stdio: ['pipe', 'pipe', 'inherit'] });
    child.on('error', reject);
    child.stdout.once('data', () => resolvePromise(() => {
      child.stdin.end();
      return new Promise((r) => (child.exitCode !== null ? r() : child.on('close', r)));
    }));
  });
}

/** Waits until check() is true, polling every 50 ms; throws with what after timeoutMs. */
export async function until(check, timeoutMs, what) {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A child process and what it printed so far (stdout and stderr apart). */
export function watch(child) {
  const p = { child, out: '', err: '', endedAt: 0 };
  p.exited = new Promise((r) => child.on('close', (code) => {
    p.endedAt = Date.now();
    r(code);
  }));
  child.stdout?.on('data', (d) => (p.out += d));
  child.stderr?.on('data', (d) => (p.err += d));
  return p;
}

/** CPU seconds (user + system) of a running process, from /proc/PID/stat; NaN if it is gone. */
export function cpuOf(pid) {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // Fields 14 and 15 of proc(5) (utime, stime) are 11 and 12 after the state field.
    return (Number(f[11]) + Number(f[12])) / TICKS;
  } catch {
    return NaN;
  }
}

/** Peak resident memory of a running process, MiB (VmHWM); NaN if it is gone. */
export function peakRssOf(pid) {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** Bytes sent on iface in the network namespace of process pid (/proc/PID/net/dev); NaN if unreadable. */
export function txBytesOf(pid, iface = 'eth0') {
  try {
    const line = readFileSync(`/proc/${pid}/net/dev`, 'utf8').split('\n').find((l) => l.trim().startsWith(`${iface}:`));
    // Receive: bytes packets errs drop fifo frame compressed multicast; then transmit bytes.
    return Number(line.split(':')[1].trim().split(/\s+/)[8]);
  } catch {
    return NaN;
  }
}

/**
 * Samples the bytes sent on a namespace's eth0 (through the /proc entry of a
 * process living there) every periodMs; stop() returns [[ms since epoch, bytes], ...].
 */
export function sampleTx(pid, periodMs = 10) {
  const samples = [[Date.now(), txBytesOf(pid)]];
  const timer = setInterval(() => samples.push([Date.now(), txBytesOf(pid)]), periodMs);
  return {
    stop() {
      clearInterval(timer);
      samples.push([Date.now(), txBytesOf(pid)]);
      return samples;
    },
  };
}

/**
 * When data flowed, from tx samples: the first and last sample interval whose
 * rate was at least minMbit (control traffic, ACKs and progress stay far below
 * it), looking only at or after fromMs. Times are the end of that interval.
 */
export function dataSpan(samples, fromMs, minMbit = 20) {
  let first = null;
  let last = null;
  for (let i = 1; i < samples.length; i++) {
    const [t0, b0] = samples[i - 1];
    const [t1, b1] = samples[i];
    if (t1 < fromMs || t1 <= t0) continue;
    if (((b1 - b0) * 8) / ((t1 - t0) / 1000) >= minMbit * 1e6) {
      first ??= t1;
      last = t1;
    }
  }
  return { first, last };
}

const TIME_RE = /TIME ([\d.]+) ([\d.]+) ([\d.]+) (\d+)/;

/** Runs argv under /usr/bin/time inside namespace ns; the result's cpu and rssMiB come from time's report. */
export function timedIn(lab, ns, argv, env = process.env) {
  const p = watch(lab.spawnIn(ns, '/usr/bin/time', ['-f', 'TIME %e %U %S %M', ...argv], { env }));
  p.result = p.exited.then((code) => {
    const m = TIME_RE.exec(p.err);
    return { code, endedAt: p.endedAt, cpu: m ? Number(m[2]) + Number(m[3]) : NaN, rssMiB: m ? Number(m[4]) / 1024 : NaN };
  });
  return p;
}

/** True if file holds exactly the bytes of raw (cmp). */
export function identical(file, raw) {
  return spawnSync('cmp', ['-s', file, raw]).status === 0;
}

/**
 * One udpcast transfer in a built lab, the clock started with udp-sender and
 * the receivers started right after it (a receiver started before the sender
 * that loses the sender's first HELLO waits for ever). zstd: the file is
 * zstd-compressed and each receiver decompresses through --pipe; slow: the
 * last receiver writes at 2 MiB/s (pv -L 2m in its pipe). Resolves with t0,
 * the sender's and each receiver's /usr/bin/time results (endedAt in ms since
 * epoch) and the output files.
 */
export async function udpcast(lab, { file, n, work, zstd, rateMbit, slow }) {
  const port = String(9200 + Math.floor(Math.random() * 100) * 2);
  const common = ['--interface', 'eth0', '--nokbd', '--portbase', port, '--mcast-rdv-address', '239.77.1.1'];
  const senderArgs = ['udp-sender', '--file', file, ...common, '--min-receivers', String(n)];
  if (rateMbit !== undefined) senderArgs.push('--max-bitrate', `${rateMbit}m`);
  const outs = lab.clients.slice(0, n).map((_, k) => join(work, `udp-${k}.img`));
  const receiverArgs = outs.map((out, k) => {
    const stages = [zstd ? 'zstd -d -q' : '', slow && k === n - 1 ? 'pv -q -L 2m' : ''].filter(Boolean);
    const args = ['udp-receiver', '--file', out, ...common];
    // udp-receiver splits --pipe on spaces and runs it without a shell: a pipeline goes in a script.
    if (stages.length === 1) args.push('--pipe', stages[0]);
    if (stages.length > 1) {
      const script = join(work, `pipe-${k}.sh`);
      writeFileSync(script, `#!/bin/sh\n${stages.join(' | ')}\n`, { mode: 0o755 });
      args.push('--pipe', script);
    }
    return args;
  });
  // With loss, a receiver whose connection reply is lost can wait for ever, and the sender
  // with it (--min-receivers): after CONNECT_MS without every receiver connected, start again.
  for (let attempt = 1; ; attempt++) {
    const t0 = Date.now();
    const sender = timedIn(lab, lab.server.ns, senderArgs);
    const receivers = receiverArgs.map((args, k) => timedIn(lab, lab.clients[k].ns, args));
    const all = [sender, ...receivers];
    try {
      await until(() => (sender.err.match(/New connection from/g) ?? []).length >= n || sender.child.exitCode !== null, CONNECT_MS, `${n} udp-receivers to connect`);
    } catch (err) {
      if (attempt >= 3) throw err;
      console.log(`    (udpcast: not every receiver connected within ${CONNECT_MS / 1000} s; starting it again)`);
      killTrees(all.map((p) => p.child.pid));
      // Bounded: a close event that never comes must not stop the benchmark.
      await Promise.race([Promise.all(all.map((p) => p.exited)), new Promise((r) => setTimeout(r, 3000))]);
      continue;
    }
    const done = await Promise.all(receivers.map((r) => r.result));
    return { t0, attempts: attempt, sender: await sender.result, receivers: done, outs, errors: receivers.map((r) => r.err) };
  }
}

/** How long udp-sender may wait for its receivers to connect before udpcast() starts it again, ms. */
const CONNECT_MS = 15_000;

/** Process ids of every descendant of pid (from the parent ids in /proc), children first. */
export function descendants(pid) {
  const parent = new Map();
  for (const e of readdirSync('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const stat = readFileSync(`/proc/${e}/stat`, 'utf8');
      parent.set(Number(e), Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]));
    } catch {
      // gone meanwhile
    }
  }
  const out = [];
  const walk = (p) => {
    for (const [child, pp] of parent) if (pp === p) out.push(child), walk(child);
  };
  walk(pid);
  return out;
}

/** SIGKILLs each process of pids and all their descendants (only what this benchmark started). */
export function killTrees(pids) {
  const all = pids.flatMap((p) => [p, ...descendants(p)]);
  for (const p of all) {
    try {
      process.kill(p, 'SIGKILL');
    } catch {
      // already gone
    }
  }
}

/**
 * Kills everything the lab runs, and what those started, after ms (a stuck
 * transfer then ends as a failure); cancel() stops the clock.
 */
export function deadline(lab, ms) {
  const timer = setTimeout(() => {
    console.log(`    (no end after ${ms / 1000} s: stopping this transfer)`);
    killTrees(lab.childPids());
  }, ms);
  return { cancel: () => clearTimeout(timer) };
}

/** Median of numbers (the mean of the middle two for an even count); NaN for none. */
export function median(xs) {
  const s = xs.filter((x) => typeof x === 'number' && !Number.isNaN(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const h = Math.floor(s.length / 2);
  return s.length % 2 === 1 ? s[h] : (s[h - 1] + s[h]) / 2;
}
