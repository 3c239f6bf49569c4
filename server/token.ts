/**
 * The server's token: the one secret that agents and admin clients must
 * present. Created on first start in the data directory (mode 0600).
 */
import { randomBytes, timingSafeEqual, createHash } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { ClonecastError, ERR } from '../protocol/errors.js';

/** The token file's name inside the data directory. */
export const TOKEN_FILE = 'token';

/** Reads the data directory's token, creating it if there is none; created says which. */
export function loadOrCreateToken(dataRoot: string): { token: string; path: string; created: boolean } {
  const path = join(dataRoot, TOKEN_FILE);
  if (existsSync(path)) {
    const token = readFileSync(path, 'utf8').trim();
    if (!/^[0-9a-f]{32,128}$/.test(token)) throw new ClonecastError(ERR.DAMAGED, `${path} does not hold a token (hex); delete it to make a new one (agents then need the new token)`);
    return { token, path, created: false };
  }
  const token = randomBytes(24).toString('hex');
  // wx: two servers starting at once cannot both create it.
  const fd = openSync(path, 'wx', 0o600);
  try {
    writeSync(fd, `${token}\n`);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  return { token, path, created: true };
}

/** Compares a presented token with the server's in constant time. */
export function tokenMatches(presented: string | undefined | null, token: string): boolean {
  if (typeof presented !== 'string') return false;
  // Hash both so that lengths do not leak and timingSafeEqual gets equal sizes.
  const a = createHash('sha256').update(presented).digest();
  const b = createHash('sha256').update(token).digest();
  return timingSafeEqual(a, b);
}
