/**
 * The layers keep: each folder imports only the folders below it, and files
 * stay small enough to hold one job. Read from the sources, so a new import
 * that crosses a layer fails here, in CI, before review.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative, resolve, dirname } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ROOT } from '../helpers.js';

/** Which of our folders each folder may import (itself always). */
const ALLOWED: Record<string, string[]> = {
  // Pure codecs and schemas: nothing of ours.
  protocol: [],
  // The addon and its typed wrappers: error codes and the codecs it accelerates.
  native: ['protocol'],
  // Durable state files.
  state: ['protocol', 'native'],
  // The transfer engine, shared by both daemons, importing neither.
  transfer: ['protocol', 'native'],
  agent: ['protocol', 'native', 'transfer'],
  pxe: ['protocol', 'native', 'state'],
  server: ['protocol', 'native', 'state', 'transfer', 'pxe'],
  // The command line wires everything.
  cli: ['protocol', 'native', 'state', 'transfer', 'pxe', 'server', 'agent'],
};

/** Lines a source file may have: about 400, with some slack; generated code and the C addon aside. */
const MAX_LINES = 450;

function sources(dir: string): string[] {
  const out: string[] = [];
  let names: string[];
  try {
    names = readdirSync(dir);
  } catch {
    return out;
  }
  for (const name of names) {
    const path = join(dir, name);
    if (name === 'generated' || name === 'node_modules') continue;
    if (statSync(path).isDirectory()) out.push(...sources(path));
    else if (name.endsWith('.ts') && !name.endsWith('.d.ts')) out.push(path);
  }
  return out;
}

/** Relative imports of a file, as repository folders of their targets. */
function importedFolders(file: string): { spec: string; folder: string }[] {
  const text = readFileSync(file, 'utf8');
  const found: { spec: string; folder: string }[] = [];
  for (const m of text.matchAll(/(?:^|\n)\s*(?:import|export)\b[^'"]*?from\s+'(\.[^']+)'|import\(\s*'(\.[^']+)'\s*\)/g)) {
    const spec = m[1] ?? m[2];
    const target = relative(ROOT, resolve(dirname(file), spec));
    found.push({ spec, folder: target.split('/')[0] });
  }
  return found;
}

describe('layers', () => {
  for (const [folder, allowed] of Object.entries(ALLOWED)) {
    it(`${folder}/ imports only ${allowed.length ? allowed.join(', ') : 'itself'}`, () => {
      const crossings: string[] = [];
      for (const file of sources(join(ROOT, folder))) {
        for (const { spec, folder: to } of importedFolders(file)) {
          if (to !== folder && !allowed.includes(to)) crossings.push(`${relative(ROOT, file)} imports ${spec}`);
        }
      }
      expect(crossings).toEqual([]);
    });
  }

  it(`source files stay under ${MAX_LINES} lines`, () => {
    const long: string[] = [];
    for (const folder of Object.keys(ALLOWED)) {
      for (const file of sources(join(ROOT, folder))) {
        const lines = readFileSync(file, 'utf8').split('\n').length;
        if (lines > MAX_LINES) long.push(`${relative(ROOT, file)}: ${lines} lines`);
      }
    }
    expect(long).toEqual([]);
  });

  it('the checker sees a crossing when there is one', () => {
    // agent/agent.ts imports protocol/: the parser finds imports at all.
    const seen = importedFolders(join(ROOT, 'agent', 'agent.ts')).map((i) => i.folder);
    expect(seen).toContain('protocol');
  });
});
