/**
 * The system tools used-block imaging runs on one partition: blkid to name
 * its filesystem, each filesystem's own tool to tell whether it was cleanly
 * unmounted, and partclone in map-only mode (-D) for its used ranges.
 * Shared by import (server) and capture (agent).
 */
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseDomainMap, type Span } from '../protocol/used-map.js';

/** How long one tool may run on one partition before it is given up (a map reads only bitmaps). */
export const TOOL_TIMEOUT_MS = 10 * 60_000;

/** The fix people are told for a filesystem that was not shut down cleanly. */
export const SHUT_DOWN_FIX = 'boot the source and shut it down fully (on Windows: turn off Fast Startup, or hold Shift while choosing Shut down), then image it again';

/** Runs a tool; resolves with its output and exit code (never rejects, a missing tool is code 127). */
export function run(cmd: string, args: string[], maxBuffer = 16 << 20): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: TOOL_TIMEOUT_MS, maxBuffer, encoding: 'latin1', env: { ...process.env, LC_ALL: 'C' } }, (err, stdout, stderr) => {
      const e = err as (NodeJS.ErrnoException & { code?: number | string }) | null;
      const code = e === null ? 0 : typeof e.code === 'number' ? e.code : e.code === 'ENOENT' ? 127 : 1;
      resolve({ code, stdout: String(stdout ?? ''), stderr: String(stderr ?? (e?.message ?? '')) });
    });
  });
}

/**
 * The first n bytes a tool writes, then the tool is stopped (hiberfil.sys
 * is gigabytes; only its signature matters). Resolves with what came (maybe
 * fewer bytes) and whether the tool could be started.
 */
export function firstBytes(cmd: string, args: string[], n: number): Promise<{ started: boolean; bytes: Buffer }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'ignore'], env: { ...process.env, LC_ALL: 'C' } });
    const parts: Buffer[] = [];
    let got = 0;
    let started = true;
    const timer = setTimeout(() => child.kill('SIGKILL'), TOOL_TIMEOUT_MS);
    child.on('error', () => (started = false));
    child.stdout.on('data', (d: Buffer) => {
      parts.push(d);
      got += d.length;
      if (got >= n) child.kill('SIGKILL');
    });
    child.on('close', () => {
      clearTimeout(timer);
      resolve({ started, bytes: Buffer.concat(parts).subarray(0, n) });
    });
  });
}

/** blkid's low-level probe of a device: TYPE, UUID, LABEL, VERSION, ... (empty if it found nothing). */
export async function probe(dev: string): Promise<Record<string, string>> {
  const r = await run('blkid', ['-p', '-o', 'export', dev]);
  const out: Record<string, string> = {};
  for (const line of r.stdout.split('\n')) {
    const eq = line.indexOf('=');
    if (eq > 0) out[line.slice(0, eq)] = line.slice(eq + 1).slice(0, 256);
  }
  if (r.code === 127) out.BLKID_MISSING = '1';
  return out;
}

/** partclone's program for each filesystem blkid names; a filesystem not here is read in full. */
export const PARTCLONE: Readonly<Record<string, string>> = Object.freeze({
  ext2: 'partclone.extfs',
  ext3: 'partclone.extfs',
  ext4: 'partclone.extfs',
  ntfs: 'partclone.ntfs',
  vfat: 'partclone.fat',
  exfat: 'partclone.exfat',
  xfs: 'partclone.xfs',
  btrfs: 'partclone.btrfs',
  f2fs: 'partclone.f2fs',
  hfsplus: 'partclone.hfsp',
});

/**
 * Why this filesystem must not be read by its bitmaps (it was not cleanly
 * unmounted, so its bitmaps may be stale), or null if it is clean. A check
 * that cannot run counts as unclean: its reason says which tool is missing.
 */
export async function uncleanReason(fs: string, dev: string): Promise<string | null> {
  if (fs === 'ext3' || fs === 'ext4' || fs === 'ext2') {
    const r = await run('dumpe2fs', ['-h', dev]);
    if (r.code !== 0) return `dumpe2fs could not read its superblock (${lastLine(r.stderr)})`;
    const features = /^Filesystem features:\s*(.*)$/m.exec(r.stdout)?.[1] ?? '';
    if (/\bneeds_recovery\b/.test(features)) return `its journal holds changes not yet written (needs_recovery): it was not cleanly unmounted; ${SHUT_DOWN_FIX}`;
    const state = /^Filesystem state:\s*(.*)$/m.exec(r.stdout)?.[1]?.trim() ?? '';
    if (state !== 'clean') return `its state is "${state}" (not clean): run e2fsck on it, or ${SHUT_DOWN_FIX}`;
    return null;
  }
  if (fs === 'ntfs') {
    // hiberfil.sys starting "hibr" (any case): Windows hibernated, or shut down with Fast Startup.
    const h = await firstBytes('ntfscat', [dev, 'hiberfil.sys'], 4);
    if (!h.started) return 'ntfscat (ntfs-3g) is missing, so whether Windows is hibernated cannot be checked';
    if (/^hibr/i.test(h.bytes.toString('latin1'))) return `Windows is hibernated or was shut down with Fast Startup (hiberfil.sys is active); ${SHUT_DOWN_FIX}`;
    // $LogFile (MFT record 2): a journal Windows did not close cleanly holds changes not yet replayed.
    const log = await firstBytes('ntfscat', ['-i', '2', dev], LOGFILE_SCAN);
    const state = logFileState(log.bytes);
    if (state === 'dirty') return `its $LogFile holds changes not yet replayed (Windows did not shut it down cleanly, or it was hibernated); ${SHUT_DOWN_FIX}`;
    if (state === 'unreadable') return `its $LogFile has no restart page that can be read: it may be damaged; run chkdsk on it, or ${SHUT_DOWN_FIX}`;
    const i = await run('ntfsinfo', ['-m', dev]);
    if (i.code === 127) return 'ntfsinfo (ntfs-3g) is missing, so whether it was cleanly unmounted cannot be checked';
    const flags = /Volume Flags:\s*0x([0-9a-fA-F]+)/.exec(i.stdout);
    if (i.code !== 0 || flags === null) return `ntfsinfo could not read it (${lastLine(i.stderr)}): it may be hibernated or damaged; ${SHUT_DOWN_FIX}`;
    // VOLUME_IS_DIRTY is bit 0 of the $Volume information's flags.
    if ((Number.parseInt(flags[1], 16) & 1) !== 0) return `its dirty flag is set (not cleanly unmounted); run chkdsk on it, or ${SHUT_DOWN_FIX}`;
    return null;
  }
  if (fs === 'xfs') {
    const r = await run('xfs_logprint', ['-t', dev]);
    if (r.code === 127) return 'xfs_logprint (xfsprogs) is missing, so whether its log is clean cannot be checked';
    if (!/state:\s*<CLEAN>/.test(r.stdout)) return `its log holds changes not yet written (a dirty log): it was not cleanly unmounted; ${SHUT_DOWN_FIX}`;
    return null;
  }
  if (fs === 'btrfs') {
    const r = await run('btrfs', ['inspect-internal', 'dump-super', dev]);
    if (r.code === 127) return 'btrfs (btrfs-progs) is missing, so whether its log tree is empty cannot be checked';
    const log = /^log_root\s+(\d+)/m.exec(r.stdout);
    if (r.code !== 0 || log === null) return `btrfs could not read its superblock (${lastLine(r.stderr)})`;
    if (log[1] !== '0') return `its log tree holds fsync'd changes not yet replayed: it was not cleanly unmounted; ${SHUT_DOWN_FIX}`;
    return null;
  }
  // FAT, exFAT, f2fs, HFS+: partclone itself refuses what it cannot read.
  return null;
}

/** Bytes of $LogFile read: restart pages are looked for at 0 and at 512, 1024, ... 64 KiB (the largest system page), plus one page. */
const LOGFILE_SCAN = 65536 + 4096;

/**
 * Whether an NTFS $LogFile (its first bytes) says the volume was shut down cleanly, as ntfs-3g's
 * logfile.c judges it: 'empty' (all 0xFF, as mkntfs and ntfs-3g leave it), 'clean', 'dirty' (the
 * restart area with the highest current LSN lists a client in use and lacks
 * RESTART_VOLUME_IS_CLEAN), or 'unreadable' (no "RSTR" or "CHKD" restart page found).
 * Layout (little-endian): restart page header: magic at 0, restart_area_offset u16 at 0x18;
 * restart area: current_lsn u64 at 0, client_in_use_list u16 at 12, flags u16 at 14.
 */
export function logFileState(bytes: Buffer): 'empty' | 'clean' | 'dirty' | 'unreadable' {
  const NO_CLIENT = 0xffff;
  const VOLUME_IS_CLEAN = 0x0002;
  let best: { lsn: bigint; dirty: boolean } | undefined;
  for (let pos = 0; pos <= 65536 && pos + 512 <= bytes.length; pos = pos === 0 ? 512 : pos * 2) {
    const magic = bytes.toString('latin1', pos, pos + 4);
    if (magic !== 'RSTR' && magic !== 'CHKD') continue;
    const ra = pos + bytes.readUInt16LE(pos + 0x18);
    if (ra - pos < 0x1e || ra - pos > 4096 - 16 || ra + 16 > bytes.length) continue;
    const lsn = bytes.readBigUInt64LE(ra);
    const dirty = bytes.readUInt16LE(ra + 12) !== NO_CLIENT && (bytes.readUInt16LE(ra + 14) & VOLUME_IS_CLEAN) === 0;
    if (best === undefined || lsn > best.lsn) best = { lsn, dirty };
  }
  if (best !== undefined) return best.dirty ? 'dirty' : 'clean';
  return bytes.length >= 512 && bytes.every((b) => b === 0xff) ? 'empty' : 'unreadable';
}

/**
 * The used ranges of a partition, as disk offsets, from partclone's map of
 * dev (which holds the partition [start, start+length) of the disk).
 * Throws an Error saying why when partclone fails or its map is malformed.
 */
export async function partcloneMap(fs: string, dev: string, start: number, length: number): Promise<Span[]> {
  const tool = PARTCLONE[fs];
  if (tool === undefined) throw new Error(`no partclone program reads ${fs}`);
  const dir = mkdtempSync(join(tmpdir(), 'clonecast-map-'));
  try {
    const map = join(dir, 'map');
    // Never -I: a filesystem partclone's own check refuses is read in full instead.
    const r = await run(tool, ['-D', '-q', '-s', dev, '-O', map, `--offset_domain=${start}`]);
    if (r.code === 127) throw new Error(`${tool} (partclone) is missing`);
    if (r.code !== 0) throw new Error(`${tool} failed (${lastLine(r.stderr + r.stdout)})`);
    let text: string;
    try {
      text = readFileSync(map, 'latin1');
    } catch {
      throw new Error(`${tool} wrote no map`);
    }
    try {
      return parseDomainMap(text, start, length);
    } catch (err) {
      throw new Error(`${tool}'s map is malformed (${(err as Error).message})`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function lastLine(s: string): string {
  const lines = s.split('\n').map((l) => l.trim()).filter((l) => l !== '');
  return (lines[lines.length - 1] ?? 'no message').slice(0, 200);
}
