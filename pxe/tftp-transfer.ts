/**
 * One TFTP read transfer on its own socket (its transfer ID): negotiate the
 * options (RFC 2347-2349, 7440), send a window, wait for the ACK,
 * retransmit with back-off. A request costs nothing but its socket until
 * its client answers: the file is opened and the window buffer allocated on
 * the first data sent, and the large read-ahead only once the client has
 * acknowledged, so a spoofed request (whose "client" never answers) holds one
 * socket and at most one small block until it is given up or evicted.
 */
import type { Socket } from 'node:dgram';
import { EventEmitter } from 'node:events';
import { open, type FileHandle } from 'node:fs/promises';
import { dataHeader, decodeTftp, encodeTftp, Opcode, TFTP, TftpError, type TftpPacket } from '../protocol/tftp.js';

/** Bytes read from the file at a time for one acknowledged transfer. */
export const READ_AHEAD = 1 << 20;

/** The limits a transfer runs under (resolved by the server from its options). */
export interface TransferLimits {
  timeoutMs: number;
  retries: number;
  firstRetries: number;
  maxWindow: number;
  maxBlksize: number;
  maxTimeoutS: number;
  lifetimeMs: number;
}

/** What a transfer reports to its server. */
export interface TransferHost {
  count(what: 'malformed' | 'wrongTid' | 'retransmits' | 'bytesSent' | 'expired', n?: number): void;
  log?: (level: 'info' | 'warn' | 'debug', message: string) => void;
}

/** One read transfer. Emits 'end' (ok, error, seconds) once. */
export class Transfer extends EventEmitter {
  bytes = 0;
  /** The client has answered (an ACK from its address and port): it is not a spoofed request. */
  acknowledged = false;
  /** It ended after the OACK: the client only asked for the size. */
  probe = false;
  /** The options this server accepted (its OACK); empty: none asked for, plain RFC 1350. */
  readonly negotiated: Map<string, string>;
  readonly started = performance.now();
  private blksize: number = TFTP.DEFAULT_BLKSIZE;
  private window = 1;
  private timeoutMs: number;
  private readonly lastBlock: number;
  /** Highest block acknowledged (absolute, from 1); 0 before any. */
  private acked = 0;
  private sentUpTo = 0;
  private tries = 0;
  private timer: NodeJS.Timeout | undefined;
  private lifetime: NodeJS.Timeout | undefined;
  private ended = false;
  private file: FileHandle | undefined;
  private opening: Promise<FileHandle> | undefined;
  private buf: Buffer = Buffer.alloc(0);
  private awaitingOack = false;
  private sending = false;
  /** Read-ahead: file bytes [aheadAt, aheadAt + aheadLen). */
  private ahead: Buffer = Buffer.alloc(0);
  private aheadAt = 0;
  private aheadLen = 0;

  constructor(
    private readonly host: TransferHost,
    private readonly limits: TransferLimits,
    private readonly socket: Socket,
    private readonly path: string,
    private readonly size: number,
    readonly name: string,
    readonly peer: { address: string; port: number },
    private readonly asked: Map<string, string>,
  ) {
    super();
    this.timeoutMs = limits.timeoutMs;
    this.negotiated = this.negotiate();
    this.lastBlock = Math.floor(size / this.blksize) + 1; // the last block is short, maybe empty
  }

  /**
   * RFC 2347: accept what can be honoured, leave out the rest. blksize
   * (RFC 2348) and windowsize (RFC 7440) may be answered smaller; timeout
   * (RFC 2349) must be echoed as asked, so one above our maximum is left out
   * (the server keeps its own).
   */
  private negotiate(): Map<string, string> {
    const out = new Map<string, string>();
    const n = (k: string) => Number(this.asked.get(k));
    if (this.asked.has('blksize')) {
      const v = n('blksize');
      if (Number.isInteger(v) && v >= TFTP.MIN_BLKSIZE) {
        this.blksize = Math.min(v, this.limits.maxBlksize, TFTP.MAX_BLKSIZE);
        out.set('blksize', String(this.blksize));
      }
    }
    if (this.asked.has('tsize')) out.set('tsize', String(this.size));
    if (this.asked.has('timeout')) {
      const v = n('timeout');
      if (Number.isInteger(v) && v >= TFTP.MIN_TIMEOUT && v <= Math.min(TFTP.MAX_TIMEOUT, this.limits.maxTimeoutS)) {
        this.timeoutMs = v * 1000;
        out.set('timeout', String(v));
      }
    }
    if (this.asked.has('windowsize')) {
      const v = n('windowsize');
      if (Number.isInteger(v) && v >= 1) {
        this.window = Math.min(v, this.limits.maxWindow, TFTP.MAX_WINDOWSIZE);
        out.set('windowsize', String(this.window));
      }
    }
    return out;
  }

  /** The local port (the transfer ID). */
  get port(): number {
    return this.socket.address().port;
  }

  /** Bytes of buffers this transfer holds now. */
  get buffered(): number {
    return this.buf.length + this.ahead.length;
  }

  start(): void {
    this.socket.on('message', (msg, rinfo) => this.onMessage(msg, rinfo));
    this.socket.on('error', (err) => this.end(false, err.message));
    this.lifetime = setTimeout(() => {
      this.host.count('expired');
      this.end(false, `still running after ${Math.round(this.limits.lifetimeMs / 1000)} s, the longest a transfer may take`);
    }, this.limits.lifetimeMs);
    if (this.negotiated.size > 0) {
      this.awaitingOack = true;
      this.sendOack();
    } else void this.sendWindow();
  }

  private sendOack(): void {
    this.socket.send(encodeTftp({ op: Opcode.OACK, options: this.negotiated }), this.peer.port, this.peer.address, () => undefined);
    this.arm();
  }

  private onMessage(msg: Buffer, rinfo: { address: string; port: number }): void {
    if (rinfo.address !== this.peer.address || rinfo.port !== this.peer.port) {
      // RFC 1350 section 4: a packet from another TID gets an error and changes nothing.
      this.host.count('wrongTid');
      this.socket.send(encodeTftp({ op: Opcode.ERROR, code: TftpError.UNKNOWN_TID, message: 'unknown transfer ID' }), rinfo.port, rinfo.address, () => undefined);
      return;
    }
    let p: TftpPacket;
    try {
      p = decodeTftp(msg);
    } catch {
      this.host.count('malformed');
      return;
    }
    if (p.op === Opcode.ERROR) {
      // Firmware often asks for tsize only and ends the transfer at the OACK (PXE's size probe).
      if (this.awaitingOack) return this.end(true, '', true);
      return this.end(false, `the client gave up: ${p.message} (code ${p.code})`);
    }
    if (p.op !== Opcode.ACK) {
      this.host.count('malformed');
      return;
    }
    if (this.awaitingOack) {
      if (p.block !== 0) return;
      this.awaitingOack = false;
      this.acknowledged = true;
      this.tries = 0;
      void this.sendWindow();
      return;
    }
    // Map the 16-bit block number into the window in flight (it rolls over at 65536).
    const candidate = this.acked + ((p.block - this.acked) & 0xffff);
    if (candidate <= this.acked || candidate > this.sentUpTo) return; // a duplicate or stale ACK
    this.acked = candidate;
    this.acknowledged = true;
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
      const need = (4 + this.blksize) * (last - first + 1);
      if (this.buf.length < need) this.buf = Buffer.alloc(this.acknowledged ? (4 + this.blksize) * this.window : need);
      for (let b = first; b <= last; b++) {
        const off = (b - first) * this.blksize;
        const len = Math.max(0, Math.min(this.blksize, got - off));
        const pkt = this.buf.subarray((b - first) * (4 + this.blksize), (b - first) * (4 + this.blksize) + 4 + len);
        dataHeader(pkt, b);
        this.ahead.copy(pkt, 4, start - this.aheadAt + off, start - this.aheadAt + off + len);
        this.socket.send(pkt, this.peer.port, this.peer.address, () => undefined);
        this.host.count('bytesSent', len);
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
   * Makes bytes [start, start+want) available in `ahead`. An acknowledged
   * transfer reads READ_AHEAD at a time (a lock-step client, one 512-byte
   * block per round trip, must not wait for a disk read per block); one its
   * client has not answered yet reads only what it sends. Returns the bytes
   * there are.
   */
  private async fill(start: number, want: number): Promise<number> {
    const end = Math.min(this.size, start + want);
    if (start >= this.aheadAt && end <= this.aheadAt + this.aheadLen) return end - start;
    // Before the client answers, its one block is read and the file closed again: no descriptor is held for it.
    const keep = this.acknowledged;
    const file = keep ? await this.openFile() : await open(this.path, 'r');
    try {
      const size = keep ? Math.max(want, READ_AHEAD) : want;
      if (this.ahead.length < size) this.ahead = Buffer.alloc(size);
      let got = 0;
      while (got < size && start + got < this.size) {
        const { bytesRead } = await file.read(this.ahead, got, Math.min(size - got, this.size - start - got), start + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
      this.aheadAt = start;
      this.aheadLen = got;
      return Math.min(got, end - start);
    } finally {
      if (!keep) await file.close().catch(() => undefined);
    }
  }

  private async openFile(): Promise<FileHandle> {
    if (this.file !== undefined) return this.file;
    this.opening ??= open(this.path, 'r');
    const file = await this.opening;
    this.file = file;
    // Ended while it was opening: close it here, end() saw no file.
    if (this.ended) {
      this.file = undefined;
      await file.close().catch(() => undefined);
      throw new Error('ended');
    }
    return file;
  }

  private arm(): void {
    clearTimeout(this.timer);
    // Back-off: each retry waits twice as long, up to 8 times the timeout.
    const wait = this.timeoutMs * Math.min(8, 2 ** this.tries);
    this.timer = setTimeout(() => this.expire(), wait);
  }

  private expire(): void {
    if (this.ended) return;
    // A client that never answered (a spoofed request, most likely) is given up sooner.
    const retries = this.acknowledged ? this.limits.retries : Math.min(this.limits.retries, this.limits.firstRetries);
    if (++this.tries > retries) return this.end(false, `no answer from ${this.peer.address}:${this.peer.port} after ${this.tries - 1} retransmissions`);
    this.host.count('retransmits');
    if (this.awaitingOack) return this.sendOack();
    this.sentUpTo = this.acked; // resend the whole window after the last ACK
    void this.sendWindow();
  }

  /** Ends the transfer once; probe: the client only wanted the options (tsize); quiet: nothing logged. */
  end(ok: boolean, error: string, probe = false, quiet = false): void {
    if (this.ended) return;
    this.ended = true;
    this.probe = probe;
    clearTimeout(this.timer);
    clearTimeout(this.lifetime);
    if (!ok && !quiet && error !== 'server stopped') this.host.log?.(this.acknowledged ? 'warn' : 'debug', `tftp: ${this.name} to ${this.peer.address}: ${error}`);
    try {
      this.socket.close();
    } catch {
      // already closed
    }
    this.file?.close().catch((err: Error) => this.host.log?.('warn', `tftp: closing ${this.name}: ${err.message}`));
    this.file = undefined;
    this.buf = Buffer.alloc(0);
    this.ahead = Buffer.alloc(0);
    this.emit('end', ok, error, (performance.now() - this.started) / 1000);
  }
}
