// Scale benchmark: the transfer engine in one process over the in-memory
// network (test/unit/fake-network.ts: seeded, independent loss per receiving
// host), N receivers of one image of random data, and what the sender puts on
// the wire above one copy of every fragment. The baseline in the same run is
// the engine before parity repair (protocol 2: NACK bitmaps, the union of
// everyone's missing fragments resent), built from git (CLONECAST_BASELINE_REF,
// default the last protocol-2 commit) or given as a dist/ folder with --baseline.
//
//   node test/bench/scale.mjs [--n 8,30,60,120] [--loss 0.001,0.01,0.02,0.05] [--mib 8] [--runs 1] [--baseline DIR] [--no-baseline]
//
// Prints per cell: wire overhead (packets sent / one copy of every fragment - 1)
// of this engine and of the baseline, repair rounds, parity packets, seconds;
// then the goals (N=60 at 2%: at most 15%; N=120 at 1%: at most 12%).
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';

const ROOT = resolve(import.meta.dirname, '..', '..');
const BASELINE_REF = process.env.CLONECAST_BASELINE_REF ?? '3101c9a';
const { values } = parseArgs({
  options: {
    n: { type: 'string', default: '8,30,60,120' },
    loss: { type: 'string', default: '0.001,0.01,0.02,0.05' },
    mib: { type: 'string', default: '8' },
    runs: { type: 'string', default: '1' },
    baseline: { type: 'string' },
    'no-baseline': { type: 'boolean', default: false },
  },
});
const work = mkdtempSync(join(process.env.CLONECAST_BENCH_TMP ?? tmpdir(), 'clonecast-scale-'));

/** The in-memory network, compiled from its one TypeScript source. */
async function fakeNetwork() {
  const out = join(work, 'fake');
  execFileSync(join(ROOT, 'node_modules', '.bin', 'tsc'), ['--outDir', out, '--rootDir', ROOT, '--module', 'nodenext', '--moduleResolution', 'nodenext', '--target', 'es2022', '--skipLibCheck', '--ignoreConfig', '--types', 'node', join(ROOT, 'test', 'unit', 'fake-network.ts')], { cwd: ROOT });
  writeFileSync(join(out, 'package.json'), '{"type":"module"}');
  return (await import(pathToFileURL(join(out, 'test', 'unit', 'fake-network.js')).href)).FakeNetwork;
}

/** A project root holding the baseline's dist/ (built from git unless given), this project's node_modules and addon. */
function baselineRoot() {
  const root = join(work, 'baseline');
  mkdirSync(root);
  if (values.baseline !== undefined) {
    execFileSync('cp', ['-r', resolve(values.baseline), join(root, 'dist')]);
    mkdirSync(join(root, 'native'));
    writeFileSync(join(root, 'native', 'binding.gyp'), '{}');
  } else {
    execFileSync('sh', ['-c', `git -C "${ROOT}" archive ${BASELINE_REF} | tar -x -C "${root}"`]);
    symlinkSync(join(ROOT, 'node_modules'), join(root, 'node_modules'));
    execFileSync(process.execPath, ['scripts/build.mjs'], { cwd: root, stdio: 'ignore' });
  }
  symlinkSync(join(ROOT, 'native', 'build'), join(root, 'native', 'build'));
  return root;
}

async function engine(root) {
  const dist = (p) => import(pathToFileURL(join(root, 'dist', p)).href);
  return { ...(await dist('transfer/sender.js')), ...(await dist('transfer/receiver.js')) };
}

const { Store, parseRef } = await import(pathToFileURL(join(ROOT, 'dist', 'server', 'store', 'store.js')).href);
const { importImage } = await import(pathToFileURL(join(ROOT, 'dist', 'server', 'store', 'import.js')).href);
const { chunkAt, tableLength, ChunkKind } = await import(pathToFileURL(join(ROOT, 'dist', 'protocol', 'manifest.js')).href);
const { CHUNK } = await import(pathToFileURL(join(ROOT, 'dist', 'protocol', 'chunk.js')).href);
const FakeNetwork = await fakeNetwork();

const FRAGMENT = 1424;
const store = Store.open(join(work, 'data'));
const image = join(work, 'image.raw');
let seed = 12345;
const bytes = Buffer.alloc(Number(values.mib) << 20);
for (let i = 0; i < bytes.length; i += 4) bytes.writeUInt32LE((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0), i);
writeFileSync(image, bytes);
await importImage(store, image, 'scale', { workers: 1 });
const { name, version } = store.resolve(parseRef('scale'));
const manifest = await store.readManifest(name, version);
let copies = 0;
for (let i = 0; i < tableLength(manifest.table); i++) {
  const c = chunkAt(manifest.table, i);
  if (c.kind === ChunkKind.DATA) copies += Math.ceil((CHUNK.HEADER_SIZE + c.storedLength) / FRAGMENT);
}

/** One session of n receivers each losing loss; resolves with the sender's counters. */
async function session(eng, n, loss, netSeed) {
  const net = new FakeNetwork(netSeed);
  const sender = new eng.Sender({
    manifest, loadChunk: (i) => store.readChunk(chunkAt(manifest.table, i).sha256),
    group: '239.77.0.1', port: 9000, address: '10.77.0.1', rateMbit: 1000, fragmentSize: FRAGMENT,
    createSocket: net.factory('10.77.0.1'), openAdmission: true, hold: true, cacheChunks: 64,
  });
  const port = await sender.start();
  let joined = 0;
  sender.on('join', () => ++joined === n && sender.release());
  const info = { session: sender.session, group: '239.77.0.1', port: 9000, sender: { address: '10.77.0.1', port }, fragmentSize: FRAGMENT };
  const t0 = performance.now();
  try {
    await Promise.all(Array.from({ length: n }, (_, k) => {
      const host = `10.77.${1 + (k >> 8)}.${k & 255}`;
      net.faults.set(host, { loss });
      const target = join(work, `r${k}.img`);
      return new eng.Receiver({ session: info, manifest, target, createSocket: net.factory(host), receiverId: k + 1,
        keys: { data: sender.dataKey, receiver: sender.receiverKeyFor(k + 1) }, verify: false }).run();
    }));
  } finally {
    sender.stop();
  }
  return { counters: sender.counters, seconds: (performance.now() - t0) / 1000 };
}

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const now = await engine(ROOT);
const base = values['no-baseline'] ? null : await engine(baselineRoot());
const ns = values.n.split(',').map(Number);
const losses = values.loss.split(',').map(Number);
const runs = Number(values.runs);
const pct = (x) => `${(100 * x).toFixed(1)}%`.padStart(7);
console.log(`image ${values.mib} MiB random, ${tableLength(manifest.table)} chunks, one copy = ${copies} fragments of ${FRAGMENT} bytes; baseline: ${base === null ? 'none' : values.baseline ?? `git ${BASELINE_REF} (protocol 2, NACK union)`}`);
console.log('    N   loss  overhead  baseline   ratio  rounds  parity  repair   s   base s');
const cells = new Map();
for (const n of ns) {
  for (const loss of losses) {
    const o = [], b = [], rounds = [], parity = [], repair = [], secs = [], bsecs = [];
    for (let r = 0; r < runs; r++) {
      const seedRun = 1000 * n + Math.round(loss * 1e4) + r;
      const x = await session(now, n, loss, seedRun);
      o.push(x.counters.packetsSent / copies - 1);
      rounds.push(x.counters.repairRounds);
      parity.push(x.counters.parityPackets);
      repair.push(x.counters.repairPackets);
      secs.push(x.seconds);
      if (base !== null) {
        const y = await session(base, n, loss, seedRun);
        b.push(y.counters.packetsSent / copies - 1);
        bsecs.push(y.seconds);
      }
    }
    const cell = { n, loss, overhead: median(o), baseline: b.length ? median(b) : NaN };
    cells.set(`${n}/${loss}`, cell);
    console.log(`${String(n).padStart(5)} ${pct(loss)} ${pct(cell.overhead)}  ${b.length ? pct(cell.baseline) : '      -'}  ${b.length ? ((1 + cell.overhead) / (1 + cell.baseline)).toFixed(3).padStart(6) : '     -'} ${String(median(rounds)).padStart(7)} ${String(median(parity)).padStart(7)} ${String(median(repair)).padStart(7)} ${median(secs).toFixed(1).padStart(5)} ${bsecs.length ? median(bsecs).toFixed(1).padStart(7) : '      -'}`);
  }
}
console.log('ratio: packets on the wire, this engine / baseline (below 1 is fewer)');
for (const [key, goal] of [['60/0.02', 0.15], ['120/0.01', 0.12]]) {
  const c = cells.get(key);
  if (c === undefined) continue;
  console.log(`goal N=${c.n} at ${pct(c.loss).trim()} loss: overhead at most ${pct(goal).trim()}: ${pct(c.overhead).trim()} (baseline ${Number.isNaN(c.baseline) ? '-' : pct(c.baseline).trim()}) ${c.overhead <= goal ? 'met' : 'MISSED'}`);
}
console.log(`peak RSS of this process ${(process.resourceUsage().maxRSS / 1024).toFixed(0)} MiB (sender and every receiver together)`);
rmSync(work, { recursive: true, force: true });
process.exit(0);
