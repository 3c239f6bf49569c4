import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { decode, encodeAck, encodeData, encodeParity, encodeStatus, fragmentCount, MCAST, PacketType, peekVersion, statusSize, stripeCount, stripeSize, versionMismatch } from '../../protocol/mcast.js';
import { deriveKey, MacKey, receiverLabel } from '../../protocol/mac.js';
import { seqNewer } from '../../transfer/sender.js';

// The key of the golden packets: bytes 1 to 32. Their MACs were computed apart from
// the code under test, with node:crypto's createHmac('sha256', KEY), first 16 bytes.
const KEY = new MacKey(Buffer.from(Array.from({ length: 32 }, (_, i) => i + 1)));

// Golden packets, field by field (docs/protocol.md).
const DATA = [
  '43434d43', // magic "CCMC"
  '03', //       version 3
  '01', //       type DATA
  '0020', //     header length 32
  '11223344', // session
  '00000007', // sequence 7
  '00000003', // chunk 3
  '0001', //     fragment 1
  '0002', //     of 2
  '000005a5', // stored length 1445
  '0005', //     payload length 5
  '0001', //     flags: repair
  '68656c6c6f', // payload "hello"
  '8eebe55b78e908016f2eefef95ef71d0', // MAC: HMAC-SHA256(KEY, all the above), 16 bytes
].join('');

const PARITY = [
  '43434d43', '03', '04', '0020', '11223344', '00000008', // common: version 3, PARITY, header 32, seq 8
  '00000003', // chunk 3
  '0001', //     stripe 1
  '0002', //     of 2 stripes
  '000005a5', // stored length 1445
  '0005', //     payload length 5
  '02', //       parity index 2
  '01', //       flags: repair
  '68656c6c6f', // payload "hello"
  'd00371e179364e64c9c1d4ac033d4699', // MAC
].join('');

const STATUS = [
  '43434d43', '03', '02', '0038', '11223344', '00000009', // common: version 3, STATUS, header 56, seq 9
  'aabbccdd', // receiver id
  '01', //       state RECEIVING
  '80', //       write queue half full
  '0002', //     2 ranges
  '00000005', // 5 chunks done
  '0000000a', // of 10 wanted
  '000003e8', // 1000 packets received
  '00000014', // 20 lost
  '00000002', // need window start 2
  '0000000c', // need window end 12
  '0001', //     1 repair
  '0003', //     rtt 3 ms
  '0badf00d', // incarnation
  '00000002', '00000003', // needs chunks 2-4
  '00000009', '00000001', // and chunk 9
  '00000006', '0002', '0100', // chunk 6 of 2 stripes: stripe 0 needs 1 more packet, stripe 1 none
  '0f548ef195fc49cb255265a25721a9ce', // MAC
].join('');

const ACK = [
  '43434d43', '03', '03', '0020', '11223344', '00000004', // common: version 3, ACK, header 32, seq 4
  'aabbccdd', // receiver id
  '00000009', // echoes STATUS 9
  '03', //       state DONE
  '00', //       no drop reason
  '0000', //     reserved
  '00002faf', // rate 12207 KiB/s
  'af0483180b4133c9aed2924e53b7d267', // MAC
].join('');

describe('multicast packets', () => {
  it('decode the golden packets field by field', () => {
    expect(decode(Buffer.from(DATA, 'hex'))).toEqual({
      type: PacketType.DATA, session: 0x11223344, seq: 7, chunk: 3, fragment: 1, fragments: 2, storedLength: 1445, flags: 1, payload: Buffer.from('hello'),
    });
    expect(decode(Buffer.from(STATUS, 'hex'))).toEqual({
      type: PacketType.STATUS, session: 0x11223344, seq: 9, receiver: 0xaabbccdd, state: 1, queueFill: 128, done: 5, wanted: 10, received: 1000, lost: 20,
      windowStart: 2, windowEnd: 12, rttMs: 3, incarnation: 0x0badf00d, unicast: false, ranges: [{ first: 2, count: 3 }, { first: 9, count: 1 }], repairs: [{ chunk: 6, stripes: 2, need: new Uint8Array([1, 0]) }],
    });
    expect(decode(Buffer.from(PARITY, 'hex'))).toEqual({
      type: PacketType.PARITY, session: 0x11223344, seq: 8, chunk: 3, stripe: 1, stripes: 2, storedLength: 1445, parity: 2, flags: 1, payload: Buffer.from('hello'),
    });
    expect(decode(Buffer.from(ACK, 'hex'))).toEqual({ type: PacketType.ACK, session: 0x11223344, seq: 4, receiver: 0xaabbccdd, echo: 9, state: 3, reason: 0, rateKiB: 12207 });
  });

  it('encode the golden packets byte for byte', () => {
    const data = Buffer.alloc(53);
    expect(encodeData(data, { session: 0x11223344, seq: 7, chunk: 3, fragment: 1, fragments: 2, storedLength: 1445, flags: 1, payload: Buffer.from('hello') }, KEY)).toBe(53);
    expect(data.toString('hex')).toBe(DATA);
    const status = encodeStatus({
      session: 0x11223344, seq: 9, receiver: 0xaabbccdd, state: 1, queueFill: 128, done: 5, wanted: 10, received: 1000, lost: 20, windowStart: 2, windowEnd: 12, rttMs: 3, incarnation: 0x0badf00d,
      ranges: [{ first: 2, count: 3 }, { first: 9, count: 1 }], repairs: [{ chunk: 6, stripes: 2, need: new Uint8Array([1, 0]) }],
    }, KEY);
    expect(status.toString('hex')).toBe(STATUS);
    const parity = Buffer.alloc(53);
    expect(encodeParity(parity, { session: 0x11223344, seq: 8, chunk: 3, stripe: 1, stripes: 2, storedLength: 1445, parity: 2, flags: 1, payload: Buffer.from('hello') }, KEY)).toBe(53);
    expect(parity.toString('hex')).toBe(PARITY);
    expect(encodeAck({ session: 0x11223344, seq: 4, receiver: 0xaabbccdd, echo: 9, state: 3, reason: 0, rateKiB: 12207 }, KEY).toString('hex')).toBe(ACK);
  });

  it('carries the unicast request in bit 7 of the STATUS state byte, the state unchanged', () => {
    const golden = Buffer.from(STATUS, 'hex');
    const flagged = Buffer.from(golden);
    flagged[20] |= 0x80;
    expect(decode(flagged)).toMatchObject({ type: PacketType.STATUS, state: 1, unicast: true });
    expect(KEY.verify(flagged)).toBe(false); // the flag is under the MAC
    const again = encodeStatus({ ...(decode(flagged) as Parameters<typeof encodeStatus>[0]) }, KEY);
    expect(KEY.verify(again)).toBe(true);
    expect(again.subarray(0, -16).equals(flagged.subarray(0, -16))).toBe(true);
    expect(again[20]).toBe(0x81);
  });

  it('round-trips a full-size DATA packet within one 1500-byte frame', () => {
    const payload = randomBytes(MCAST.DEFAULT_FRAGMENT);
    const out = Buffer.alloc(MCAST.DATA_HEADER + payload.length + MCAST.MAC_SIZE);
    const n = encodeData(out, { session: 1, seq: 0xffffffff, chunk: 70000, fragment: 727, fragments: 737, storedLength: 1048600, flags: 0, payload }, KEY);
    expect(n).toBe(MCAST.MAX_UDP_PAYLOAD);
    const p = decode(out);
    expect(p).toMatchObject({ chunk: 70000, fragment: 727, fragments: 737, seq: 0xffffffff });
    expect(KEY.verify(out)).toBe(true);
    expect(fragmentCount(1048600, MCAST.DEFAULT_FRAGMENT)).toBe(737);
  });

  it('rejects malformed packets: truncation, bad lengths, ranges outside the window', () => {
    const data = Buffer.from(DATA, 'hex');
    for (let n = 0; n < data.length; n++) expect(decode(data.subarray(0, n)), `DATA cut at ${n}`).toBeNull();
    const status = Buffer.from(STATUS, 'hex');
    for (let n = 0; n < status.length; n++) expect(decode(status.subarray(0, n)), `STATUS cut at ${n}`).toBeNull();
    const bad = (hex: string, at: number, value: number, size: 1 | 2 | 4) => {
      const b = Buffer.from(hex, 'hex');
      b.writeUIntBE(value, at, size);
      return decode(b);
    };
    expect(bad(DATA, 0, 0x43434d44, 4)).toBeNull(); // magic
    expect(bad(DATA, 4, 1, 1)).toBeNull(); // version 1 (no MAC)
    expect(bad(DATA, 4, 2, 1)).toBeNull(); // version 2 (NACK bitmaps, no parity)
    expect(bad(DATA, 4, 4, 1)).toBeNull(); // newer version
    const parity = Buffer.from(PARITY, 'hex');
    for (let n = 0; n < parity.length; n++) expect(decode(parity.subarray(0, n)), `PARITY cut at ${n}`).toBeNull();
    expect(bad(PARITY, 20, 2, 2)).toBeNull(); // stripe index = count
    expect(bad(PARITY, 22, 0, 2)).toBeNull(); // zero stripes
    expect(bad(PARITY, 28, 6, 2)).toBeNull(); // payload length disagrees
    expect(bad(PARITY, 30, MCAST.MAX_PARITY, 1)).toBeNull(); // parity index out of range
    expect(bad(STATUS, 76, 0, 2)).toBeNull(); // a repair of zero stripes
    expect(bad(STATUS, 76, 3, 2)).toBeNull(); // more stripes than the packet holds
    expect(bad(DATA, 5, 9, 1)).toBeNull(); // unknown type
    expect(bad(DATA, 20, 2, 2)).toBeNull(); // fragment index = count
    expect(bad(DATA, 22, 0, 2)).toBeNull(); // zero fragments
    expect(bad(DATA, 28, 6, 2)).toBeNull(); // payload length disagrees
    expect(bad(STATUS, 56, 1, 4)).toBeNull(); // range before the window
    expect(bad(STATUS, 60, 0, 4)).toBeNull(); // empty range
    expect(bad(STATUS, 44, 1, 4)).toBeNull(); // window ends before it starts
    expect(bad(STATUS, 20, 9, 1)).toBeNull(); // unknown state
    expect(bad(ACK, 25, 7, 1)).toBeNull(); // unknown drop reason
    expect(decode(Buffer.concat([Buffer.from(ACK, 'hex'), Buffer.alloc(1)]))).toBeNull();
    expect(decode(Buffer.concat([Buffer.from(STATUS, 'hex'), Buffer.alloc(1)]))).toBeNull();
  });

  it('never throws on random bytes, with or without a valid common header', () => {
    for (let i = 0; i < 20000; i++) {
      const b = randomBytes(Math.floor(Math.random() * 120));
      if (i % 2 && b.length >= 16) {
        b.writeUInt32BE(MCAST.MAGIC, 0);
        b[4] = MCAST.VERSION;
        b[5] = 1 + (i % 4);
        b.writeUInt16BE([32, 56, 32, 32][i % 4], 6);
      }
      expect(() => decode(b)).not.toThrow();
    }
  });

  it('keeps a STATUS within one datagram and orders sequence numbers across wrap-around', () => {
    expect(statusSize(175, [])).toBeLessThanOrEqual(MCAST.MAX_STATUS);
    expect(seqNewer(1, 0)).toBe(true);
    expect(seqNewer(0, 0xffffffff)).toBe(true);
    expect(seqNewer(0xffffffff, 0)).toBe(false);
    expect(seqNewer(5, 5)).toBe(false);
  });

  it('authenticates every byte: a MAC verifies only over the same bytes under the same key', () => {
    const other = new MacKey(Buffer.alloc(32, 7));
    for (const hex of [DATA, PARITY, STATUS, ACK]) {
      const golden = Buffer.from(hex, 'hex');
      expect(KEY.verify(golden)).toBe(true);
      expect(other.verify(golden)).toBe(false);
      for (let i = 0; i < golden.length; i++) {
        const flipped = Buffer.from(golden);
        flipped[i] ^= 0x01;
        expect(KEY.verify(flipped), `byte ${i} changed`).toBe(false);
      }
      for (let n = 0; n < golden.length; n++) expect(KEY.verify(golden.subarray(0, n))).toBe(false);
    }
  });

  it('the addon\'s HMAC (precomputed key state) gives the same tags as node:crypto', async () => {
    const js = new MacKey(Buffer.from(Array.from({ length: 32 }, (_, i) => i + 1)));
    const packets = [Buffer.from(DATA, 'hex'), Buffer.from(STATUS, 'hex'), ...Array.from({ length: 50 }, (_, i) => randomBytes(16 + i * 37))];
    const tags = packets.map((p) => {
      const b = Buffer.from(p);
      js.sign(b);
      return b;
    });
    await import('../../native/addon.js'); // registers the addon's HMAC when it is built
    const native = new MacKey(Buffer.from(Array.from({ length: 32 }, (_, i) => i + 1)));
    for (const t of tags) {
      expect(native.verify(t)).toBe(true);
      const b = Buffer.from(t);
      b.fill(0, b.length - 16);
      native.sign(b);
      expect(b.equals(t)).toBe(true);
    }
  });

  it('lays stripes out interleaved: every fragment in exactly one stripe, at most STRIPE_K per stripe', () => {
    for (const fragments of [1, 2, 31, 32, 33, 64, 65, 737, 2946, 65535]) {
      const stripes = stripeCount(fragments);
      const seen = new Uint8Array(fragments);
      for (let s = 0; s < stripes; s++) {
        const k = stripeSize(fragments, stripes, s);
        expect(k).toBeGreaterThan(0);
        expect(k).toBeLessThanOrEqual(MCAST.STRIPE_K);
        for (let j = 0; j < k; j++) seen[s + j * stripes]++;
      }
      expect(seen.every((n) => n === 1), `${fragments} fragments`).toBe(true);
    }
    expect(stripeCount(737)).toBe(24); // a 1 MiB chunk at 1,424-byte fragments: bursts up to 24 long hit 24 stripes
  });

  it('tells another version of the protocol from noise, and says what to do about it', () => {
    const old = Buffer.from(DATA, 'hex');
    old[4] = 2;
    expect(decode(old)).toBeNull();
    expect(peekVersion(old)).toBe(2);
    expect(peekVersion(randomBytes(40))).toBeNull();
    expect(versionMismatch(2, 'sender', 'agent')).toBe(
      'protocol version mismatch: sender speaks 2, this agent 3; update clonecast on the server and in the boot environment to the same release',
    );
  });

  it('derives distinct keys for the data and for each receiver from one secret', () => {
    const secret = Buffer.alloc(32, 9);
    const keys = [deriveKey(secret, 'data'), deriveKey(secret, receiverLabel(1)), deriveKey(secret, receiverLabel(2))].map((k) => k.toString('hex'));
    expect(new Set(keys).size).toBe(3);
    expect(keys.every((k) => k.length === 64)).toBe(true);
  });
});
