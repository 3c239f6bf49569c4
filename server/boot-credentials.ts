/**
 * Which machines a boot script carries a credential for, and whether what a
 * credential was issued for still stands at its Hello (docs/security.md,
 * "Credentials"): a capture that holds the machine, a session that names it
 * by its MAC or a group, or the administrator's per-machine action (agent or
 * menu) in DATA/pxe/machines.json. A machine only an --any session or
 * --pxe-idle would boot gets no credential: its agent connects unverified.
 */
import { machineOverride } from '../pxe/service.js';
import type { Binding } from './credentials.js';
import type { CaptureManager } from './captures.js';
import type { SessionManager } from './sessions.js';
import { namingSession } from './session-rules.js';
import type { Registry } from './registry.js';

/** What the rules read. */
export interface BootContext {
  sessions: Pick<SessionManager, 'openSessions'>;
  captures: Pick<CaptureManager, 'list' | 'holds'>;
  registry: Pick<Registry, 'get'>;
  dataRoot: string;
}

/** What a credential for this machine would be bound to, or null (no credential). */
export function bootBinding(mac: string, { sessions, captures, registry, dataRoot }: BootContext): Binding | null {
  const capture = captures.list().find((c) => c.state === 'running' && c.machine === mac);
  if (capture !== undefined) return { kind: 'capture', id: capture.id };
  const session = namingSession(sessions.openSessions(), mac, registry.get(mac));
  if (session !== null) return { kind: 'session', id: session };
  const action = machineOverride(dataRoot, mac)?.action;
  if (action === 'agent' || action === 'menu') return { kind: 'machine' };
  return null;
}

/** True while what the credential was issued for still wants this machine. */
export function bindingStands(b: Binding, mac: string, { sessions, captures, registry, dataRoot }: BootContext): boolean {
  if (b.kind === 'capture') return captures.holds(b.id, mac);
  if (b.kind === 'session') return namingSession(sessions.openSessions(), mac, registry.get(mac)) === b.id;
  const action = machineOverride(dataRoot, mac)?.action;
  return action === 'agent' || action === 'menu';
}
