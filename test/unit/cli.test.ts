import { describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, cli, seeded, tempDir, texty } from '../helpers.js';

describe('clonecast CLI', () => {
  const dir = tempDir('cli');
  const data = join(dir, 'data');
  const src = join(dir, 'disk.img');
  writeFileSync(src, Buffer.concat([seeded(300_000, 1), Buffer.alloc(2_000_000), texty(700_001, 2)]));

  it('prints usage and exits 2 without a command, 0 with --help', async () => {
    expect((await cli([])).code).toBe(2);
    const help = await cli(['--help']);
    expect(help.code).toBe(0);
    expect(help.stdout).toMatch(/clonecast image import SRC NAME/);
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
    for (const delay of [250, 350, 450, 600, 800]) {
      const child = spawn(process.execPath, [CLI, 'image', 'import', src, 'big', '--data', data, '--workers', '1', '--json'], { stdio: 'ignore' });
      const closed = new Promise((r) => child.on('close', r));
      await new Promise((r) => setTimeout(r, delay));
      child.kill('SIGKILL');
      await closed;
      const versions = existsSync(join(data, 'images', 'big')) ? readdirSync(join(data, 'images', 'big')).filter((f) => f.endsWith('.manifest')) : [];
      // Under load a kill can land before the process has even made the store.
      const chunks = join(data, 'chunks');
      const stored = existsSync(chunks) ? readdirSync(chunks).reduce((n, d) => n + readdirSync(join(chunks, d)).length, 0) : 0;
      if (versions.length === 0 && stored > 0) midway++;
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
      const { url, token } = await new Promise<{ url: string; token: string }>((resolve, reject) => {
        let out = '';
        child.stdout.on('data', (d) => {
          out += d;
          const m = /dashboard: +(http:\/\/127\.0\.0\.1:\d+\/)#token=([0-9a-f]+)\n/.exec(out);
          if (m && /token: +[0-9a-f]+/.test(out)) resolve({ url: m[1], token: m[2] });
        });
        child.on('exit', () => reject(new Error(`serve exited: ${out}`)));
      });
      expect(readFileSync(join(data, 'token'), 'utf8').trim()).toBe(token);
      expect((await fetch(`${url}api/images`)).status).toBe(401);
      const images = (await (await fetch(`${url}api/images`, { headers: { authorization: `Bearer ${token}` } })).json()) as { name: string }[];
      expect(images.map((i) => i.name)).toEqual(['served']);
      expect(await (await fetch(url)).text()).toMatch(/<title>clonecast<\/title>/);
      expect((await fetch(`${url}nope`)).status).toBe(404);
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
});
