/**
 * A read-only TFTP server (RFC 1350, 2347, 2348, 2349, 7440). The listener
 * takes read requests; each transfer gets its own socket (its transfer ID)
 * and streams the file from disk a window at a time (pxe/tftp-transfer.ts).
 * Files are served from one root and never from outside it (realpath, so
 * neither `..` nor a symlink escapes). A bad packet is counted and dropped.
 *
 * Read requests are spoofable (UDP, no handshake), so every one is bounded:
 * at most maxPerClient transfers per client address (more are refused with
 * an ERROR) and maxTransfers in all. When all are taken, the oldest
 * transfer whose client never answered is ended to make room (a spoofed
 * request's "client" never answers; a real one answers within a round trip);
 * if every transfer is answered, the new request is dropped without a reply
 * (an ERROR to a spoofed address would only reflect the flood). Client
 * options are clamped (blksize, windowsize, timeout), a transfer has a total
 * lifetime, and nothing but the socket is held before the client answers.
 */
import type { Socket } from 'node:dgram';
import { EventEmitter } from 'node:events';
import { realpath, stat } from 'node:fs/promises';
import { join, sep } from 'node:path';
import type { GeneratedFile } from './tftp-generated.js';
import { decodeTftp, encodeTftp, Opcode, TFTP, TftpError, type TftpPacket } from '../protocol/tftp.js';
import { bindUdp } from './socket.js';
import { Transfer, type TransferLimits } from './tftp-transfer.js';

/** Defaults of TftpServerOptions. */
export const TFTP_DEFAULTS = Object.freeze({
  /** Retransmission timeout before any client option, ms. */
  timeoutMs: 1000,
  /** Retransmissions of one window before the transfer is abandoned. */
  retries: 5,
  /** Retransmissions before the client's first answer (a spoofed request is given up after 1+2+4+8 s). */
  firstRetries: 3,
  /** Largest window the server agrees to (RFC 7440 allows 65535; iPXE asks none, atftp 16 here). */
  maxWindow: 16,
  /** Largest block the server agrees to: what fits one Ethernet frame (1500 - 20 IP - 8 UDP - 4 TFTP). */
  maxBlksize: 1468,
  /** Largest client timeout (RFC 2349 allows 255 s) agreed to; a larger one is left out of the OACK. */
  maxTimeoutS: 5,
  /** Transfers at once from one client address. */
  maxPerClient: 4,
  /** Transfers at once in all (each holds a socket, and a file once its client answers). */
  maxTransfers: 64,
  /** The longest one transfer may run, ms (a 64 MB file at 1468-byte lock-step needs about a minute). */
  lifetimeMs: 10 * 60_000,
});

/** How to run the server. */
export interface TftpServerOptions {
  /** Folder served; nothing outside it is readable. */
  root: string;
  /** Address to bind (default 0.0.0.0). */
  address?: string;
  /** Port (default 69; 0 for any). */
  port?: number;
  /** Answer only on this interface (SO_BINDTODEVICE). */
  device?: string;
  timeoutMs?: number;
  retries?: number;
  firstRetries?: number;
  maxWindow?: number;
  maxBlksize?: number;
  maxTimeoutS?: number;
  maxPerClient?: number;
  maxTransfers?: number;
  lifetimeMs?: number;
  /** Names answered with content made on request (pxe/tftp-generated.ts) instead of a file of the root. */
  generate?: (name: string, client: string) => { error: string } | GeneratedFile | null;
  log?: (level: 'info' | 'warn' | 'debug', message: string) => void;
}

/** Counters for /metrics and tests. */
export interface TftpCounters {
  requests: number;
  /** Requests that only asked for the size (ended after the OACK). */
  probes: number;
  completed: number;
  failed: number;
  refused: number;
  /** Requests refused because their address had maxPerClient transfers already. */
  busy: number;
  /** Requests dropped without a reply: maxTransfers reached and every transfer answered. */
  dropped: number;
  /** Transfers ended, before their client ever answered, to make room for a new request. */
  evicted: number;
  /** Transfers ended for running longer than lifetimeMs. */
  expired: number;
  malformed: number;
  wrongTid: number;
  retransmits: number;
  bytesSent: number;
}

/**
 * The TFTP service. Emits 'transfer' ({file, client, bytes, seconds, ok,
 * error, options}), and 'closed' once (with the error, if a failure of the
 * listening socket ended it).
 */
export class TftpServer extends EventEmitter {
  readonly counters: TftpCounters = { requests: 0, probes: 0, completed: 0, failed: 0, refused: 0, busy: 0, dropped: 0, evicted: 0, expired: 0, malformed: 0, wrongTid: 0, retransmits: 0, bytesSent: 0 };
  private socket: Socket | undefined;
  private closed = false;
  private readonly transfers = new Set<Transfer>();
  /** Requests and transfers by client address (a request holds its place while its file is looked up). */
  private readonly perClient = new Map<string, number>();
  /** Requests being looked up, not yet transfers. */
  private pending = 0;
  private rootReal: string | undefined;
  /** Generated files of running transfers, removed when each ends. */
  private readonly generated = new Map<Transfer, GeneratedFile>();
  private readonly limits: TransferLimits;
  private readonly log: TftpServerOptions['log'];

  constructor(readonly o: TftpServerOptions) {
    super();
    const d = TFTP_DEFAULTS;
    this.limits = {
      timeoutMs: o.timeoutMs ?? d.timeoutMs,
      retries: o.retries ?? d.retries,
      firstRetries: o.firstRetries ?? d.firstRetries,
      maxWindow: o.maxWindow ?? d.maxWindow,
      maxBlksize: o.maxBlksize ?? d.maxBlksize,
      maxTimeoutS: o.maxTimeoutS ?? d.maxTimeoutS,
      lifetimeMs: o.lifetimeMs ?? d.lifetimeMs,
    };
    this.log = o.log;
  }

  /** Binds the listener; resolves with its port. */
  async start(): Promise<number> {
    this.rootReal = await realpath(this.o.root);
    const s = await bindUdp({ device: this.o.device, address: this.o.address, port: this.o.port ?? TFTP.PORT });
    this.socket = s;
    s.on('message', (msg, rinfo) => {
      this.onRequest(msg, rinfo).catch((err: Error) => this.o.log?.('warn', `tftp: request from ${rinfo.address}: ${err.message}`));
    });
    // The listener failing ends the service (one transfer's socket failing ends only that transfer).
    s.on('error', (err) => this.close(err));
    return s.address().port;
  }

  /** The one way the service ends: stops listening, ends every transfer, emits 'closed' once. */
  close(err?: Error): void {
    if (this.closed) return;
    this.closed = true;
    try {
      this.socket?.close();
    } catch {
      // already closed
    }
    for (const t of this.transfers) t.end(false, 'server stopped');
    if (err !== undefined) this.o.log?.('warn', `tftp: stopped: ${err.message}`);
    this.emit('closed', err);
  }

  /** Transfers running now. */
  get active(): number {
    return this.transfers.size;
  }

  /** The local ports of the transfers running now (their transfer IDs). */
  transferPorts(): number[] {
    return [...this.transfers].map((t) => t.port);
  }

  /** Bytes of buffers held by transfers whose client has answered, and by those whose client has not. */
  buffered(): { answered: number; unanswered: number } {
    const out = { answered: 0, unanswered: 0 };
    for (const t of this.transfers) out[t.acknowledged ? 'answered' : 'unanswered'] += t.buffered;
    return out;
  }

  // receive, decode, validate, decide, reply
  private async onRequest(msg: Buffer, rinfo: { address: string; port: number }): Promise<void> {
    let p: TftpPacket;
    try {
      p = decodeTftp(msg);
    } catch (err) {
      this.counters.malformed++;
      this.o.log?.('debug', `tftp: from ${rinfo.address}:${rinfo.port}: ${(err as Error).message}`);
      return;
    }
    // A send error concerns this client only: counted via the callback, never the listener's 'error'.
    const reply = (code: TftpError, message: string) => {
      if (!this.closed) this.socket?.send(encodeTftp({ op: Opcode.ERROR, code, message }), rinfo.port, rinfo.address, () => undefined);
    };
    if (p.op === Opcode.WRQ) {
      this.counters.refused++;
      reply(TftpError.ACCESS, 'this server is read-only');
      return;
    }
    if (p.op !== Opcode.RRQ) {
      this.counters.malformed++;
      return;
    }
    this.counters.requests++;
    if (p.mode !== 'octet' && p.mode !== 'netascii') {
      this.counters.refused++;
      reply(TftpError.ILLEGAL, `mode "${p.mode}" is not supported`);
      return;
    }
    if (!this.admit(rinfo.address, reply)) return;
    // The place taken above is the transfer's from here on, or given back.
    let transfer: Transfer | undefined;
    try {
      transfer = await this.prepare(p.filename, p.options, rinfo, reply);
    } finally {
      this.pending--;
      if (transfer === undefined) this.leave(rinfo.address);
    }
    if (transfer === undefined) return;
    const t = transfer;
    this.transfers.add(t);
    t.on('end', (ok: boolean, error: string, seconds: number) => {
      this.transfers.delete(t);
      this.generated.get(t)?.done();
      this.generated.delete(t);
      this.leave(rinfo.address);
      if (t.probe) this.counters.probes++;
      else if (ok) this.counters.completed++;
      else this.counters.failed++;
      this.emit('transfer', { file: p.filename, client: rinfo.address, bytes: t.bytes, seconds, ok, error, options: Object.fromEntries(t.negotiated) });
      if (t.probe) this.o.log?.('debug', `tftp: ${rinfo.address} asked the size of ${p.filename}`);
      else if (ok) this.o.log?.('info', `tftp: sent ${p.filename} to ${rinfo.address} (${t.bytes} bytes in ${seconds.toFixed(2)} s)`);
    });
    t.start();
  }

  /**
   * Takes a place for a request from address, or says why not: its address
   * has maxPerClient already (ERROR), or every place is taken by a transfer
   * whose client answered (dropped). Synchronous, so a burst of requests
   * cannot all pass the check before the first is counted.
   */
  private admit(address: string, reply: (code: TftpError, message: string) => void): boolean {
    const mine = this.perClient.get(address) ?? 0;
    if (mine >= (this.o.maxPerClient ?? TFTP_DEFAULTS.maxPerClient)) {
      this.counters.busy++;
      reply(TftpError.UNDEFINED, `${mine} transfers from ${address} are running already; try again when one has ended`);
      return false;
    }
    if (this.pending + this.transfers.size >= (this.o.maxTransfers ?? TFTP_DEFAULTS.maxTransfers)) {
      let oldest: Transfer | undefined;
      for (const t of this.transfers) {
        if (!t.acknowledged) {
          oldest = t;
          break;
        }
      }
      if (oldest === undefined) {
        this.counters.dropped++;
        this.o.log?.('debug', `tftp: request from ${address} dropped: ${this.transfers.size} transfers running, the most allowed`);
        return false;
      }
      this.counters.evicted++;
      oldest.end(false, 'ended to make room: its client never answered', false, true);
    }
    this.perClient.set(address, mine + 1);
    this.pending++;
    return true;
  }

  private leave(address: string): void {
    const n = (this.perClient.get(address) ?? 1) - 1;
    if (n <= 0) this.perClient.delete(address);
    else this.perClient.set(address, n);
  }

  /** Looks the file up and binds the transfer's socket; undefined (after replying) if it cannot be served. */
  private async prepare(name: string, options: Map<string, string>, rinfo: { address: string; port: number }, reply: (code: TftpError, message: string) => void): Promise<Transfer | undefined> {
    const made = this.o.generate?.(name, rinfo.address) ?? null;
    if (made !== null && 'error' in made) {
      this.counters.refused++;
      this.o.log?.('info', `tftp: ${rinfo.address} asked for "${name}": ${made.error}`);
      reply(TftpError.NOT_FOUND, made.error);
      return undefined;
    }
    const path = made !== null ? made.path : await this.resolve(name);
    if (typeof path !== 'string') {
      this.counters.refused++;
      this.o.log?.('info', `tftp: ${rinfo.address} asked for "${name}": ${path.message}`);
      reply(path.code, path.message);
      return undefined;
    }
    // The file is opened only when data is sent: a request costs no file descriptor before that.
    let size: number;
    try {
      const st = await stat(path);
      if (!st.isFile()) throw Object.assign(new Error('not a file'), { code: 'EISDIR' });
      size = st.size;
    } catch (err) {
      made?.done();
      this.counters.refused++;
      reply(TftpError.NOT_FOUND, `cannot read ${name}: ${(err as NodeJS.ErrnoException).code}`);
      return undefined;
    }
    let socket: Socket;
    try {
      socket = await bindUdp({ device: this.o.device, address: this.o.address, port: 0 });
    } catch (err) {
      made?.done();
      this.o.log?.('warn', `tftp: no socket for a transfer: ${(err as Error).message}`);
      return undefined;
    }
    if (this.closed) {
      // The service ended while this request was looked up.
      made?.done();
      socket.close();
      return undefined;
    }
    const transfer = new Transfer({ count: (what, n) => this.count(what, n), log: this.log }, this.limits, socket, path, size, name, rinfo, options);
    if (made !== null) this.generated.set(transfer, made);
    return transfer;
  }

  /** The real path of a requested file inside the root, or the error to send. */
  private async resolve(name: string): Promise<string | { code: TftpError; message: string }> {
    const root = this.rootReal!;
    // Clients send "/file", "file" or "dir\\file"; all are relative to the root.
    const clean = name.replace(/\\/g, '/').replace(/^\/+/, '');
    if (clean.split('/').includes('..')) return { code: TftpError.ACCESS, message: 'access violation: ".." is not allowed' };
    let real: string;
    try {
      real = await realpath(join(root, clean));
    } catch {
      return { code: TftpError.NOT_FOUND, message: `file not found: ${name}` };
    }
    if (real !== root && !real.startsWith(root + sep)) return { code: TftpError.ACCESS, message: 'access violation: outside the served folder' };
    return real;
  }

  /** @internal */
  count(what: keyof TftpCounters, n = 1): void {
    this.counters[what] += n;
  }
}
