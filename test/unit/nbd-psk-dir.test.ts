import { describe, expect, it } from 'vitest';
import { chmodSync, chownSync, lstatSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { newPsk, writePskDir } from '../../server/nbd/tls.js';
import { tempDir } from '../helpers.js';

describe('writePskDir', () => {
  const psk = newPsk();

  it('makes a fresh folder 0700 with keys.psk 0600', () => {
    const dir = join(tempDir('pskdir'), 'a@1.nbd-psk');
    writePskDir(dir, psk);
    expect(lstatSync(dir).mode & 0o777).toBe(0o700);
    expect(lstatSync(join(dir, 'keys.psk')).mode & 0o777).toBe(0o600);
    expect(readFileSync(join(dir, 'keys.psk'), 'utf8')).toBe(`clonecast:${psk.keyHex}\n`);
  });

  it('a folder someone made first with mode 0777 is refused, not written into', () => {
    const dir = join(tempDir('pskdir'), 'open.nbd-psk');
    mkdirSync(dir);
    chmodSync(dir, 0o777);
    expect(() => writePskDir(dir, psk)).toThrow(/mode 777, not 700/);
  });

  it('a folder planted as a symbolic link is refused, not followed', () => {
    const root = tempDir('pskdir');
    const target = join(root, 'elsewhere');
    mkdirSync(target, { mode: 0o700 });
    symlinkSync(target, join(root, 'link.nbd-psk'));
    expect(() => writePskDir(join(root, 'link.nbd-psk'), psk)).toThrow(/not a folder/);
  });

  it('a keys.psk planted as a symbolic link is replaced, and the file it named is untouched', () => {
    const root = tempDir('pskdir');
    const victim = join(root, 'victim');
    writeFileSync(victim, 'keep');
    const dir = join(root, 'k.nbd-psk');
    mkdirSync(dir, { mode: 0o700 });
    symlinkSync(victim, join(dir, 'keys.psk'));
    writePskDir(dir, psk);
    expect(readFileSync(victim, 'utf8')).toBe('keep');
    expect(lstatSync(join(dir, 'keys.psk')).isFile()).toBe(true);
  });

  it.runIf(process.getuid?.() === 0)('a folder owned by another user is refused', () => {
    const dir = join(tempDir('pskdir'), 'theirs.nbd-psk');
    mkdirSync(dir, { mode: 0o700 });
    chownSync(dir, 12345, 12345);
    expect(() => writePskDir(dir, psk)).toThrow(/owned by uid 12345/);
  });
});
