/**
 * Machines come out named: after a deployed disk verified, the registry's
 * name for the machine is written into the systems on it, offline, before
 * the machine reboots. Each partition is reached through a loop device over
 * its byte range (the same for a disk and a disk file):
 *
 * - an ext2/3/4 filesystem holding /etc/hostname or /etc/os-release is a
 *   Linux root: /etc/hostname and the 127.0.1.1 line of /etc/hosts are
 *   rewritten with debugfs (no mount, no kernel filesystem driver);
 * - an NTFS filesystem holding Windows/System32/config/SYSTEM is a Windows
 *   system: the hive is copied out (ntfscat), its computer name (the current
 *   control set's ComputerName, and Tcpip's Hostname and NV Hostname) set
 *   through libhivex (native/hive.ts), and copied back (ntfscp); an optional
 *   unattend.xml template with {{name}} goes to Windows/Panther.
 *
 * Nothing is done to a disk that did not verify (the caller's rule), and
 * every change is read back before it counts as done.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ClonecastError, ERR } from '../protocol/errors.js';
import type { PartitionTable } from '../protocol/partitions.js';
import { hiveGetDword, hiveGetString, hiveSetStrings } from '../native/hive.js';
import { MACHINE_NAME, netbiosName } from '../protocol/machine-name.js';
import { uncleanReason } from '../native/fs-tools.js';
import { trackLoop, untrackLoop } from '../native/cleanup.js';

const SYSTEM_HIVE = '/Windows/System32/config/SYSTEM';

/** What naming did to one partition. */
export interface Named {
  partition: number;
  system: 'linux' | 'windows';
  /** What was written, for the log and the result. */
  what: string;
}

/** Options of nameMachine(). */
export interface NamingOptions {
  /** The text of an unattend.xml template ({{name}} replaced) for Windows systems; '' or absent: none. */
  unattend?: string;
  log?: (level: 'info' | 'warn', message: string) => void;
}

/** Writes name into every Linux root and Windows system on device; returns what it changed. */
export async function nameMachine(device: string, table: PartitionTable, name: string, o: NamingOptions = {}): Promise<Named[]> {
  if (!MACHINE_NAME.test(name)) throw new ClonecastError(ERR.USAGE, `"${name}" cannot be a machine name: 1-64 letters, digits, ".", "_" or "-"`);
  const done: Named[] = [];
  const scratch = mkdtempSync(join(tmpdir(), 'cc-name-'));
  try {
    for (const p of table.partitions) {
      const loop = execFileSync('losetup', ['--find', '--show', '--offset', String(p.start), '--sizelimit', String(p.size), device], { encoding: 'utf8' }).trim();
      trackLoop(loop); // detached at exit too, should the agent be stopped meanwhile
      try {
        const fs = spawnSync('blkid', ['-p', '-o', 'value', '-s', 'TYPE', loop], { encoding: 'utf8' }).stdout.trim();
        const r = /^ext[234]$/.test(fs) ? nameLinux(loop, name, scratch) : fs === 'ntfs' ? await nameWindows(loop, name, scratch, o.unattend || undefined) : null;
        if (r !== null) {
          done.push({ partition: p.number, system: r.system, what: r.what });
          o.log?.('info', `partition ${p.number}: ${r.what}`);
        }
      } finally {
        spawnSync('losetup', ['-d', loop]);
        untrackLoop(loop);
      }
    }
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
  return done;
}

function debugfs(loop: string, request: string, write = false): string {
  const r = spawnSync('debugfs', [...(write ? ['-w'] : []), '-R', request, loop], { encoding: 'utf8' });
  if (r.error !== undefined) throw new ClonecastError(ERR.NOT_FOUND, 'debugfs is missing: install e2fsprogs');
  return r.stdout;
}

function nameLinux(loop: string, name: string, scratch: string): { system: 'linux'; what: string } | null {
  const exists = (path: string) => !/File not found/.test(spawnSync('debugfs', ['-R', `stat ${path}`, loop], { encoding: 'utf8' }).stderr);
  if (!exists('/etc/hostname') && !exists('/etc/os-release')) return null;
  // A journal not yet replayed would be replayed over what debugfs writes at the first mount (and its
  // stale bitmaps could hand debugfs blocks the journal gives to other files): replay it first, as that
  // mount would. e2fsck -p exits 0 (clean), 1 or 2 (fixed); more means it could not fix the filesystem.
  const fsck = spawnSync('e2fsck', ['-p', loop], { encoding: 'utf8' });
  if (fsck.error !== undefined) throw new ClonecastError(ERR.NOT_FOUND, 'e2fsck is missing: install e2fsprogs');
  if (fsck.status === null || fsck.status > 2) {
    throw new ClonecastError(ERR.WRITE_ERROR, `the Linux filesystem is not clean and e2fsck -p could not fix it (exit ${fsck.status}): the machine was not named; check it with e2fsck -f`);
  }
  const hosts = exists('/etc/hosts') ? debugfs(loop, 'cat /etc/hosts') : '127.0.0.1\tlocalhost\n';
  const lines = hosts.split('\n');
  const at = lines.findIndex((l) => /^127\.0\.1\.1\s/.test(l));
  if (at >= 0) lines[at] = `127.0.1.1\t${name}`;
  else lines.splice(lines.at(-1) === '' ? lines.length - 1 : lines.length, 0, `127.0.1.1\t${name}`);
  const files: [string, string][] = [
    ['/etc/hostname', `${name}\n`],
    ['/etc/hosts', lines.join('\n').replace(/\n?$/, '\n')],
  ];
  const script: string[] = [];
  for (const [path, text] of files) {
    const local = join(scratch, path.replace(/\//g, '_'));
    writeFileSync(local, text, { mode: 0o644 });
    script.push(`rm ${path}`, `write ${local} ${path}`, `sif ${path} mode 0100644`, `sif ${path} uid 0`, `sif ${path} gid 0`);
  }
  const cmds = join(scratch, 'debugfs.cmds');
  writeFileSync(cmds, script.join('\n') + '\n');
  spawnSync('debugfs', ['-w', '-f', cmds, loop], { encoding: 'utf8' });
  for (const [path, text] of files) {
    if (debugfs(loop, `cat ${path}`) !== text) throw new ClonecastError(ERR.WRITE_ERROR, `could not write ${path} on the Linux filesystem: it does not read back as written`);
  }
  return { system: 'linux', what: `Linux: /etc/hostname and /etc/hosts say ${name}` };
}

async function nameWindows(loop: string, name: string, scratch: string, unattend: string | undefined): Promise<{ system: 'windows'; what: string } | null> {
  const hive = join(scratch, 'SYSTEM');
  const cat = spawnSync('ntfscat', ['-f', loop, SYSTEM_HIVE], { maxBuffer: 1 << 30 });
  if (cat.error !== undefined) throw new ClonecastError(ERR.NOT_FOUND, 'ntfscat is missing: install ntfs-3g');
  if (cat.status !== 0 || cat.stdout.length === 0) return null;
  // A hibernated Windows (or one whose $LogFile was not replayed) would resume or replay over the changed hive.
  const unclean = await uncleanReason('ntfs', loop);
  if (unclean !== null) throw new ClonecastError(ERR.WRITE_ERROR, `the Windows system was not named: ${unclean}`);
  writeFileSync(hive, cat.stdout);
  // The control set Windows boots with (Select\Current); ControlSet001 where the hive has no Select.
  const current = hiveGetDword(hive, 'Select', 'Current') ?? 1;
  if (current < 1 || current > 999) throw new ClonecastError(ERR.PARTITION_TABLE, `the SYSTEM hive's Select\\Current is ${current}: not a control set`);
  const set = `ControlSet${String(current).padStart(3, '0')}`;
  const netbios = netbiosName(name);
  hiveSetStrings(hive, [
    [`${set}\\Control\\ComputerName\\ComputerName`, 'ComputerName', netbios],
    [`${set}\\Services\\Tcpip\\Parameters`, 'Hostname', name],
    [`${set}\\Services\\Tcpip\\Parameters`, 'NV Hostname', name],
  ]);
  if (hiveGetString(hive, `${set}\\Control\\ComputerName\\ComputerName`, 'ComputerName') !== netbios) throw new ClonecastError(ERR.WRITE_ERROR, 'the computer name did not read back from the changed hive');
  ntfscp(loop, hive, SYSTEM_HIVE);
  if (!readFileSync(hive).equals(spawnSync('ntfscat', ['-f', loop, SYSTEM_HIVE], { maxBuffer: 1 << 30 }).stdout)) {
    throw new ClonecastError(ERR.WRITE_ERROR, 'the SYSTEM hive did not read back from the NTFS filesystem as written');
  }
  let what = `Windows: computer name ${netbios}${netbios !== name ? ` (NetBIOS form of ${name})` : ''}, DNS host name ${name} (${set})`;
  if (unattend !== undefined) {
    const file = join(scratch, 'unattend.xml');
    writeFileSync(file, unattend.replace(/\{\{name\}\}/g, name));
    ntfscp(loop, file, '/Windows/Panther/unattend.xml');
    what += ', Windows/Panther/unattend.xml';
  }
  return { system: 'windows', what };
}

function ntfscp(loop: string, local: string, dest: string): void {
  const r = spawnSync('ntfscp', ['-f', loop, local, dest], { encoding: 'utf8' });
  if (r.error !== undefined) throw new ClonecastError(ERR.NOT_FOUND, 'ntfscp is missing: install ntfs-3g');
  if (r.status !== 0) throw new ClonecastError(ERR.WRITE_ERROR, `could not write ${dest} on the NTFS filesystem: ${r.stderr.trim().split('\n').at(-1) ?? ''}`);
}
