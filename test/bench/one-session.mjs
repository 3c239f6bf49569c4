// One clonecast session in the lab, printing the sender's and receivers'
// counters: for tuning the engine by hand (root).
//   node test/bench/one-session.mjs N IMAGE_MIB LINK_MBIT(0: none) RATE_MBIT LOSS(0-1)
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { makeImage } from './mkimage.mjs';
import { Lab } from '../../dist/server/lab/netns.js';
const CLI = join(import.meta.dirname, '..', '..', 'bin', 'clonecast');
const [n, mib, rateLimit, rate, loss] = process.argv.slice(2).map(Number);
const work = mkdtempSync('/tmp/one-');
const raw = join(work, 'raw'); makeImage(raw, mib, { dense: true, seed: 3 });
execFileSync(process.execPath, [CLI, 'image', 'import', raw, 'b', '--data', join(work, 'd'), '--json'], { stdio: 'ignore' });
const lab = Lab.up({ clients: n, rateMbit: rateLimit || undefined, loss: loss || undefined });
const t0 = performance.now();
const s = lab.spawnIn(lab.server.ns, process.execPath, [CLI, 'send', 'b', '--data', join(work, 'd'), '--address', '10.77.0.1', '--clients', String(n), '--rate', String(rate), '--json']);
let err = '', out = '';
const senderClosed = new Promise((r) => s.on('close', r));
s.stdout.on('data', (d) => (out += d));
const [url, keyFile] = await new Promise((r) => s.stderr.on('data', (d) => { err += d; const m = /session: (\S+)/.exec(err); const k = /key file: (\S+)/.exec(err); if (m && k) r([m[1], k[1]]); }));
const rs = await Promise.all(lab.clients.map((c, k) => new Promise((r) => { const p = lab.spawnIn(c.ns, process.execPath, [CLI, 'receive', '--from', url, '--key-file', keyFile, '--disk', join(work, `o${k}`), '--address', c.address, '--json']); let o = ''; p.stdout.on('data', (d) => (o += d)); p.on('close', () => r({ t: performance.now() - t0, j: JSON.parse(o) })); })));
await senderClosed;
const j = JSON.parse(out);
console.log('receivers end (s):', rs.map((r) => (r.t / 1000).toFixed(1)).join(' '));
console.log('receiver seconds (own):', rs.map((r) => r.j.seconds.toFixed(1)).join(' '), 'lost', rs.map((r) => r.j.counters.lost).join(' '), 'evictions', rs.map(r=>r.j.counters.evictions).join(' '), 'qdrops', rs.map(r=>r.j.counters.queueFullDrops).join(' '));
console.log('sender:', JSON.stringify(j.counters), 'MiB sent', (j.counters.bytesSent / 2 ** 20).toFixed(1));
lab.down(); rmSync(work, { recursive: true, force: true });
