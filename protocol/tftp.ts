/**
 * TFTP packets (RFC 1350; option extension RFC 2347, blksize RFC 2348,
 * timeout and tsize RFC 2349, windowsize RFC 7440). Pure codec: decode()
 * throws CLONECAST_ERR_PACKET_MALFORMED on anything it cannot read.
 *
 * Every packet starts with a 2-byte big-endian opcode:
 *   RRQ/WRQ  | 1/2 | filename \0 | mode \0 | (option \0 value \0)*
 *   DATA     | 3 | block(2) | 0-blksize bytes
 *   ACK      | 4 | block(2)
 *   ERROR    | 5 | code(2) | message \0
 *   OACK     | 6 | (option \0 value \0)*
 */
import { ClonecastError, ERR } from './errors.js';

export enum Opcode {
  RRQ = 1,
  WRQ = 2,
  DATA = 3,
  ACK = 4,
  ERROR = 5,
  OACK = 6,
}

/** Error codes (RFC 1350 appendix; 8 from RFC 2347). */
export enum TftpError {
  UNDEFINED = 0,
  NOT_FOUND = 1,
  ACCESS = 2,
  DISK_FULL = 3,
  ILLEGAL = 4,
  UNKNOWN_TID = 5,
  EXISTS = 6,
  NO_USER = 7,
  OPTIONS = 8,
}

/** Limits, from the RFCs. */
export const TFTP = Object.freeze({
  PORT: 69,
  DEFAULT_BLKSIZE: 512,
  /** RFC 2348: 8-65464. */
  MIN_BLKSIZE: 8,
  MAX_BLKSIZE: 65464,
  /** RFC 2349: 1-255 seconds. */
  MIN_TIMEOUT: 1,
  MAX_TIMEOUT: 255,
  /** RFC 7440: 1-65535 blocks. */
  MAX_WINDOWSIZE: 65535,
});

export type TftpPacket =
  | { op: Opcode.RRQ | Opcode.WRQ; filename: string; mode: string; options: Map<string, string> }
  | { op: Opcode.DATA; block: number; data: Buffer }
  | { op: Opcode.ACK; block: number }
  | { op: Opcode.ERROR; code: number; message: string }
  | { op: Opcode.OACK; options: Map<string, string> };

function malformed(why: string): ClonecastError {
  return new ClonecastError(ERR.PACKET_MALFORMED, `malformed TFTP packet: ${why}`);
}

/** Splits NUL-terminated strings; the last must be terminated. */
function strings(buf: Buffer, what: string): string[] {
  const out: string[] = [];
  let o = 0;
  while (o < buf.length) {
    const end = buf.indexOf(0, o);
    if (end < 0) throw malformed(`${what}: a string without its terminating zero`);
    out.push(buf.subarray(o, end).toString('latin1'));
    o = end + 1;
  }
  return out;
}

function optionMap(list: string[], what: string): Map<string, string> {
  if (list.length % 2 !== 0) throw malformed(`${what}: an option without a value`);
  const m = new Map<string, string>();
  // Option names are case-insensitive (RFC 2347).
  for (let i = 0; i < list.length; i += 2) m.set(list[i].toLowerCase(), list[i + 1]);
  return m;
}

/** Decodes a TFTP packet; throws CLONECAST_ERR_PACKET_MALFORMED. */
export function decodeTftp(buf: Buffer): TftpPacket {
  if (buf.length < 2) throw malformed(`${buf.length} bytes`);
  const op = buf.readUInt16BE(0);
  switch (op) {
    case Opcode.RRQ:
    case Opcode.WRQ: {
      const list = strings(buf.subarray(2), 'request');
      if (list.length < 2) throw malformed('request without filename and mode');
      const [filename, mode, ...rest] = list;
      if (filename.length === 0) throw malformed('empty filename');
      return { op, filename, mode: mode.toLowerCase(), options: optionMap(rest, 'request') };
    }
    case Opcode.DATA:
      if (buf.length < 4) throw malformed('DATA shorter than 4 bytes');
      return { op, block: buf.readUInt16BE(2), data: buf.subarray(4) };
    case Opcode.ACK:
      if (buf.length !== 4) throw malformed(`ACK of ${buf.length} bytes`);
      return { op, block: buf.readUInt16BE(2) };
    case Opcode.ERROR: {
      if (buf.length < 5) throw malformed('ERROR shorter than 5 bytes');
      const [message] = strings(buf.subarray(4), 'error');
      return { op, code: buf.readUInt16BE(2), message: message ?? '' };
    }
    case Opcode.OACK:
      return { op, options: optionMap(strings(buf.subarray(2), 'OACK'), 'OACK') };
    default:
      throw malformed(`opcode ${op}`);
  }
}

/** Encodes a TFTP packet. */
export function encodeTftp(p: TftpPacket): Buffer {
  const head = Buffer.alloc(2);
  head.writeUInt16BE(p.op);
  const z = (s: string) => Buffer.from(`${s}\0`, 'latin1');
  switch (p.op) {
    case Opcode.RRQ:
    case Opcode.WRQ:
      return Buffer.concat([head, z(p.filename), z(p.mode), ...[...p.options].flatMap(([k, v]) => [z(k), z(v)])]);
    case Opcode.DATA: {
      const h = Buffer.alloc(4);
      h.writeUInt16BE(Opcode.DATA, 0);
      h.writeUInt16BE(p.block & 0xffff, 2);
      return Buffer.concat([h, p.data]);
    }
    case Opcode.ACK: {
      const h = Buffer.alloc(4);
      h.writeUInt16BE(Opcode.ACK, 0);
      h.writeUInt16BE(p.block & 0xffff, 2);
      return h;
    }
    case Opcode.ERROR: {
      const h = Buffer.alloc(4);
      h.writeUInt16BE(Opcode.ERROR, 0);
      h.writeUInt16BE(p.code, 2);
      return Buffer.concat([h, z(p.message)]);
    }
    case Opcode.OACK:
      return Buffer.concat([head, ...[...p.options].flatMap(([k, v]) => [z(k), z(v)])]);
  }
}

/** Writes the 4-byte DATA header into buf (the block goes in place, no copy). */
export function dataHeader(buf: Buffer, block: number): void {
  buf.writeUInt16BE(Opcode.DATA, 0);
  buf.writeUInt16BE(block & 0xffff, 2);
}
