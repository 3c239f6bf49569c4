/**
 * One NBD client connection, server side: the fixed newstyle handshake, then
 * transmission, read-only. Each step reads top to bottom: receive, decode,
 * validate, decide, reply. A malformed or hostile message is answered with
 * an error where the protocol allows, and that connection (only) is closed.
 */
import type { Socket } from 'node:net';
import { TLSSocket, type TLSSocketOptions } from 'node:tls';
import type { Duplex } from 'node:stream';
import {
  NBD,
  decodeClientFlags,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeRequest,
  encodeBlockStatus,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeMetaContextReply,
  encodeOffsetDataHeader,
  encodeOffsetHole,
  encodeOptionReply,
  encodeServerReply,
  encodeSimpleReply,
  encodeStructuredError,
  type NbdRequest,
} from '../../protocol/nbd.js';
import { ByteReader } from './byte-reader.js';
import type { ImageSource } from './image-source.js';

/** Largest option data taken (an export name and a few queries fit many times over). */
export const MAX_OPTION_DATA = 64 << 10;
/** Largest READ or BLOCK_STATUS length served; more is refused and the connection closed. */
export const MAX_REQUEST = 32 << 20;
/** Bytes buffered from a client before its GO: options are small, so an unauthenticated peer costs little memory. */
export const HANDSHAKE_BUFFER = 128 << 10;
/** Bytes buffered once the export is open (pipelined requests). */
export const TRANSMISSION_BUFFER = MAX_REQUEST + (1 << 20);
/** Default time from accept to GO, TLS included; a peer that stalls longer is closed. */
export const DEFAULT_HANDSHAKE_MS = 10_000;
/** Most block status descriptors in one reply. */
export const MAX_EXTENTS = 4096;
/** The id of base:allocation on every connection. */
const BASE_ALLOCATION_ID = 1;

/** Why a connection ended, for counters and tests. */
export type CloseReason = 'done' | 'bad-flags' | 'bad-option-magic' | 'option-too-big' | 'bad-request-magic' | 'write-refused' | 'too-big' | 'bad-command' | 'read-failed' | 'io' | 'tls-failed' | 'handshake-timeout' | 'busy';

/** What a connection needs from its server. */
export interface ConnectionContext {
  /** The export by name ("" is the default), or undefined. */
  lookup(name: string): ImageSource | undefined;
  names(): string[];
  /** TLS for STARTTLS; undefined on a Unix socket (STARTTLS unsupported there). */
  tls?: TLSSocketOptions;
  /** Refuse every option but STARTTLS and ABORT until TLS is up. */
  requireTls: boolean;
  /** Time from accept to GO (default DEFAULT_HANDSHAKE_MS). */
  handshakeMs?: number;
  /** The client chose its export; false closes it (the server serves enough clients already). */
  onReady(): boolean;
  /** A transmission request arrived. */
  onRequest(): void;
  onClose(reason: CloseReason): void;
}

class Close extends Error {
  constructor(readonly reason: CloseReason) {
    super(reason);
  }
}

/** Serves one connection until it ends; never throws. */
export async function serveConnection(socket: Socket, ctx: ConnectionContext): Promise<void> {
  let stream: Duplex = socket;
  let reader = new ByteReader(stream, HANDSHAKE_BUFFER);
  let reason: CloseReason = 'done';
  let timedOut = false;
  // Until GO, TLS included: a peer that connects and stalls must not hold a slot (or the export open) for long.
  const deadline = setTimeout(() => {
    timedOut = true;
    stream.destroy();
    socket.destroy();
  }, ctx.handshakeMs ?? DEFAULT_HANDSHAKE_MS);
  const send = async (b: Buffer) => {
    if (!stream.write(b)) await new Promise<void>((resolve, reject) => {
      const ok = () => { stream.off('close', gone); resolve(); };
      const gone = () => { stream.off('drain', ok); reject(new Close('io')); };
      stream.once('drain', ok);
      stream.once('close', gone);
    });
  };
  try {
    await send(encodeGreeting(NBD.FLAG_FIXED_NEWSTYLE | NBD.FLAG_NO_ZEROES));
    const cflags = decodeClientFlags(await reader.read(4));
    if (cflags === null) throw new Close('bad-flags');
    const noZeroes = (cflags & NBD.FLAG_C_NO_ZEROES) !== 0;
    let tlsUp = false;
    let structured = false;
    let context = false;
    let source: ImageSource | undefined;
    // ---- handshake (proto.md "Option haggling") ----
    while (source === undefined) {
      const head = decodeOptionHeader(await reader.read(NBD.OPTION_HEADER_SIZE));
      if (head === null) throw new Close('bad-option-magic'); // e.g. a transmission request before GO
      const { option } = head;
      if (head.length > MAX_OPTION_DATA) {
        await send(encodeOptionReply(option, NBD.REP_ERR_TOO_BIG));
        throw new Close('option-too-big');
      }
      const data = await reader.read(head.length);
      const reply = (type: number, d?: Buffer) => send(encodeOptionReply(option, type, d));
      if (ctx.requireTls && !tlsUp && option !== NBD.OPT_STARTTLS && option !== NBD.OPT_ABORT) {
        // proto.md "TLS support", FORCEDTLS: every other option gets NBD_REP_ERR_TLS_REQD; EXPORT_NAME has no error reply.
        if (option === NBD.OPT_EXPORT_NAME) throw new Close('bad-command');
        await reply(NBD.REP_ERR_TLS_REQD);
        continue;
      }
      switch (option) {
        case NBD.OPT_ABORT:
          await reply(NBD.REP_ACK);
          throw new Close('done');
        case NBD.OPT_STARTTLS: {
          if (ctx.tls === undefined) await reply(NBD.REP_ERR_UNSUP);
          else if (tlsUp || data.length !== 0) await reply(NBD.REP_ERR_INVALID);
          else if (reader.pending !== 0) throw new Close('tls-failed'); // bytes sent before our ACK: not a TLS client
          else {
            await reply(NBD.REP_ACK);
            reader.detach();
            const secure = new TLSSocket(socket, { ...ctx.tls, isServer: true });
            await new Promise<void>((resolve, reject) => {
              secure.once('secure', resolve);
              secure.once('error', () => reject(new Close('tls-failed')));
              secure.once('close', () => reject(new Close('tls-failed')));
            });
            stream = secure;
            reader = new ByteReader(stream, HANDSHAKE_BUFFER);
            tlsUp = true;
          }
          break;
        }
        case NBD.OPT_LIST:
          if (data.length !== 0) await reply(NBD.REP_ERR_INVALID);
          else {
            for (const n of ctx.names()) await reply(NBD.REP_SERVER, encodeServerReply(n));
            await reply(NBD.REP_ACK);
          }
          break;
        case NBD.OPT_STRUCTURED_REPLY:
          if (data.length !== 0) await reply(NBD.REP_ERR_INVALID);
          else {
            structured = true;
            await reply(NBD.REP_ACK);
          }
          break;
        case NBD.OPT_SET_META_CONTEXT:
        case NBD.OPT_LIST_META_CONTEXT: {
          const q = decodeMetaContextRequest(data);
          if (q === null || !structured) await reply(NBD.REP_ERR_INVALID);
          else if (ctx.lookup(q.name) === undefined) await reply(NBD.REP_ERR_UNKNOWN);
          else {
            const list = option === NBD.OPT_LIST_META_CONTEXT && q.queries.length === 0;
            const wanted = list || q.queries.some((s) => s === NBD.CONTEXT_BASE_ALLOCATION || (option === NBD.OPT_LIST_META_CONTEXT && s === 'base:'));
            if (wanted) await reply(NBD.REP_META_CONTEXT, encodeMetaContextReply(option === NBD.OPT_SET_META_CONTEXT ? BASE_ALLOCATION_ID : 0, NBD.CONTEXT_BASE_ALLOCATION));
            if (option === NBD.OPT_SET_META_CONTEXT) context = wanted;
            await reply(NBD.REP_ACK);
          }
          break;
        }
        case NBD.OPT_INFO:
        case NBD.OPT_GO: {
          const q = decodeInfoRequest(data);
          const found = q === null ? undefined : ctx.lookup(q.name);
          if (q === null) await reply(NBD.REP_ERR_INVALID);
          else if (found === undefined) await reply(NBD.REP_ERR_UNKNOWN);
          else {
            if (option === NBD.OPT_GO && !ctx.onReady()) {
              await reply(NBD.REP_ERR_SHUTDOWN);
              throw new Close('busy');
            }
            await reply(NBD.REP_INFO, encodeInfoExport(BigInt(found.size), transmissionFlags(structured)));
            if (q.infos.includes(NBD.INFO_BLOCK_SIZE)) await reply(NBD.REP_INFO, encodeInfoBlockSize(1, 4096, MAX_REQUEST));
            await reply(NBD.REP_ACK);
            if (option === NBD.OPT_GO) source = found;
          }
          break;
        }
        case NBD.OPT_EXPORT_NAME: {
          // proto.md "NBD_OPT_EXPORT_NAME": no error reply exists; an unknown name closes.
          const found = ctx.lookup(data.toString('utf8'));
          if (found === undefined) throw new Close('bad-command');
          if (!ctx.onReady()) throw new Close('busy');
          const b = Buffer.alloc(noZeroes ? 10 : 134);
          b.writeBigUInt64BE(BigInt(found.size), 0);
          b.writeUInt16BE(transmissionFlags(structured), 8);
          await send(b);
          source = found;
          break;
        }
        default:
          await reply(NBD.REP_ERR_UNSUP);
      }
    }
    // ---- transmission (proto.md "Transmission phase") ----
    clearTimeout(deadline);
    reader.setLimit(TRANSMISSION_BUFFER);
    for (;;) {
      const req = decodeRequest(await reader.read(NBD.REQUEST_SIZE));
      if (req === null) throw new Close('bad-request-magic');
      ctx.onRequest();
      const fail = async (error: number, message: string) => {
        if (structured) await send(encodeStructuredError(NBD.REPLY_FLAG_DONE, req.handle, error, message));
        else await send(encodeSimpleReply(error, req.handle));
      };
      switch (req.type) {
        case NBD.CMD_DISC:
          throw new Close('done');
        case NBD.CMD_WRITE:
        case NBD.CMD_TRIM:
        case NBD.CMD_WRITE_ZEROES:
          // A write's data follows its header and cannot be trusted to be what the length says: answer, then close.
          await send(encodeSimpleReply(NBD.EPERM, req.handle));
          throw new Close('write-refused');
        case NBD.CMD_FLUSH:
        case NBD.CMD_CACHE:
          await send(encodeSimpleReply(0, req.handle));
          break;
        case NBD.CMD_READ:
        case NBD.CMD_BLOCK_STATUS: {
          if (req.type === NBD.CMD_READ && req.length > MAX_REQUEST) {
            await fail(NBD.EOVERFLOW, `requests are limited to ${MAX_REQUEST} bytes`);
            throw new Close('too-big');
          }
          if (req.length === 0 || req.offset + BigInt(req.length) > BigInt(source.size)) {
            await fail(NBD.EINVAL, 'request outside the export');
            break;
          }
          if (req.type === NBD.CMD_READ) {
            if (!(await serveRead(req, source, structured, send, fail))) throw new Close('read-failed');
          } else if (!context) await fail(NBD.EINVAL, 'base:allocation was not negotiated');
          else {
            const one = (req.flags & NBD.CMD_FLAG_REQ_ONE) !== 0;
            const extents = source.extents(Number(req.offset), req.length, one ? 1 : MAX_EXTENTS);
            await send(encodeBlockStatus(NBD.REPLY_FLAG_DONE, req.handle, BASE_ALLOCATION_ID, extents));
          }
          break;
        }
        default:
          await fail(NBD.EINVAL, `unknown command ${req.type}`);
          throw new Close('bad-command');
      }
    }
  } catch (err) {
    reason = timedOut ? 'handshake-timeout' : err instanceof Close ? err.reason : 'io';
  } finally {
    clearTimeout(deadline);
    reader.detach();
    stream.end();
    stream.destroy();
    socket.destroy();
    ctx.onClose(reason);
  }
}

function transmissionFlags(structured: boolean): number {
  return NBD.FLAG_HAS_FLAGS | NBD.FLAG_READ_ONLY | NBD.FLAG_SEND_FLUSH | NBD.FLAG_CAN_MULTI_CONN | (structured ? NBD.FLAG_SEND_DF : 0);
}

/** Answers one READ; false if the store failed (the client got EIO). */
async function serveRead(
  req: NbdRequest,
  source: ImageSource,
  structured: boolean,
  send: (b: Buffer) => Promise<void>,
  fail: (error: number, message: string) => Promise<void>,
): Promise<boolean> {
  let pieces;
  try {
    pieces = await source.read(Number(req.offset), req.length);
  } catch (err) {
    await fail(NBD.EIO, (err as Error).message);
    return false;
  }
  if (!structured) {
    await send(encodeSimpleReply(0, req.handle));
    for (const p of pieces) await send(p.hole ? Buffer.alloc(p.length) : p.data);
    return true;
  }
  // NBD_CMD_FLAG_DF asks for one data chunk: holes are then sent as zeros in it.
  if ((req.flags & NBD.CMD_FLAG_DF) !== 0 && pieces.length > 1) {
    await send(encodeOffsetDataHeader(NBD.REPLY_FLAG_DONE, req.handle, req.offset, req.length));
    for (const p of pieces) await send(p.hole ? Buffer.alloc(p.length) : p.data);
    return true;
  }
  for (let k = 0; k < pieces.length; k++) {
    const p = pieces[k];
    const flags = k === pieces.length - 1 ? NBD.REPLY_FLAG_DONE : 0;
    if (p.hole) await send(encodeOffsetHole(flags, req.handle, BigInt(p.offset), p.length));
    else {
      await send(encodeOffsetDataHeader(flags, req.handle, BigInt(p.offset), p.data.length));
      await send(p.data);
    }
  }
  return true;
}
