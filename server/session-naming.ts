/**
 * Machines come out named: what a session's Assign tells each agent to write
 * into the deployed systems after its disk verified (agent/naming.ts does it).
 * The name is the registry's; a Windows unattend.xml template is taken from
 * DATA/unattend/MAC.xml (MAC with dashes), else DATA/unattend/default.xml.
 */
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { UNATTEND_MAX } from '../protocol/control.js';
import { netbiosCollisions, netbiosName } from '../protocol/machine-name.js';
import type { ManifestMeta } from '../protocol/manifest.js';
import type { Registry } from './registry.js';
import type { StartRule } from './session-rules.js';

/** What an agent names its machine with (empty strings: nothing). */
export interface Naming {
  machineName: string;
  unattend: string;
}

/**
 * The naming for one machine of a session: nothing when the session says not to name, or the machine
 * has no name. The unattend.xml template (it often holds a domain-join or administrator password) goes
 * only with an image that has a Windows partition.
 */
export function namingFor(dataRoot: string, machine: { id: string; name: string }, s: { nameMachines?: boolean }, meta: ManifestMeta, log?: (level: 'warn', m: string) => void): Naming {
  if (s.nameMachines === false || machine.name === '') return { machineName: '', unattend: '' };
  return { machineName: machine.name, unattend: hasWindows(meta) ? unattendFor(dataRoot, machine.id, log) : '' };
}

/** GPT "Microsoft basic data", MBR NTFS/exFAT (0x07), or an NTFS filesystem seen at import. */
function hasWindows(meta: ManifestMeta): boolean {
  return meta.partitionTable.partitions.some((p) => p.type === 'ebd0a0a2-b9e5-4433-87c0-68b6b72699c7' || p.type === '0x07') || meta.partitions?.some((p) => p.fs === 'ntfs') === true;
}

/** Warnings for a new session whose named machines would get the same Windows computer name. */
export function namingWarnings(registry: Registry, rule: StartRule, nameMachines: boolean | undefined): string[] {
  if (nameMachines === false) return [];
  const machines = rule.machines !== undefined ? rule.machines.map((id) => registry.get(id)) : rule.group !== undefined ? registry.inGroup(rule.group) : [];
  const names = machines.flatMap((m) => (m !== undefined && m.name !== '' ? [m.name] : []));
  return netbiosCollisions(names).map((g) => `${g.join(', ')} all become the Windows computer name ${netbiosName(g[0])} (at most 15 characters): give them names that differ in their first 15 characters`);
}

function unattendFor(dataRoot: string, mac: string, log?: (level: 'warn', m: string) => void): string {
  for (const file of [join(dataRoot, 'unattend', `${mac.replace(/:/g, '-')}.xml`), join(dataRoot, 'unattend', 'default.xml')]) {
    let size: number;
    try {
      size = statSync(file).size;
    } catch {
      continue;
    }
    if (size > UNATTEND_MAX) {
      log?.('warn', `${file} is ${size} bytes, over the ${UNATTEND_MAX} an agent takes: machines are named without it`);
      return '';
    }
    return readFileSync(file, 'utf8');
  }
  return '';
}
