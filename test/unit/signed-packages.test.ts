import { describe, expect, it } from 'vitest';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { signedPackage, type AptLookup } from '../../pxe/signed-packages.js';
import { tempDir } from '../helpers.js';

const PKG = 'shim-signed';

/** An apt that offers candidate, and whose download writes the file (or fails). */
function fakeApt(candidate: string | null, downloads: boolean): AptLookup & { asked: string[] } {
  const asked: string[] = [];
  return {
    asked,
    candidate: () => candidate,
    download(pkg, version, dir) {
      asked.push(`${pkg}=${version}`);
      if (!downloads) return 'Temporary failure resolving deb.debian.org';
      writeFileSync(join(dir, `${pkg}_${version.replace(/:/g, '%3a')}_amd64.deb`), 'new');
      return null;
    },
  };
}

/** A cache folder holding old and middle versions, listed so that the older comes first. */
function caches(): { cache: string; shared: string } {
  const cache = tempDir('sbcache');
  const shared = tempDir('sbshared');
  writeFileSync(join(cache, `${PKG}_1.38+15.4-7_amd64.deb`), 'old');
  writeFileSync(join(shared, `${PKG}_1.40+15.7-1_amd64.deb`), 'middle');
  writeFileSync(join(cache, `${PKG}_1.39+15.7-1_amd64.deb`), 'older');
  return { cache, shared };
}

describe('Secure Boot packages on a rebuild', () => {
  it('a rebuild fetches the archive\'s newer shim instead of reusing a cached old one', () => {
    const { cache, shared } = caches();
    const apt = fakeApt('1.44+15.8-1', true);
    const log: string[] = [];
    const deb = signedPackage(PKG, cache, shared, (m) => log.push(m), apt);
    expect(deb).toBe(join(cache, `${PKG}_1.44+15.8-1_amd64.deb`));
    expect(apt.asked).toEqual([`${PKG}=1.44+15.8-1`]);
    expect(log.join('\n')).toMatch(/shim-signed 1\.44\+15\.8-1 \(the archive's candidate, downloaded\)/);
  });

  it('the candidate already cached is used without a download', () => {
    const { cache, shared } = caches();
    const apt = fakeApt('1.40+15.7-1', true);
    expect(signedPackage(PKG, cache, shared, undefined, apt)).toBe(join(shared, `${PKG}_1.40+15.7-1_amd64.deb`));
    expect(apt.asked).toEqual([]);
  });

  it('without the archive the newest cached version is used, not the first in directory order, and the log says why', () => {
    const { cache, shared } = caches();
    const log: string[] = [];
    expect(signedPackage(PKG, cache, shared, (m) => log.push(m), fakeApt('1.44+15.8-1', false))).toBe(join(shared, `${PKG}_1.40+15.7-1_amd64.deb`));
    expect(log.at(-1)).toMatch(/1\.40\+15\.7-1 \(the newest cached: .*cannot download 1\.44\+15\.8-1: Temporary failure/);
    expect(signedPackage(PKG, cache, shared, undefined, fakeApt(null, false))).toBe(join(shared, `${PKG}_1.40+15.7-1_amd64.deb`));
  });

  it('an epoch in the version (written %3a by apt) compares by dpkg\'s rules', () => {
    const cache = tempDir('sbepoch');
    writeFileSync(join(cache, `${PKG}_9.9_amd64.deb`), '');
    writeFileSync(join(cache, `${PKG}_1%3a1.0_amd64.deb`), '');
    expect(signedPackage(PKG, cache, tempDir('sbnone'), undefined, fakeApt(null, false))).toBe(join(cache, `${PKG}_1%3a1.0_amd64.deb`));
  });

  it('nothing cached and no archive says what to do', () => {
    expect(() => signedPackage(PKG, tempDir('sbempty'), tempDir('sbnone'), undefined, fakeApt(null, false))).toThrow(/run apt-get update, or put shim-signed_\*_amd64\.deb in/);
  });
});
