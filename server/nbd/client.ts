/**
 * An NBD client (fixed newstyle, structured replies, base:allocation), used
 * to read a virtual disk through `qemu-nbd --read-only` at import. Many
 * requests may be in flight; replies are matched by handle. A malformed
 * reply ends the connection and fails every request with PACKET_MALFORMED.
 */
import { connect, type Socket } from 'node:net';
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { NBD, type Extent } from '../../protocol/nbd.js';
import {
  decodeBlockStatus,
  decodeGreeting,
  decodeInfoExport,
  decodeMetaContextReply,
  decodeOptionReplyHeader,
  decodeOffsetHole,
  decodeReplyHeader,
  decodeStructuredError,
  encodeClientFlags,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  encodeRequest,
  replyHeaderSize,
} from '../../protocol/nbd-client.js';
import { ByteReader } from './byte-reader.js';

/** Largest reply payload accepted (a READ of MAX_READ plus headers). */
const MAX_READ = 32 << 20;

interface Pending {
  type: number;
  offset: number;
  length: number;
  data?: Buffer;
  extents?: Extent[];
  error?: string;
  resolve(v: unknown): void;
  reject(e: Error): void;
}

/** A connected NBD client. */
export class NbdClient {
  private nextHandle = 1n;
  private readonly pending = new Map<bigint, Pending>();
  private failure: Error | undefined;
  /** Bytes of data received in READ replies (holes not counted). */
  bytesRead = 0;

  private constructor(
    private readonly socket: Socket,
    private readonly reader: ByteReader,
    readonly size: number,
    readonly structured: boolean,
    private readonly contextId: number | undefined,
    private readonly where: string,
  ) {
    void this.replyLoop();
  }

  /** True if the server gives base:allocation block status. */
  get hasBlockStatus(): boolean {
    return this.contextId !== undefined;
  }

  /** Connects to a Unix socket and negotiates export `name`. */
  static async connectUnix(path: string, name = ''): Promise<NbdClient> {
    // Large reads (4 MiB at a time instead of 64 KiB): far fewer callbacks for 1 MiB replies.
    let reader: ByteReader | undefined;
    const socket: Socket = connect({ path, onread: { buffer: Buffer.allocUnsafe(4 << 20), callback: (n: number, buf: Uint8Array): boolean => (reader!.push(Buffer.from(buf.subarray(0, n))), !socket.isPaused()) } });
    socket.on('error', () => undefined);
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', (e) => reject(new ClonecastError(ERR.UNREACHABLE, `cannot connect to the NBD server at ${path}: ${e.message}`)));
    });
    reader = new ByteReader(socket, MAX_READ + (1 << 20));
    const bad = (why: string) => new ClonecastError(ERR.PACKET_MALFORMED, `the NBD server at ${path} ${why}`);
    try {
      const flags = decodeGreeting(await reader.read(NBD.GREETING_SIZE));
      if (flags === null) throw bad('did not greet with the fixed newstyle handshake');
      const noZeroes = (flags & NBD.FLAG_NO_ZEROES) !== 0;
      socket.write(encodeClientFlags(NBD.FLAG_C_FIXED_NEWSTYLE | (noZeroes ? NBD.FLAG_C_NO_ZEROES : 0)));
      // Options: structured replies, base:allocation, then GO.
      const option = async (opt: number, data: Buffer): Promise<{ type: number; data: Buffer }[]> => {
        socket.write(encodeOption(opt, data));
        const replies: { type: number; data: Buffer }[] = [];
        for (;;) {
          const h = decodeOptionReplyHeader(await reader.read(NBD.OPTION_REPLY_HEADER_SIZE));
          if (h === null || h.option !== opt || h.length > 1 << 16) throw bad('sent a malformed option reply');
          const d = await reader.read(h.length);
          replies.push({ type: h.type, data: d });
          if (h.type === NBD.REP_ACK || h.type >= 0x80000000) return replies;
        }
      };
      const sr = await option(NBD.OPT_STRUCTURED_REPLY, Buffer.alloc(0));
      const structured = sr[sr.length - 1].type === NBD.REP_ACK;
      let contextId: number | undefined;
      if (structured) {
        for (const r of await option(NBD.OPT_SET_META_CONTEXT, encodeMetaContextRequest(name, [NBD.CONTEXT_BASE_ALLOCATION]))) {
          const m = r.type === NBD.REP_META_CONTEXT ? decodeMetaContextReply(r.data) : null;
          if (m !== null && m.name === NBD.CONTEXT_BASE_ALLOCATION) contextId = m.id;
        }
      }
      let size: number | undefined;
      const go = await option(NBD.OPT_GO, encodeInfoRequest(name, []));
      for (const r of go) {
        if (r.type >= 0x80000000) throw new ClonecastError(ERR.NOT_FOUND, `the NBD server at ${path} refused export "${name}" (error ${r.type - 0x80000000}: ${r.data.subarray(0, 200).toString('utf8')})`);
        const info = r.type === NBD.REP_INFO ? decodeInfoExport(r.data) : null;
        if (info !== null) size = Number(info.size);
      }
      if (size === undefined || !Number.isSafeInteger(size)) throw bad('did not say the export size');
      return new NbdClient(socket, reader!, size, structured, contextId, path);
    } catch (err) {
      socket.destroy();
      throw err;
    }
  }

  /** Reads [offset, offset+length) (length at most 32 MiB). */
  read(offset: number, length: number): Promise<Buffer> {
    return this.request(NBD.CMD_READ, offset, length) as Promise<Buffer>;
  }

  /** base:allocation extents from offset (they may cover less than length). */
  blockStatus(offset: number, length: number): Promise<Extent[]> {
    return this.request(NBD.CMD_BLOCK_STATUS, offset, length) as Promise<Extent[]>;
  }

  /** Sends NBD_CMD_DISC and closes. */
  close(): void {
    if (this.failure === undefined) this.socket.write(encodeRequest({ flags: 0, type: NBD.CMD_DISC, handle: 0n, offset: 0n, length: 0 }));
    this.fail(new ClonecastError(ERR.CANCELLED, 'the NBD connection was closed'));
    this.socket.end();
  }

  private request(type: number, offset: number, length: number): Promise<unknown> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (type === NBD.CMD_READ && length > MAX_READ) return Promise.reject(new RangeError(`NBD requests are limited to ${MAX_READ} bytes`));
    const handle = this.nextHandle++;
    return new Promise((resolve, reject) => {
      this.pending.set(handle, { type, offset, length, resolve, reject });
      this.socket.write(encodeRequest({ flags: 0, type, handle, offset: BigInt(offset), length }));
    });
  }

  private fail(e: Error): void {
    this.failure ??= e;
    for (const p of this.pending.values()) p.reject(this.failure);
    this.pending.clear();
  }

  private async replyLoop(): Promise<void> {
    const bad = (why: string) => new ClonecastError(ERR.PACKET_MALFORMED, `the NBD server at ${this.where} ${why}`);
    try {
      for (;;) {
        const magicBytes = await this.reader.read(4);
        const hsize = replyHeaderSize(magicBytes.readUInt32BE(0));
        if (hsize === null) throw bad('sent a reply with a bad magic');
        const h = decodeReplyHeader(Buffer.concat([magicBytes, await this.reader.read(hsize - 4)]));
        if (h === null) throw bad('sent a malformed reply');
        const p = this.pending.get(h.handle);
        if (p === undefined) throw bad('answered a request it was not sent');
        if (h.kind === 'simple') {
          this.pending.delete(h.handle);
          if (h.error !== 0) p.reject(new ClonecastError(ERR.READ_ERROR, `the NBD server at ${this.where} failed a request at ${p.offset} (error ${h.error})`));
          else if (p.type === NBD.CMD_READ) {
            const data = await this.reader.read(p.length);
            this.bytesRead += data.length;
            p.resolve(data);
          } else p.resolve([]);
          continue;
        }
        if (h.length > MAX_READ + 64) throw bad(`sent a ${h.length}-byte reply chunk`);
        const payload = await this.reader.read(h.length);
        if (h.type === NBD.REPLY_TYPE_OFFSET_DATA && p.type === NBD.CMD_READ && payload.length >= 8) {
          const at = Number(payload.readBigUInt64BE(0)) - p.offset;
          const n = payload.length - 8;
          if (at < 0 || at + n > p.length) throw bad('sent data outside the range asked for');
          // One data chunk for the whole request (the usual case): use it as it is, no copy.
          if (p.data === undefined && at === 0 && n === p.length) p.data = payload.subarray(8);
          else {
            p.data ??= Buffer.alloc(p.length);
            payload.copy(p.data, at, 8);
          }
          this.bytesRead += n;
        } else if (h.type === NBD.REPLY_TYPE_OFFSET_HOLE && p.type === NBD.CMD_READ) {
          const hole = decodeOffsetHole(payload);
          if (hole === null || Number(hole.offset) - p.offset < 0 || Number(hole.offset) - p.offset + hole.size > p.length) throw bad('sent a hole outside the range asked for');
          p.data ??= Buffer.alloc(p.length); // zero-filled: a hole needs no write
        } else if (h.type === NBD.REPLY_TYPE_BLOCK_STATUS && p.type === NBD.CMD_BLOCK_STATUS) {
          const s = decodeBlockStatus(payload);
          if (s === null) throw bad('sent a malformed block status');
          if (s.contextId === this.contextId) p.extents = s.extents;
        } else if (h.type === NBD.REPLY_TYPE_ERROR || h.type === NBD.REPLY_TYPE_ERROR_OFFSET) {
          const e = decodeStructuredError(payload);
          p.error = e === null ? 'malformed error' : `error ${e.error}: ${e.message.slice(0, 200)}`;
        } else if (h.type !== NBD.REPLY_TYPE_NONE) throw bad(`sent reply type ${h.type} for command ${p.type}`);
        if ((h.flags & NBD.REPLY_FLAG_DONE) === 0) continue;
        this.pending.delete(h.handle);
        if (p.error !== undefined) p.reject(new ClonecastError(ERR.READ_ERROR, `the NBD server at ${this.where} failed a request at ${p.offset}: ${p.error}`));
        else if (p.type === NBD.CMD_READ) p.resolve(p.data ?? Buffer.alloc(p.length));
        else if (p.extents === undefined) p.reject(bad('sent no base:allocation status'));
        else p.resolve(p.extents);
      }
    } catch (err) {
      this.fail(err instanceof ClonecastError ? err : new ClonecastError(ERR.READ_ERROR, `the NBD connection to ${this.where} ended: ${(err as Error).message}`));
      this.socket.destroy();
    }
  }
}
