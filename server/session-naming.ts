/**
 * Machines come out named: what a session's Assign tells each agent to write
 * into the deployed systems after its disk verified (agent/naming.ts does it).
 * The name is the registry's; a Windows unattend.xml template is taken from
 * DATA/unattend/MAC.xml (MAC with dashes), else DATA/unattend/default.xml.
 */
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { UNATTEND_MAX } from '../protocol/control.js';

/** What an agent names its machine with (empty strings: nothing). */
export interface Naming {
  machineName: string;
  unattend: string;
}

/** The naming for one machine of a session: nothing when the session says not to name, or the machine has no name. */
export function namingFor(dataRoot: string, machine: { id: string; name: string }, s: { nameMachines?: boolean }, log?: (level: 'warn', m: string) => void): Naming {
  if (s.nameMachines === false || machine.name === '') return { machineName: '', unattend: '' };
  return { machineName: machine.name, unattend: unattendFor(dataRoot, machine.id, log) };
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
