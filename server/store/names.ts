/** Image names and references, and where the store lives. */
import { homedir } from 'node:os';
import { join } from 'node:path';
import { ClonecastError, ERR } from '../../protocol/errors.js';

/** Where the store lives when neither --data nor CLONECAST_DATA says otherwise. */
export const DEFAULT_DATA_DIR = join(homedir(), '.local', 'share', 'clonecast');

/** The data directory to use: the flag, then CLONECAST_DATA, then the default. */
export function dataDir(flag?: string): string {
  return flag ?? process.env.CLONECAST_DATA ?? DEFAULT_DATA_DIR;
}

/** What an image name may be. */
export const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** A parsed image reference: NAME (latest), NAME@N, or NAME@DATE (the latest version at or before it). */
export interface ImageRef {
  name: string;
  version?: number;
  /** ISO time: the latest version created at or before it (restore-as-of). */
  asOf?: string;
}

/** Parses "NAME", "NAME@N", "NAME@2026-11-20" (end of that day, UTC) or "NAME@2026-11-20T18:00Z"; throws BAD_NAME with the rule. */
export function parseRef(ref: string): ImageRef {
  const at = ref.lastIndexOf('@');
  const name = at < 0 ? ref : ref.slice(0, at);
  checkName(name);
  if (at < 0) return { name };
  const v = ref.slice(at + 1);
  if (/^\d{4}-\d{2}-\d{2}$/.test(v) && !Number.isNaN(Date.parse(`${v}T00:00:00Z`))) return { name, asOf: `${v}T23:59:59.999Z` };
  if (/^\d{4}-\d{2}-\d{2}T/.test(v) && !Number.isNaN(Date.parse(v))) return { name, asOf: new Date(v).toISOString() };
  if (!/^[1-9][0-9]{0,8}$/.test(v)) {
    throw new ClonecastError(ERR.BAD_NAME, `"${ref}": a version is written NAME@N with N a positive whole number (e.g. ${name}@2), or NAME@DATE for the latest version at or before a date (e.g. ${name}@2026-11-20)`);
  }
  return { name, version: Number(v) };
}

/** Throws BAD_NAME unless name is a valid image name. */
export function checkName(name: string): void {
  if (!NAME_RE.test(name)) {
    throw new ClonecastError(ERR.BAD_NAME, `"${name}" is not a valid image name: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit`);
  }
}
