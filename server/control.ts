/**
 * The agent side of the control channel (WebSocket at CONTROL.AGENT_PATH,
 * binary frames of protocol/control.proto). Per connection: receive, decode,
 * check, act. The first message must be a Hello with the server's token; a
 * frame over the size limit, a text frame, an unknown type or a malformed
 * message closes that one connection with a logged reason and a count in
 * `rejected`; every other connection goes on.
 */
import type { IncomingMessage } from 'node:http';
import { WebSocket, type RawData } from 'ws';
import { BootMode, CONTROL, decodeAgentMessage, encodeServerMessage, type AgentMessage, type Hello, type ServerMessage } from '../protocol/control.js';
import { tokenMatches } from './token.js';
import { BootCredentials, newSecret, secretHash, secretMatches, type Binding } from './credentials.js';
import type { AgentTrust, Registry } from './registry.js';
import type { AgentLink, SessionManager } from './sessions.js';

/** Defaults of the channel. */
export const CHANNEL_DEFAULTS = Object.freeze({
  /** Agents send a heartbeat this often, ms. */
  heartbeatMs: 5000,
  /** ...and progress at most this often, ms. */
  progressMs: 1000,
  /** A connection silent for this many heartbeats is closed. */
  silentBeats: 3,
  /** Time allowed for the Hello, ms: a connection that has not proved who it is holds a socket only this long. */
  helloMs: 2000,
  /** Connections still without a Hello, at most, from one address and in all. */
  pendingPerAddress: 8,
  pendingTotal: 256,
  /** Agent connections in all, at most (a classroom is 30-60). */
  maxConnections: 4096,
});

/** WebSocket close codes the server uses (4000-4999 are for applications, RFC 6455 7.4.2). */
export const CLOSE = Object.freeze({
  UNAUTHORIZED: 4401,
  PROTOCOL: 4400,
  REPLACED: 4409,
  SILENT: 4408,
  /** RFC 6455: 1003 unsupported data, 1007 invalid payload, 1009 too big. */
  TEXT: 1003,
  MALFORMED: 1007,
  /** RFC 6455 7.4.1: 1011, the server met a condition that kept it from fulfilling the request. */
  INTERNAL: 1011,
});

interface Conn {
  ws: WebSocket;
  address: string;
  machine: string | undefined;
  lastHeard: number;
  /** How its agent proved who it is (set with machine). */
  trust: AgentTrust;
}

/** How much each way of proving who an agent is proves: a connection is replaced only by one that proves as much. */
const TRUST_RANK: Record<AgentTrust, number> = { unverified: 0, credential: 1, token: 2 };

/** Options of AgentChannel. */
export interface AgentChannelOptions {
  token: string;
  /**
   * Network boot is on: accept the boot credentials that network-booted agents carry
   * (issued through `credentials`), and agents with no credential at all, as unverified.
   */
  acceptBootTokens?: boolean;
  /** How long a boot credential stays good, ms (default CREDENTIAL_DEFAULTS.ttlMs). */
  credentialTtlMs?: number;
  /** Whether what a boot credential was issued for still stands (the session or capture still wants the machine). */
  bindingValid?: (binding: Binding, mac: string) => boolean;
  registry: Registry;
  version: string;
  maxMessage?: number;
  heartbeatMs?: number;
  progressMs?: number;
  log?: (level: 'info' | 'warn' | 'debug', message: string) => void;
}

/** Every agent connection; the SessionManager sends through it. */
export class AgentChannel implements AgentLink {
  /** Connections closed for a bad frame or credentials, by reason. */
  readonly rejected = { unauthorized: 0, malformed: 0, tooLarge: 0, text: 0, protocol: 0, silent: 0, overLimit: 0 };
  /** Connections without a Hello yet, by address. */
  private readonly pending = new Map<string, number>();
  private pendingTotal = 0;
  /** Messages whose handling failed on the server (the connection was closed, the server went on). */
  faults = 0;
  private readonly byMachine = new Map<string, Conn>();
  private readonly all = new Set<Conn>();
  private sessions: SessionManager | undefined;
  private readonly timer: NodeJS.Timeout;
  private readonly heartbeatMs: number;
  /** Boot credentials outstanding; the boot scripts issue them. */
  readonly credentials: BootCredentials;

  constructor(private readonly o: AgentChannelOptions) {
    this.credentials = new BootCredentials({ ttlMs: o.credentialTtlMs });
    this.heartbeatMs = o.heartbeatMs ?? CHANNEL_DEFAULTS.heartbeatMs;
    this.timer = setInterval(() => this.sweep(), Math.min(this.heartbeatMs, 1000));
  }

  /** The session manager to hand work to (set once both exist). */
  attach(sessions: SessionManager): void {
    this.sessions = sessions;
  }

  /** Number of open agent connections that said hello. */
  get connected(): number {
    return this.byMachine.size;
  }

  /**
   * Whether to take one more connection from this address, asked before the
   * WebSocket handshake: unauthenticated connections are capped per address
   * and in all, so a flood costs a bounded number of sockets.
   */
  admits(address: string): boolean {
    const ok = this.all.size < CHANNEL_DEFAULTS.maxConnections && this.pendingTotal < CHANNEL_DEFAULTS.pendingTotal && (this.pending.get(address) ?? 0) < CHANNEL_DEFAULTS.pendingPerAddress;
    if (!ok) this.rejected.overLimit++;
    return ok;
  }

  /** Takes a new WebSocket from the HTTP server's upgrade. */
  accept(ws: WebSocket, req: IncomingMessage): void {
    const conn: Conn = { ws, address: req.socket.remoteAddress?.replace(/^::ffff:/, '') ?? '', machine: undefined, lastHeard: Date.now(), trust: 'unverified' };
    this.all.add(conn);
    let waiting = true;
    this.pending.set(conn.address, (this.pending.get(conn.address) ?? 0) + 1);
    this.pendingTotal++;
    const proven = () => {
      if (!waiting) return;
      waiting = false;
      this.pendingTotal--;
      const n = (this.pending.get(conn.address) ?? 1) - 1;
      if (n > 0) this.pending.set(conn.address, n);
      else this.pending.delete(conn.address);
    };
    const hello = setTimeout(() => {
      this.close(conn, CLOSE.PROTOCOL, 'no hello in time', 'protocol');
      ws.terminate();
    }, CHANNEL_DEFAULTS.helloMs);
    ws.on('message', (data: RawData, isBinary: boolean) => {
      if (!isBinary) return this.close(conn, CLOSE.TEXT, 'text frame (the control channel is binary protobuf)', 'text');
      const frame = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer);
      let msg: AgentMessage;
      try {
        msg = decodeAgentMessage(frame, this.o.maxMessage ?? CONTROL.MAX_MESSAGE);
      } catch (err) {
        return this.close(conn, CLOSE.MALFORMED, (err as Error).message, 'malformed');
      }
      conn.lastHeard = Date.now();
      // Acting on a message never throws out of the socket handler: a fault closes this connection only.
      try {
        if (conn.machine === undefined) {
          clearTimeout(hello);
          if (msg.type !== 'hello') return this.close(conn, CLOSE.PROTOCOL, `${msg.type} before hello`, 'protocol');
          this.onHello(conn, msg.hello);
          // It stops counting as unproven only once its Hello was accepted.
          if (conn.machine !== undefined) proven();
          return;
        }
        this.onMessage(conn, conn.machine, msg);
      } catch (err) {
        this.faults++;
        this.o.log?.('warn', `agent ${conn.machine ?? conn.address}: acting on its ${msg.type} failed: ${(err as Error).message}`);
        this.close(conn, CLOSE.INTERNAL, 'the server could not act on a message; reconnect', 'protocol');
      }
    });
    ws.on('error', (err: Error & { code?: string }) => {
      // ws closes the socket itself (1009 for a frame over maxPayload); count and log why.
      if (err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH') this.rejected.tooLarge++;
      else this.rejected.malformed++;
      this.o.log?.('warn', `agent ${conn.machine ?? conn.address}: connection closed: ${err.message}`);
    });
    ws.on('close', () => {
      clearTimeout(hello);
      proven();
      this.all.delete(conn);
      const id = conn.machine;
      if (id === undefined || this.byMachine.get(id) !== conn) return;
      this.byMachine.delete(id);
      this.o.registry.online(id, false);
      this.sessions?.disconnected(id);
      this.o.log?.('info', `agent ${id} disconnected`);
    });
  }

  /** Sends to a connected machine. */
  send(machineId: string, message: ServerMessage): boolean {
    const conn = this.byMachine.get(machineId);
    if (conn === undefined || conn.ws.readyState !== WebSocket.OPEN) return false;
    conn.ws.send(encodeServerMessage(message));
    return true;
  }

  /** Closes every connection. */
  closeAll(): void {
    clearInterval(this.timer);
    for (const c of this.all) c.ws.terminate();
  }

  /**
   * Who a Hello proves to be: the server's token (full trust), this machine's
   * agent secret, a boot credential issued for this MAC, or, with network
   * boot on, nothing (unverified). A refusal says why.
   */
  private prove(h: Hello): { trust: AgentTrust; bootCredential: boolean } | { refused: string; retry: boolean } {
    const id = h.machineId!;
    const presented = h.token ?? '';
    if (tokenMatches(presented, this.o.token)) return { trust: 'token', bootCredential: false };
    const known = this.o.registry.get(id);
    if (presented !== '' && known?.secretHash !== undefined && secretMatches(presented, known.secretHash)) {
      const trust = known.secretTrust ?? 'unverified';
      // A secret handed out while the machine was unverified says nothing once the machine has proved who it is.
      if (trust === 'unverified' && known.trusted === true) return { refused: `${id} has proved who it is since this secret was given; boot it through the server again while a session or capture names it`, retry: false };
      return { trust, bootCredential: false };
    }
    if (this.o.acceptBootTokens !== true) {
      return { refused: 'wrong or missing token: give the agent the server\'s token (--token-file or CLONECAST_TOKEN; "clonecast token" prints it)', retry: false };
    }
    if (presented === '') {
      // An agent booted with no credential (--pxe-idle, an --any session) may not speak for a machine that proved who it is.
      if (known?.trusted === true) return { refused: `${id} has proved who it is before; an agent without its credential cannot speak for it (boot it through the server again while a session or capture names it)`, retry: false };
      return { trust: 'unverified', bootCredential: false };
    }
    const c = this.credentials.check(presented, id);
    if ('refused' in c) return { refused: c.refused, retry: false };
    if (this.o.bindingValid !== undefined && !this.o.bindingValid(c.binding, id)) {
      return { refused: `the boot credential was issued for ${c.binding.kind === 'machine' ? 'this machine' : `${c.binding.kind} ${c.binding.id}`}, which no longer wants ${id}: boot it through the server again`, retry: false };
    }
    return { trust: 'credential', bootCredential: true };
  }

  private onHello(conn: Conn, h: Hello): void {
    const proof = this.prove(h);
    if ('refused' in proof) {
      this.refuse(conn, proof.refused, proof.retry);
      this.rejected.unauthorized++;
      this.o.log?.('warn', `agent ${h.machineId} from ${conn.address} refused: ${proof.refused}`);
      return;
    }
    if (h.protocol !== CONTROL.VERSION) {
      this.refuse(conn, `control protocol ${h.protocol} is not this server's ${CONTROL.VERSION}; run the same clonecast version on both sides`, false);
      this.rejected.protocol++;
      return;
    }
    const id = h.machineId!;
    const old = this.byMachine.get(id);
    if (old !== undefined) {
      // Only the server's token or this machine's own secret replaces a connection that proved who it is; a fresh
      // boot credential waits until that connection has gone silent (a machine that rebooted), and nothing without a credential replaces anything.
      // A secret replaces only a connection that proved no more than it does (an unverified secret never a verified one).
      const bySecret = proof.trust !== 'token' && !proof.bootCredential && (h.token ?? '') !== '' && TRUST_RANK[proof.trust] >= TRUST_RANK[old.trust];
      const mayReplace = proof.trust === 'token' || bySecret || (proof.bootCredential && old.trust === 'unverified');
      if (!mayReplace) {
        const why = `${id} is connected already (${old.address}); this connection does not replace it`;
        this.refuse(conn, why, proof.trust !== 'unverified');
        this.rejected.unauthorized++;
        this.o.log?.('warn', `agent ${id} from ${conn.address} refused: ${why}`);
        return;
      }
      old.machine = undefined; // its close must not mark the machine offline
      old.ws.close(CLOSE.REPLACED, 'replaced by a newer connection from the same machine');
    }
    if (proof.bootCredential) this.credentials.consume(h.token!);
    conn.machine = id;
    conn.trust = proof.trust;
    this.byMachine.set(id, conn);
    const record = this.o.registry.seen({
      id,
      // Other MACs are the agent's own word: only an agent with the server's token may list them.
      macs: proof.trust === 'token' ? (h.macs ?? []) : [id],
      trust: proof.trust,
      // Shown in terminals and pages: control characters (terminal escapes) never get that far.
      hostname: printable(h.hostname ?? ''),
      bootMode: BootMode[h.bootMode ?? 0].replace('BOOT_', '').toLowerCase(),
      agentVersion: printable(h.agentVersion ?? ''),
      disks: h.disks ?? [],
      address: conn.address,
    });
    // An agent without the server's token gets its own secret on a first Hello (a boot credential is good for one).
    let agentSecret = '';
    // The server's token proves more than any secret given before: such a secret opens nothing from now on.
    if (proof.trust === 'token') this.o.registry.setSecret(id, undefined, 'token');
    if (proof.trust !== 'token' && (proof.bootCredential || h.token === '')) {
      agentSecret = newSecret();
      this.o.registry.setSecret(id, secretHash(agentSecret), proof.trust);
    }
    this.o.log?.('info', `agent ${id} (${record.hostname}, ${conn.address}) connected${proof.trust === 'token' ? '' : proof.trust === 'unverified' ? ' unverified (no credential)' : ' with its credential'} with ${record.disks.length} disk(s)${h.resume ? `, resuming session ${h.resume.sessionId}` : ''}`);
    conn.ws.send(
      encodeServerMessage({
        type: 'welcome',
        welcome: { protocol: CONTROL.VERSION, serverVersion: this.o.version, heartbeatMs: this.heartbeatMs, progressMs: this.o.progressMs ?? CHANNEL_DEFAULTS.progressMs, agentSecret },
      }),
    );
    this.sessions?.connected(record, h.resume?.sessionId ?? null);
  }

  private onMessage(conn: Conn, id: string, msg: AgentMessage): void {
    switch (msg.type) {
      case 'hello':
        return this.close(conn, CLOSE.PROTOCOL, 'a second hello', 'protocol');
      case 'heartbeat':
        conn.ws.send(encodeServerMessage({ type: 'heartbeat', heartbeat: { sentMs: Date.now(), echoMs: msg.heartbeat.sentMs } }));
        return;
      case 'progress':
        this.sessions?.progress(id, msg.progress);
        return;
      case 'result': {
        // Every Result is answered: the agent reboots or powers off only after an accepted Confirm.
        const sessionId = msg.result.sessionId ?? 0;
        const answer = this.sessions?.result(id, msg.result) ?? Promise.resolve({ accepted: false, reason: 'the server has no sessions' });
        answer.then(
          (c) => this.send(id, { type: 'confirm', confirm: { sessionId, accepted: c.accepted, reason: c.reason } }),
          (err: Error) => {
            this.faults++;
            this.o.log?.('warn', `agent ${id}: judging its result failed: ${err.message}`);
            this.send(id, { type: 'confirm', confirm: { sessionId, accepted: false, reason: `the server could not check the result: ${err.message}` } });
          },
        );
        return;
      }
    }
  }

  private refuse(conn: Conn, reason: string, retry: boolean): void {
    conn.ws.send(encodeServerMessage({ type: 'refuse', refuse: { reason, retry } }));
    conn.ws.close(CLOSE.UNAUTHORIZED, reason.slice(0, 120));
    hangUp(conn.ws);
  }

  private close(conn: Conn, code: number, reason: string, counter: keyof AgentChannel['rejected']): void {
    this.rejected[counter]++;
    this.o.log?.('warn', `agent ${conn.machine ?? conn.address}: closing the connection: ${reason}`);
    if (conn.ws.readyState === WebSocket.OPEN) conn.ws.send(encodeServerMessage({ type: 'refuse', refuse: { reason, retry: true } }));
    // Reason in a close frame is limited to 123 bytes (RFC 6455 5.5).
    conn.ws.close(code, Buffer.from(reason).subarray(0, 120).toString());
    hangUp(conn.ws);
  }

  private sweep(): void {
    const limit = this.heartbeatMs * CHANNEL_DEFAULTS.silentBeats;
    const now = Date.now();
    for (const c of this.all) {
      if (c.machine !== undefined && now - c.lastHeard > limit) {
        this.close(c, CLOSE.SILENT, `silent for ${Math.round((now - c.lastHeard) / 1000)} s`, 'silent');
        c.ws.terminate();
      }
    }
  }
}

/** Text with control characters (C0, DEL, C1: terminal escapes among them) replaced by '?'. */
export function printable(text: string): string {
  return text.replace(/[\x00-\x1f\x7f-\x9f]/g, '?');
}

/** A peer that does not answer our close frame loses its socket after a second (ws would wait 30 s). */
export function hangUp(ws: WebSocket): void {
  setTimeout(() => ws.terminate(), 1000).unref();
}
