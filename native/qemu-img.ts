/**
 * qemu-img and qemu-nbd (Debian qemu-utils): virtual disk formats are left
 * to them. `qemu-img info` output is hostile input like any file: each layer
 * of a backing chain is looked at on its own (info without --backing-chain
 * does not open the backing file) and checked before the next is opened.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, realpathSync, statSync } from 'node:fs';
import { dirname, isAbsolute, resolve, sep } from 'node:path';
import { ClonecastError, ERR } from '../protocol/errors.js';

/** Formats clonecast imports and exports through qemu-img ("vpc" is VHD). */
export const VIRTUAL_FORMATS = Object.freeze(['qcow2', 'vmdk', 'vhdx', 'vdi', 'vpc', 'raw'] as const);
export type VirtualFormat = (typeof VIRTUAL_FORMATS)[number];

/** Largest virtual size accepted from a file's header (64 TiB). */
export const MAX_VIRTUAL_SIZE = 64 * 2 ** 40;
/** Longest backing chain followed. */
export const MAX_CHAIN = 16;

const INSTALL = 'install Debian\'s qemu-utils (apt-get install qemu-utils)';

/** Throws NOT_FOUND saying what to install unless `tool` (qemu-img or qemu-nbd) runs. */
export function requireTool(tool: 'qemu-img' | 'qemu-nbd'): void {
  const r = spawnSync(tool, ['--version'], { stdio: 'ignore' });
  if (r.error !== undefined || r.status !== 0) {
    throw new ClonecastError(ERR.NOT_FOUND, `${tool} is needed for virtual disk formats but was not found: ${INSTALL}`, { tool });
  }
}

/** One checked layer of a backing chain. */
export interface ImageLayer {
  path: string;
  format: VirtualFormat;
  virtualSize: number;
  backing: string | null;
  /** The backing file's format as the layer names it (null: qemu probes it). */
  backingFormat: string | null;
  /** Other files the layer makes qemu open: a VMDK's extents, a qcow2's external data file. */
  files: string[];
}

/** Runs qemu-img with args; resolves with stdout, rejects with its stderr. */
export function qemuImg(args: string[]): Promise<string> {
  requireTool('qemu-img');
  return new Promise((resolvePromise, reject) => {
    const child = spawn('qemu-img', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', reject);
    child.on('close', (code) => {
      if (code === 0) resolvePromise(Buffer.concat(out).toString('utf8'));
      else reject(new ClonecastError(ERR.READ_ERROR, `qemu-img ${args[0]} failed: ${Buffer.concat(err).toString('utf8').trim().slice(0, 2000)}`, { args }));
    });
  });
}

/**
 * The backing chain of a disk file, top first, each layer checked: a known
 * format, a sane virtual size, and a backing file that is a plain local file
 * in the top file's folder (or anywhere with allowOutside), never a URL,
 * json: filename or device.
 */
export async function inspectChain(path: string, allowOutside = false): Promise<ImageLayer[]> {
  const top = realpathSync(path);
  const home = dirname(top);
  const chain: ImageLayer[] = [];
  let at: string | null = top;
  while (at !== null) {
    if (chain.length === MAX_CHAIN) throw refuse(path, `its backing chain is longer than ${MAX_CHAIN} files`);
    const info = parseInfo(await qemuImg(['info', '--output=json', at]), at);
    // A backing file opened as another format than the one checked would be read differently.
    const before = chain.at(-1);
    if (before !== undefined && before.backingFormat !== null && before.backingFormat !== info.format) {
      throw refuse(path, `${before.path} names its backing file as ${before.backingFormat}, but ${at} is ${info.format}`);
    }
    chain.push(info);
    // Every file qemu would open for this layer (extents, data file) obeys the backing file's rules.
    for (const f of info.files) localFile(path, at, f, 'data file', home, allowOutside);
    const b = info.backing;
    if (b === null) break;
    const real = localFile(path, at, b, 'backing file', home, allowOutside);
    if (chain.some((l) => l.path === real)) throw refuse(path, 'its backing chain loops');
    at = real;
  }
  return chain;
}

/** A file a layer names, checked: local, regular, in the top file's folder unless allowOutside; its real path. */
function localFile(path: string, at: string, name: string, what: string, home: string, allowOutside: boolean): string {
  if (name.startsWith('json:') || /^[a-z][a-z0-9+.-]*:\/\//i.test(name) || (/^[a-z]+:/i.test(name) && !isAbsolute(name))) throw refuse(path, `${at} names a ${what} "${name}" that is not a local file`);
  const full = resolve(dirname(at), name);
  if (!existsSync(full)) throw refuse(path, `${at} needs its ${what} ${full}, which is missing`);
  const real = realpathSync(full);
  if (!statSync(real).isFile()) throw refuse(path, `${at} names ${real} as its ${what}, which is not a regular file`);
  if (!allowOutside && !real.startsWith(home + sep)) {
    throw refuse(path, `${at} names a ${what} outside ${home} (${real}); move the files into one folder, or add --allow-backing-outside if you trust them`);
  }
  return real;
}

function refuse(path: string, why: string): ClonecastError {
  return new ClonecastError(ERR.REFUSED, `refusing to import ${path}: ${why}`, { path });
}

/** Parses and checks one layer of `qemu-img info --output=json`. */
export function parseInfo(json: string, path: string): ImageLayer {
  let v: Record<string, unknown>;
  try {
    v = JSON.parse(json) as Record<string, unknown>;
  } catch {
    throw refuse(path, 'qemu-img info did not print JSON');
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw refuse(path, 'qemu-img info printed something unexpected');
  const format = v['format'];
  const size = v['virtual-size'];
  if (typeof format !== 'string' || !(VIRTUAL_FORMATS as readonly string[]).includes(format)) {
    throw refuse(path, `${path} is in format "${String(format)}"; clonecast takes ${VIRTUAL_FORMATS.join(', ')}`);
  }
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size <= 0 || size > MAX_VIRTUAL_SIZE) {
    throw refuse(path, `${path} claims a virtual size of ${String(size)} bytes (at most ${MAX_VIRTUAL_SIZE} taken)`);
  }
  const backing = v['backing-filename'];
  if (backing !== undefined && typeof backing !== 'string') throw refuse(path, 'its backing file name is not a string');
  const backingFormat = v['backing-filename-format'];
  if (backingFormat !== undefined && typeof backingFormat !== 'string') throw refuse(path, 'its backing file format is not a string');
  return { path, format: format as VirtualFormat, virtualSize: size, backing: backing ?? null, backingFormat: backingFormat ?? null, files: namedFiles(path, v['format-specific']) };
}

/** The files a layer's format-specific data names: VMDK extents, a qcow2 external data file. */
function namedFiles(path: string, spec: unknown): string[] {
  if (typeof spec !== 'object' || spec === null) return [];
  const data = (spec as { data?: unknown }).data;
  if (typeof data !== 'object' || data === null) return [];
  const files: string[] = [];
  const d = data as { extents?: unknown; 'data-file'?: unknown };
  if (d['data-file'] !== undefined) {
    if (typeof d['data-file'] !== 'string') throw refuse(path, 'its data file name is not a string');
    // qemu opens a relative data file name from the current folder of whoever runs it, not from the
    // image's folder: the file checked would not be the file read.
    if (!isAbsolute(d['data-file'])) throw refuse(path, `its external data file "${d['data-file']}" is named relative to no folder qemu agrees on; name it with an absolute path (qemu-img amend -o data_file=/full/path)`);
    files.push(d['data-file']);
  }
  if (d.extents !== undefined) {
    if (!Array.isArray(d.extents) || d.extents.length > 1024) throw refuse(path, 'its extent list is not a list of at most 1024');
    for (const e of d.extents) {
      const f = (e as { filename?: unknown } | null)?.filename;
      if (typeof f !== 'string') throw refuse(path, 'an extent has no file name');
      files.push(f);
    }
  }
  return files;
}

/** A running qemu-nbd, stopped by its pid. */
export interface QemuNbd {
  pid: number;
  socket: string;
  stop(): Promise<void>;
  /** What qemu-nbd printed on stderr so far (trimmed, at most 2000 characters). */
  stderr(): string;
}

/** Starts `qemu-nbd --read-only` for file (format fmt) on a Unix socket and waits until it listens. */
export async function startQemuNbd(file: string, fmt: VirtualFormat, socket: string): Promise<QemuNbd> {
  requireTool('qemu-nbd');
  // Run from the private socket folder: no name in the image can reach a file through the caller's folder.
  const child: ChildProcess = spawn('qemu-nbd', ['--read-only', '--format', fmt, '--socket', socket, '--shared', '4', '--cache', 'writeback', '--aio', 'threads', file], { stdio: ['ignore', 'ignore', 'pipe'], cwd: dirname(socket) });
  const err: Buffer[] = [];
  child.stderr!.on('data', (b: Buffer) => err.push(b));
  let exited: number | null | undefined;
  const done = new Promise<void>((r) => child.on('close', (code) => ((exited = code), r())));
  child.on('error', () => undefined);
  const stop = async () => {
    if (exited === undefined && child.pid !== undefined) process.kill(child.pid, 'SIGTERM');
    await done;
  };
  for (let i = 0; i < 400 && !existsSync(socket); i++) {
    if (exited !== undefined) break;
    await new Promise((r) => setTimeout(r, 25));
  }
  if (!existsSync(socket)) {
    await stop();
    throw new ClonecastError(ERR.READ_ERROR, `qemu-nbd could not serve ${file}: ${Buffer.concat(err).toString('utf8').trim().slice(0, 2000) || 'it did not start listening'}`);
  }
  return { pid: child.pid!, socket, stop, stderr: () => Buffer.concat(err).toString('utf8').trim().slice(0, 2000) };
}
