/**
 * The server's small state files (machines.json, sessions.json,
 * captures.json): a JSON list, written by Store.writeAtomic. One that cannot
 * be read is never overwritten: it is renamed aside and the server starts
 * with an empty list.
 */
import { existsSync, readFileSync, renameSync } from 'node:fs';

/** The list in path ([] if there is none); an unreadable file is kept as path.unreadable-TIME, named in setAside. */
export function loadJsonList<T>(path: string): { list: T[]; setAside: string | undefined } {
  if (!existsSync(path)) return { list: [], setAside: undefined };
  try {
    const list = JSON.parse(readFileSync(path, 'utf8')) as T[];
    if (!Array.isArray(list)) throw new Error('not a list');
    return { list, setAside: undefined };
  } catch {
    const setAside = `${path}.unreadable-${Date.now()}`;
    renameSync(path, setAside);
    return { list: [], setAside };
  }
}
