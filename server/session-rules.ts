/**
 * Who a session takes and when it starts: pure functions over a session
 * record and a machine, with no timers and no I/O. A session takes only
 * the machines it names (a MAC list or a group of the registry), or, only
 * when asked with `any`, any idle machine that comes; `clients` is then both
 * the start threshold and the most machines that may join (with a list or a
 * group it is the start threshold only).
 */
import type { StartRule } from '../protocol/api.js';
import { ClonecastError, ERR } from '../protocol/errors.js';
import { FINAL_MACHINE_STATES } from '../protocol/states.js';
import { LABEL, type MachineRecord } from './registry.js';
import { startRuleMet } from '../transfer/policy.js';

export type { StartRule };

/** The parts of a session record the rules read. */
export interface RuleSubject {
  rule: StartRule;
  firstJoinAt: string | null;
  machines: Record<string, { state: string; mac: string }>;
}

const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

/** Checks and normalises a rule from the network or the CLI. */
export function normaliseRule(r: StartRule | undefined): StartRule {
  const rule: StartRule = {};
  if (r !== undefined && (typeof r !== 'object' || r === null)) throw new ClonecastError(ERR.USAGE, 'rule must be an object');
  if (r?.clients !== undefined) {
    if (!Number.isSafeInteger(r.clients) || r.clients < 1 || r.clients > 10_000) throw new ClonecastError(ERR.USAGE, `clients must be a whole number from 1 to 10000, got ${r.clients}`);
    rule.clients = r.clients;
  }
  if (r?.machines !== undefined) {
    if (!Array.isArray(r.machines) || r.machines.length === 0 || r.machines.length > 10_000) throw new ClonecastError(ERR.USAGE, 'machines: give a list of 1 to 10000 MACs');
    const macs = r.machines.map((m) => String(m).toLowerCase().replace(/-/g, ':'));
    for (const mac of macs) if (!MAC.test(mac)) throw new ClonecastError(ERR.USAGE, `"${mac.slice(0, 40)}" is not a MAC address (aa:bb:cc:dd:ee:ff)`);
    rule.machines = [...new Set(macs)];
  }
  if (r?.group !== undefined) {
    if (typeof r.group !== 'string' || !LABEL.test(r.group)) throw new ClonecastError(ERR.USAGE, 'group must be a group name (1-64 letters, digits, ".", "_" or "-")');
    rule.group = r.group;
  }
  if (r?.any !== undefined && r.any !== false) {
    if (r.any !== true) throw new ClonecastError(ERR.USAGE, 'any must be true or false');
    rule.any = true;
  }
  const selectors = [rule.machines !== undefined, rule.group !== undefined, rule.any === true].filter(Boolean).length;
  if (selectors === 0) throw new ClonecastError(ERR.USAGE, 'say which machines take part: machines (a MAC list), group (a group name) or any (any machine that comes, up to clients)');
  if (selectors > 1) throw new ClonecastError(ERR.USAGE, 'give only one of machines, group or any');
  if (r?.waitS !== undefined) {
    if (typeof r.waitS !== 'number' || !(r.waitS >= 0 && r.waitS <= 7 * 86400)) throw new ClonecastError(ERR.USAGE, `wait must be a number of seconds (at most a week), got ${r.waitS}`);
    rule.waitS = r.waitS;
  }
  if (r?.at !== undefined) {
    if (typeof r.at !== 'string' || Number.isNaN(Date.parse(r.at))) throw new ClonecastError(ERR.USAGE, `at must be a time such as 2026-11-22T08:00:00Z, got "${String(r.at).slice(0, 40)}"`);
    rule.at = new Date(r.at).toISOString();
  }
  const starts = rule.clients !== undefined || rule.machines !== undefined || rule.waitS !== undefined || rule.at !== undefined;
  if (r?.now === true || !starts) rule.now = true;
  return rule;
}

/** A rule in words, for logs and the dashboard. */
export function describeRule(r: StartRule): string {
  const who = r.machines !== undefined ? `machines ${r.machines.join(', ')}` : r.group !== undefined ? `group ${r.group}` : 'any machine';
  const cap = r.clients !== undefined ? ` (at most ${r.clients})` : '';
  const parts: string[] = [];
  if (r.now) parts.push('now');
  if (r.clients !== undefined) parts.push(`when ${r.clients} machine${r.clients === 1 ? '' : 's'} joined`);
  if (r.machines !== undefined) parts.push('when every listed machine joined');
  if (r.waitS !== undefined) parts.push(`${r.waitS} s after the first joined`);
  if (r.at !== undefined) parts.push(`at ${r.at}`);
  return `${who}${cap}; starts ${parts.join(' or ')}`;
}

/** The MAC by which the rule names this machine: '' when it is taken by group or any, null when not at all. */
export function namedBy(rule: StartRule, machine: Pick<MachineRecord, 'id' | 'macs' | 'groups'>): string | null {
  // By the machine's id only: the other MACs are the agent's own word, and a listed MAC must not be claimable by another machine.
  if (rule.machines !== undefined) return rule.machines.find((mac) => mac === machine.id) ?? null;
  if (rule.group !== undefined) return machine.groups.includes(rule.group) ? '' : null;
  return rule.any === true ? '' : null;
}

/**
 * True if the session has room for one more machine: a session of "any"
 * machine takes at most `clients`; a list or a group bounds itself (there
 * `clients` only says when to start, and the rest join the running session).
 */
export function hasRoom(s: RuleSubject): boolean {
  // A machine refused or failed frees its place for another.
  return s.rule.any !== true || s.rule.clients === undefined || Object.values(s.machines).filter((m) => m.state !== 'failed').length < s.rule.clients;
}

/** True if this machine may join this session now. */
export function takes(s: RuleSubject, machine: Pick<MachineRecord, 'id' | 'macs' | 'groups'>): boolean {
  return s.machines[machine.id] === undefined && namedBy(s.rule, machine) !== null && hasRoom(s);
}

/**
 * Why the start rule is met, or null: the engine's one start rule
 * (transfer/policy.ts) for clients, wait, at and now, and the server's own
 * for a list of machines. A machine counts as joined once it waits on the
 * group or has ended.
 */
export function ruleMet(s: RuleSubject, now: number): string | null {
  const { machines, clients, waitS, at } = s.rule;
  const joined = Object.entries(s.machines).filter(([, m]) => m.state !== 'assigned' && m.state !== 'offline');
  if (machines !== undefined && machines.every((mac) => joined.some(([id, m]) => id === mac || m.mac === mac))) return 'every listed machine joined';
  // A list of machines alone waits for them (the engine reads a rule with nothing in it as "now").
  if (clients === undefined && waitS === undefined && at === undefined && s.rule.now !== true) return null;
  const firstJoinAt = s.firstJoinAt !== null ? Date.parse(s.firstJoinAt) : null;
  return startRuleMet({ clients, waitS, at, now: s.rule.now }, { count: joined.length, firstJoinAt }, now);
}

/**
 * When a time-based part of the rule falls due (wait after the first join,
 * or at a time), if it has one still ahead of now: the manager sets a timer
 * for it. Joins need no timer: each one is evaluated as it happens.
 */
export function nextDue(s: RuleSubject, now: number): number | null {
  const due: number[] = [];
  if (s.rule.at !== undefined) due.push(Date.parse(s.rule.at));
  if (s.rule.waitS !== undefined && s.firstJoinAt !== null) due.push(Date.parse(s.firstJoinAt) + s.rule.waitS * 1000);
  const ahead = due.filter((t) => t > now);
  return ahead.length > 0 ? Math.min(...ahead) : null;
}

/** The session that takes an idle machine, of those that would: named by MAC first, then by group, then "any"; the oldest first. */
export function firstTaker<S extends RuleSubject & { id: number }>(open: S[]): S | undefined {
  const rank = (s: S) => (s.rule.machines !== undefined ? 0 : s.rule.group !== undefined ? 1 : 2);
  return [...open].sort((a, b) => rank(a) - rank(b) || a.id - b.id)[0];
}

/** True once every machine of a session has ended. */
export function allEnded(s: RuleSubject): boolean {
  const ms = Object.values(s.machines);
  return ms.length > 0 && ms.every((m) => FINAL_MACHINE_STATES.has(m.state));
}

/**
 * True if one of these active sessions holds the machine or would take it,
 * or a capture holds it: it should boot the agent. `known` is its registry
 * record, if it has one.
 */
export function wanted(sessions: RuleSubject[], mac: string, known: Pick<MachineRecord, 'id' | 'macs' | 'groups' | 'activity'> | undefined): boolean {
  if (known?.activity.kind === 'capture') return true;
  const machine = known ?? { id: mac, macs: [mac], groups: [] };
  for (const s of sessions) {
    const mine = s.machines[mac];
    if (mine !== undefined) {
      if (!FINAL_MACHINE_STATES.has(mine.state)) return true;
      continue;
    }
    if ((known === undefined || known.activity.kind === 'idle') && takes(s, machine)) return true;
  }
  return false;
}

/**
 * The session (not an --any one) that holds this machine or would take it by
 * its MAC or a group, or null: what a boot credential for it is bound to.
 */
export function namingSession(sessions: (RuleSubject & { id: number })[], mac: string, known: Pick<MachineRecord, 'id' | 'macs' | 'groups' | 'activity'> | undefined): number | null {
  const machine = known ?? { id: mac, macs: [mac], groups: [] };
  for (const s of sessions) {
    if (s.rule.any === true) continue;
    const mine = s.machines[mac];
    if (mine !== undefined ? !FINAL_MACHINE_STATES.has(mine.state) : (known === undefined || known.activity.kind === 'idle') && takes(s, machine)) return s.id;
  }
  return null;
}
