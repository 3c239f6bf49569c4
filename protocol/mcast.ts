/**
 * The multicast transfer protocol's packets (docs/protocol.md). Pure codecs:
 * decode() never throws; it returns null for anything malformed, and the
 * caller counts and drops it.
 *
 * Common header, big-endian:
 *   offset size field
 *        0    4 magic "CCMC"
 *        4    1 protocol version (MCAST.VERSION)
 *        5    1 type (PacketType)
 *        6    2 header length of this type (bytes before the variable part)
 *        8    4 session id
 *       12    4 sequence number (per sender or per receiver, wraps)
 *   // sizeof = 16
 *
 * Every packet ends with a 16-byte MAC (protocol/mac.ts: HMAC-SHA256 truncated)
 * over all the bytes before it: DATA under the session's data key, STATUS and
 * ACK under the receiver's own key. A packet is authenticated before anything
 * in it is used; the lengths below do not count the MAC.
 *
 * DATA (sender -> group): one fragment of a chunk's stored form.
 *       16    4 chunk index
 *       20    2 fragment index
 *       22    2 fragment count
 *       24    4 stored length (bytes of the chunk's stored form)
 *       28    2 payload length
 *       30    2 flags (bit 0: repair)
 *   // sizeof = 32, then the payload: bytes [index*fragmentSize, ...) of the stored form, then the MAC
 *
 * PARITY (sender -> group): one Reed-Solomon parity fragment of one stripe of a chunk.
 * A chunk of F fragments has S = ceil(F / STRIPE_K) stripes; stripe s holds the data
 * fragments s, s+S, s+2S, ... (interleaved: a burst of up to S losses hits S stripes),
 * k_s = ceil((F - s) / S) of them, each padded with zeros to the fragment size.
 *       16    4 chunk index
 *       20    2 stripe s
 *       22    2 stripe count S
 *       24    4 stored length
 *       28    2 payload length (the fragment size: parity is never short)
 *       30    1 parity index p (row k_s + p of ISA-L's Cauchy matrix, native/src/fec.c)
 *       31    1 flags (bit 0: repair)
 *   // sizeof = 32, then the payload, then the MAC (under the data key, like DATA)
 *
 * STATUS (receiver -> sender, unicast): progress, what it still needs, stripe repairs.
 *       16    4 receiver id
 *       20    1 state (ReceiverState) in bits 0-6; bit 7 (UNICAST_FLAG): multicast does not
 *                reach this receiver, send its data to it by unicast
 *       21    1 write queue fill, 0-255 of capacity
 *       22    2 range count R
 *       24    4 chunks done
 *       28    4 chunks wanted in all (data chunks of the image)
 *       32    4 data packets received (cumulative)
 *       36    4 data packets lost (cumulative, from sender sequence gaps)
 *       40    4 need window start (chunk index)
 *       44    4 need window end (exclusive): the ranges below are all it needs in [start, end)
 *       48    2 repair count K
 *       50    2 receiver's smoothed round-trip time to the sender, ms (0: not yet measured)
 *       52    4 incarnation: random per start of the receiver, so that the sender
 *                knows a restart (its sequence numbers start again) from a stale report
 *   // sizeof = 56, then R x (u32 first chunk, u32 count), then K x repair:
 *   //   u32 chunk, u16 stripe count S, S bytes: how many more packets (data or parity) each
 *   //   stripe needs before it decodes (0: complete), then the MAC
 *
 * ACK (sender -> receiver, unicast): answers each STATUS.
 *       16    4 receiver id
 *       20    4 echoed STATUS sequence (the receiver measures its round-trip time)
 *       24    1 state the sender holds for the receiver (ReceiverState)
 *       25    1 reason code when dropped (DropReason)
 *       26    2 reserved
 *       28    4 sender rate in KiB/s
 *   // sizeof = 32, then the MAC
 */
import { MAC_SIZE, type MacKey } from './mac.js';

/** Constants of the multicast protocol. */
export const MCAST = Object.freeze({
  MAGIC: 0x43434d43, // "CCMC"
  /** 3: parity packets and per-stripe repair counts (2: NACK bitmaps; 1 had no MACs). */
  VERSION: 3,
  COMMON_SIZE: 16,
  DATA_HEADER: 32,
  PARITY_HEADER: 32,
  /** Most data fragments in one stripe: 32 keeps a decode's matrix inversion cheap (~0.1 ms; 1 ms at 64) and a stripe's parity fine-grained. */
  STRIPE_K: 32,
  /** Parity indexes per stripe: 0 .. MAX_PARITY-1 (k + p stays below 255, the rows ISA-L's Cauchy matrix has). */
  MAX_PARITY: 128,
  STATUS_HEADER: 56,
  /** ACK header; the datagram is ACK_SIZE + MAC_SIZE bytes. */
  ACK_SIZE: 32,
  /** The MAC at the end of every packet. */
  MAC_SIZE,
  /** 1500-byte Ethernet MTU - 20 (IPv4) - 8 (UDP): the largest datagram not fragmented. */
  MAX_UDP_PAYLOAD: 1472,
  /** Default fragment payload: 1472 - 32 (header) - 16 (MAC). */
  DEFAULT_FRAGMENT: 1424,
  /** Jumbo frames: 9000 - 28 - 32 - 16. The one upper limit (the sender, the CLI and the control channel's Assign check use it). */
  MAX_FRAGMENT: 8924,
  /** Smallest fragment payload accepted anywhere (the per-packet header would dominate below it). */
  MIN_FRAGMENT: 256,
  /** A STATUS never exceeds one unfragmented datagram. */
  MAX_STATUS: 1472,
});

/** Packet types. */
export const PacketType = Object.freeze({ DATA: 1, STATUS: 2, ACK: 3, PARITY: 4 } as const);
export type PacketType = (typeof PacketType)[keyof typeof PacketType];

/** A receiver's state, as it reports it and as the sender holds it. */
export const ReceiverState = Object.freeze({ JOINING: 0, RECEIVING: 1, VERIFYING: 2, DONE: 3, FAILED: 4, DROPPED: 5 } as const);
export type ReceiverState = (typeof ReceiverState)[keyof typeof ReceiverState];

/** Why the sender dropped a receiver (the session's policy decides; transfer/policy.ts). */
export const DropReason = Object.freeze({ NONE: 0, NO_PROGRESS: 1, SESSION_ENDED: 2, SILENT: 3 } as const);
export type DropReason = (typeof DropReason)[keyof typeof DropReason];

/** Data flags. */
export const DataFlag = Object.freeze({ REPAIR: 1 });

/** A decoded DATA packet; payload is a view into the datagram. */
export interface DataPacket {
  type: typeof PacketType.DATA;
  session: number;
  seq: number;
  chunk: number;
  fragment: number;
  fragments: number;
  storedLength: number;
  flags: number;
  payload: Buffer;
}

/** A decoded PARITY packet; payload is a view into the datagram. */
export interface ParityPacket {
  type: typeof PacketType.PARITY;
  session: number;
  seq: number;
  chunk: number;
  stripe: number;
  stripes: number;
  storedLength: number;
  parity: number;
  flags: number;
  payload: Buffer;
}

/** A chunk range: [first, first + count). */
export interface Range {
  first: number;
  count: number;
}

/** What one partly received chunk still needs, per stripe. */
export interface StripeNeed {
  chunk: number;
  stripes: number;
  /** need[s]: packets (data or parity) stripe s still needs before it decodes. */
  need: Uint8Array;
}

/** A decoded STATUS packet. */
export interface StatusPacket {
  type: typeof PacketType.STATUS;
  session: number;
  seq: number;
  receiver: number;
  state: ReceiverState;
  queueFill: number;
  done: number;
  wanted: number;
  received: number;
  lost: number;
  windowStart: number;
  windowEnd: number;
  rttMs: number;
  incarnation: number;
  /** Send this receiver its data by unicast (bit 7 of the state byte). */
  unicast?: boolean;
  ranges: Range[];
  repairs: StripeNeed[];
}

/** A decoded ACK packet. */
export interface AckPacket {
  type: typeof PacketType.ACK;
  session: number;
  seq: number;
  receiver: number;
  echo: number;
  state: ReceiverState;
  reason: DropReason;
  rateKiB: number;
}

/** Any decoded packet. */
export type Packet = DataPacket | ParityPacket | StatusPacket | AckPacket;

function writeCommon(out: Buffer, type: PacketType, headerLength: number, session: number, seq: number): void {
  out.writeUInt32BE(MCAST.MAGIC, 0);
  out.writeUInt8(MCAST.VERSION, 4);
  out.writeUInt8(type, 5);
  out.writeUInt16BE(headerLength, 6);
  out.writeUInt32BE(session >>> 0, 8);
  out.writeUInt32BE(seq >>> 0, 12);
}

/** Number of fragments of a stored chunk of `length` bytes. */
export function fragmentCount(length: number, fragmentSize: number): number {
  return Math.max(1, Math.ceil(length / fragmentSize));
}

/** Stripes of a chunk of `fragments` fragments. */
export function stripeCount(fragments: number): number {
  return Math.ceil(fragments / MCAST.STRIPE_K);
}

/** Data fragments in stripe s of a chunk of `fragments` fragments (S stripes). */
export function stripeSize(fragments: number, stripes: number, s: number): number {
  return Math.ceil((fragments - s) / stripes);
}

/**
 * Encodes a PARITY packet into out (at least PARITY_HEADER + payload + MAC_SIZE bytes),
 * signed with the data key (null: unsigned); returns the datagram length.
 */
export function encodeParity(out: Buffer, p: Omit<ParityPacket, 'type'>, key: MacKey | null): number {
  writeCommon(out, PacketType.PARITY, MCAST.PARITY_HEADER, p.session, p.seq);
  out.writeUInt32BE(p.chunk, 16);
  out.writeUInt16BE(p.stripe, 20);
  out.writeUInt16BE(p.stripes, 22);
  out.writeUInt32BE(p.storedLength, 24);
  out.writeUInt16BE(p.payload.length, 28);
  out.writeUInt8(p.parity, 30);
  out.writeUInt8(p.flags, 31);
  p.payload.copy(out, MCAST.PARITY_HEADER);
  const length = MCAST.PARITY_HEADER + p.payload.length + MAC_SIZE;
  key?.sign(out, length);
  return length;
}

/**
 * Encodes a DATA packet into out (at least DATA_HEADER + payload + MAC_SIZE
 * bytes) and signs it with key (null: the MAC is left as it is, for
 * benchmarks of the protocol without authentication); returns the datagram length.
 */
export function encodeData(out: Buffer, p: Omit<DataPacket, 'type'>, key: MacKey | null): number {
  writeCommon(out, PacketType.DATA, MCAST.DATA_HEADER, p.session, p.seq);
  out.writeUInt32BE(p.chunk, 16);
  out.writeUInt16BE(p.fragment, 20);
  out.writeUInt16BE(p.fragments, 22);
  out.writeUInt32BE(p.storedLength, 24);
  out.writeUInt16BE(p.payload.length, 28);
  out.writeUInt16BE(p.flags, 30);
  p.payload.copy(out, MCAST.DATA_HEADER);
  const length = MCAST.DATA_HEADER + p.payload.length + MAC_SIZE;
  key?.sign(out, length);
  return length;
}

/** Bytes a STATUS needs for these ranges and repairs. */
export function statusSize(ranges: number, repairs: StripeNeed[]): number {
  return MCAST.STATUS_HEADER + ranges * 8 + repairs.reduce((n, k) => n + 6 + k.stripes, 0) + MAC_SIZE;
}

/** STATUS state byte, bit 7: "multicast does not reach me, unicast my data". */
export const UNICAST_FLAG = 0x80;

/** Encodes a STATUS packet signed with the receiver's key (null: unsigned). */
export function encodeStatus(p: Omit<StatusPacket, 'type'>, key: MacKey | null): Buffer {
  const out = Buffer.alloc(statusSize(p.ranges.length, p.repairs));
  writeCommon(out, PacketType.STATUS, MCAST.STATUS_HEADER, p.session, p.seq);
  out.writeUInt32BE(p.receiver >>> 0, 16);
  out.writeUInt8(p.state | (p.unicast ? UNICAST_FLAG : 0), 20);
  out.writeUInt8(p.queueFill, 21);
  out.writeUInt16BE(p.ranges.length, 22);
  out.writeUInt32BE(p.done, 24);
  out.writeUInt32BE(p.wanted, 28);
  out.writeUInt32BE(p.received >>> 0, 32);
  out.writeUInt32BE(p.lost >>> 0, 36);
  out.writeUInt32BE(p.windowStart, 40);
  out.writeUInt32BE(p.windowEnd, 44);
  out.writeUInt16BE(p.repairs.length, 48);
  out.writeUInt16BE(Math.min(Math.round(p.rttMs), 0xffff), 50);
  out.writeUInt32BE(p.incarnation >>> 0, 52);
  let o = MCAST.STATUS_HEADER;
  for (const r of p.ranges) {
    out.writeUInt32BE(r.first, o);
    out.writeUInt32BE(r.count, o + 4);
    o += 8;
  }
  for (const k of p.repairs) {
    out.writeUInt32BE(k.chunk, o);
    out.writeUInt16BE(k.stripes, o + 4);
    Buffer.from(k.need.buffer, k.need.byteOffset, k.stripes).copy(out, o + 6);
    o += 6 + k.stripes;
  }
  key?.sign(out);
  return out;
}

/** Encodes an ACK packet signed with the receiver's key (null: unsigned). */
export function encodeAck(p: Omit<AckPacket, 'type'>, key: MacKey | null): Buffer {
  const out = Buffer.alloc(MCAST.ACK_SIZE + MAC_SIZE);
  writeCommon(out, PacketType.ACK, MCAST.ACK_SIZE, p.session, p.seq);
  out.writeUInt32BE(p.receiver >>> 0, 16);
  out.writeUInt32BE(p.echo >>> 0, 20);
  out.writeUInt8(p.state, 24);
  out.writeUInt8(p.reason, 25);
  out.writeUInt32BE(Math.min(p.rateKiB, 0xffffffff) >>> 0, 28);
  key?.sign(out);
  return out;
}

/**
 * The protocol version a datagram of this protocol (right magic) claims, or null:
 * how a peer tells "another version" (counted, and said to the user) from noise.
 */
export function peekVersion(datagram: Buffer): number | null {
  if (datagram.length < MCAST.COMMON_SIZE || datagram.readUInt32BE(0) !== MCAST.MAGIC) return null;
  return datagram[4];
}

/**
 * Decodes a datagram. Returns null if it is not a well-formed packet of
 * this protocol version; never throws. It does not check the MAC: the
 * caller picks the key by the packet's type and receiver and calls
 * MacKey.verify(datagram) before using anything decoded.
 */
export function decode(datagram: Buffer): Packet | null {
  if (datagram.length < MCAST.COMMON_SIZE + MAC_SIZE) return null;
  const buf = datagram.subarray(0, datagram.length - MAC_SIZE);
  if (buf.readUInt32BE(0) !== MCAST.MAGIC || buf[4] !== MCAST.VERSION) return null;
  const type = buf[5];
  const headerLength = buf.readUInt16BE(6);
  const session = buf.readUInt32BE(8);
  const seq = buf.readUInt32BE(12);
  if (type === PacketType.DATA) {
    if (headerLength !== MCAST.DATA_HEADER || buf.length < MCAST.DATA_HEADER) return null;
    const fragments = buf.readUInt16BE(22);
    const fragment = buf.readUInt16BE(20);
    const length = buf.readUInt16BE(28);
    if (fragments === 0 || fragment >= fragments || buf.length !== MCAST.DATA_HEADER + length || length === 0) return null;
    return {
      type,
      session,
      seq,
      chunk: buf.readUInt32BE(16),
      fragment,
      fragments,
      storedLength: buf.readUInt32BE(24),
      flags: buf.readUInt16BE(30),
      payload: buf.subarray(MCAST.DATA_HEADER),
    };
  }
  if (type === PacketType.PARITY) {
    if (headerLength !== MCAST.PARITY_HEADER || buf.length < MCAST.PARITY_HEADER) return null;
    const stripe = buf.readUInt16BE(20);
    const stripes = buf.readUInt16BE(22);
    const length = buf.readUInt16BE(28);
    const parity = buf[30];
    if (stripes === 0 || stripe >= stripes || parity >= MCAST.MAX_PARITY || length === 0 || buf.length !== MCAST.PARITY_HEADER + length) return null;
    return {
      type,
      session,
      seq,
      chunk: buf.readUInt32BE(16),
      stripe,
      stripes,
      storedLength: buf.readUInt32BE(24),
      parity,
      flags: buf[31],
      payload: buf.subarray(MCAST.PARITY_HEADER),
    };
  }
  if (type === PacketType.STATUS) {
    if (headerLength !== MCAST.STATUS_HEADER || buf.length < MCAST.STATUS_HEADER || datagram.length > MCAST.MAX_STATUS) return null;
    const state = buf[20] & ~UNICAST_FLAG;
    if (state > ReceiverState.DROPPED) return null;
    const rangeCount = buf.readUInt16BE(22);
    const repairCount = buf.readUInt16BE(48);
    const windowStart = buf.readUInt32BE(40);
    const windowEnd = buf.readUInt32BE(44);
    if (windowEnd < windowStart) return null;
    let o = MCAST.STATUS_HEADER;
    if (o + rangeCount * 8 > buf.length) return null;
    const ranges: Range[] = [];
    for (let i = 0; i < rangeCount; i++, o += 8) {
      const first = buf.readUInt32BE(o);
      const count = buf.readUInt32BE(o + 4);
      if (count === 0 || first < windowStart || first + count > windowEnd) return null;
      ranges.push({ first, count });
    }
    const repairs: StripeNeed[] = [];
    for (let i = 0; i < repairCount; i++) {
      if (o + 6 > buf.length) return null;
      const chunk = buf.readUInt32BE(o);
      const stripes = buf.readUInt16BE(o + 4);
      if (stripes === 0 || o + 6 + stripes > buf.length) return null;
      repairs.push({ chunk, stripes, need: new Uint8Array(buf.subarray(o + 6, o + 6 + stripes)) });
      o += 6 + stripes;
    }
    if (o !== buf.length) return null;
    return {
      type,
      session,
      seq,
      receiver: buf.readUInt32BE(16),
      state: state as ReceiverState,
      unicast: (buf[20] & UNICAST_FLAG) !== 0,
      queueFill: buf[21],
      done: buf.readUInt32BE(24),
      wanted: buf.readUInt32BE(28),
      received: buf.readUInt32BE(32),
      lost: buf.readUInt32BE(36),
      windowStart,
      windowEnd,
      rttMs: buf.readUInt16BE(50),
      incarnation: buf.readUInt32BE(52),
      ranges,
      repairs,
    };
  }
  if (type === PacketType.ACK) {
    if (headerLength !== MCAST.ACK_SIZE || buf.length !== MCAST.ACK_SIZE) return null;
    const state = buf[24];
    const reason = buf[25];
    if (state > ReceiverState.DROPPED || reason > DropReason.SILENT) return null;
    return {
      type,
      session,
      seq,
      receiver: buf.readUInt32BE(16),
      echo: buf.readUInt32BE(20),
      state: state as ReceiverState,
      reason: reason as DropReason,
      rateKiB: buf.readUInt32BE(28),
    };
  }
  return null;
}

/** What a user is told when a peer speaks another version of this protocol (`peer`: who sent it; `self`: who says it). */
export function versionMismatch(theirs: number, peer: 'sender' | 'receiver', self: 'agent' | 'receiver' | 'sender'): string {
  return `protocol version mismatch: ${peer} speaks ${theirs}, this ${self} ${MCAST.VERSION}; update clonecast on the server and in the boot environment to the same release`;
}
