import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, cli, seeded, serverFetch, tempDir, texty } from '../helpers.js';

describe('clonecast CLI', () => {
  const dir = tempDir('cli');
  const data = join(dir, 'data');
  const src = join(dir, 'disk.img');
  writeFileSync(src, Buffer.concat([seeded(300_000, 1), Buffer.alloc(2_000_000), texty(700_001, 2)]));

  it('prints usage and exits 2 without a command, 0 with --help', async () => {
    expect((await cli([])).code).toBe(2);
    const help = await cli(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/\n  image import SRC NAME\n +Store a raw image/);
    expect(help.stdout).toMatch(/clonecast COMMAND --help/);
    const bad = await cli(['image', 'frobnicate', '--data', data]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/unknown image subcommand "frobnicate"/);
    expect((await cli(['image', 'list', '--bogus'])).code).toBe(2);
  });

  it('imports with a final progress line and a summary, and --json gives the same facts', async () => {
    const r = await cli(['image', 'import', src, 'demo', '--data', data]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/imported demo@1/);
    expect(r.stderr).toMatch(/import demo 100\.0% 2\.9 MiB \/ 2\.9 MiB .*\/s done/);
    const j = await cli(['image', 'import', src, 'demo', '--data', data, '--json']);
    expect(j.code).toBe(0);
    expect(j.stderr).toBe('');
    expect(j.json).toMatchObject({ name: 'demo', version: 2, parent: 1, newBytes: 0, diskSize: 3_000_001 });
    expect(j.json.reusedChunks).toBe(j.json.dataChunks);
  });

  it('lists, shows info, verifies and exports', async () => {
    const list = await cli(['image', 'list', '--data', data, '--json']);
    expect(list.json).toEqual([expect.objectContaining({ name: 'demo', versions: [1, 2] })]);
    const info = await cli(['image', 'info', 'demo@1', '--data', data]);
    expect(info.stdout).toMatch(/virtual size 2\.9 MiB \(3000001 bytes\)/);
    expect(info.stdout).toMatch(/ratios\s+compression [\d.]+x, dedupe [\d.]+x/);
    expect((await cli(['image', 'verify', '--data', data])).stdout).toMatch(/all sound/);
    const out = join(dir, 'out.img');
    const e = await cli(['image', 'export', 'demo@2', out, '--data', data]);
    expect(e.code).toBe(0);
    expect(readFileSync(out).equals(readFileSync(src))).toBe(true);
  });

  it('exits 3 with a helpful message for what does not exist', async () => {
    const r = await cli(['image', 'info', 'ghost', '--data', data]);
    expect(r.code).toBe(3);
    expect(r.stderr).toMatch(/no image named "ghost".*images: demo/);
    const j = await cli(['image', 'import', join(dir, 'none.img'), 'x', '--data', data, '--json']);
    expect(j.code).toBe(3);
    expect(j.json.error.code).toBe('CLONECAST_ERR_NOT_FOUND');
  });

  it('exits 4 when verify finds damage, naming chunk and image', async () => {
    const chunks = join(data, 'chunks');
    const dirWithChunk = readdirSync(chunks).find((d) => readdirSync(join(chunks, d)).length > 0)!;
    const file = join(chunks, dirWithChunk, readdirSync(join(chunks, dirWithChunk))[0]);
    const saved = readFileSync(file);
    writeFileSync(file, saved.subarray(0, saved.length - 1));
    try {
      const r = await cli(['image', 'verify', 'demo', '--data', data]);
      expect(r.code).toBe(4);
      expect(r.stdout).toMatch(/DAMAGED chunk [0-9a-f]{64}: .* used by demo@1 chunk \d+ \(offset \d+\)/);
    } finally {
      writeFileSync(file, saved);
    }
  });

  it('exits 9 for a manifest from a newer clonecast', async () => {
    const path = join(data, 'images', 'demo', '2.manifest');
    const saved = readFileSync(path);
    const newer = Buffer.from(saved);
    newer.writeUInt16BE(7, 8);
    writeFileSync(path, newer);
    try {
      const r = await cli(['image', 'info', 'demo', '--data', data]);
      expect(r.code).toBe(9);
      expect(r.stderr).toMatch(/uses image format 7.*upgrade clonecast/);
    } finally {
      writeFileSync(path, saved);
    }
  });

  it('rm then gc frees chunks; rm of the last version removes the image', async () => {
    expect((await cli(['image', 'rm', 'demo@1', '--data', data])).stdout).toMatch(/removed demo@1/);
    expect((await cli(['image', 'gc', '--data', data, '--json'])).json.removedChunks).toBe(0);
    await cli(['image', 'rm', 'demo', '--data', data]);
    expect((await cli(['image', 'gc', '--data', data, '--json'])).json.removedChunks).toBeGreaterThan(0);
    expect((await cli(['image', 'list', '--data', data])).stdout).toMatch(/no images/);
    expect(existsSync(join(data, 'images', 'demo'))).toBe(false);
  });
});

describe('kill -9 during an import', () => {
  const dir = tempDir('kill');
  const data = join(dir, 'data');
  const src = join(dir, 'big.img');
  // Incompressible, so each run takes a while and can be cut at any point.
  const parts: Buffer[] = [];
  for (let i = 0; i < 24; i++) parts.push(i % 5 === 4 ? Buffer.alloc(4 << 20) : seeded(4 << 20, i + 1));
  writeFileSync(src, Buffer.concat(parts));

  it('leaves the store consistent at every kill and a restart reuses stored chunks', async () => {
    let midway = 0;
    const chunks = join(data, 'chunks');
    const stored = () => (existsSync(chunks) ? readdirSync(chunks).reduce((n, d) => n + readdirSync(join(chunks, d)).length, 0) : 0);
    // Each run is killed once it has stored a few new chunks (not after a fixed time: a busy or an
    // idle machine would move the kill before the store exists or after the import finished).
    for (let run = 0; run < 5; run++) {
      const before = stored();
      const child = spawn(process.execPath, [CLI, 'image', 'import', src, 'big', '--data', data, '--workers', '1', '--json'], { stdio: 'ignore' });
      let exited = false;
      const closed = new Promise((r) => child.on('close', () => r((exited = true))));
      while (!exited && stored() - before < 4) await new Promise((r) => setTimeout(r, 2));
      child.kill('SIGKILL');
      await closed;
      const versions = existsSync(join(data, 'images', 'big')) ? readdirSync(join(data, 'images', 'big')).filter((f) => f.endsWith('.manifest')) : [];
      if (versions.length === 0 && stored() > 0) midway++;
      // Whatever was published is whole, and nothing half-made is visible.
      const v = await cli(['image', 'verify', '--data', data, '--json']);
      expect(v.code, v.stdout).toBe(0);
      expect(v.json.ok).toBe(true);
      if (versions.length > 0) break;
    }
    expect(midway).toBeGreaterThan(0);
    const r = await cli(['image', 'import', src, 'big', '--data', data, '--json']);
    expect(r.code).toBe(0);
    expect(r.json.reusedChunks).toBeGreaterThan(0);
    const out = join(dir, 'out.img');
    expect((await cli(['image', 'export', 'big', out, '--data', data])).code).toBe(0);
    expect(readFileSync(out).equals(readFileSync(src))).toBe(true);
    // The killed runs' stale locks did not block the restart, and gc cleans their temp files.
    const gc = await cli(['image', 'gc', '--data', data, '--json']);
    expect(gc.code).toBe(0);
    expect(readdirSync(join(data, 'tmp'))).toEqual([]);
  }, 120_000);
});

describe('clonecast serve', () => {
  const dir = tempDir('serve');
  const data = join(dir, 'data');

  it('serves the store on localhost, prints the dashboard URL and the token, and stops cleanly', async () => {
    const src = join(dir, 'd.img');
    writeFileSync(src, texty(300_000, 3));
    expect((await cli(['image', 'import', src, 'served', '--data', data])).code).toBe(0);
    const child = spawn(process.execPath, [CLI, 'serve', '--data', data, '--listen', '127.0.0.1:0']);
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    try {
      const { url, token, fingerprint, out } = await new Promise<{ url: string; token: string; fingerprint: string; out: string }>((resolve, reject) => {
        let out = '';
        child.stdout.on('data', (d) => {
          out += d;
          const m = /dashboard: +(https:\/\/127\.0\.0\.1:\d+\/) /.exec(out);
          const t = /token: +([0-9a-f]+)/.exec(out);
          const f = /fingerprint: +([0-9A-F:]{95})/.exec(out);
          if (m && t && f && out.includes('stop with Ctrl-C')) resolve({ url: m[1], token: t[1], fingerprint: f[1], out });
        });
        child.on('exit', () => reject(new Error(`serve exited: ${out}`)));
      });
      expect(readFileSync(join(data, 'token'), 'utf8').trim()).toBe(token);
      // The dashboard's URL carries no token; the fingerprint printed is the one a TLS client sees.
      expect(out).not.toMatch(/#token=|[?&]token=/);
      const { fingerprintOf } = await import('../../server/tls.js');
      expect(fingerprintOf(readFileSync(join(data, 'tls', 'cert.pem'), 'utf8'))).toBe(fingerprint);
      const srv = { url, fingerprint };
      expect((await serverFetch(srv, 'api/images')).status).toBe(401);
      const images = (await (await serverFetch(srv, 'api/images', { headers: { authorization: `Bearer ${token}` } })).json()) as { name: string }[];
      expect(images.map((i) => i.name)).toEqual(['served']);
      expect(await (await serverFetch(srv, '/')).text()).toMatch(/<title>clonecast<\/title>/);
      expect((await serverFetch(srv, 'nope')).status).toBe(404);
      // The admin commands find the local token in the data directory.
      const machines = await cli(['machines', '--server', url, '--data', data]);
      expect(machines.code, machines.stderr).toBe(0);
      expect(machines.stdout).toMatch(/no machine has connected yet/);
      // A second server on the same port is refused with what to do.
      const port = new URL(url).port;
      const again = await cli(['serve', '--data', data, '--listen', `127.0.0.1:${port}`]);
      expect(again.code).toBe(5);
      expect(again.stderr).toMatch(/already in use.*--listen/);
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
  });

  it('prints the token only on the start that makes it: later starts say where it is (logs never hold it)', async () => {
    const token = readFileSync(join(data, 'token'), 'utf8').trim();
    const child = spawn(process.execPath, [CLI, 'serve', '--data', data, '--listen', '127.0.0.1:0']);
    const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    try {
      const end = Date.now() + 30_000;
      while (!out.includes('stop with Ctrl-C') && child.exitCode === null && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
      expect(out).toContain('stop with Ctrl-C');
      expect(out).toMatch(/token: +in .*token \("clonecast token" prints it/);
      expect(out).not.toContain(token);
    } finally {
      child.kill('SIGTERM');
    }
    expect(await exited).toBe(0);
  });
});

describe('destructive commands: dry runs and refusals', () => {
  const dir = tempDir('cli-destructive');
  const data = join(dir, 'data');
  const src = join(dir, 'disk.img');
  writeFileSync(src, Buffer.concat([seeded(600_000, 7), Buffer.alloc(1_500_000), texty(900_000, 8)]));
  const chunkFiles = () => readdirSync(join(data, 'chunks')).flatMap((d) => readdirSync(join(data, 'chunks', d)).map((f) => join(data, 'chunks', d, f)));

  it('image gc --dry-run removed every unused chunk: now it removes nothing and names the count, then gc frees them', async () => {
    expect((await cli(['image', 'import', src, 'gone', '--data', data, '--chunk-size', '65536'])).code).toBe(0);
    expect((await cli(['image', 'rm', 'gone', '--data', data])).code).toBe(0);
    const before = chunkFiles();
    expect(before.length).toBeGreaterThan(10);
    const dry = await cli(['image', 'gc', '--dry-run', '--data', data]);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout).toMatch(new RegExp(`would remove ${before.length} unused chunks .*nothing was removed`));
    expect(chunkFiles()).toEqual(before);
    const dryJson = await cli(['image', 'gc', '--dry-run', '--data', data, '--json']);
    expect(dryJson.json).toMatchObject({ dryRun: true, removedChunks: before.length });
    expect(chunkFiles()).toEqual(before);
    const gc = await cli(['image', 'gc', '--data', data, '--json']);
    expect(gc.json).toMatchObject({ dryRun: false, removedChunks: before.length });
    expect(chunkFiles()).toEqual([]);
  });

  it('image rm NAME --dry-run removed the version: now it keeps it', async () => {
    expect((await cli(['image', 'import', src, 'small', '--data', data])).code).toBe(0);
    const dry = await cli(['image', 'rm', 'small', '--dry-run', '--data', data]);
    expect(dry.code).toBe(0);
    expect(dry.stdout).toMatch(/would remove small@1; nothing was removed/);
    expect(existsSync(join(data, 'images', 'small', '1.manifest'))).toBe(true);
    expect((await cli(['image', 'info', 'small', '--data', data])).code).toBe(0);
  });

  it('image export onto a non-empty file is refused (exit 6, file unchanged) unless --force', async () => {
    const out = join(dir, 'taken.img');
    const old = Buffer.from('precious data that must survive\n');
    writeFileSync(out, old);
    const r = await cli(['image', 'export', 'small', out, '--data', data]);
    expect(r.code).toBe(6);
    expect(r.stderr).toMatch(/refusing to overwrite .*taken\.img: it is a file of .*add --force/);
    expect(readFileSync(out).equals(old)).toBe(true);
    const j = await cli(['image', 'export', 'small', out, '--data', data, '--json']);
    expect(j.json.error.code).toBe('CLONECAST_ERR_REFUSED');
    const forced = await cli(['image', 'export', 'small', out, '--force', '--data', data]);
    expect(forced.code, forced.stderr).toBe(0);
    expect(readFileSync(out).equals(readFileSync(src))).toBe(true);
    // An empty file is not data: no --force needed.
    const empty = join(dir, 'empty.img');
    writeFileSync(empty, '');
    expect((await cli(['image', 'export', 'small', empty, '--data', data])).code).toBe(0);
  });

  it('image export --dry-run wrote the file: now it is refused as unknown and nothing is written', async () => {
    const out = join(dir, 'never.img');
    const r = await cli(['image', 'export', 'small', out, '--dry-run', '--data', data]);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/unknown option --dry-run for image export/);
    expect(existsSync(out)).toBe(false);
  });

  it('knows the partition-table signatures export refuses to overwrite', async () => {
    const { partitionSignature } = await import('../../server/store/export.js');
    const head = Buffer.alloc(8192);
    expect(partitionSignature(head)).toBe(null);
    head[510] = 0x55;
    head[511] = 0xaa;
    expect(partitionSignature(head)).toBe('MBR');
    head.write('EFI PART', 512, 'latin1');
    expect(partitionSignature(head)).toBe('GPT');
    const fourK = Buffer.alloc(8192);
    fourK.write('EFI PART', 4096, 'latin1');
    expect(partitionSignature(fourK)).toBe('GPT');
  });
});

describe('per-command options and help', () => {
  it('refuses an option the command does not take, with exit 2 and the closest valid name', async () => {
    const r = await cli(['deploy', 'x', '--client', '4']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/unknown option --client for deploy; did you mean --clients\?/);
    expect(r.stderr).toMatch(/Run "clonecast deploy --help"/);
    const other = await cli(['image', 'gc', '--workers', '3']);
    expect(other.code).toBe(2);
    expect(other.stderr).toMatch(/unknown option --workers for image gc.*belongs to image import/);
  });

  it('says what is wrong with a value or the arguments in one line plus where to look', async () => {
    const missing = await cli(['image', 'import', 'a', 'b', '--chunk-size']);
    expect(missing.code).toBe(2);
    expect(missing.stderr).toMatch(/--chunk-size needs a value \(BYTES\)\nRun "clonecast image import --help"/);
    const nan = await cli(['image', 'import', 'a', 'b', '--workers', 'many']);
    expect(nan.code).toBe(2);
    expect(nan.stderr).toMatch(/--workers takes a positive whole number, got "many"/);
    const count = await cli(['image', 'export', 'only-one']);
    expect(count.code).toBe(2);
    expect(count.stderr).toMatch(/"clonecast image export" takes NAME\[@V\] DEST \(got "only-one"\)/);
    const typo = await cli(['imgae', 'list']);
    expect(typo.code).toBe(2);
    expect(typo.stderr).toMatch(/unknown command "imgae"; did you mean "image"\?/);
  });

  it('clonecast image export --help prints export\'s own options and not deploy\'s', async () => {
    const r = await cli(['image', 'export', '--help']);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/^usage: clonecast image export NAME\[@V\] DEST/);
    expect(r.stdout).toMatch(/--force +Overwrite what DEST holds/);
    expect(r.stdout).toMatch(/--workers N +Worker threads .*\(default: cores \+ 1\)/);
    expect(r.stdout).toMatch(/Ctrl-C: DEST is incomplete: run the export again/);
    expect(r.stdout).not.toMatch(/--machines|--clients|--server|--dry-run/);
    const d = await cli(['deploy', '--help']);
    expect(d.stdout).toMatch(/--machines MAC,\.\.\./);
    expect(d.stdout).toMatch(/CLONECAST_TOKEN\s+or\s+--token-file/);
  });

  it('deploy without --machines, --group or --any exits 2 before asking any server', async () => {
    const r = await cli(['deploy', 'img', '--clients', '4', '--server', 'http://127.0.0.1:9/', '--token', 'x']);
    expect(r.code).toBe(2);
    expect(r.stderr).toMatch(/say which machines take part: --machines MAC,\.\.\., --group NAME or --any/);
    expect((await cli(['deploy', 'img', '--any', '--server', 'http://127.0.0.1:9/', '--token', 'x'])).stderr).toMatch(/with --any say when to start/);
    expect((await cli(['deploy', 'img', '--machines', 'nope', '--server', 'http://127.0.0.1:9/', '--token', 'x'])).stderr).toMatch(/"nope" is not one/);
    expect((await cli(['machines', 'set', '52:54:00:12:34:56', '--name', 'bad name', '--token', 'x'])).code).toBe(2);
  });

  it('safeText turns control characters and terminal escapes into "?"', async () => {
    const { safeText } = await import('../../cli/output.js');
    expect(safeText('pc1\x1b[2J\x1b]0;owned\x07')).toBe('pc1?[2J?]0;owned?');
    expect(safeText('a\u009b31mb\u202ec\r\n')).toBe('a?31mb?c??');
    expect(safeText('café-02')).toBe('café-02');
    expect(safeText(undefined)).toBe('');
  });
});

describe('the server-side commands against a stand-in API', () => {
  /** A minimal server answering the admin routes; records every request. */
  async function fakeApi(): Promise<{ url: string; fingerprint: string; requests: { method: string; path: string; body: any }[]; close: () => void }> {
    const { createServer } = await import('node:https');
    const { makeCert, fingerprintOf } = await import('../../server/tls.js');
    const cert = await makeCert(['127.0.0.1']);
    const requests: { method: string; path: string; body: any }[] = [];
    const session = { id: 7, image: 'os', version: 3, group: '239.77.1.7', port: 9000, state: 'waiting', reason: '', verify: true, createdAt: '2026-11-30T06:00:00Z', machines: {} };
    const machine = { id: '52:54:00:12:34:56', hostname: 'pc\x1b[31m1', name: 'desk-1', groups: ['room-a'], address: '10.0.0.5', online: true, state: 'idle', progress: null, lastError: '', lastSeen: '2026-11-30T06:00:00Z', lastImage: null };
    const srv = createServer({ cert: cert.cert, key: cert.key }, (req, res) => {
      let raw = '';
      req.on('data', (d) => (raw += d));
      req.on('end', () => {
        requests.push({ method: req.method!, path: req.url!, body: raw ? JSON.parse(raw) : undefined });
        const send = (v: unknown, status = 200) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(v));
        if (req.headers.authorization !== 'Bearer tok') return send({ error: { code: 'CLONECAST_ERR_UNAUTHORIZED', message: 'bad token' } }, 401);
        if (req.url === '/api/sessions') return send(req.method === 'POST' ? session : [session]);
        if (req.url === '/api/sessions/7') return send(session);
        if (req.url === '/api/machines') return send([machine]);
        if (req.url === '/api/machines/52:54:00:12:34:56' && req.method === 'PATCH') return send({ ...machine, ...JSON.parse(raw) });
        if (req.url === '/api/machines/52:54:00:12:34:56' && req.method === 'GET') return send({ ...machine, bootMode: 'uefi', disks: [{ device: '/dev/sda', size: 1 << 30, model: 'QEMU\x1b[2J' }], events: [{ at: '2026-11-30T06:00:00Z', kind: 'drop', text: 'session 3 ended: dropped (gone\x1b[31m)' }] });
        if (req.url === '/api/machines/52:54:00:12:34:56' && req.method === 'DELETE') return send({ forgotten: machine.id });
        if (req.url === '/api/captures') return send([{ id: 2, machine: machine.id, image: 'master', device: '/dev/sda', state: 'failed', error: 'disk\x1b]0;x gone', progress: { chunksDone: 5, chunksTotal: 10, bytesRead: 0, reused: 0, bytesSent: 0 }, received: { chunks: 0, bytes: 0, newBytes: 0 }, result: null }]);
        if (req.url === '/api/captures/2/fail') return send({ id: 2, state: 'failed', error: JSON.parse(raw).reason });
        send({ error: { code: 'CLONECAST_ERR_NOT_FOUND', message: 'no such route' } }, 404);
      });
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    return { url: `https://127.0.0.1:${(srv.address() as { port: number }).port}/`, fingerprint: fingerprintOf(cert.cert), requests, close: () => srv.close() };
  }

  it('deploy sends the machine selection, and Ctrl-C names the session that keeps running', async () => {
    const api = await fakeApi();
    try {
      const child = spawn(process.execPath, [CLI, 'deploy', 'os', '--any', '--clients', '2', '--wait', '30', '--server', api.url], { env: { ...process.env, CLONECAST_TOKEN: 'tok', CLONECAST_FINGERPRINT: api.fingerprint } });
      let err = '';
      child.stderr.on('data', (d) => (err += d));
      const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
      for (let i = 0; i < 100 && !/session 7 waiting/.test(err); i++) await new Promise((r) => setTimeout(r, 100));
      expect(err).toMatch(/pc\?\[31m1|desk-1|no machine has joined/);
      child.kill('SIGINT');
      expect(await exited).toBe(130);
      expect(err).toMatch(/interrupted: session 7 keeps running on the server; .*"clonecast sessions cancel 7"/);
      expect(api.requests[0]).toMatchObject({ method: 'POST', path: '/api/sessions', body: { image: 'os', rule: { any: true, clients: 2, waitS: 30 }, after: 'wait', verify: true } });
    } finally {
      api.close();
    }
  });

  it('machines shows names and groups with agent strings made safe; machines set, show, forget and captures use their routes', async () => {
    const api = await fakeApi();
    try {
      const env = { CLONECAST_TOKEN: 'tok', CLONECAST_FINGERPRINT: api.fingerprint };
      const ms = await cli(['machines', '--server', api.url], env);
      expect(ms.code, ms.stderr).toBe(0);
      expect(ms.stdout).toMatch(/NAME +HOSTNAME +GROUPS/);
      expect(ms.stdout).toMatch(/52:54:00:12:34:56 +desk-1 +pc\?\[31m1 +room-a/);
      expect(ms.stdout).not.toContain('\x1b');
      const set = await cli(['machines', 'set', '52-54-00-12-34-56', '--name', 'desk-2', '--groups', 'room-a,lab', '--server', api.url], env);
      expect(set.code, set.stderr).toBe(0);
      expect(api.requests.at(-1)).toMatchObject({ method: 'PATCH', path: '/api/machines/52:54:00:12:34:56', body: { name: 'desk-2', groups: ['room-a', 'lab'] } });
      const show = await cli(['machines', 'show', '52:54:00:12:34:56', '--server', api.url], env);
      expect(show.code, show.stderr).toBe(0);
      expect(show.stdout).toMatch(/boot uefi/);
      expect(show.stdout).toMatch(/drop +session 3 ended: dropped \(gone\?\[31m\)/);
      expect(show.stdout).not.toContain('\x1b');
      const forget = await cli(['machines', 'forget', '52:54:00:12:34:56', '--server', api.url], env);
      expect(forget.code, forget.stderr).toBe(0);
      expect(forget.stdout).toMatch(/forgot 52:54:00:12:34:56/);
      expect(api.requests.at(-1)).toMatchObject({ method: 'DELETE', path: '/api/machines/52:54:00:12:34:56' });
      expect((await cli(['machines', 'forget', 'not-a-mac', '--server', api.url], env)).code).toBe(2);
      const cs = await cli(['captures', '--server', api.url], env);
      expect(cs.stdout).toMatch(/2 +52:54:00:12:34:56 +master +failed +50% +disk\?\]0;x gone/);
      const fail = await cli(['captures', 'fail', '2', '--reason', 'wrong machine', '--server', api.url], env);
      expect(fail.code, fail.stderr).toBe(0);
      expect(api.requests.at(-1)).toMatchObject({ method: 'POST', path: '/api/captures/2/fail', body: { reason: 'wrong machine' } });
      const tokenFile = join(tempDir('cli-token'), 'token');
      writeFileSync(tokenFile, 'tok\n');
      expect((await cli(['sessions', '--server', api.url, '--token-file', tokenFile], { CLONECAST_TOKEN: '', CLONECAST_FINGERPRINT: api.fingerprint })).code).toBe(0);
    } finally {
      api.close();
    }
  });
});

describe('the command table', () => {
  it('gives every command a summary, a Ctrl-C text and one sentence per option, and common options only where they apply', async () => {
    const { COMMANDS } = await import('../../cli/commands/index.js');
    const names = COMMANDS.map((c) => c.name);
    expect(new Set(names).size).toBe(names.length);
    for (const c of COMMANDS) {
      expect(c.summary, c.name).toMatch(/^[A-Z].*\.$/);
      expect(c.interrupted, c.name).toBeTruthy();
      for (const [o, spec] of Object.entries(c.options)) expect(spec.help, `${c.name} --${o}`).toMatch(/^[A-Z].*[.)]$/);
      expect(Object.keys(c.options), c.name).toEqual(expect.arrayContaining(['data', 'json']));
    }
    const having = (o: string) => COMMANDS.filter((c) => o in c.options).map((c) => c.name).sort();
    expect(having('workers')).toEqual(['image export', 'image import', 'image recompress', 'image verify']);
    expect(having('codec')).toEqual(['image assemble', 'image import']);
    expect(having('server')).toEqual(['agent', 'capture', 'captures', 'captures fail', 'deploy', 'machines', 'machines forget', 'machines set', 'machines show', 'sessions', 'sessions cancel', 'sessions start', 'wake']);
    expect(having('dry-run')).toEqual(['image gc', 'image prune', 'image rm', 'repository gc', 'repository rm']);
    expect(having('repository')).toEqual(['image pull', 'image push', 'repository gc', 'repository list', 'repository rm', 'serve']);
  });
});
