import { describe, expect } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, cli, itNeeds, seeded, tempDir } from '../helpers.js';

// Real read errors: a FUSE file (test/fixtures/eio-fs.py) whose reads of
// chosen ranges fail with EIO in the kernel, as a failing disk's would.
// (This kernel has no device-mapper, so dm-error is not available.)
const BAD = [
  { offset: 1048576 + 512, length: 1024 }, // two sectors inside chunk 16 (64 KiB chunks)
  { offset: 3 * 1048576, length: 512 }, //    one sector at the start of chunk 48
];

/** Mounts the EIO filesystem; unmount() must be called when done. */
function mountEio(dir: string, backing: string): { file: string; unmount: () => void } {
  const mnt = join(dir, 'mnt');
  mkdirSync(mnt, { recursive: true });
  const spec = BAD.map((b) => `${b.offset}:${b.length}`).join(',');
  const proc: ChildProcess = spawn('/usr/bin/python3', [join(ROOT, 'test/fixtures/eio-fs.py'), backing, mnt, spec], { stdio: 'ignore' });
  return {
    file: join(mnt, 'disk.img'),
    unmount: () => {
      spawnSync('umount', [mnt]);
      proc.kill();
    },
  };
}

async function waitFor(path: string): Promise<void> {
  for (let i = 0; i < 100 && !existsSync(path); i++) await new Promise((r) => setTimeout(r, 50));
  expect(existsSync(path)).toBe(true);
}

describe('unreadable sectors', () => {
  const dir = tempDir('eio');
  const backing = join(dir, 'backing.img');
  const content = seeded(4 * 1048576, 21);
  writeFileSync(backing, content);
  const data = join(dir, 'data');

  itNeeds(['fuse'], 'stop an import at the first bad sector, with its offset, and publish nothing', async () => {
    const { file, unmount } = mountEio(dir, backing);
    try {
      await waitFor(file);
      await checkImports(file);
    } finally {
      unmount();
    }
  });

  async function checkImports(file: string): Promise<void> {
    const r = await cli(['image', 'import', file, 'failing', '--data', data, '--chunk-size', '65536', '--json']);
    expect(r.code).toBe(8);
    expect(r.json.error.code).toBe('CLONECAST_ERR_READ');
    expect(r.json.error.offset).toBe(BAD[0].offset);
    expect(r.json.error.message).toMatch(/read error \(EIO\) at byte 1049088 .*--ignore-read-errors/);
    expect((await cli(['image', 'list', '--data', data, '--json'])).json).toEqual([]);

    const ok = await cli(['image', 'import', file, 'failing', '--data', data, '--chunk-size', '65536', '--ignore-read-errors', '--json']);
    expect(ok.code, ok.stdout).toBe(0);
    expect(ok.json.badRanges).toEqual(BAD);
    const info = await cli(['image', 'info', 'failing', '--data', data]);
    expect(info.stdout).toMatch(/bytes 1049088-1050111 \(1024 bytes\) were unreadable and are stored as zeros/);
    // Everything else is exact; the bad sectors read back as zeros.
    const out = join(dir, 'out.img');
    expect((await cli(['image', 'export', 'failing', out, '--data', data])).code).toBe(0);
    const want = Buffer.from(content);
    for (const b of BAD) want.fill(0, b.offset, b.offset + b.length);
    expect(readFileSync(out).equals(want)).toBe(true);
  }
});
