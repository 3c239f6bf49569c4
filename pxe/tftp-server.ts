/**
 * A read-only TFTP server (RFC 1350, 2347, 2348, 2349, 7440). The listener
 * takes read requests; each transfer gets its own socket (its transfer ID)
 * and streams the file from disk a window at a time: read, send, wait for
 * the ACK, retransmit with back-off. Files are served from one root and
 * never from outside it (realpath, so neither `..` nor a symlink escapes).
 * A bad packet is counted and dropped; a packet from the wrong port is
 * answered with "unknown transfer ID" and otherwise ignored.
 */
import type { Socket } from 'node:dgram';
import { EventEmitter } from 'node:events';
import { open, realpath, type FileHandle } from 'node:fs/promises';
import { join, sep } from 'node:path';
import { decodeTftp, dataHeader, encodeTftp, Opcode, TFTP, TftpError, type TftpPacket } from '../protocol/tftp.js';
import { bindUdp } from './socket.js';

/** Bytes read from the file at a time for one transfer. */
const READ_AHEAD = 1 << 20;

/** Defaults of TftpServerOptions. */
export const TFTP_DEFAULTS = Object.freeze({
  /** Retransmission timeout before any client option, ms. */
  timeoutMs: 1000,
  /** Retransmissions of one window before the transfer is abandoned. */
  retries: 5,
  /** Largest window the server agrees to (RFC 7440 allows 65535). */
  maxWindow: 64,
  /** Largest block the server agrees to. */
  maxBlksize: TFTP.MAX_BLKSIZE,
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
  maxWindow?: number;
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
  readonly counters: TftpCounters = { requests: 0, probes: 0, completed: 0, failed: 0, refused: 0, malformed: 0, wrongTid: 0, retransmits: 0, bytesSent: 0 };
  private socket: Socket | undefined;
  private closed = false;
  private readonly transfers = new Set<Transfer>();
  private rootReal: string | undefined;

  constructor(readonly o: TftpServerOptions) {
    super();
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
    const path = await this.resolve(p.filename);
    if (typeof path !== 'string') {
      this.counters.refused++;
      this.o.log?.('info', `tftp: ${rinfo.address} asked for "${p.filename}": ${path.message}`);
      reply(path.code, path.message);
      return;
    }
    let file: FileHandle;
    try {
      file = await open(path, 'r');
    } catch (err) {
      this.counters.refused++;
      reply(TftpError.NOT_FOUND, `cannot open ${p.filename}: ${(err as NodeJS.ErrnoException).code}`);
      return;
    }
    let size: number;
    let socket: Socket;
    try {
      size = (await file.stat()).size;
    } catch (err) {
      await file.close().catch(() => undefined);
      this.counters.refused++;
      reply(TftpError.NOT_FOUND, `cannot read ${p.filename}: ${(err as NodeJS.ErrnoException).code}`);
      return;
    }
    try {
      socket = await bindUdp({ device: this.o.device, address: this.o.address, port: 0 });
    } catch (err) {
      await file.close().catch(() => undefined);
      this.o.log?.('warn', `tftp: no socket for a transfer: ${(err as Error).message}`);
      return;
    }
    if (this.closed) {
      // The service ended while this request was opening its file.
      socket.close();
      await file.close().catch(() => undefined);
      return;
    }
    const t = new Transfer(this, socket, file, size, p.filename, rinfo, p.options);
    this.transfers.add(t);
    t.on('end', (ok: boolean, error: string, seconds: number) => {
      this.transfers.delete(t);
      if (t.probe) this.counters.probes++;
      else if (ok) this.counters.completed++;
      else this.counters.failed++;
      this.emit('transfer', { file: p.filename, client: rinfo.address, bytes: t.bytes, seconds, ok, error, options: Object.fromEntries(t.negotiated) });
      if (t.probe) this.o.log?.('debug', `tftp: ${rinfo.address} asked the size of ${p.filename}`);
      else if (ok) this.o.log?.('info', `tftp: sent ${p.filename} to ${rinfo.address} (${t.bytes} bytes in ${seconds.toFixed(2)} s)`);
    });
    t.start();
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

/** One read transfer on its own socket. */
class Transfer extends EventEmitter {
  bytes = 0;
  private blksize: number = TFTP.DEFAULT_BLKSIZE;
  private window = 1;
  private timeoutMs: number;
  private readonly lastBlock: number;
  /** Highest block acknowledged (absolute, from 1); 0 before any. */
  private acked = 0;
  private sentUpTo = 0;
  private tries = 0;
  private timer: NodeJS.Timeout | undefined;
  private ended = false;
  private readonly started = performance.now();
  private buf: Buffer = Buffer.alloc(0);
  private awaitingOack = false;
  private sending = false;
  /** Read-ahead: file bytes [aheadAt, aheadAt + aheadLen). */
  private ahead: Buffer = Buffer.alloc(0);
  private aheadAt = 0;
  private aheadLen = 0;
  /** It ended after the OACK: the client only asked for the size. */
  probe = false;

  constructor(
    private readonly server: TftpServer,
    private readonly socket: Socket,
    private readonly file: FileHandle,
    private readonly size: number,
    readonly name: string,
    private readonly peer: { address: string; port: number },
    private readonly asked: Map<string, string>,
  ) {
    super();
    this.timeoutMs = server.o.timeoutMs ?? TFTP_DEFAULTS.timeoutMs;
    const accepted = this.negotiate();
    this.lastBlock = Math.floor(size / this.blksize) + 1; // the last block is short, maybe empty
    this.negotiated = accepted;
  }

  /** The options this server accepted (its OACK); empty: none asked for, plain RFC 1350. */
  readonly negotiated: Map<string, string>;

  /** RFC 2347: accept what can be honoured, leave out the rest. */
  private negotiate(): Map<string, string> {
    const out = new Map<string, string>();
    const n = (k: string) => Number(this.asked.get(k));
    if (this.asked.has('blksize')) {
      const v = n('blksize');
      if (Number.isInteger(v) && v >= TFTP.MIN_BLKSIZE) {
        this.blksize = Math.min(v, TFTP_DEFAULTS.maxBlksize);
        out.set('blksize', String(this.blksize));
      }
    }
    if (this.asked.has('tsize')) out.set('tsize', String(this.size));
    if (this.asked.has('timeout')) {
      const v = n('timeout');
      if (Number.isInteger(v) && v >= TFTP.MIN_TIMEOUT && v <= TFTP.MAX_TIMEOUT) {
        this.timeoutMs = v * 1000;
        out.set('timeout', String(v));
      }
    }
    if (this.asked.has('windowsize')) {
      const v = n('windowsize');
      if (Number.isInteger(v) && v >= 1) {
        this.window = Math.min(v, this.server.o.maxWindow ?? TFTP_DEFAULTS.maxWindow);
        out.set('windowsize', String(this.window));
      }
    }
    return out;
  }

  get port(): number {
    return this.socket.address().port;
  }

  start(): void {
    this.socket.on('message', (msg, rinfo) => this.onMessage(msg, rinfo));
    this.socket.on('error', (err) => this.end(false, err.message));
    this.buf = Buffer.alloc((4 + this.blksize) * this.window);
    if (this.negotiated.size > 0) {
      this.awaitingOack = true;
      this.sendOack();
    } else void this.sendWindow();
  }

  private sendOack(): void {
    this.socket.send(encodeTftp({ op: Opcode.OACK, options: this.negotiated }), this.peer.port, this.peer.address);
    this.arm();
  }

  private onMessage(msg: Buffer, rinfo: { address: string; port: number }): void {
    if (rinfo.address !== this.peer.address || rinfo.port !== this.peer.port) {
      // RFC 1350 section 4: a packet from another TID gets an error and changes nothing.
      this.server.count('wrongTid');
      this.socket.send(encodeTftp({ op: Opcode.ERROR, code: TftpError.UNKNOWN_TID, message: 'unknown transfer ID' }), rinfo.port, rinfo.address);
      return;
    }
    let p: TftpPacket;
    try {
      p = decodeTftp(msg);
    } catch {
      this.server.count('malformed');
      return;
    }
    if (p.op === Opcode.ERROR) {
      // Firmware often asks for tsize only and ends the transfer at the OACK (PXE's size probe).
      if (this.awaitingOack) return this.end(true, '', true);
      return this.end(false, `the client gave up: ${p.message} (code ${p.code})`);
    }
    if (p.op !== Opcode.ACK) {
      this.server.count('malformed');
      return;
    }
    if (this.awaitingOack) {
      if (p.block !== 0) return;
      this.awaitingOack = false;
      this.tries = 0;
      void this.sendWindow();
      return;
    }
    // Map the 16-bit block number into the window in flight (it rolls over at 65536).
    const candidate = this.acked + ((p.block - this.acked) & 0xffff);
    if (candidate <= this.acked || candidate > this.sentUpTo) return; // a duplicate or stale ACK
    this.acked = candidate;
    this.tries = 0;
    if (this.acked >= this.lastBlock) return this.end(true, '');
    // RFC 7440: a partial ACK restarts the window after the acknowledged block.
    if (this.acked === this.sentUpTo) void this.sendWindow();
    else if (!this.sending) void this.sendWindow();
  }

  private async sendWindow(): Promise<void> {
    if (this.ended || this.sending) return;
    this.sending = true;
    try {
      const first = this.acked + 1;
      const last = Math.min(this.lastBlock, this.acked + this.window);
      const start = (first - 1) * this.blksize;
      const want = Math.max(0, Math.min(this.size - start, (last - first + 1) * this.blksize));
      const got = await this.fill(start, want);
      if (this.ended) return;
      for (let b = first; b <= last; b++) {
        const off = (b - first) * this.blksize;
        const len = Math.max(0, Math.min(this.blksize, got - off));
        const pkt = this.buf.subarray((b - first) * (4 + this.blksize), (b - first) * (4 + this.blksize) + 4 + len);
        dataHeader(pkt, b);
        this.ahead.copy(pkt, 4, start - this.aheadAt + off, start - this.aheadAt + off + len);
        this.socket.send(pkt, this.peer.port, this.peer.address);
        this.server.count('bytesSent', len);
        if (b > this.sentUpTo) this.bytes += len;
      }
      this.sentUpTo = last;
      this.arm();
    } catch (err) {
      this.end(false, (err as Error).message);
    } finally {
      this.sending = false;
    }
  }

  /**
   * Makes bytes [start, start+want) available in `ahead`, reading READ_AHEAD
   * at a time: a lock-step client (one 512-byte block per round trip) must
   * not wait for a disk read per block. Returns the bytes there are.
   */
  private async fill(start: number, want: number): Promise<number> {
    const end = Math.min(this.size, start + want);
    if (start >= this.aheadAt && end <= this.aheadAt + this.aheadLen) return end - start;
    const size = Math.max(want, READ_AHEAD);
    if (this.ahead.length < size) this.ahead = Buffer.alloc(size);
    let got = 0;
    while (got < size && start + got < this.size) {
      const { bytesRead } = await this.file.read(this.ahead, got, Math.min(size - got, this.size - start - got), start + got);
      if (bytesRead === 0) break;
      got += bytesRead;
    }
    this.aheadAt = start;
    this.aheadLen = got;
    return Math.min(got, end - start);
  }

  private arm(): void {
    clearTimeout(this.timer);
    // Back-off: each retry waits twice as long, up to 8 times the timeout.
    const wait = this.timeoutMs * Math.min(8, 2 ** this.tries);
    this.timer = setTimeout(() => this.expire(), wait);
  }

  private expire(): void {
    if (this.ended) return;
    if (++this.tries > (this.server.o.retries ?? TFTP_DEFAULTS.retries)) return this.end(false, `no answer from ${this.peer.address}:${this.peer.port} after ${this.tries - 1} retransmissions`);
    this.server.count('retransmits');
    if (this.awaitingOack) return this.sendOack();
    this.sentUpTo = this.acked; // resend the whole window after the last ACK
    void this.sendWindow();
  }

  /** Ends the transfer once; probe: the client only wanted the options (tsize). */
  end(ok: boolean, error: string, probe = false): void {
    if (this.ended) return;
    this.ended = true;
    this.probe = probe;
    clearTimeout(this.timer);
    if (!ok && error !== 'server stopped') this.server.o.log?.('warn', `tftp: ${this.name} to ${this.peer.address}: ${error}`);
    try {
      this.socket.close();
    } catch {
      // already closed
    }
    this.file.close().catch((err: Error) => this.server.o.log?.('warn', `tftp: closing ${this.name}: ${err.message}`));
    this.emit('end', ok, error, (performance.now() - this.started) / 1000);
  }
}
