/**
 * Where `bootenv build` gets Debian's signed shim and GRUB packages: the
 * archive's candidate when apt knows one (a point release can bring a shim
 * that SBAT revocations need), else the newest cached .deb. Downloaded with
 * `apt-get download`: nothing is installed.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { ClonecastError, ERR } from '../protocol/errors.js';

/** What signedPackage() asks apt (a seam for tests). */
export interface AptLookup {
  /** The candidate version of pkg (apt-cache policy), or null when apt knows none. */
  candidate(pkg: string): string | null;
  /** Downloads pkg=version into dir; the error text, or null on success. */
  download(pkg: string, version: string, dir: string): string | null;
}

/** The system's apt. */
export const SYSTEM_APT: AptLookup = {
  candidate(pkg) {
    const r = spawnSync('apt-cache', ['policy', pkg], { encoding: 'utf8' });
    const v = /^\s*Candidate:\s*(\S+)/m.exec(r.stdout ?? '')?.[1];
    return r.status === 0 && v !== undefined && v !== '(none)' ? v : null;
  },
  download(pkg, version, dir) {
    const r = spawnSync('apt-get', ['download', '-qq', `${pkg}=${version}`], { cwd: dir, encoding: 'utf8' });
    return r.status === 0 ? null : (r.error?.message ?? r.stderr ?? '').trim() || 'apt-get download failed';
  },
};

/** The version in a .deb's file name (pkg_VERSION_arch.deb; apt writes an epoch's ':' as %3a). */
export function debVersion(file: string): string {
  return (file.split('_')[1] ?? '').replace(/%3a/gi, ':');
}

/** Is Debian version a newer than b (dpkg --compare-versions)? */
export function newerVersion(a: string, b: string): boolean {
  return spawnSync('dpkg', ['--compare-versions', a, 'gt', b]).status === 0;
}

/** The cached .debs of pkg in dirs, newest version first. */
export function cachedDebs(dirs: string[], pkg: string): string[] {
  const all = dirs.flatMap((d) => (existsSync(d) ? readdirSync(d).filter((f) => f.startsWith(`${pkg}_`) && f.endsWith('_amd64.deb')).map((f) => join(d, f)) : []));
  // An insertion sort with dpkg's comparison: a handful of files at most.
  const out: string[] = [];
  for (const f of all) {
    const i = out.findIndex((g) => newerVersion(debVersion(f.slice(f.lastIndexOf('/') + 1)), debVersion(g.slice(g.lastIndexOf('/') + 1))));
    out.splice(i < 0 ? out.length : i, 0, f);
  }
  return out;
}

/**
 * The .deb of pkg: the archive's candidate (cached, else downloaded into
 * cacheDir) when apt knows one, else the newest in cacheDir or the shared
 * cache. Logs which one is used and why.
 */
export function signedPackage(pkg: string, cacheDir: string, sharedCache: string, log?: (m: string) => void, apt: AptLookup = SYSTEM_APT): string {
  const version = apt.candidate(pkg);
  const cached = () => cachedDebs([cacheDir, sharedCache], pkg);
  let why = 'apt knows no candidate (run apt-get update?)';
  if (version !== null) {
    const hit = cached().find((f) => debVersion(f.slice(f.lastIndexOf('/') + 1)) === version);
    if (hit !== undefined) {
      log?.(`${pkg} ${version} (the archive's candidate, cached: ${hit})`);
      return hit;
    }
    mkdirSync(cacheDir, { recursive: true });
    log?.(`downloading ${pkg} ${version} (apt-get download; it is not installed)`);
    const err = apt.download(pkg, version, cacheDir);
    const got = cached().find((f) => debVersion(f.slice(f.lastIndexOf('/') + 1)) === version);
    if (err === null && got !== undefined) {
      log?.(`${pkg} ${version} (the archive's candidate, downloaded)`);
      return got;
    }
    why = `cannot download ${version}: ${err ?? 'no file'}`;
  }
  const newest = cached()[0];
  if (newest === undefined) throw new ClonecastError(ERR.NOT_FOUND, `cannot get ${pkg}: ${why}; run apt-get update, or put ${pkg}_*_amd64.deb in ${cacheDir}`);
  log?.(`${pkg} ${debVersion(newest.slice(newest.lastIndexOf('/') + 1))} (the newest cached: ${newest}; ${why})`);
  return newest;
}
