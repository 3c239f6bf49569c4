/**
 * DHCP/BOOTP packets (RFC 2131, options RFC 2132; PXE fields from the PXE
 * 2.1 specification and RFC 4578). Pure codec: decode() checks every length
 * and throws CLONECAST_ERR_PACKET_MALFORMED; encode() writes exactly what it
 * is given.
 *
 * Fixed header, 236 bytes (RFC 2131 section 2, figure 1), then the 4-byte
 * magic cookie and the options:
 *   0 op  1 htype  2 hlen  3 hops  4 xid(4)  8 secs(2)  10 flags(2)
 *   12 ciaddr  16 yiaddr  20 siaddr  24 giaddr  28 chaddr(16)
 *   44 sname(64)  108 file(128)  236 cookie 63.82.53.63  240 options
 */
import { ClonecastError, ERR } from './errors.js';

/** Constants, with the section they come from. */
export const DHCP = Object.freeze({
  SERVER_PORT: 67,
  CLIENT_PORT: 68,
  /** PXE boot server discovery (PXE 2.1 section 2.2.1). */
  PXE_PORT: 4011,
  HEADER_SIZE: 236,
  COOKIE: 0x63825363,
  /** BOOTP's minimum message (RFC 1542 section 2.1); some ROMs drop shorter replies. */
  MIN_SIZE: 300,
  BOOTREQUEST: 1,
  BOOTREPLY: 2,
  /** flags: the broadcast bit (RFC 2131 section 2). */
  BROADCAST: 0x8000,
});

/** Message types, option 53 (RFC 2132 section 9.6). */
export enum MessageType {
  DISCOVER = 1,
  OFFER = 2,
  REQUEST = 3,
  DECLINE = 4,
  ACK = 5,
  NAK = 6,
  RELEASE = 7,
  INFORM = 8,
}

/** Option codes used here (RFC 2132 unless noted). */
export const OPT = Object.freeze({
  PAD: 0,
  SUBNET_MASK: 1,
  ROUTER: 3,
  DNS: 6,
  HOSTNAME: 12,
  REQUESTED_IP: 50,
  LEASE_TIME: 51,
  OVERLOAD: 52,
  MESSAGE_TYPE: 53,
  SERVER_ID: 54,
  PARAMETER_LIST: 55,
  MESSAGE: 56,
  MAX_SIZE: 57,
  RENEWAL_TIME: 58,
  REBINDING_TIME: 59,
  VENDOR_CLASS: 60,
  CLIENT_ID: 61,
  TFTP_SERVER: 66,
  BOOTFILE: 67,
  USER_CLASS: 77, // RFC 3004
  RELAY_AGENT: 82, // RFC 3046
  CLIENT_ARCH: 93, // RFC 4578 section 2.1
  CLIENT_NDI: 94, // RFC 4578 section 2.2
  CLIENT_UUID: 97, // RFC 4578 section 2.3
  VENDOR_SPECIFIC: 43,
  END: 255,
});

/** Client system architectures, option 93 (RFC 4578 section 2.1; IANA registry). */
export const ARCH = Object.freeze({ BIOS: 0, EFI_IA32: 6, EFI_X64: 7, EFI_BC: 9, EFI_ARM64: 11 });

/** A decoded DHCP message. Options keep their wire order; values are raw bytes. */
export interface DhcpPacket {
  op: number;
  htype: number;
  hlen: number;
  hops: number;
  xid: number;
  secs: number;
  flags: number;
  ciaddr: string;
  yiaddr: string;
  siaddr: string;
  giaddr: string;
  /** Client hardware address field, all 16 bytes. */
  chaddr: Buffer;
  sname: string;
  file: string;
  options: Map<number, Buffer>;
  /** Total size on the wire (decode); encode pads to it, and to at least MIN_SIZE. */
  size?: number;
}

function malformed(why: string): ClonecastError {
  return new ClonecastError(ERR.PACKET_MALFORMED, `malformed DHCP packet: ${why}`);
}

function ip(buf: Buffer, o: number): string {
  return `${buf[o]}.${buf[o + 1]}.${buf[o + 2]}.${buf[o + 3]}`;
}

/** Writes a dotted IPv4 address; throws on anything else. */
export function ipBytes(addr: string): Buffer {
  const parts = addr.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) throw new RangeError(`not an IPv4 address: ${addr}`);
  return Buffer.from(parts);
}

function cstr(buf: Buffer): string {
  const end = buf.indexOf(0);
  return buf.subarray(0, end < 0 ? buf.length : end).toString('latin1');
}

/** Parses options from buf into into (RFC 2132 section 2); false at END. */
function parseOptions(buf: Buffer, into: Map<number, Buffer>, where: string): void {
  let o = 0;
  while (o < buf.length) {
    const code = buf[o++];
    if (code === OPT.PAD) continue;
    if (code === OPT.END) return;
    if (o >= buf.length) throw malformed(`option ${code} in ${where} has no length`);
    const len = buf[o++];
    if (o + len > buf.length) throw malformed(`option ${code} in ${where} runs past the end (${len} bytes)`);
    // RFC 3396: a repeated option is one option split in parts; join them.
    const prev = into.get(code);
    const value = Buffer.from(buf.subarray(o, o + len));
    into.set(code, prev ? Buffer.concat([prev, value]) : value);
    o += len;
  }
  // Options that stop without END are accepted (many ROMs pad with zeros instead).
}

/** Decodes a DHCP message; throws CLONECAST_ERR_PACKET_MALFORMED. */
export function decodeDhcp(buf: Buffer): DhcpPacket {
  if (buf.length < DHCP.HEADER_SIZE + 4) throw malformed(`${buf.length} bytes, shorter than a header and cookie (240)`);
  if (buf.readUInt32BE(DHCP.HEADER_SIZE) !== DHCP.COOKIE) throw malformed('no DHCP magic cookie (a plain BOOTP packet)');
  const op = buf[0];
  if (op !== DHCP.BOOTREQUEST && op !== DHCP.BOOTREPLY) throw malformed(`op ${op}`);
  const hlen = buf[2];
  if (hlen > 16) throw malformed(`hardware address length ${hlen}`);
  const options = new Map<number, Buffer>();
  parseOptions(buf.subarray(DHCP.HEADER_SIZE + 4), options, 'options');
  const overload = options.get(OPT.OVERLOAD)?.[0] ?? 0;
  // RFC 2132 section 9.3: 1 = file holds options, 2 = sname, 3 = both.
  if (overload & 1) parseOptions(buf.subarray(108, 236), options, 'file');
  if (overload & 2) parseOptions(buf.subarray(44, 108), options, 'sname');
  return {
    op,
    htype: buf[1],
    hlen,
    hops: buf[3],
    xid: buf.readUInt32BE(4),
    secs: buf.readUInt16BE(8),
    flags: buf.readUInt16BE(10),
    ciaddr: ip(buf, 12),
    yiaddr: ip(buf, 16),
    siaddr: ip(buf, 20),
    giaddr: ip(buf, 24),
    chaddr: Buffer.from(buf.subarray(28, 44)),
    sname: overload & 2 ? '' : cstr(buf.subarray(44, 108)),
    file: overload & 1 ? '' : cstr(buf.subarray(108, 236)),
    options,
    size: buf.length,
  };
}

/** Encodes a DHCP message, padded to MIN_SIZE. */
export function encodeDhcp(p: DhcpPacket): Buffer {
  let optLen = 1; // END
  for (const v of p.options.values()) optLen += 2 * Math.ceil(Math.max(v.length, 1) / 255) + v.length;
  const out = Buffer.alloc(Math.max(DHCP.MIN_SIZE, p.size ?? 0, DHCP.HEADER_SIZE + 4 + optLen));
  out[0] = p.op;
  out[1] = p.htype;
  out[2] = p.hlen;
  out[3] = p.hops;
  out.writeUInt32BE(p.xid >>> 0, 4);
  out.writeUInt16BE(p.secs, 8);
  out.writeUInt16BE(p.flags, 10);
  ipBytes(p.ciaddr).copy(out, 12);
  ipBytes(p.yiaddr).copy(out, 16);
  ipBytes(p.siaddr).copy(out, 20);
  ipBytes(p.giaddr).copy(out, 24);
  p.chaddr.copy(out, 28, 0, 16);
  if (p.sname.length > 63 || p.file.length > 127) throw new RangeError('sname is at most 63 bytes and file at most 127');
  out.write(p.sname, 44, 'latin1');
  out.write(p.file, 108, 'latin1');
  out.writeUInt32BE(DHCP.COOKIE, DHCP.HEADER_SIZE);
  let o = DHCP.HEADER_SIZE + 4;
  for (const [code, v] of p.options) {
    // RFC 3396: values over 255 bytes go in consecutive parts.
    let at = 0;
    do {
      const part = v.subarray(at, at + 255);
      out[o++] = code;
      out[o++] = part.length;
      part.copy(out, o);
      o += part.length;
      at += 255;
    } while (at < v.length);
  }
  out[o] = OPT.END;
  return out;
}

/** The client's MAC as aa:bb:cc:dd:ee:ff (Ethernet), or null for other hardware. */
export function clientMac(p: DhcpPacket): string | null {
  if (p.htype !== 1 || p.hlen !== 6) return null;
  return [...p.chaddr.subarray(0, 6)].map((b) => b.toString(16).padStart(2, '0')).join(':');
}

/** Option 53, or null. */
export function messageType(p: DhcpPacket): MessageType | null {
  const v = p.options.get(OPT.MESSAGE_TYPE);
  return v?.length === 1 && v[0] >= 1 && v[0] <= 8 ? (v[0] as MessageType) : null;
}

/** An option holding one IPv4 address, or null. */
export function optionIp(p: DhcpPacket, code: number): string | null {
  const v = p.options.get(code);
  return v?.length === 4 ? ip(v, 0) : null;
}

/** Option 60 as text ('' when absent). */
export function vendorClass(p: DhcpPacket): string {
  return p.options.get(OPT.VENDOR_CLASS)?.toString('latin1') ?? '';
}

/** True for a PXE client: option 60 starting "PXEClient" (PXE 2.1 section 2.2.1). */
export function isPxeClient(p: DhcpPacket): boolean {
  return vendorClass(p).startsWith('PXEClient');
}

/** Option 93, the first architecture listed, or null. */
export function clientArch(p: DhcpPacket): number | null {
  const v = p.options.get(OPT.CLIENT_ARCH);
  return v !== undefined && v.length >= 2 ? v.readUInt16BE(0) : null;
}

/**
 * The user classes of option 77. RFC 3004 prefixes each with its length;
 * iPXE sends the raw text "iPXE" instead (LAB-NOTES): both are read.
 */
export function userClasses(p: DhcpPacket): string[] {
  const v = p.options.get(OPT.USER_CLASS);
  if (v === undefined || v.length === 0) return [];
  const out: string[] = [];
  let o = 0;
  while (o < v.length) {
    const len = v[o];
    if (len === 0 || o + 1 + len > v.length) return [v.toString('latin1')];
    out.push(v.subarray(o + 1, o + 1 + len).toString('latin1'));
    o += 1 + len;
  }
  return out;
}

/** Encodes PXE vendor sub-options for option 43 (PXE 2.1 table 2-1). */
export function pxeVendorOptions(sub: Record<number, Buffer>): Buffer {
  const parts: Buffer[] = [];
  for (const [code, v] of Object.entries(sub)) parts.push(Buffer.from([Number(code), v.length]), v);
  parts.push(Buffer.from([OPT.END]));
  return Buffer.concat(parts);
}

/** A u32 option value. */
export function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}
