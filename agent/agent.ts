/**
 * The agent: connects to the server's control channel, says who it is,
 * takes work (an Assign), runs the multicast receiver on the chosen disk,
 * reports progress about once a second and the final result, and then
 * reboots, powers off or waits. It reconnects with back-off after any fault
 * and picks its session back up: chunks it has written are not fetched
 * again, whether the connection or the whole server went away.
 */
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { spawn } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { WebSocket } from 'ws';
import { After, CONTROL, decodeServerMessage, encodeAgentMessage, MachineState, stateName, type AgentMessage, type Assign, type Capture, type Result } from '../protocol/control.js';
import { ClonecastError, ERR, isError } from '../protocol/errors.js';
import { decodeManifest, tableLength } from '../protocol/manifest.js';
import { machine } from './inventory.js';
import { afterVerified } from './after-write.js';
import { progressOf, resultOf, type Job } from './report.js';
import { reportFailure, runCapture } from './capture.js';
import { Receiver, type ReceiverResult } from '../transfer/receiver.js';
import { normalizeFingerprint, pinnedFetch, pinnedWebSocketOptions, wssUrl } from '../native/pinned-tls.js';

/** Defaults of AgentOptions. */
export const AGENT_DEFAULTS = Object.freeze({
  /** Reconnect back-off: first wait, doubled per failure up to the most. */
  backoffMs: 500,
  backoffMaxMs: 5000,
  /** The receiver gives up on a silent sender after this long; the server's cancel or drop normally comes first. */
  receiverTimeoutMs: 10 * 60_000,
});

/** How to run an agent. */
export interface AgentOptions {
  /** The server's URL, e.g. https://10.77.0.1:8080/. */
  server: string;
  /** The server's token, a boot credential, or '' (network-booted with none: the server lists the machine as unverified). */
  /** SHA-256 fingerprint of the server's certificate: the agent sends nothing (no token) to a server that shows another. */
  fingerprint: string;
  token: string;
  /**
   * Where this machine's own secret is kept (the boot environment: a file on tmpfs). The server gives
   * it on the first Hello; the agent uses it instead of `token` from then on, also after a restart.
   */
  secretFile?: string;
  /** The one disk this agent may write, or "auto" (every disk; the server chooses by its rule). */
  disk?: string;
  /** Overrides the primary MAC as machine id (several agents on one host in tests). */
  machineId?: string;
  /** Exit after one session. */
  once?: boolean;
  /** Read each chunk back after writing it (default: what the session says). */
  verify?: boolean;
  /** Also read the whole disk back at the end (default: what the session says). */
  finalVerify?: boolean;
  /** Really reboot or power off when told; without it the agent only says it would. */
  allowPower?: boolean;
  /** Leave reboot/poweroff to the caller (the boot environment's init): see afterAction. */
  powerExit?: boolean;
  /** Ask for data by unicast from the start (multicast cannot reach this machine); otherwise automatic. */
  unicast?: boolean;
  /** Emulated disk write limit, bytes/s (tests and demos). */
  writeLimit?: number;
  version: string;
  log?: (level: 'info' | 'warn', message: string) => void;
}

/** A target-side agent. Emits 'state' (MachineState), 'result' (Result), 'receiver' (a receiver started: {sessionId, sender}), 'connected', 'disconnected'. */
export class Agent extends EventEmitter {
  private ws: WebSocket | undefined;
  private job: Job | undefined;
  /** Chunks written per session, kept across receiver restarts in this process. */
  private readonly known = new Map<number, Uint8Array>();
  /** Results the server has not confirmed yet, by session (sent again on every connection), with what to do after. */
  private readonly pending = new Map<number, Result>();
  private readonly afterOf = new Map<number, After>();
  /** What this agent presents in its Hello and HTTP requests: its own secret once it has one. */
  private credential: string;
  private readonly finished = new Set<number>();
  /** Captures started (a repeated command after a reconnect is not run twice). */
  private readonly captures = new Set<number>();
  /** Assignments are handled one after the other, in arrival order. */
  private assigning: Promise<void> = Promise.resolve();
  private stopped = false;
  private fatal: ClonecastError | undefined;
  private outcome: Result | undefined;
  /** What the last finished session asked for afterwards. */
  afterAction: After = After.AFTER_WAIT;
  private progressTimer: NodeJS.Timeout | undefined;
  private progressMs = 1000;
  private localAddress: string | undefined;
  readonly machineId: string;
  private describe: ReturnType<typeof machine>;

  constructor(private readonly o: AgentOptions) {
    super();
    this.describe = machine(o.disk);
    const id = o.machineId ?? this.describe.macs[0];
    if (id === undefined) throw new ClonecastError(ERR.NOT_FOUND, 'this machine has no Ethernet interface with a MAC address; pass --machine-id MAC');
    this.machineId = id.toLowerCase();
    this.credential = o.token;
    if (o.secretFile !== undefined) {
      try {
        this.credential = readFileSync(o.secretFile, 'utf8').trim() || o.token;
      } catch {
        // none yet: the first Hello gets one
      }
    }
    this.pin = normalizeFingerprint(o.fingerprint);
  }

  private readonly pin: string;

  /** Runs until stop(), or after one session with once; resolves with that session's result (undefined if stopped first). */
  async run(): Promise<Result | undefined> {
    let backoff: number = AGENT_DEFAULTS.backoffMs;
    while (!this.stopped) {
      const welcomed = await this.connectOnce();
      if (this.fatal) throw this.fatal;
      if (this.stopped) break;
      if (welcomed) backoff = AGENT_DEFAULTS.backoffMs;
      this.o.log?.('warn', `lost the server at ${this.o.server}; trying again in ${(backoff / 1000).toFixed(1)} s`);
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, AGENT_DEFAULTS.backoffMaxMs);
    }
    if (this.job) await this.job.running;
    return this.outcome;
  }

  /** Stops the agent (a running receiver is stopped; the server sees the machine go offline). */
  stop(): void {
    this.stopped = true;
    this.job?.receiver.stop(new ClonecastError(ERR.CANCELLED, 'the agent was stopped'));
    this.ws?.close();
  }

  // ---- connection ----

  /** One connection, until it closes; true if the server welcomed it. */
  private connectOnce(): Promise<boolean> {
    return new Promise((resolve) => {
      const url = wssUrl(CONTROL.AGENT_PATH, this.o.server);
      const ws = new WebSocket(url, { maxPayload: CONTROL.MAX_MESSAGE * 4, handshakeTimeout: 5000, ...pinnedWebSocketOptions(this.pin) });
      this.ws = ws;
      let welcomed = false;
      let lastHeard = Date.now();
      let beat: NodeJS.Timeout | undefined;
      ws.on('upgrade', (res) => (this.localAddress = res.socket.localAddress?.replace(/^::ffff:/, '')));
      ws.on('open', () => {
        // Disks are read again on every connection: one may have been added, replaced or resized.
        this.describe = machine(this.o.disk);
        const current = this.job?.assign.sessionId ?? [...this.pending.keys()][0];
        this.sendMsg({
          type: 'hello',
          hello: {
            protocol: CONTROL.VERSION,
            token: this.credential,
            machineId: this.machineId,
            macs: this.describe.macs,
            hostname: this.describe.hostname,
            bootMode: this.describe.bootMode,
            agentVersion: this.o.version,
            disks: this.describe.disks,
            resume: current !== undefined ? { sessionId: current, chunksDone: this.job?.receiver.progress().done ?? 0 } : null,
          },
        });
      });
      ws.on('message', (data, isBinary) => {
        lastHeard = Date.now();
        if (!isBinary) return;
        let msg;
        try {
          msg = decodeServerMessage(Buffer.from(data as Buffer));
        } catch (err) {
          this.o.log?.('warn', `ignoring a bad message from the server: ${(err as Error).message}`);
          return;
        }
        switch (msg.type) {
          case 'welcome': {
            welcomed = true;
            this.progressMs = msg.welcome.progressMs || 1000;
            const every = msg.welcome.heartbeatMs || 5000;
            beat = setInterval(() => {
              if (Date.now() - lastHeard > every * 3) ws.terminate();
              else this.sendMsg({ type: 'heartbeat', heartbeat: { sentMs: Date.now(), echoMs: 0 } });
            }, every);
            if (msg.welcome.agentSecret) this.keepSecret(msg.welcome.agentSecret);
            this.o.log?.('info', `connected to ${this.o.server} as ${this.machineId}`);
            this.emit('connected');
            for (const r of this.pending.values()) this.sendMsg({ type: 'result', result: r });
            if (this.job) this.sendProgress();
            return;
          }
          case 'refuse':
            this.o.log?.('warn', `the server refused this agent: ${msg.refuse.reason}`);
            if (!msg.refuse.retry) {
              this.fatal = new ClonecastError(ERR.REFUSED, `the server refused this agent: ${msg.refuse.reason}`);
              this.stopped = true;
            }
            return;
          case 'assign': {
            // One assignment at a time: a second Assign that arrives while the first is still
            // superseding or starting a receiver waits for it, then finds it running (one receiver per disk).
            const a = msg.assign;
            this.assigning = this.assigning.then(() => this.onAssign(a)).catch((err: Error) => this.o.log?.('warn', `session ${a.sessionId}: ${err.message}`));
            return;
          }
          case 'cancel': {
            const job = this.job;
            if (job !== undefined && job.assign.sessionId === msg.cancel.sessionId) job.receiver.stop(new ClonecastError(ERR.CANCELLED, `cancelled: ${msg.cancel.reason}`));
            return;
          }
          case 'heartbeat':
            return;
          case 'capture':
            void this.onCapture(msg.capture);
            return;
          case 'confirm':
            this.onConfirm(msg.confirm.sessionId ?? 0, msg.confirm.accepted ?? false, msg.confirm.reason ?? '');
            return;
        }
      });
      ws.on('error', (err) => this.o.log?.('warn', `control channel: ${err.message}`));
      ws.on('close', () => {
        clearInterval(beat);
        this.ws = undefined;
        this.emit('disconnected');
        resolve(welcomed);
      });
    });
  }

  /** The server gave this machine its own secret: it replaces the credential (a boot credential is good for one Hello). */
  private keepSecret(secret: string): void {
    this.credential = secret;
    if (this.o.secretFile === undefined) return;
    try {
      writeFileSync(this.o.secretFile, `${secret}\n`, { mode: 0o600 });
    } catch (err) {
      this.o.log?.('warn', `cannot keep this machine's secret in ${this.o.secretFile}: ${(err as Error).message}; a restarted agent will need a new boot`);
    }
  }

  /** The server's answer to a Result: only an accepted one lets the machine reboot or power off. */
  private onConfirm(id: number, accepted: boolean, reason: string): void {
    const result = this.pending.get(id);
    if (result === undefined) return;
    this.pending.delete(id);
    if (accepted) {
      this.emit('confirmed', result);
      void this.after(result, this.afterOf.get(id) ?? After.AFTER_WAIT);
      return;
    }
    this.o.log?.('warn', `session ${id}: the server did not accept this machine's result: ${reason}; staying here (no reboot or power-off)`);
    this.afterAction = After.AFTER_WAIT;
    this.outcome = { ...result, state: result.state === MachineState.STATE_DONE ? MachineState.STATE_FAILED : result.state, error: reason };
    this.emit('refused', { sessionId: id, reason });
    void this.after(this.outcome, After.AFTER_WAIT);
  }

  private sendMsg(m: AgentMessage): boolean {
    if (this.ws?.readyState !== WebSocket.OPEN) return false;
    this.ws.send(encodeAgentMessage(m));
    return true;
  }

  // ---- work ----

  private async onCapture(c: Capture): Promise<void> {
    const id = c.captureId!;
    if (this.captures.has(id)) return;
    this.captures.add(id);
    const device = c.device || (this.o.disk !== undefined && this.o.disk !== 'auto' ? this.o.disk : '');
    const link = { server: this.o.server, fingerprint: this.pin, token: c.secret || this.credential, machineId: this.machineId, log: this.o.log };
    this.o.log?.('info', `capture ${id}: reading ${device} into image ${c.image}${c.partitions?.length ? ` (partitions ${c.partitions.join(',')})` : ''}`);
    try {
      if (this.job !== undefined) {
        const why = `this machine is writing its disk for session ${this.job.assign.sessionId}; capture after it`;
        await reportFailure(link, id, why);
        throw new ClonecastError(ERR.BUSY, why);
      }
      const r = await runCapture(link, c, device, (p) => this.emit('capture-progress', p));
      this.o.log?.('info', `capture ${id}: published ${c.image}@${r.version}`);
      this.emit('capture', { id, ok: true, ...r });
    } catch (err) {
      this.o.log?.('warn', `capture ${id}: ${(err as Error).message}`);
      this.emit('capture', { id, ok: false, error: (err as Error).message });
    }
  }

  private async onAssign(a: Assign): Promise<void> {
    const id = a.sessionId!;
    if (this.finished.has(id)) return; // its result is pending or delivered
    const current = this.job;
    if (current !== undefined) {
      const same = current.assign.sessionId === id && current.assign.senderAddress === a.senderAddress && current.assign.senderPort === a.senderPort && current.assign.sessionKey === a.sessionKey;
      if (same) return this.sendProgress();
      // The server restarted (a new sender) or moved us: keep what is written, start again.
      this.o.log?.('info', `session ${id}: the sender moved to ${a.senderAddress}:${a.senderPort}; continuing with what is already written`);
      current.receiver.stop(new ClonecastError(ERR.CANCELLED, 'superseded'));
      await current.running;
    }
    await this.start(a);
  }

  private async start(a: Assign): Promise<void> {
    const id = a.sessionId!;
    const job: Partial<Job> = { assign: a, startedAt: performance.now(), state: MachineState.STATE_ASSIGNED };
    try {
      if (this.o.disk !== undefined && this.o.disk !== 'auto' && a.device !== this.o.disk) {
        throw new ClonecastError(ERR.REFUSED, `the server chose ${a.device} but this agent may only write ${this.o.disk}`);
      }
      const manifest = await this.fetchManifest(a);
      const known = this.known.get(id);
      const receiver = new Receiver({
        session: { session: a.sessionKey!, group: a.group!, port: a.port!, sender: { address: a.senderAddress!, port: a.senderPort! }, fragmentSize: a.fragmentSize! },
        manifest,
        target: a.device!,
        interfaceAddress: this.localAddress,
        receiverId: a.receiverId!,
        keys: { data: a.dataKey!, receiver: a.receiverKey!, encrypt: a.encryptKey?.length === 32 ? a.encryptKey : undefined },
        known: known?.length === tableLength(manifest.table) ? known : undefined,
        resume: known === undefined && a.resume === true,
        verify: this.o.verify === false ? false : a.verify !== false,
        finalVerify: this.o.finalVerify ?? a.finalVerify === true,
        discard: a.discard === true,
        nonce: a.nonce !== undefined && a.nonce !== null && a.nonce.length > 0 ? a.nonce : undefined,
        timeoutMs: AGENT_DEFAULTS.receiverTimeoutMs,
        writeLimit: this.o.writeLimit,
        unicast: this.o.unicast,
      });
      // Joined and known to the sender: say so now, not at the next progress tick (the start rule may be waiting on it).
      receiver.on('ready', () => this.sendProgress());
      receiver.on('unicast', (u: { silentMs: number; senderPackets: number }) =>
        this.o.log?.('warn', `session ${id}: no multicast data for ${(u.silentMs / 1000).toFixed(1)} s while the sender sent ${u.senderPackets} packets; asking for unicast (is multicast routed to this network?)`),
      );
      receiver.on('version', (m: string) => this.o.log?.('warn', `session ${id}: ${m}`));
      Object.assign(job, { receiver, lastBytes: 0, lastPackets: 0, lastLost: 0, lastAt: performance.now() });
      const full = job as Job;
      full.running = receiver.run().then(
        async (r) => this.ended(full, r, await afterVerified(a, manifest, r, this.o.log)),
        (err) => this.ended(full, undefined, err),
      );
      this.job = full;
      this.emit('receiver', { sessionId: id, sender: `${a.senderAddress}:${a.senderPort}` });
      this.sendProgress();
      clearInterval(this.progressTimer);
      this.progressTimer = setInterval(() => this.sendProgress(), this.progressMs);
    } catch (err) {
      this.finish(a, resultOf(a, undefined, err, 0));
    }
  }

  private async fetchManifest(a: Assign) {
    const url = new URL(a.manifestPath!, this.o.server);
    const res = await pinnedFetch(url, { pin: this.pin, headers: { authorization: `Bearer ${this.credential}`, 'x-clonecast-machine': this.machineId } }).catch((err: Error) => {
      throw new ClonecastError(ERR.UNREACHABLE, `cannot fetch the manifest from ${url}: ${err.message}`);
    });
    if (!res.ok) throw new ClonecastError(ERR.UNREACHABLE, `the server answered ${res.status} for ${url}`);
    const bytes = Buffer.from(await res.arrayBuffer());
    if (a.manifestSha256 && a.manifestSha256.length > 0 && !createHash('sha256').update(bytes).digest().equals(Buffer.from(a.manifestSha256))) {
      throw new ClonecastError(ERR.MANIFEST_CORRUPT, 'the manifest does not match the checksum in the assignment; not writing anything');
    }
    const manifest = decodeManifest(bytes, `manifest of session ${a.sessionId}`);
    if (manifest.meta.diskSize !== Number(a.imageSize)) throw new ClonecastError(ERR.MANIFEST_CORRUPT, 'the manifest and the assignment disagree on the image size');
    return manifest;
  }

  private ended(job: Job, r: ReceiverResult | undefined, err: unknown): void {
    const id = job.assign.sessionId!;
    this.known.set(id, job.receiver.doneMap());
    if (this.job === job) {
      this.job = undefined;
      clearInterval(this.progressTimer);
    }
    if (isError(err, ERR.CANCELLED) && err.message === 'superseded') return; // a new receiver takes over
    this.finish(job.assign, resultOf(job.assign, r, err, (performance.now() - job.startedAt) / 1000));
  }

  private finish(a: Assign, result: Result): void {
    const id = a.sessionId!;
    this.finished.add(id);
    this.pending.set(id, result);
    const how = result.state === MachineState.STATE_DONE ? (result.verified ? ' (written and verified)' : ' (written, not verified)') : '';
    this.o.log?.(result.state === MachineState.STATE_DONE ? 'info' : 'warn', `session ${id}: ${stateName(result.state!)}${how} in ${result.seconds!.toFixed(1)} s${result.error ? `: ${result.error}` : ''}`);
    this.outcome = result;
    this.afterOf.set(id, a.after ?? After.AFTER_WAIT);
    this.emit('result', result);
    // Kept until the server confirms it (sent again on every connection); what comes after waits for that.
    this.sendMsg({ type: 'result', result });
  }

  private async after(result: Result, what: After): Promise<void> {
    this.afterAction = what;
    if (result.state === MachineState.STATE_DONE && (what === After.AFTER_REBOOT || what === After.AFTER_POWEROFF) && !this.o.powerExit) {
      const cmd = what === After.AFTER_REBOOT ? 'reboot' : 'poweroff';
      if (this.o.allowPower) {
        this.o.log?.('info', `${cmd} as the session asks`);
        spawn(cmd, [], { stdio: 'ignore', detached: true }).on('error', (e) => this.o.log?.('warn', `${cmd} failed: ${e.message}`));
      } else {
        this.o.log?.('info', `the session asks for ${cmd}; not doing it without --allow-power`);
      }
    }
    if (this.o.once) {
      // Called once the server has answered the result; give a last message a moment to leave, then end.
      await new Promise((r) => setTimeout(r, 200));
      this.stopped = true;
      this.ws?.close();
    }
  }

  private sendProgress(): void {
    const job = this.job;
    if (job === undefined) return;
    const { progress, state, sample } = progressOf(job);
    Object.assign(job, sample);
    if (state !== job.state) {
      job.state = state;
      this.emit('state', state);
    }
    this.sendMsg({ type: 'progress', progress });
  }
}
