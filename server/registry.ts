/**
 * The machine registry: every machine ever seen, and the one owner of what
 * each machine is doing. A machine is idle, held by one session, or held by
 * one capture (its activity); sessions and captures claim, report on and
 * release machines only through `apply`, the one transition function, so a
 * deploy can never take a machine that is being captured, nor a capture one
 * that is being written. Also kept: names and groups given by the
 * administrator, the image each machine last received, its session history.
 * Persisted in the data directory as machines.json (state/state-file.ts:
 * written off the event loop, temp file, fsync, rename) at most every
 * SAVE_MS and on close.
 */
import { EventEmitter } from 'node:events';
import { listFile, type StateFile } from '../state/state-file.js';
import { join } from 'node:path';
import type { DiskInfo } from '../protocol/control.js';
import { ClonecastError, ERR } from '../protocol/errors.js';
import { describeActivity, IDLE, sameActivity, type Activity, type MachineStateName } from '../protocol/states.js';
import type { Store } from './store/store.js';

/** How often the registry is written at most, ms. */
export const SAVE_MS = 1000;
/** Session history entries kept per machine. */
export const HISTORY_LIMIT = 50;
/** Events kept per machine (boot, connect, join, drop, result), newest first. */
export const EVENT_LIMIT = 100;
/** Boot events kept among them: repeated boots cannot push out joins, drops and results. */
export const BOOT_EVENT_LIMIT = 20;

/** What happened to a machine, for its page (newest first, at most EVENT_LIMIT). */
export interface MachineLogEntry {
  at: string;
  kind: 'boot' | 'connect' | 'disconnect' | 'join' | 'drop' | 'result';
  text: string;
}

/** The transfer counters a machine reports in a session (control.proto's Progress). */
export interface TransferCounts {
  chunksDone: number;
  chunksTotal: number;
  bytesWritten: number;
  rateBps: number;
  loss: number;
  nacks: number;
  /** Chunks already on the disk, not fetched again. */
  skipped: number;
}

/** A machine's live progress in its current session. */
export interface MachineProgress extends TransferCounts {
  /** Seconds left at the current rate, or null when unknown. */
  etaSeconds: number | null;
}

/** One session in a machine's history. */
export interface HistoryEntry {
  session: number;
  image: string;
  version: number;
  outcome: string;
  error: string;
  verified: boolean;
  seconds: number;
  endedAt: string;
}

/** What the server knows about one machine. */
export interface MachineRecord {
  /** Primary MAC. */
  id: string;
  /** A name the administrator gave it ('' if none). */
  name: string;
  /** Groups the administrator put it in (a session can name a group). */
  groups: string[];
  macs: string[];
  hostname: string;
  bootMode: string;
  agentVersion: string;
  disks: DiskInfo[];
  /** IP address of its last connection. */
  address: string;
  online: boolean;
  /** What holds the machine now; changed only by Registry.apply. */
  activity: Activity;
  /** What it is doing or how its last work ended (protocol/states.ts), e.g. "idle", "receiving", "done". */
  state: MachineStateName;
  /** The session holding it, or null (mirrors activity, for readers). */
  session: number | null;
  image: string | null;
  progress: MachineProgress | null;
  lastError: string;
  firstSeen: string;
  lastSeen: string;
  lastImage: { name: string; version: number; at: string; verified: boolean } | null;
  history: HistoryEntry[];
  /** Its event log (list() leaves it out; get() and the machine's API route have it). */
  events?: MachineLogEntry[];
  /** Another machine later connected from the same address while this one was offline (a lab rebuilt with new MACs, a replaced PC); '' when not. */
  supersededBy?: string;
  /**
   * How its current (or last) agent proved who it is: 'token' (the server's
   * token), 'credential' (a boot credential or its agent secret) or
   * 'unverified' (no credential: only an --any session takes it).
   */
  trust: AgentTrust;
  /** It has proved who it is at least once: an agent without a credential can no longer speak for it. */
  trusted: boolean;
  /** SHA-256 (hex) of its agent secret, and the trust that secret carries; never shown. */
  secretHash?: string;
  secretTrust?: AgentTrust;
}

/** How an agent proved who it is. */
export type AgentTrust = 'token' | 'credential' | 'unverified';

/** A change to a machine's activity; `by` is the session or capture that asks. */
export type MachineEvent =
  /** Take an idle machine (or one this holder already has). */
  | { type: 'claim'; by: Activity; state: MachineStateName; image?: string }
  /** Progress or a new state from the holder; ignored from anyone else. */
  | { type: 'report'; by: Activity; state: MachineStateName; progress?: MachineProgress | null; error?: string }
  /** The holder lets go: the machine is idle again, its last state says how the work ended. */
  | { type: 'release'; by: Activity; state: MachineStateName; error?: string; history?: HistoryEntry };

/** Names and group names: 1-64 letters, digits, '.', '_' or '-'. */
export const LABEL = /^[A-Za-z0-9._-]{1,64}$/;

/** Every machine, by id; saved to DATA/machines.json. Emits 'changed', and 'released' (id) when a machine becomes idle or is relabelled while idle. */
export class Registry extends EventEmitter {
  private readonly machines = new Map<string, MachineRecord>();
  private timer: NodeJS.Timeout | undefined;
  private closed = false;
  /** machines.json; its health() says whether it is saved. */
  readonly file: StateFile<MachineRecord[]>;
  /** Set when the file could not be read (it was kept aside under this name). */
  readonly setAside: string | undefined;

  constructor(store: Store) {
    super();
    // The registry debounces its own changes (SAVE_MS): the file writes at once when handed them.
    this.file = listFile<MachineRecord>(join(store.root, 'machines.json'), { debounceMs: 0 });
    this.setAside = this.file.setAside;
    for (const m of this.file.value) {
      // Files from before activities: nothing held them.
      const old = m as Partial<MachineRecord> & MachineRecord;
      this.machines.set(m.id, { ...m, name: old.name ?? '', groups: old.groups ?? [], activity: old.activity ?? IDLE, online: false, state: 'offline', progress: null, trust: old.trust ?? 'token', trusted: old.trusted ?? true });
    }
  }

  /**
   * After a restart: a machine whose holder no longer holds it (the session
   * or capture ended, or lists it as finished, while the server was down or
   * before machines.json caught up) is released.
   */
  reconcile(holds: (a: Activity, machineId: string) => boolean): void {
    for (const m of this.machines.values()) {
      if (m.activity.kind !== 'idle' && !holds(m.activity, m.id)) Object.assign(m, { activity: IDLE, session: null, progress: null });
    }
    this.changed();
  }

  /**
   * The one transition function of a machine's activity. A claim succeeds
   * only on an idle machine (or one the same holder has); reports and
   * releases count only from the holder. Returns null, or why it was refused.
   */
  apply(id: string, e: MachineEvent): string | null {
    const m = this.machines.get(id);
    if (m === undefined) return `no machine ${id}`;
    const mine = sameActivity(m.activity, e.by);
    switch (e.type) {
      case 'claim':
        if (m.activity.kind !== 'idle' && !mine) return `${id} is busy (${describeActivity(m.activity)})`;
        Object.assign(m, { activity: e.by, state: e.state, session: e.by.kind === 'session' ? e.by.id : null, lastError: '', progress: null });
        if (e.image !== undefined) m.image = e.image;
        break;
      case 'report':
        if (!mine) return `${id} is not held by ${describeActivity(e.by)}`;
        m.state = e.state;
        if (e.progress !== undefined) m.progress = e.progress;
        if (e.error !== undefined) m.lastError = e.error;
        break;
      case 'release':
        if (!mine) return `${id} is not held by ${describeActivity(e.by)}`;
        Object.assign(m, { activity: IDLE, state: e.state, session: null, progress: null, lastError: e.error ?? '' });
        if (e.history !== undefined) this.addHistory(m, e.history);
        // Others may want it now; told after this transition has completed, never inside it.
        setImmediate(() => this.emit('released', id));
        break;
    }
    m.lastSeen = new Date().toISOString();
    if (e.type === 'claim' && !mine) this.log(m, 'join', `taken by ${describeActivity(e.by)}${e.image !== undefined ? ` (${e.image})` : ''}`);
    if (e.type === 'release') this.log(m, e.error ? 'drop' : 'result', `${describeActivity(e.by)} ended: ${e.state === 'idle' && !e.error ? 'finished' : e.state}${e.history?.verified ? ', verified' : ''}${e.error ? ` (${e.error})` : ''}`);
    this.changed();
    return null;
  }

  /** Adds an event to a machine's log (bounded); unknown machines are ignored. */
  event(id: string, kind: MachineLogEntry['kind'], text: string): void {
    const m = this.machines.get(id.toLowerCase());
    if (m === undefined) return;
    this.log(m, kind, text);
    this.changed();
  }

  private log(m: MachineRecord, kind: MachineLogEntry['kind'], text: string): void {
    const at = new Date().toISOString();
    const events = m.events ?? [];
    // A machine that boots again and again (one boot event per fetch) must not push its joins, drops and results out:
    // the same boot event as the newest one is counted on that entry instead of added.
    const top = events[0];
    if (kind === 'boot' && top?.kind === 'boot' && (top.text === text || top.text.startsWith(`${text} (×`))) {
      const count = (Number(/ \(×(\d+)\)$/.exec(top.text)?.[1]) || 1) + 1;
      events[0] = { at, kind, text: `${text.slice(0, 280)} (×${count})` };
      m.events = events;
      return;
    }
    // Boot events beyond BOOT_EVENT_LIMIT go first, so those of other kinds stay.
    let next = [{ at, kind, text: text.slice(0, 300) }, ...events];
    if (next.filter((e) => e.kind === 'boot').length > BOOT_EVENT_LIMIT) {
      let seen = 0;
      next = next.filter((e) => e.kind !== 'boot' || ++seen <= BOOT_EVENT_LIMIT);
    }
    m.events = next.slice(0, EVENT_LIMIT);
  }

  /**
   * Forgets a machine: its record, names, groups, history and secret. A
   * machine that is connected or held is refused (it would come back at
   * once, or its holder would lose it).
   */
  forget(id: string): MachineRecord {
    const m = this.machines.get(id.toLowerCase());
    if (m === undefined) throw new ClonecastError(ERR.NOT_FOUND, `no machine ${id}; "clonecast machines" lists them`);
    if (m.online || m.activity.kind !== 'idle') throw new ClonecastError(ERR.BUSY, `${m.id} is ${m.online ? 'connected' : describeActivity(m.activity)}; stop its agent (or wait for its work to end) before forgetting it`);
    this.machines.delete(m.id);
    this.changed();
    return m;
  }

  /** Like apply, but a refusal throws (for requests that must not go ahead). */
  claim(id: string, by: Activity, state: MachineStateName): void {
    const why = this.apply(id, { type: 'claim', by, state });
    if (why !== null) throw new ClonecastError(ERR.BUSY, why);
  }

  /** The machine's agent connected (online) or went away (offline); its activity stays with its holder. */
  online(id: string, online: boolean): void {
    const m = this.machines.get(id);
    if (m === undefined) return;
    if (m.online && !online) this.log(m, 'disconnect', 'agent disconnected');
    m.online = online;
    if (m.activity.kind === 'idle') m.state = online ? 'idle' : 'offline';
    m.lastSeen = new Date().toISOString();
    this.changed();
  }

  /** Gives a machine a name and groups (the administrator's labels). */
  label(id: string, change: { name?: unknown; groups?: unknown }): MachineRecord {
    const m = this.machines.get(id.toLowerCase());
    if (m === undefined) throw new ClonecastError(ERR.NOT_FOUND, `no machine ${id}; "clonecast machines" lists them`);
    if (typeof change !== 'object' || change === null) throw new ClonecastError(ERR.USAGE, 'send {"name": ..., "groups": [...]}');
    if (change.name !== undefined) {
      if (change.name !== '' && (typeof change.name !== 'string' || !LABEL.test(change.name))) throw new ClonecastError(ERR.USAGE, 'a machine name is 1-64 letters, digits, ".", "_" or "-" (or "" to remove it)');
      m.name = change.name as string;
    }
    if (change.groups !== undefined) {
      if (!Array.isArray(change.groups) || change.groups.length > 32 || change.groups.some((g) => typeof g !== 'string' || !LABEL.test(g))) {
        throw new ClonecastError(ERR.USAGE, 'groups are a list of up to 32 names of 1-64 letters, digits, ".", "_" or "-"');
      }
      m.groups = [...new Set(change.groups as string[])];
    }
    this.changed();
    // A waiting session may name it now (by its new group).
    if (m.activity.kind === 'idle') setImmediate(() => this.emit('released', m.id));
    return m;
  }

  /** Machines in a group. */
  inGroup(group: string): MachineRecord[] {
    return this.list().filter((m) => m.groups.includes(group));
  }

  /** All machines, most recently seen first (without their secrets' hashes). */
  list(): MachineRecord[] {
    return this.records().map(({ secretHash: _h, secretTrust: _t, events: _e, ...m }) => m);
  }

  private records(): MachineRecord[] {
    return [...this.machines.values()].sort((a, b) => b.lastSeen.localeCompare(a.lastSeen));
  }

  /** Keeps the hash of a machine's new agent secret and the trust it carries; undefined forgets the secret. */
  setSecret(id: string, hash: string | undefined, trust: AgentTrust): void {
    const m = this.machines.get(id);
    if (m === undefined || (hash === undefined && m.secretHash === undefined)) return;
    if (hash === undefined) {
      delete m.secretHash;
      delete m.secretTrust;
    } else Object.assign(m, { secretHash: hash, secretTrust: trust });
    this.changed();
  }

  get(id: string): MachineRecord | undefined {
    return this.machines.get(id);
  }

  /** Records a machine that said hello; returns its record. */
  seen(given: Pick<MachineRecord, 'id' | 'macs' | 'hostname' | 'bootMode' | 'agentVersion' | 'disks' | 'address'> & { trust?: AgentTrust }): MachineRecord {
    const info = { ...given, trust: given.trust ?? 'token' };
    const now = new Date().toISOString();
    const known = this.machines.get(info.id);
    const trusted = (known?.trusted ?? false) || info.trust !== 'unverified';
    const record: MachineRecord = known
      ? { ...known, ...info, trusted, online: true, lastSeen: now, state: known.activity.kind === 'idle' ? 'idle' : known.state }
      : { ...info, trusted, name: '', groups: [], online: true, activity: IDLE, state: 'idle', session: null, image: null, progress: null, lastError: '', firstSeen: now, lastSeen: now, lastImage: null, history: [] };
    record.supersededBy = '';
    this.machines.set(info.id, record);
    this.log(record, 'connect', `agent ${info.agentVersion} connected from ${info.address} (${info.bootMode}, ${info.trust})`);
    // An offline machine last seen at this address is marked, not deleted: the dashboard lists it apart, forget removes it.
    // Only an agent that proved who it is marks one: an unverified agent could otherwise hide any machine whose address it takes.
    for (const other of this.machines.values()) {
      if (info.trust !== 'unverified' && other.id !== info.id && !other.online && other.address === info.address && info.address !== '') other.supersededBy = info.id;
    }
    this.changed();
    return record;
  }

  private addHistory(m: MachineRecord, entry: HistoryEntry): void {
    m.history.unshift(entry);
    m.history.length = Math.min(m.history.length, HISTORY_LIMIT);
    if (entry.outcome === 'done') m.lastImage = { name: entry.image, version: entry.version, at: entry.endedAt, verified: entry.verified };
  }

  /** Hands the file the current list; it is written in the background (commit() waits for it). */
  save(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.file.set(this.records());
  }

  /** Resolves once every change so far is on disk. */
  commit(): Promise<void> {
    if (this.timer !== undefined) this.save();
    return this.file.commit();
  }

  /** Writes pending changes (bounded wait); later changes stay in memory only. */
  async close(): Promise<void> {
    if (this.timer !== undefined) this.save();
    this.closed = true;
    await this.file.close();
  }

  private changed(): void {
    this.emit('changed');
    if (this.closed) return;
    this.timer ??= setTimeout(() => this.save(), SAVE_MS);
  }
}
