/**
 * POST /api/images/assemble: image assemble through the admin API. The body
 * comes from the network, so every field is checked before anything is
 * resolved or locked:
 *
 *   { "name": "vm", "parts": ["laptop@2:1", "desktop:2"], "table": "gpt",
 *     "size": 68719476736, "growLast": false }
 *
 * name and parts are required; table (gpt|mbr), size (bytes) and growLast
 * are optional. The answer is the same summary `clonecast image assemble
 * --json` prints.
 */
import { ClonecastError, ERR } from '../protocol/errors.js';
import { assembleImage, type AssembleSummary } from './store/assemble.js';
import { parsePartSpec } from './store/assemble-plan.js';
import type { Store } from './store/store.js';

/** At most this many --part entries in one request (a GPT holds 128). */
export const MAX_ASSEMBLE_PARTS = 128;
const KEYS = new Set(['name', 'parts', 'table', 'size', 'growLast']);

/** Checks an assemble request body; throws USAGE naming the first bad field. */
export function checkAssembleRequest(body: unknown): { name: string; parts: string[]; table?: 'gpt' | 'mbr'; size?: number; growLast: boolean } {
  const bad = (why: string) => new ClonecastError(ERR.USAGE, `assemble request: ${why}`);
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw bad('the body must be a JSON object');
  const o = body as Record<string, unknown>;
  const extra = Object.keys(o).find((k) => !KEYS.has(k));
  if (extra !== undefined) throw bad(`unknown field "${extra.slice(0, 40)}" (fields: ${[...KEYS].join(', ')})`);
  if (typeof o.name !== 'string' || o.name.length > 64) throw bad('name must be an image name');
  if (!Array.isArray(o.parts) || o.parts.length === 0 || o.parts.length > MAX_ASSEMBLE_PARTS) throw bad(`parts must be a list of 1 to ${MAX_ASSEMBLE_PARTS} "IMAGE[@V]:N" strings`);
  for (const p of o.parts) if (typeof p !== 'string' || p.length > 200) throw bad('each part must be an "IMAGE[@V]:N" string');
  if (o.table !== undefined && o.table !== 'gpt' && o.table !== 'mbr') throw bad('table must be "gpt" or "mbr"');
  if (o.size !== undefined && (typeof o.size !== 'number' || !Number.isSafeInteger(o.size) || o.size <= 0)) throw bad('size must be a whole number of bytes');
  if (o.growLast !== undefined && typeof o.growLast !== 'boolean') throw bad('growLast must be true or false');
  return { name: o.name, parts: o.parts as string[], table: o.table as 'gpt' | 'mbr' | undefined, size: o.size as number | undefined, growLast: o.growLast === true };
}

/** Runs an assemble request (checked first) against the store. */
export async function assembleRequest(store: Store, body: unknown): Promise<AssembleSummary> {
  const r = checkAssembleRequest(body);
  return assembleImage(store, r.name, r.parts.map(parsePartSpec), { table: r.table, size: r.size, growLast: r.growLast });
}
