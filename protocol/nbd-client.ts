/**
 * The NBD protocol codec, client side: what a client sends and how it reads
 * the server's answers. Layouts and constants are in protocol/nbd.ts.
 */
import { NBD, type Extent, type NbdRequest, type OptionReplyHeader } from './nbd.js';


/** The server's greeting (18 bytes): its handshake flags; null unless fixed newstyle. */
export function decodeGreeting(b: Uint8Array): number | null {
  if (b.length !== NBD.GREETING_SIZE) return null;
  const buf = Buffer.from(b.buffer, b.byteOffset, b.length);
  if (buf.readBigUInt64BE(0) !== NBD.NBDMAGIC || buf.readBigUInt64BE(8) !== NBD.IHAVEOPT) return null;
  const flags = buf.readUInt16BE(16);
  return (flags & NBD.FLAG_FIXED_NEWSTYLE) === 0 ? null : flags;
}

/** The client's flags (4 bytes). */
export function encodeClientFlags(flags: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(flags >>> 0, 0);
  return b;
}

/** An option request with its data. */
export function encodeOption(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(NBD.OPTION_HEADER_SIZE + data.length);
  b.writeBigUInt64BE(NBD.IHAVEOPT, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(data.length, 12);
  data.copy(b, NBD.OPTION_HEADER_SIZE);
  return b;
}

/** NBD_OPT_INFO / GO data. */
export function encodeInfoRequest(name: string, infos: number[]): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((t, i) => b.writeUInt16BE(t, 6 + n.length + 2 * i));
  return b;
}

/** NBD_OPT_SET_META_CONTEXT data. */
export function encodeMetaContextRequest(name: string, queries: string[]): Buffer {
  const parts = [Buffer.from(name, 'utf8'), ...queries.map((q) => Buffer.from(q, 'utf8'))];
  const b = Buffer.alloc(8 + parts.reduce((s, p) => s + 4 + p.length, 0) - 4);
  let o = 0;
  const put = (p: Buffer) => {
    b.writeUInt32BE(p.length, o);
    p.copy(b, o + 4);
    o += 4 + p.length;
  };
  put(parts[0]);
  b.writeUInt32BE(queries.length, o);
  o += 4;
  parts.slice(1).forEach(put);
  return b;
}

/** An option reply header (20 bytes); null on a wrong length or magic. */
export function decodeOptionReplyHeader(b: Uint8Array): OptionReplyHeader | null {
  if (b.length !== NBD.OPTION_REPLY_HEADER_SIZE) return null;
  const buf = Buffer.from(b.buffer, b.byteOffset, b.length);
  if (buf.readBigUInt64BE(0) !== NBD.REPLY_MAGIC) return null;
  return { option: buf.readUInt32BE(8), type: buf.readUInt32BE(12), length: buf.readUInt32BE(16) };
}

/** NBD_REP_INFO data of type NBD_INFO_EXPORT; null if it is another type or malformed. */
export function decodeInfoExport(b: Uint8Array): { size: bigint; flags: number } | null {
  if (b.length !== 12) return null;
  const buf = Buffer.from(b.buffer, b.byteOffset, b.length);
  if (buf.readUInt16BE(0) !== NBD.INFO_EXPORT) return null;
  return { size: buf.readBigUInt64BE(2), flags: buf.readUInt16BE(10) };
}

/** NBD_REP_META_CONTEXT data; null if malformed. */
export function decodeMetaContextReply(b: Uint8Array): { id: number; name: string } | null {
  if (b.length < 4 || b.length > 4 + NBD.MAX_STRING) return null;
  const buf = Buffer.from(b.buffer, b.byteOffset, b.length);
  return { id: buf.readUInt32BE(0), name: buf.toString('utf8', 4) };
}

/** A transmission request header (28 bytes). */
export function encodeRequest(r: NbdRequest): Buffer {
  const b = Buffer.alloc(NBD.REQUEST_SIZE);
  b.writeUInt32BE(NBD.REQUEST_MAGIC, 0);
  b.writeUInt16BE(r.flags, 4);
  b.writeUInt16BE(r.type, 6);
  b.writeBigUInt64BE(r.handle, 8);
  b.writeBigUInt64BE(r.offset, 16);
  b.writeUInt32BE(r.length, 24);
  return b;
}

/** A reply header: simple (16 bytes) or structured (20 bytes) by its magic; null on a bad magic or a short buffer. */
export function decodeReplyHeader(
  b: Uint8Array,
): { kind: 'simple'; error: number; handle: bigint } | { kind: 'structured'; flags: number; type: number; handle: bigint; length: number } | null {
  if (b.length < 4) return null;
  const buf = Buffer.from(b.buffer, b.byteOffset, b.length);
  const magic = buf.readUInt32BE(0);
  if (magic === NBD.SIMPLE_REPLY_MAGIC && buf.length === NBD.SIMPLE_REPLY_SIZE) return { kind: 'simple', error: buf.readUInt32BE(4), handle: buf.readBigUInt64BE(8) };
  if (magic === NBD.STRUCTURED_REPLY_MAGIC && buf.length === NBD.STRUCTURED_HEADER_SIZE) {
    return { kind: 'structured', flags: buf.readUInt16BE(4), type: buf.readUInt16BE(6), handle: buf.readBigUInt64BE(8), length: buf.readUInt32BE(16) };
  }
  return null;
}

/** The size of the reply header a buffer starting with this magic needs, or null for an unknown magic. */
export function replyHeaderSize(magic: number): number | null {
  if (magic === NBD.SIMPLE_REPLY_MAGIC) return NBD.SIMPLE_REPLY_SIZE;
  if (magic === NBD.STRUCTURED_REPLY_MAGIC) return NBD.STRUCTURED_HEADER_SIZE;
  return null;
}

/** NBD_REPLY_TYPE_BLOCK_STATUS payload; null if malformed or an extent is empty. */
export function decodeBlockStatus(b: Uint8Array): { contextId: number; extents: Extent[] } | null {
  if (b.length < 12 || (b.length - 4) % 8 !== 0) return null;
  const buf = Buffer.from(b.buffer, b.byteOffset, b.length);
  const extents: Extent[] = [];
  for (let o = 4; o < buf.length; o += 8) {
    const length = buf.readUInt32BE(o);
    if (length === 0) return null;
    extents.push({ length, flags: buf.readUInt32BE(o + 4) });
  }
  return { contextId: buf.readUInt32BE(0), extents };
}

/** NBD_REPLY_TYPE_OFFSET_HOLE payload; null if malformed. */
export function decodeOffsetHole(b: Uint8Array): { offset: bigint; size: number } | null {
  if (b.length !== 12) return null;
  const buf = Buffer.from(b.buffer, b.byteOffset, b.length);
  const size = buf.readUInt32BE(8);
  return size === 0 ? null : { offset: buf.readBigUInt64BE(0), size };
}

/** NBD_REPLY_TYPE_ERROR (and ERROR_OFFSET) payload; null if malformed. */
export function decodeStructuredError(b: Uint8Array): { error: number; message: string } | null {
  if (b.length < 6) return null;
  const buf = Buffer.from(b.buffer, b.byteOffset, b.length);
  const n = buf.readUInt16BE(4);
  if (6 + n > buf.length || n > NBD.MAX_STRING) return null;
  const error = buf.readUInt32BE(0);
  return error === 0 ? null : { error, message: buf.toString('utf8', 6, 6 + n) };
}
