import { describe, expect, it } from 'vitest';
import { readdirSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { DLOPENED, dlopenedLibraries } from '../../pxe/bootenv.js';
import { itNeeds, ROOT } from '../helpers.js';

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

  itNeeds(['zstd'], 'finds libzstd.so.1 on this system to copy into the initramfs', () => {
    expect(dlopenedLibraries().map((p) => basename(p))).toContain('libzstd.so.1');
  });
});
