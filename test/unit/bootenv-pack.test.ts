import { describe, expect, it } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { packInitramfs } from '../../pxe/bootenv-pack.js';
import { tempDir } from '../helpers.js';

describe('packing the initramfs', () => {
  it('an output path with a quote neither breaks the shell command nor runs what follows it', () => {
    const dir = tempDir('pack');
    const root = join(dir, "root 'x");
    mkdirSync(join(root, 'etc'), { recursive: true });
    writeFileSync(join(root, 'etc', 'hello'), 'hello\n');
    // Inside a single-quoted shell command this name closes the quote and runs touch (in root, the command's folder).
    const out = join(dir, "initrd';touch injected;'.img");
    const marker = join(root, 'injected');
    packInitramfs(root, out, '0');
    expect(existsSync(marker)).toBe(false);
    expect(existsSync(out)).toBe(true);
    const names = execFileSync('sh', ['-c', 'xz -dc "$1" | cpio -it --quiet', 'sh', out], { encoding: 'utf8' }).split('\n');
    expect(names).toContain('etc/hello');
    expect(readdirSync(dir).filter((f) => f.endsWith('.tmp'))).toEqual([]);
  });
});
