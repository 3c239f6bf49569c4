/**
 * Making the boot download small: only the npm packages the program needs at
 * run time (package.json's dependencies and theirs, never the development
 * tools), without their documentation, tests, type declarations and source
 * maps; binaries and libraries without their debug symbols; and an
 * initramfs compressed with xz, which this kernel unpacks (CONFIG_RD_XZ).
 * sizeReport() says where the bytes go.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, existsSync, lstatSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

/** The production dependency closure of the package in dir: package folders, relative to dir. */
export function productionPackages(dir: string): string[] {
  const found = new Set<string>();
  const visit = (pkgDir: string) => {
    const pkg = JSON.parse(readFileSync(join(pkgDir, 'package.json'), 'utf8')) as { dependencies?: Record<string, string>; optionalDependencies?: Record<string, string> };
    for (const name of Object.keys({ ...pkg.dependencies, ...pkg.optionalDependencies })) {
      // Node's resolution: the nearest node_modules upwards from the package.
      let at = pkgDir;
      let hit: string | undefined;
      for (;;) {
        const candidate = join(at, 'node_modules', name);
        if (existsSync(join(candidate, 'package.json'))) { hit = candidate; break; }
        if (relative(dir, at) === '') break;
        at = join(at, '..');
      }
      if (hit === undefined) continue; // an optional dependency for another platform
      const rel = relative(dir, hit);
      if (found.has(rel)) continue;
      found.add(rel);
      visit(hit);
    }
  };
  visit(dir);
  return [...found].sort();
}

/** Files of an npm package the program never reads at run time. */
const PRUNED = /(^|\/)(README|CHANGELOG|HISTORY|CHANGES|AUTHORS|CONTRIBUTING|LICENSE|LICENCE|NOTICE)[^/]*$|\.(md|markdown|map|ts|mts|cts|tsbuildinfo|flow)$|(^|\/)(test|tests|__tests__|docs?|examples?|benchmarks?|\.github)(\/|$)/i;

/** Copies the production packages of project into app/node_modules, pruned. */
export function copyPackages(project: string, app: string): void {
  for (const rel of productionPackages(project)) {
    cpSync(join(project, rel), join(app, rel), {
      recursive: true,
      dereference: true,
      // A nested node_modules is copied by its own entry (if it is a production package).
      filter: (src) => {
        const inner = relative(join(project, rel), src);
        return inner === '' || (!inner.startsWith('node_modules') && !PRUNED.test(inner));
      },
    });
  }
}

/** Strips debug symbols from an ELF file in place (strip from binutils); false if it could not. */
export function stripDebug(file: string): boolean {
  if (!existsSync('/usr/bin/strip')) return false;
  return spawnSync('/usr/bin/strip', ['--strip-unneeded', file]).status === 0;
}

/**
 * The xz preset of the initramfs: 9e (64 MiB dictionary) is 0.5 MiB smaller than 6 on
 * this kernel and Node but about twice as slow to build, on one core; 6 uses every core.
 */
export const DEFAULT_XZ_PRESET = '9e';

/**
 * Packs root as a newc cpio (sorted names, no timestamps: the same inputs give the same
 * archive) into file, compressed by xz with CRC32 checks (the kernel's unpacker knows no
 * CRC64) and the x86 filter (Node and the libraries are x86 code).
 */
export function packInitramfs(root: string, file: string, preset: string = DEFAULT_XZ_PRESET): void {
  if (!/^[0-9]e?$/.test(preset)) throw new Error(`xz preset ${preset}: 0-9, optionally with e`);
  const xz = `xz --check=crc32 --x86 --lzma2=preset=${preset} -T${preset.startsWith('9') ? 1 : 0} -c`;
  // The paths are positional arguments ($1, $2), never part of the script: a path may hold any character.
  execFileSync('sh', ['-c', `cd "$1" && find . | LC_ALL=C sort | cpio -o -H newc --quiet --reproducible | ${xz} > "$2.tmp" && mv "$2.tmp" "$2"`, 'sh', root, file]);
}

/** A part of the initramfs and its uncompressed size. */
export interface SizePart {
  part: string;
  bytes: number;
}

function treeBytes(p: string): number {
  const st = lstatSync(p);
  if (!st.isDirectory()) return st.isFile() ? st.size : 0;
  let n = 0;
  for (const e of readdirSync(p)) n += treeBytes(join(p, e));
  return n;
}

/** Uncompressed sizes of the initramfs's parts, biggest first. */
export function sizeReport(root: string, version: string): SizePart[] {
  const parts: SizePart[] = [
    { part: 'node', bytes: statSync(join(root, 'usr/bin/node')).size },
    { part: 'kernel modules', bytes: treeBytes(join(root, 'lib/modules', version)) },
    { part: 'npm packages', bytes: treeBytes(join(root, 'opt/clonecast/node_modules')) },
    { part: 'clonecast (dist, addon)', bytes: treeBytes(join(root, 'opt/clonecast')) - treeBytes(join(root, 'opt/clonecast/node_modules')) },
    { part: 'busybox', bytes: statSync(join(root, 'bin/busybox')).size },
  ];
  const libs = ['lib', 'lib64', 'usr/lib'].map((d) => join(root, d)).filter(existsSync);
  const all = libs.reduce((n, d) => n + treeBytes(d), 0);
  const firmware = existsSync(join(root, 'lib/firmware')) ? treeBytes(join(root, 'lib/firmware')) : 0;
  parts.push({ part: 'shared libraries and tools', bytes: all - parts[1].bytes - firmware });
  if (firmware > 0) parts.push({ part: 'firmware', bytes: firmware });
  return parts.sort((a, b) => b.bytes - a.bytes);
}
