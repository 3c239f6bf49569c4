/**
 * The NBD protocol codec, both sides (server and client). Section names refer
 * to the NBD protocol document, doc/proto.md of
 * https://github.com/NetworkBlockDevice/nbd ("proto.md" below).
 *
 * Only the fixed newstyle handshake is spoken (proto.md "Fixed newstyle
 * negotiation"); old style and non-fixed newstyle are not. All integers are
 * big-endian (proto.md "Conventions": network byte order).
 *
 * The client side (what a client sends, how it reads the answers) is in
 * protocol/nbd-client.ts.
 *
 * Handshake, server greeting (proto.md "Newstyle negotiation"):
 *   offset size field
 *        0    8 NBDMAGIC   0x4e42444d41474943 ("NBDMAGIC")
 *        8    8 IHAVEOPT   0x49484156454F5054 ("IHAVEOPT")
 *       16    2 handshake flags
 *   // sizeof = 18; the client answers with 4 bytes of client flags
 *
 * Option request (client):          // sizeof = 16 + length
 *        0    8 IHAVEOPT
 *        8    4 option
 *       12    4 length of data
 * Option reply (server):            // sizeof = 20 + length
 *        0    8 REPLY_MAGIC 0x3e889045565a9
 *        8    4 option
 *       12    4 reply type
 *       16    4 length of data
 * Request (proto.md "Request message"):   // sizeof = 28 (+ data for WRITE)
 *        0    4 REQUEST_MAGIC 0x25609513
 *        4    2 command flags
 *        6    2 type
 *        8    8 handle (cookie)
 *       16    8 offset
 *       24    4 length
 * Simple reply (proto.md "Simple reply message"):  // sizeof = 16 (+ data)
 *        0    4 SIMPLE_REPLY_MAGIC 0x67446698
 *        4    4 error
 *        8    8 handle
 * Structured reply chunk (proto.md "Structured reply chunk message"):  // sizeof = 20 + length
 *        0    4 STRUCTURED_REPLY_MAGIC 0x668e33ef
 *        4    2 flags
 *        6    2 type
 *        8    8 handle
 *       16    4 length of payload
 *
 * Decoders never throw on bad input: they return null, and the caller
 * answers with an error where the protocol allows and closes the connection.
 */

/** Constants of the NBD protocol (proto.md). */
export const NBD = Object.freeze({
  /** proto.md "Newstyle negotiation". */
  NBDMAGIC: 0x4e42444d41474943n,
  IHAVEOPT: 0x49484156454f5054n,
  /** proto.md "Option haggling": the magic of every option reply. */
  REPLY_MAGIC: 0x3e889045565a9n,
  GREETING_SIZE: 18,
  OPTION_HEADER_SIZE: 16,
  OPTION_REPLY_HEADER_SIZE: 20,
  /** proto.md "Transmission": request and reply magics. */
  REQUEST_MAGIC: 0x25609513,
  SIMPLE_REPLY_MAGIC: 0x67446698,
  STRUCTURED_REPLY_MAGIC: 0x668e33ef,
  REQUEST_SIZE: 28,
  SIMPLE_REPLY_SIZE: 16,
  STRUCTURED_HEADER_SIZE: 20,
  /** proto.md "Conventions": a string MUST be no longer than 4096 bytes. */
  MAX_STRING: 4096,
  /** Handshake flags (proto.md "Handshake flags"). */
  FLAG_FIXED_NEWSTYLE: 1 << 0,
  FLAG_NO_ZEROES: 1 << 1,
  /** Client flags (proto.md "Client flags"). */
  FLAG_C_FIXED_NEWSTYLE: 1 << 0,
  FLAG_C_NO_ZEROES: 1 << 1,
  /** Transmission flags (proto.md "Transmission flags"). */
  FLAG_HAS_FLAGS: 1 << 0,
  FLAG_READ_ONLY: 1 << 1,
  FLAG_SEND_FLUSH: 1 << 2,
  FLAG_SEND_FUA: 1 << 3,
  FLAG_ROTATIONAL: 1 << 4,
  FLAG_SEND_TRIM: 1 << 5,
  FLAG_SEND_WRITE_ZEROES: 1 << 6,
  FLAG_SEND_DF: 1 << 7,
  FLAG_CAN_MULTI_CONN: 1 << 8,
  /** Option types (proto.md "Option types"). */
  OPT_EXPORT_NAME: 1,
  OPT_ABORT: 2,
  OPT_LIST: 3,
  OPT_STARTTLS: 5,
  OPT_INFO: 6,
  OPT_GO: 7,
  OPT_STRUCTURED_REPLY: 8,
  OPT_LIST_META_CONTEXT: 9,
  OPT_SET_META_CONTEXT: 10,
  /** Option reply types (proto.md "Option reply types"); errors have bit 31 set. */
  REP_ACK: 1,
  REP_SERVER: 2,
  REP_INFO: 3,
  REP_META_CONTEXT: 4,
  REP_ERR_UNSUP: 0x80000001,
  REP_ERR_POLICY: 0x80000002,
  REP_ERR_INVALID: 0x80000003,
  REP_ERR_PLATFORM: 0x80000004,
  REP_ERR_TLS_REQD: 0x80000005,
  REP_ERR_UNKNOWN: 0x80000006,
  REP_ERR_SHUTDOWN: 0x80000007,
  REP_ERR_BLOCK_SIZE_REQD: 0x80000008,
  REP_ERR_TOO_BIG: 0x80000009,
  /** Information types of NBD_OPT_INFO/GO (proto.md "Option reply types", NBD_REP_INFO). */
  INFO_EXPORT: 0,
  INFO_NAME: 1,
  INFO_DESCRIPTION: 2,
  INFO_BLOCK_SIZE: 3,
  /** Request types (proto.md "Request types"). */
  CMD_READ: 0,
  CMD_WRITE: 1,
  CMD_DISC: 2,
  CMD_FLUSH: 3,
  CMD_TRIM: 4,
  CMD_CACHE: 5,
  CMD_WRITE_ZEROES: 6,
  CMD_BLOCK_STATUS: 7,
  /** Command flags (proto.md "Command flags"). */
  CMD_FLAG_FUA: 1 << 0,
  CMD_FLAG_NO_HOLE: 1 << 1,
  CMD_FLAG_DF: 1 << 2,
  CMD_FLAG_REQ_ONE: 1 << 3,
  /** Structured reply flags and types (proto.md "Structured reply types"). */
  REPLY_FLAG_DONE: 1 << 0,
  REPLY_TYPE_NONE: 0,
  REPLY_TYPE_OFFSET_DATA: 1,
  REPLY_TYPE_OFFSET_HOLE: 2,
  REPLY_TYPE_BLOCK_STATUS: 5,
  REPLY_TYPE_ERROR: 0x8001,
  REPLY_TYPE_ERROR_OFFSET: 0x8002,
  /** Error values (proto.md "Error values"). */
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
  /** The base:allocation context (proto.md "Metadata querying", "base:allocation"). */
  CONTEXT_BASE_ALLOCATION: 'base:allocation',
  STATE_HOLE: 1 << 0,
  STATE_ZERO: 1 << 1,
});

/** A decoded option request header; data (length bytes) follows on the wire. */
export interface OptionHeader {
  option: number;
  length: number;
}

/** A decoded option reply header; data follows. */
export interface OptionReplyHeader {
  option: number;
  type: number;
  length: number;
}

/** A transmission request. */
export interface NbdRequest {
  flags: number;
  type: number;
  handle: bigint;
  offset: bigint;
  length: number;
}

/** One block status descriptor: length bytes with these state flags. */
export interface Extent {
  length: number;
  flags: number;
}

// ---- server side: encoders ----

/** The server's greeting (18 bytes). */
export function encodeGreeting(flags = NBD.FLAG_FIXED_NEWSTYLE | NBD.FLAG_NO_ZEROES): Buffer {
  const b = Buffer.alloc(NBD.GREETING_SIZE);
  b.writeBigUInt64BE(NBD.NBDMAGIC, 0);
  b.writeBigUInt64BE(NBD.IHAVEOPT, 8);
  b.writeUInt16BE(flags, 16);
  return b;
}

/** An option reply: header and data. */
export function encodeOptionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(NBD.OPTION_REPLY_HEADER_SIZE + data.length);
  b.writeBigUInt64BE(NBD.REPLY_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, NBD.OPTION_REPLY_HEADER_SIZE);
  return b;
}

/** NBD_REP_INFO data for NBD_INFO_EXPORT: type, size, transmission flags (12 bytes). */
export function encodeInfoExport(size: bigint, flags: number): Buffer {
  const b = Buffer.alloc(12);
  b.writeUInt16BE(NBD.INFO_EXPORT, 0);
  b.writeBigUInt64BE(size, 2);
  b.writeUInt16BE(flags, 10);
  return b;
}

/** NBD_REP_INFO data for NBD_INFO_BLOCK_SIZE: minimum, preferred, maximum (14 bytes). */
export function encodeInfoBlockSize(min: number, preferred: number, max: number): Buffer {
  const b = Buffer.alloc(14);
  b.writeUInt16BE(NBD.INFO_BLOCK_SIZE, 0);
  b.writeUInt32BE(min, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(max, 10);
  return b;
}

/** NBD_REP_SERVER data (NBD_OPT_LIST): name length, name. */
export function encodeServerReply(name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(4 + n.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  return b;
}

/** NBD_REP_META_CONTEXT data: context id, name. */
export function encodeMetaContextReply(id: number, name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(4 + n.length);
  b.writeUInt32BE(id, 0);
  n.copy(b, 4);
  return b;
}

/** A simple reply header (16 bytes); READ data follows it when error is 0. */
export function encodeSimpleReply(error: number, handle: bigint): Buffer {
  const b = Buffer.alloc(NBD.SIMPLE_REPLY_SIZE);
  b.writeUInt32BE(NBD.SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  b.writeBigUInt64BE(handle, 8);
  return b;
}

/** A structured reply chunk header (20 bytes); its payload follows. */
export function encodeStructuredHeader(flags: number, type: number, handle: bigint, length: number): Buffer {
  const b = Buffer.alloc(NBD.STRUCTURED_HEADER_SIZE);
  b.writeUInt32BE(NBD.STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(handle, 8);
  b.writeUInt32BE(length, 16);
  return b;
}

/** NBD_REPLY_TYPE_OFFSET_DATA header and offset (28 bytes); dataLength bytes of data follow. */
export function encodeOffsetDataHeader(flags: number, handle: bigint, offset: bigint, dataLength: number): Buffer {
  const b = Buffer.alloc(NBD.STRUCTURED_HEADER_SIZE + 8);
  encodeStructuredHeader(flags, NBD.REPLY_TYPE_OFFSET_DATA, handle, 8 + dataLength).copy(b);
  b.writeBigUInt64BE(offset, 20);
  return b;
}

/** NBD_REPLY_TYPE_OFFSET_HOLE: offset, hole size (32 bytes in all). */
export function encodeOffsetHole(flags: number, handle: bigint, offset: bigint, size: number): Buffer {
  const b = Buffer.alloc(NBD.STRUCTURED_HEADER_SIZE + 12);
  encodeStructuredHeader(flags, NBD.REPLY_TYPE_OFFSET_HOLE, handle, 12).copy(b);
  b.writeBigUInt64BE(offset, 20);
  b.writeUInt32BE(size, 28);
  return b;
}

/** NBD_REPLY_TYPE_BLOCK_STATUS: context id, then (length, flags) per extent. */
export function encodeBlockStatus(flags: number, handle: bigint, contextId: number, extents: Extent[]): Buffer {
  const length = 4 + 8 * extents.length;
  const b = Buffer.alloc(NBD.STRUCTURED_HEADER_SIZE + length);
  encodeStructuredHeader(flags, NBD.REPLY_TYPE_BLOCK_STATUS, handle, length).copy(b);
  b.writeUInt32BE(contextId, 20);
  extents.forEach((e, i) => {
    b.writeUInt32BE(e.length, 24 + 8 * i);
    b.writeUInt32BE(e.flags, 28 + 8 * i);
  });
  return b;
}

/** NBD_REPLY_TYPE_ERROR: error, message length (u16), message. */
export function encodeStructuredError(flags: number, handle: bigint, error: number, message: string): Buffer {
  const m = Buffer.from(message, 'utf8').subarray(0, NBD.MAX_STRING);
  const b = Buffer.alloc(NBD.STRUCTURED_HEADER_SIZE + 6 + m.length);
  encodeStructuredHeader(flags, NBD.REPLY_TYPE_ERROR, handle, 6 + m.length).copy(b);
  b.writeUInt32BE(error, 20);
  b.writeUInt16BE(m.length, 24);
  m.copy(b, 26);
  return b;
}

// ---- server side: decoders ----

/** The client's 4 flag bytes; null unless C_FIXED_NEWSTYLE is set and no unknown bit is (proto.md "Client flags"). */
export function decodeClientFlags(b: Uint8Array): number | null {
  if (b.length !== 4) return null;
  const f = Buffer.from(b.buffer, b.byteOffset, 4).readUInt32BE(0);
  if ((f & NBD.FLAG_C_FIXED_NEWSTYLE) === 0) return null;
  if ((f & ~(NBD.FLAG_C_FIXED_NEWSTYLE | NBD.FLAG_C_NO_ZEROES)) !== 0) return null;
  return f;
}

/** An option request header (16 bytes); null on a wrong length or magic. */
export function decodeOptionHeader(b: Uint8Array): OptionHeader | null {
  if (b.length !== NBD.OPTION_HEADER_SIZE) return null;
  const buf = Buffer.from(b.buffer, b.byteOffset, b.length);
  if (buf.readBigUInt64BE(0) !== NBD.IHAVEOPT) return null;
  return { option: buf.readUInt32BE(8), length: buf.readUInt32BE(12) };
}

/** Reads a u32-length-prefixed string at o; null if it overruns or is too long or not UTF-8 without NUL. */
function readString(buf: Buffer, o: number, lengthSize: 2 | 4): { value: string; end: number } | null {
  if (o + lengthSize > buf.length) return null;
  const n = lengthSize === 4 ? buf.readUInt32BE(o) : buf.readUInt16BE(o);
  if (n > NBD.MAX_STRING || o + lengthSize + n > buf.length) return null;
  const raw = buf.subarray(o + lengthSize, o + lengthSize + n);
  if (raw.includes(0)) return null;
  const value = raw.toString('utf8');
  if (!Buffer.from(value, 'utf8').equals(raw)) return null;
  return { value, end: o + lengthSize + n };
}

/** NBD_OPT_INFO / NBD_OPT_GO data: export name and the information types asked for (proto.md "NBD_OPT_INFO"). */
export function decodeInfoRequest(b: Uint8Array): { name: string; infos: number[] } | null {
  const buf = Buffer.from(b.buffer, b.byteOffset, b.length);
  const name = readString(buf, 0, 4);
  if (name === null || name.end + 2 > buf.length) return null;
  const count = buf.readUInt16BE(name.end);
  if (name.end + 2 + 2 * count !== buf.length) return null;
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(buf.readUInt16BE(name.end + 2 + 2 * i));
  return { name: name.value, infos };
}

/** NBD_OPT_SET_META_CONTEXT / LIST_META_CONTEXT data: export name and queries (proto.md "NBD_OPT_SET_META_CONTEXT"). */
export function decodeMetaContextRequest(b: Uint8Array): { name: string; queries: string[] } | null {
  const buf = Buffer.from(b.buffer, b.byteOffset, b.length);
  const name = readString(buf, 0, 4);
  if (name === null || name.end + 4 > buf.length) return null;
  const count = buf.readUInt32BE(name.end);
  let o = name.end + 4;
  // Each query takes at least 4 bytes: a count the data cannot hold is a lie.
  if (count > (buf.length - o) / 4) return null;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    const q = readString(buf, o, 4);
    if (q === null) return null;
    queries.push(q.value);
    o = q.end;
  }
  return o === buf.length ? { name: name.value, queries } : null;
}

/** A request header (28 bytes); null on a wrong length or magic. */
export function decodeRequest(b: Uint8Array): NbdRequest | null {
  if (b.length !== NBD.REQUEST_SIZE) return null;
  const buf = Buffer.from(b.buffer, b.byteOffset, b.length);
  if (buf.readUInt32BE(0) !== NBD.REQUEST_MAGIC) return null;
  return { flags: buf.readUInt16BE(4), type: buf.readUInt16BE(6), handle: buf.readBigUInt64BE(8), offset: buf.readBigUInt64BE(16), length: buf.readUInt32BE(24) };
}
