/**
 * Sessions: one image version multicast to the machines a session names. A
 * session waits until its start rule is met (session-rules.ts), evaluated
 * the moment something it depends on changes (a time in it: session-clock.ts),
 * then its sender runs; named machines that come later join the running session.
 * Machines are claimed from and released to the registry, their one owner:
 * a machine another session or a capture holds is never taken. Each machine
 * ends in one outcome: done (written and verified), failed with a reason,
 * dropped for no progress or lost contact, or cancelled. Sessions are saved
 * in DATA/sessions.json so that a restarted server picks them up again.
 */
import { EventEmitter } from 'node:events';
import { listFile, type StateFile } from '../state/state-file.js';
import { join } from 'node:path';
import { isFinalState, MachineState, stateName, type DiskInfo, type Progress, type Result } from '../protocol/control.js';
import { ClonecastError, ERR } from '../protocol/errors.js';
import { ACTIVE_SESSION_STATES as ACTIVE, FINAL_MACHINE_STATES as FINAL_MACHINE, machineMoveAllowed, sessionMoveAllowed, type MachineStateName, type SessionState } from '../protocol/states.js';
import type { Manifest } from '../protocol/manifest.js';
import type { DropEvent, Sender } from '../transfer/sender.js';
import { dropReasonText } from '../transfer/policy.js';
import type { MachineRecord } from './registry.js';
import { chooseDisk } from './targets.js';
import { allEnded, describeRule, firstTaker, namedBy, normaliseRule, ruleMet, takes, wanted, type StartRule } from './session-rules.js';
import { StartClock } from './session-clock.js';
import { admit, AFTER, assignment, closeLive, lostMachines, namingFor, openLive, pollLive, throttled, type Live } from './session-live.js';
import { startExpected } from './result-digest.js';
import { countsOf, eta, groupFor, holder, judgeResult, newReceiverId, newRecord, parseImage, SESSION_DEFAULTS, type SessionMachine, type SessionManagerOptions, type SessionRecord, type SessionRequest } from './session-types.js';

export type { AgentLink, SessionMachine, SessionManagerOptions, SessionRecord, SessionRequest } from './session-types.js';
export { describeRule, type StartRule };

/** Every session, the senders of the active ones, and the start rules. */
export class SessionManager extends EventEmitter {
  private readonly sessions = new Map<number, SessionRecord>();
  private readonly live = new Map<number, Live>();
  /** sessions.json; its health() says whether it is saved. */
  readonly file: StateFile<SessionRecord[]>;
  /** Ids and group slots taken by sessions being created (chosen before any await, so two creations never share one). */
  private readonly reserved = { ids: new Set<number>(), slots: new Set<number>() };
  /** Sessions made but not yet on disk: they take no machine and do not start. */
  private readonly creating = new Set<number>();
  private timer: NodeJS.Timeout | undefined;
  private readonly clock = new StartClock((id) => this.evaluate(this.sessions.get(id))); // a rule's time falling due
  /** Totals of senders that have ended, for /metrics. */
  readonly totals = { bytes: 0, packets: 0, repairPackets: 0 };

  constructor(private readonly o: SessionManagerOptions) {
    super();
    this.file = listFile<SessionRecord>(join(o.store.root, 'sessions.json'));
    // A machine another session or a capture let go of may be one a waiting session names.
    o.registry.on('released', (id: string) => {
      const m = o.registry.get(id);
      if (m !== undefined) this.offer(m);
    });
  }

  /** Loads saved sessions and restarts the senders of active ones. */
  async restore(): Promise<void> {
    const { value: list, setAside } = this.file;
    if (setAside !== undefined) this.o.log?.('warn', `sessions.json could not be read; kept as ${setAside}, starting with no sessions`);
    for (const s of list) this.sessions.set(s.id, s);
    for (const s of this.sessions.values()) {
      if (!ACTIVE.has(s.state)) continue;
      try {
        await this.open(s);
        for (const m of Object.values(s.machines)) if (!FINAL_MACHINE.has(m.state)) Object.assign(m, { state: 'offline', offlineSince: Date.now() });
        if (s.state === 'running') this.live.get(s.id)!.sender.release();
        this.o.log?.('info', `session ${s.id} (${s.image}@${s.version}) restored, ${s.state}; waiting for its machines to reconnect`);
      } catch (err) {
        this.end(s, 'failed', `could not be restored after a restart: ${(err as Error).message}`);
      }
    }
    this.timer = setInterval(() => this.tick(), this.o.tickMs ?? SESSION_DEFAULTS.tickMs);
    this.save();
  }

  /** True if session `id` is active and lists this machine as still taking part. */
  holds(id: number, machineId: string): boolean {
    const s = this.sessions.get(id);
    const m = s?.machines[machineId];
    return s !== undefined && ACTIVE.has(s.state) && m !== undefined && !FINAL_MACHINE.has(m.state);
  }

  /** After a restart: every machine an active session lists as taking part is held by it again. */
  reclaim(): void {
    for (const s of this.sessions.values()) {
      if (!ACTIVE.has(s.state)) continue;
      for (const [id, m] of Object.entries(s.machines)) {
        if (FINAL_MACHINE.has(m.state) || this.o.registry.get(id) === undefined) continue;
        const refused = this.o.registry.apply(id, { type: 'claim', by: holder(s), state: 'offline' });
        if (refused !== null) this.finishMachine(s, id, { state: 'failed', error: `after a restart: ${refused}` });
      }
    }
  }

  /** Every session, newest first. */
  list(): SessionRecord[] {
    return [...this.sessions.values()].sort((a, b) => b.id - a.id);
  }

  get(id: number): SessionRecord | undefined {
    return this.sessions.get(id);
  }

  /** The encoded manifest of an active session, for agents. */
  manifest(id: number): Buffer | undefined {
    return this.live.get(id)?.manifestBytes;
  }

  /** Sender counters of the active sessions, for /metrics. */
  senders(): { id: number; sender: Sender }[] {
    return [...this.live.entries()].map(([id, l]) => ({ id, sender: l.sender }));
  }

  /** Creates a session; it starts when its rule is met. */
  async create(req: SessionRequest): Promise<SessionRecord> {
    if (this.o.senderAddress === undefined) {
      throw new ClonecastError(ERR.USAGE, 'this server has no multicast interface; restart it with --interface IF (the network the machines boot on)');
    }
    const { name, version } = this.o.store.resolve(parseImage(req.image));
    const rule = normaliseRule(req.rule);
    const after = req.after ?? 'wait';
    if (typeof after !== 'string' || !Object.hasOwn(AFTER, after)) throw new ClonecastError(ERR.USAGE, 'after must be wait, reboot or poweroff');
    // Id and group slot are taken now, before any await: concurrent creations get distinct ones.
    const id = Math.max(0, ...this.sessions.keys(), ...this.reserved.ids) + 1;
    const used = new Set([...[...this.sessions.values()].filter((s) => ACTIVE.has(s.state)).map((s) => s.group), ...[...this.reserved.slots].map(groupFor)]);
    let slot = id;
    while (used.has(groupFor(slot))) slot++;
    this.reserved.ids.add(id);
    this.reserved.slots.add(slot);
    try {
      return await this.createReserved(id, slot, name, version, rule, req);
    } finally {
      this.reserved.ids.delete(id);
      this.reserved.slots.delete(slot);
    }
  }

  private async createReserved(id: number, slot: number, name: string, version: number, rule: StartRule, req: SessionRequest): Promise<SessionRecord> {
    const after = req.after ?? 'wait';
    const manifest = await this.o.store.readManifest(name, version);
    const record = newRecord(id, slot, name, version, manifest.meta.diskSize, rule, after, req);
    await this.open(record, manifest);
    this.sessions.set(id, record);
    // Saved before anything starts: a session that cannot be saved never runs (no phantom session),
    // and until it is saved it takes no machine.
    this.creating.add(id);
    try {
      this.save();
      await this.file.commit();
    } catch (err) {
      if (this.live.has(id)) closeLive(this.live.get(id)!);
      this.live.delete(id);
      this.sessions.delete(id);
      this.save(); // the file must not keep it either, once it can be written again
      throw new ClonecastError(ERR.WRITE_ERROR, `the session could not be saved, so it was not created: ${(err as Error).message}; free space in ${this.o.store.root} and try again`);
    } finally {
      this.creating.delete(id);
    }
    this.o.log?.('info', `session ${id}: ${name}@${version} on ${record.group}:${record.port}, ${describeRule(rule)}`);
    this.evaluate(record);
    this.offerIdle();
    this.emit('changed');
    return record;
  }

  /** Starts a waiting session now, whatever its rule says. */
  start(id: number): SessionRecord {
    const s = this.active(id);
    if (s.state === 'waiting') this.begin(s, 'started by hand');
    return s;
  }

  /** Cancels a session: its machines stop, the others are untouched. */
  cancel(id: number, reason = 'cancelled by the administrator'): SessionRecord {
    const s = this.active(id);
    for (const [mid, m] of Object.entries(s.machines)) {
      if (FINAL_MACHINE.has(m.state)) continue;
      this.o.agents.send(mid, { type: 'cancel', cancel: { sessionId: s.id, reason } });
      this.finishMachine(s, mid, { state: 'cancelled', error: reason });
    }
    this.end(s, 'cancelled', reason);
    return s;
  }

  /** A machine connected (after its hello): resume its session or offer it work. */
  connected(machine: MachineRecord, resumeSession: number | null): void {
    const held = machine.activity;
    if (held.kind === 'session') {
      const s = this.sessions.get(held.id);
      const m = s?.machines[machine.id];
      if (s !== undefined && m !== undefined && ACTIVE.has(s.state) && !FINAL_MACHINE.has(m.state)) {
        // Its session is still on: assign it again; it keeps what it has written.
        const begun = m.chunksDone > 0 || resumeSession === s.id || m.state !== 'assigned';
        this.assign(s, machine, begun);
        return;
      }
    }
    if (held.kind === 'idle') this.offer(machine);
  }

  /** True if an active session holds this machine or would take it (so it should boot the agent). */
  wants = (mac: string): boolean => wanted(this.openSessions(), mac.toLowerCase(), this.o.registry.get(mac.toLowerCase()));

  /** The active sessions, without those being created (not saved yet: they take no machine). */
  openSessions(): SessionRecord[] {
    return [...this.sessions.values()].filter((s) => ACTIVE.has(s.state) && !this.creating.has(s.id));
  }

  /** A machine's connection closed. */
  disconnected(machineId: string): void {
    for (const s of this.sessions.values()) {
      const m = s.machines[machineId];
      if (ACTIVE.has(s.state) && m !== undefined && !FINAL_MACHINE.has(m.state)) {
        this.move(s, machineId, 'offline');
        m.offlineSince = Date.now();
        this.emit('changed');
      }
    }
  }

  /** Progress from an agent. */
  progress(machineId: string, p: Progress): void {
    const s = this.sessions.get(p.sessionId ?? 0);
    const m = s?.machines[machineId];
    if (s === undefined || m === undefined || FINAL_MACHINE.has(m.state) || !ACTIVE.has(s.state)) return;
    const state = stateName(p.state ?? MachineState.STATE_UNKNOWN) as MachineStateName;
    if (isFinalState(p.state ?? 0)) return; // the Result says how it ended
    if (!machineMoveAllowed(m.state === 'offline' ? 'assigned' : m.state, state)) return; // a stale or impossible report
    const counts = countsOf(p);
    Object.assign(m, counts, { state, offlineSince: 0, error: p.error ?? '' });
    this.o.registry.apply(machineId, { type: 'report', by: holder(s), state, progress: { ...counts, etaSeconds: eta(counts, this.live.get(s.id)?.manifest) } });
    this.evaluate(s);
    this.emit('changed');
  }

  /** An agent's final result, and its Confirm: accepted when the server recorded what the agent reports (a "done" checked against the nonce-keyed digest); a result sent again gets the same answer. */
  async result(machineId: string, r: Result): Promise<{ accepted: boolean; reason: string }> {
    const s = this.sessions.get(r.sessionId ?? 0);
    const m = s?.machines[machineId];
    if (s === undefined || m === undefined) return { accepted: false, reason: `session ${r.sessionId} does not list ${machineId}` };
    const claimed = stateName(r.state ?? MachineState.STATE_FAILED);
    if (!FINAL_MACHINE.has(m.state)) {
      let expected: Buffer | undefined;
      if (claimed === 'done' && s.verify) expected = await this.live.get(s.id)?.expected?.catch(() => undefined);
      // It may have ended while the digest was computed (dropped, cancelled): that outcome stands.
      if (!FINAL_MACHINE.has(m.state)) {
        this.finishMachine(s, machineId, judgeResult(s, m, r, expected));
        this.checkEnd(s);
      }
    }
    return m.state === claimed ? { accepted: true, reason: '' } : { accepted: false, reason: `the server recorded this machine as ${m.state}${m.error ? `: ${m.error}` : ''}` };
  }

  /** Stops every sender and saves (bounded wait). */
  close(): Promise<void> {
    clearInterval(this.timer);
    this.clock.close();
    for (const l of this.live.values()) closeLive(l);
    this.live.clear();
    this.save();
    return this.file.close();
  }

  /** Resolves once every change so far is in sessions.json; rejects if it could not be written. */
  commit(): Promise<void> {
    return this.file.commit();
  }

  private active(id: number): SessionRecord {
    const s = this.sessions.get(id);
    if (s === undefined) throw new ClonecastError(ERR.NOT_FOUND, `no session ${id}; "clonecast sessions" lists them`);
    if (!ACTIVE.has(s.state)) throw new ClonecastError(ERR.USAGE, `session ${id} has already ended (${s.state})`);
    return s;
  }

  private async open(s: SessionRecord, manifest?: Manifest): Promise<void> {
    const live = await openLive(this.o.store, s, this.o.senderAddress!, manifest, (sender) => {
      // Listening before the sender starts: a socket error while it binds is logged, never uncaught.
      sender.on('error', throttled((m: string) => this.o.log?.('warn', m), (err: Error) => `session ${s.id}: sender: ${err.message}`)).on('version', (m: string) => this.o.log?.('warn', `session ${s.id}: ${m}`));
      sender.on('drop', (d: DropEvent) => this.dropped(s, d));
    }, (m) => this.o.log?.('warn', `session ${s.id}: ${m}`));
    this.live.set(s.id, live);
    // The digest its verified machines must report, computed once per session in the background.
    live.expected = startExpected(this.o.store, s, live, () => this.live.get(s.id) !== live, this.o.log);
  }

  private offerIdle(): void {
    for (const m of this.o.registry.list()) if (m.online && m.activity.kind === 'idle') this.offer(m);
  }

  /** Puts an idle machine into the first active session that names it (by MAC, then by group, then "any"). */
  private offer(machine: MachineRecord): void {
    if (!machine.online || machine.activity.kind !== 'idle') return;
    // A machine whose agent has no credential is taken only by an --any session.
    const target = firstTaker(this.openSessions().filter((s) => takes(s, machine) && (machine.trust !== 'unverified' || s.rule.any === true)));
    if (target !== undefined) this.join(target, machine);
  }

  private join(s: SessionRecord, machine: MachineRecord): void {
    const refused = this.o.registry.apply(machine.id, { type: 'claim', by: holder(s), state: 'assigned', image: `${s.image}@${s.version}` });
    if (refused !== null) {
      this.o.log?.('info', `session ${s.id}: ${machine.id} not taken: ${refused}`);
      return;
    }
    const now = new Date().toISOString();
    s.firstJoinAt ??= now;
    s.machines[machine.id] = {
      state: 'assigned', mac: namedBy(s.rule, machine) ?? '', device: '', error: '', chunksDone: 0, chunksTotal: 0, bytesWritten: 0, rateBps: 0, loss: 0, nacks: 0, skipped: 0,
      verified: false, digestOk: null, chunksVerified: 0, chunksBad: 0, seconds: 0, joinedAt: now, endedAt: null, offlineSince: 0, receiverId: newReceiverId(s),
    };
    this.o.log?.('info', `session ${s.id}: ${machine.id} (${machine.hostname}) joined${s.state === 'running' ? ' the running session' : ''}`);
    this.assign(s, machine, false);
    this.save();
    this.evaluate(s); // a first join sets the clock of a "wait" rule
  }

  private assign(s: SessionRecord, machine: MachineRecord, resume: boolean): void {
    const m = s.machines[machine.id];
    const choice = chooseDisk(machine.disks as DiskInfo[], s.target, s.imageSize);
    if ('error' in choice) {
      this.o.log?.('warn', `session ${s.id}: ${machine.id} refused: ${choice.error}`);
      this.finishMachine(s, machine.id, { state: 'failed', error: choice.error });
      this.evaluate(s);
      this.checkEnd(s);
      return;
    }
    const live = this.live.get(s.id)!;
    // Differential: the disk holds a version of this image already (the registry says so), or forced.
    const last = machine.lastImage;
    const differential = s.differential ?? (last !== null && last.name === s.image);
    if (differential && !resume) this.o.log?.('info', `session ${s.id}: ${machine.id} restores differentially (its disk ${last ? `last received ${last.name}@${last.version}` : 'is checked first'})`);
    m.device = choice.device;
    m.receiverId ||= newReceiverId(s); // a session saved before receivers were named
    if (m.state === 'offline') this.move(s, machine.id, 'assigned');
    m.offlineSince = 0;
    this.o.registry.apply(machine.id, { type: 'report', by: holder(s), state: m.state as MachineStateName, error: '' });
    admit(live, m, machine.address);
    this.o.agents.send(machine.id, { type: 'assign', assign: assignment(s, m, live, this.o.senderAddress!, resume || differential, namingFor(this.o.store.root, machine, s, live.manifest.meta, this.o.log)) });
    this.emit('changed');
  }

  private finishMachine(s: SessionRecord, id: string, change: Partial<SessionMachine>): void {
    const m = s.machines[id];
    if (FINAL_MACHINE.has(m.state)) return; // it has ended once already
    Object.assign(m, change, { endedAt: new Date().toISOString(), rateBps: 0, offlineSince: 0 });
    this.live.get(s.id)?.sender.revoke(m.receiverId); // an ended machine's reports move nothing any more
    this.o.log?.(m.state === 'done' ? 'info' : 'warn', `session ${s.id}: ${id} ${m.state}${m.error ? `: ${m.error}` : ''}`);
    this.o.registry.apply(id, {
      type: 'release',
      by: holder(s),
      state: m.state as MachineStateName,
      error: m.error,
      history: { session: s.id, image: s.image, version: s.version, outcome: m.state, error: m.error, verified: m.verified, seconds: m.seconds, endedAt: m.endedAt! },
    });
    this.save();
    this.emit('changed');
  }

  /** A machine's state within a session moves only as protocol/states.ts allows. */
  private move(s: SessionRecord, id: string, to: MachineStateName): void {
    const m = s.machines[id];
    if (!machineMoveAllowed(m.state, to)) return;
    m.state = to;
    this.o.registry.apply(id, { type: 'report', by: holder(s), state: to });
  }

  /** Applies the start rule now; if it is not met but has a time in it, the clock wakes the session then. */
  private evaluate(s: SessionRecord | undefined): void {
    if (s === undefined || s.state !== 'waiting' || this.creating.has(s.id)) return;
    const why = ruleMet(s, Date.now());
    if (why !== null) this.begin(s, why);
    else this.clock.schedule(s);
  }

  private begin(s: SessionRecord, why: string): void {
    if (!sessionMoveAllowed(s.state, 'running')) return;
    s.state = 'running';
    s.startedAt = new Date().toISOString();
    this.live.get(s.id)?.sender.release();
    this.o.log?.('info', `session ${s.id} started: ${why}`);
    this.save();
    this.emit('changed');
    this.checkEnd(s);
  }

  private checkEnd(s: SessionRecord): void {
    if (s.state !== 'running' || !allEnded(s)) return;
    const ms = Object.values(s.machines);
    const done = ms.filter((m) => m.state === 'done').length;
    this.end(s, done === ms.length ? 'done' : 'failed', `${done} of ${ms.length} machines done${done === ms.length ? ' and verified' : ''}`);
  }

  private end(s: SessionRecord, state: SessionState, reason: string): void {
    if (!sessionMoveAllowed(s.state, state)) return;
    // Machines it still holds go back to idle.
    for (const [id, m] of Object.entries(s.machines)) {
      if (!FINAL_MACHINE.has(m.state)) this.finishMachine(s, id, { state: state === 'cancelled' ? 'cancelled' : 'failed', error: reason });
    }
    s.state = state;
    s.reason = reason;
    s.endedAt = new Date().toISOString();
    const live = this.live.get(s.id);
    if (live !== undefined) {
      closeLive(live);
      const c = live.sender.counters;
      s.sent = { bytes: c.bytesSent, packets: c.packetsSent, repairPackets: c.repairPackets };
      this.totals.bytes += c.bytesSent;
      this.totals.packets += c.packetsSent;
      this.totals.repairPackets += c.repairPackets;
      this.live.delete(s.id);
    }
    this.o.log?.('info', `session ${s.id} ${state}: ${reason}`);
    this.save();
    this.emit('changed');
    // Machines it held are free for other sessions.
    this.offerIdle();
  }

  private tick(): void {
    const now = Date.now();
    for (const s of this.sessions.values()) {
      if (!ACTIVE.has(s.state) || this.creating.has(s.id)) continue;
      const live = this.live.get(s.id);
      const dropAfterMs = s.dropAfterS * 1000;
      // Counters, and the receivers' liveness as the sender sees them (a drop comes back as a 'drop' event).
      if (live !== undefined) pollLive(s, live, dropAfterMs);
      // A machine whose control connection is gone, by the same rule: nothing heard since it went offline.
      for (const [id, error] of lostMachines(s, now, dropAfterMs)) this.finishMachine(s, id, { state: 'dropped', error });
      this.evaluate(s);
      this.checkEnd(s);
    }
  }

  /** The sender gave a receiver up: its machine ends as dropped, with the reason in words. */
  private dropped(s: SessionRecord, d: DropEvent): void {
    const entry = Object.entries(s.machines).find(([, m]) => m.receiverId === d.receiverId);
    if (entry === undefined || FINAL_MACHINE.has(entry[1].state) || !ACTIVE.has(s.state)) return;
    this.finishMachine(s, entry[0], { state: 'dropped', error: `the session dropped it: ${dropReasonText(d.reason, s.dropAfterS * 1000)}` });
    this.checkEnd(s);
  }

  private save(): void {
    const all = this.list();
    const kept = all.filter((s, i) => ACTIVE.has(s.state) || i < SESSION_DEFAULTS.keep);
    this.file.set(kept.reverse());
  }
}

