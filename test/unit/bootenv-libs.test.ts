import { describe, expect, it } from 'vitest';
import { readdirSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { DLOPENED, dlopenedLibraries } from '../../pxe/bootenv.js';
import { itNeeds, ROOT } from '../helpers.js';
import { IMAGING_TOOLS, imagingLibraries, imagingTools, linkedLibraries } from '../../pxe/bootenv-tools.js';
import { FINISH_MODULES, finishTools } from '../../pxe/bootenv-finish-tools.js';
import { FINISH_TOOLS, toolPath } from '../../native/disk-finish.js';

describe('boot environment libraries', () => {
  it('carries every library the addon loads with dlopen (ldd cannot see them)', () => {
    const src = join(ROOT, 'native', 'src');
    const opened = new Set<string>();
    for (const f of readdirSync(src).filter((n) => n.endsWith('.c'))) {
      for (const m of readFileSync(join(src, f), 'utf8').matchAll(/dlopen\("([^"]+)"/g)) opened.add(m[1]);
    }
    expect(opened.has('libzstd.so.1')).toBe(true);
    expect([...opened].filter((l) => !DLOPENED.includes(l))).toEqual([]);
  });

  itNeeds(['partclone', 'fstools'], 'carries partclone for each filesystem, blkid, the cleanliness checks and every library ldd lists for them', () => {
    const tools = imagingTools();
    expect(tools.every((t) => IMAGING_TOOLS.includes(t.name) && t.path.endsWith(`/${t.name}`))).toBe(true);
    for (const name of ['partclone.extfs', 'partclone.ntfs', 'partclone.fat', 'partclone.xfs', 'partclone.btrfs', 'blkid', 'losetup', 'dumpe2fs', 'ntfsinfo', 'xfs_logprint', 'mkswap']) {
      expect(tools.map((t) => t.name)).toContain(name);
    }
    const libs = imagingLibraries();
    const names = libs.map((p) => basename(p));
    for (const lib of ['libext2fs.so.2', 'libntfs-3g.so.89', 'libcrypto.so.3', 'libblkid.so.1']) expect(names).toContain(lib);
    for (const t of tools) for (const lib of linkedLibraries(t.path)) expect(libs).toContain(lib);
  });

  itNeeds(['zstd'], 'finds libzstd.so.1 on this system to copy into the initramfs', () => {
    expect(dlopenedLibraries().map((p) => basename(p))).toContain('libzstd.so.1');
  });
});

describe('boot environment tools for finishing a disk', () => {
  it('lists every tool native/disk-finish.ts runs', () => {
    const src = readFileSync(join(ROOT, 'native', 'disk-finish.ts'), 'utf8');
    const run = new Set([...src.matchAll(/tool\('([a-z0-9_.-]+)'/g)].map((m) => m[1]));
    expect(run.size).toBeGreaterThan(5);
    expect([...run].filter((t) => !(FINISH_TOOLS as readonly string[]).includes(t))).toEqual([]);
  });

  itNeeds(['fstools'], 'finds every one of them on this system, at a full path the agent runs before busybox applets', () => {
    const { found, missing } = finishTools();
    expect(missing).toEqual([]);
    expect(found.map((p) => basename(p)).sort()).toEqual([...FINISH_TOOLS].sort());
    for (const p of found) expect(toolPath(basename(p))).toBe(p);
    expect(FINISH_MODULES).toEqual(expect.arrayContaining(['loop', 'xfs', 'btrfs']));
  });
});
