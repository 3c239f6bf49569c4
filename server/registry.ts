/**
 * The machine registry: every machine ever seen, its last state, the image
 * it last received and its session history. Persisted in the data directory
 * as machines.json (state/state-file.ts: written off the event loop, temp
 * file, fsync, rename) at most every SAVE_MS and on close.
 */
import { EventEmitter } from 'node:events';
import { listFile, type StateFile } from '../state/state-file.js';
import { join } from 'node:path';
import type { DiskInfo } from '../protocol/control.js';
import type { Store } from './store/store.js';

/** How often the registry is written at most, ms. */
export const SAVE_MS = 1000;
/** Session history entries kept per machine. */
export const HISTORY_LIMIT = 50;

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
  macs: string[];
  hostname: string;
  bootMode: string;
  agentVersion: string;
  disks: DiskInfo[];
  /** IP address of its last connection. */
  address: string;
  online: boolean;
  /** State name (control.ts stateName), e.g. "idle", "receiving", "done". */
  state: string;
  session: number | null;
  image: string | null;
  progress: MachineProgress | null;
  lastError: string;
  firstSeen: string;
  lastSeen: string;
  lastImage: { name: string; version: number; at: string; verified: boolean } | null;
  history: HistoryEntry[];
}

/** Every machine, by id; saved to DATA/machines.json. Emits 'changed'. */
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
    for (const m of this.file.value) this.machines.set(m.id, { ...m, online: false, state: m.state === 'done' || m.state === 'failed' ? m.state : 'offline' });
  }

  /** All machines, most recently seen first. */
  list(): MachineRecord[] {
    return [...this.machines.values()].sort((a, b) => b.lastSeen.localeCompare(a.lastSeen));
  }

  get(id: string): MachineRecord | undefined {
    return this.machines.get(id);
  }

  /** Records a machine that said hello; returns its record. */
  seen(info: Pick<MachineRecord, 'id' | 'macs' | 'hostname' | 'bootMode' | 'agentVersion' | 'disks' | 'address'>): MachineRecord {
    const now = new Date().toISOString();
    const known = this.machines.get(info.id);
    const record: MachineRecord = known
      ? { ...known, ...info, online: true, lastSeen: now }
      : { ...info, online: true, state: 'idle', session: null, image: null, progress: null, lastError: '', firstSeen: now, lastSeen: now, lastImage: null, history: [] };
    this.machines.set(info.id, record);
    this.changed();
    return record;
  }

  /** Applies changes to a machine's record. */
  update(id: string, change: Partial<MachineRecord>): MachineRecord | undefined {
    const m = this.machines.get(id);
    if (m === undefined) return undefined;
    Object.assign(m, change, { lastSeen: new Date().toISOString() });
    this.changed();
    return m;
  }

  /** Adds a finished session to a machine's history. */
  finished(id: string, entry: HistoryEntry): void {
    const m = this.machines.get(id);
    if (m === undefined) return;
    m.history.unshift(entry);
    m.history.length = Math.min(m.history.length, HISTORY_LIMIT);
    if (entry.outcome === 'done') m.lastImage = { name: entry.image, version: entry.version, at: entry.endedAt, verified: entry.verified };
    this.changed();
  }

  /** Hands the file the current list; it is written in the background (commit() waits for it). */
  save(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    this.file.set(this.list());
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
