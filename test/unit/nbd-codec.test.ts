import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import * as nbdServer from '../../protocol/nbd.js';
import * as nbdClient from '../../protocol/nbd-client.js';

const nbd = { ...nbdServer, ...nbdClient };
import { NBD } from '../../protocol/nbd.js';

const hex = (s: string[]) => Buffer.from(s.join(''), 'hex');

// Captured from qemu-img 7.2 (`qemu-img map` over nbd+unix) talking to this server.
const QEMU_IMG = {
  // client flags C_FIXED_NEWSTYLE|C_NO_ZEROES, then NBD_OPT_STRUCTURED_REPLY in the same packet
  flagsAndStructured: hex(['00000003', '49484156454f5054', '00000008', '00000000']),
  setMetaContext: hex([
    '49484156454f5054', // IHAVEOPT
    '0000000a', //         NBD_OPT_SET_META_CONTEXT
    '0000001f', //         31 bytes of data
    '00000004', '74314031', // export name "t1@1"
    '00000001', //         1 query
    '0000000f', '626173653a616c6c6f636174696f6e', // "base:allocation"
  ]),
  go: hex(['49484156454f5054', '00000007', '0000000c', '00000004', '74314031', '0001', '0003']), // NBD_OPT_GO "t1@1", 1 info: BLOCK_SIZE
  read: hex(['25609513', '0000', '0000', '0000561147b35e20', '0000000000000000', '00000200']), // READ 512 at 0
  blockStatus: hex(['25609513', '0008', '0007', '0000561147b35e20', '0000000000500000', '03b00000']), // BLOCK_STATUS, REQ_ONE
};

// Captured from qemu-nbd 7.2 (serving a 1 MiB qcow2 read-only) to qemu-img.
const QEMU_NBD = {
  greeting: hex(['4e42444d41474943', '49484156454f5054', '0003']), // NBDMAGIC IHAVEOPT, FIXED_NEWSTYLE|NO_ZEROES
  ack: hex(['0003e889045565a9', '00000008', '00000001', '00000000']), // reply to STRUCTURED_REPLY: ACK
  metaContext: hex(['0003e889045565a9', '0000000a', '00000004', '00000013', '00000000', '626173653a616c6c6f636174696f6e']), // META_CONTEXT id 0 "base:allocation"
  infoBlockSize: hex(['0003e889045565a9', '00000007', '00000003', '0000000e', '0003', '00000001', '00001000', '02000000']),
  infoExport: hex(['0003e889045565a9', '00000007', '00000003', '0000000c', '0000', '0000000000100000', '048f']), // size 1 MiB, flags 0x48f
  blockStatusChunk: hex(['668e33ef', '0001', '0005', '0000563d89f28d80', '0000000c']), // DONE, BLOCK_STATUS, 12 bytes
  blockStatusPayload: hex(['00000000', '00010000', '00000003']), // context 0: 64 KiB HOLE|ZERO
  holeRead: hex(['668e33ef', '0001', '0002', '0000563d89f28d80', '0000000c']),
};

describe('NBD codec: golden traffic from qemu-img and qemu-nbd', () => {
  it('decodes what qemu-img sends', () => {
    expect(nbd.decodeClientFlags(QEMU_IMG.flagsAndStructured.subarray(0, 4))).toBe(NBD.FLAG_C_FIXED_NEWSTYLE | NBD.FLAG_C_NO_ZEROES);
    expect(nbd.decodeOptionHeader(QEMU_IMG.flagsAndStructured.subarray(4))).toEqual({ option: NBD.OPT_STRUCTURED_REPLY, length: 0 });
    const h = nbd.decodeOptionHeader(QEMU_IMG.setMetaContext.subarray(0, 16))!;
    expect(h).toEqual({ option: NBD.OPT_SET_META_CONTEXT, length: 31 });
    expect(nbd.decodeMetaContextRequest(QEMU_IMG.setMetaContext.subarray(16))).toEqual({ name: 't1@1', queries: ['base:allocation'] });
    expect(nbd.decodeInfoRequest(QEMU_IMG.go.subarray(16))).toEqual({ name: 't1@1', infos: [NBD.INFO_BLOCK_SIZE] });
    expect(nbd.decodeRequest(QEMU_IMG.read)).toEqual({ flags: 0, type: NBD.CMD_READ, handle: 0x561147b35e20n, offset: 0n, length: 512 });
    expect(nbd.decodeRequest(QEMU_IMG.blockStatus)).toEqual({ flags: NBD.CMD_FLAG_REQ_ONE, type: NBD.CMD_BLOCK_STATUS, handle: 0x561147b35e20n, offset: 0x500000n, length: 0x3b00000 });
  });

  it('encodes what qemu-img sends, byte for byte', () => {
    expect(Buffer.concat([nbd.encodeClientFlags(3), nbd.encodeOption(NBD.OPT_STRUCTURED_REPLY)])).toEqual(QEMU_IMG.flagsAndStructured);
    expect(nbd.encodeOption(NBD.OPT_SET_META_CONTEXT, nbd.encodeMetaContextRequest('t1@1', ['base:allocation']))).toEqual(QEMU_IMG.setMetaContext);
    expect(nbd.encodeOption(NBD.OPT_GO, nbd.encodeInfoRequest('t1@1', [NBD.INFO_BLOCK_SIZE]))).toEqual(QEMU_IMG.go);
    expect(nbd.encodeRequest(nbd.decodeRequest(QEMU_IMG.blockStatus)!)).toEqual(QEMU_IMG.blockStatus);
  });

  it('decodes what qemu-nbd sends', () => {
    expect(nbd.decodeGreeting(QEMU_NBD.greeting)).toBe(NBD.FLAG_FIXED_NEWSTYLE | NBD.FLAG_NO_ZEROES);
    expect(nbd.decodeOptionReplyHeader(QEMU_NBD.ack)).toEqual({ option: NBD.OPT_STRUCTURED_REPLY, type: NBD.REP_ACK, length: 0 });
    const mc = nbd.decodeOptionReplyHeader(QEMU_NBD.metaContext.subarray(0, 20))!;
    expect(mc.type).toBe(NBD.REP_META_CONTEXT);
    expect(nbd.decodeMetaContextReply(QEMU_NBD.metaContext.subarray(20))).toEqual({ id: 0, name: 'base:allocation' });
    expect(nbd.decodeInfoExport(QEMU_NBD.infoExport.subarray(20))).toEqual({ size: 1n << 20n, flags: 0x48f });
    expect(nbd.decodeInfoExport(QEMU_NBD.infoBlockSize.subarray(20))).toBeNull(); // another info type
    expect(nbd.decodeReplyHeader(QEMU_NBD.blockStatusChunk)).toEqual({ kind: 'structured', flags: NBD.REPLY_FLAG_DONE, type: NBD.REPLY_TYPE_BLOCK_STATUS, handle: 0x563d89f28d80n, length: 12 });
    expect(nbd.decodeBlockStatus(QEMU_NBD.blockStatusPayload)).toEqual({ contextId: 0, extents: [{ length: 0x10000, flags: NBD.STATE_HOLE | NBD.STATE_ZERO }] });
  });

  it('encodes what qemu-nbd sends, byte for byte', () => {
    expect(nbd.encodeGreeting()).toEqual(QEMU_NBD.greeting);
    expect(nbd.encodeOptionReply(NBD.OPT_STRUCTURED_REPLY, NBD.REP_ACK)).toEqual(QEMU_NBD.ack);
    expect(nbd.encodeOptionReply(NBD.OPT_SET_META_CONTEXT, NBD.REP_META_CONTEXT, nbd.encodeMetaContextReply(0, 'base:allocation'))).toEqual(QEMU_NBD.metaContext);
    expect(nbd.encodeOptionReply(NBD.OPT_GO, NBD.REP_INFO, nbd.encodeInfoBlockSize(1, 4096, 32 << 20))).toEqual(QEMU_NBD.infoBlockSize);
    expect(nbd.encodeOptionReply(NBD.OPT_GO, NBD.REP_INFO, nbd.encodeInfoExport(1n << 20n, 0x48f))).toEqual(QEMU_NBD.infoExport);
    expect(nbd.encodeBlockStatus(NBD.REPLY_FLAG_DONE, 0x563d89f28d80n, 0, [{ length: 0x10000, flags: 3 }])).toEqual(Buffer.concat([QEMU_NBD.blockStatusChunk, QEMU_NBD.blockStatusPayload]));
  });
});

describe('NBD codec: round trips', () => {
  it('structured replies: data, hole, error', () => {
    const data = nbd.encodeOffsetDataHeader(0, 7n, 4096n, 5);
    expect(nbd.decodeReplyHeader(data.subarray(0, 20))).toEqual({ kind: 'structured', flags: 0, type: NBD.REPLY_TYPE_OFFSET_DATA, handle: 7n, length: 13 });
    expect(data.readBigUInt64BE(20)).toBe(4096n);
    const hole = nbd.encodeOffsetHole(NBD.REPLY_FLAG_DONE, 7n, 8192n, 65536);
    expect(nbd.decodeOffsetHole(hole.subarray(20))).toEqual({ offset: 8192n, size: 65536 });
    const err = nbd.encodeStructuredError(1, 9n, NBD.EIO, 'chunk damaged');
    expect(nbd.decodeReplyHeader(err.subarray(0, 20))).toMatchObject({ type: NBD.REPLY_TYPE_ERROR, length: 6 + 13 });
    expect(nbd.decodeStructuredError(err.subarray(20))).toEqual({ error: NBD.EIO, message: 'chunk damaged' });
  });

  it('simple replies, server list, option reply with error type', () => {
    expect(nbd.decodeReplyHeader(nbd.encodeSimpleReply(NBD.EPERM, 3n))).toEqual({ kind: 'simple', error: NBD.EPERM, handle: 3n });
    expect(nbd.encodeServerReply('pc@2').toString('hex')).toBe('00000004' + Buffer.from('pc@2').toString('hex'));
    expect(nbd.decodeOptionReplyHeader(nbd.encodeOptionReply(NBD.OPT_GO, NBD.REP_ERR_UNKNOWN))).toEqual({ option: NBD.OPT_GO, type: NBD.REP_ERR_UNKNOWN, length: 0 });
  });
});

describe('NBD codec: malformed input', () => {
  it('refuses bad magics and truncation at every byte', () => {
    const cases: [Buffer, (b: Buffer) => unknown][] = [
      [QEMU_IMG.read, nbd.decodeRequest],
      [QEMU_IMG.setMetaContext.subarray(0, 16), nbd.decodeOptionHeader],
      [QEMU_NBD.greeting, nbd.decodeGreeting],
      [QEMU_NBD.ack, nbd.decodeOptionReplyHeader],
      [QEMU_NBD.blockStatusChunk, nbd.decodeReplyHeader],
    ];
    for (const [good, dec] of cases) {
      expect(dec(good)).not.toBeNull();
      for (let n = 0; n < good.length; n++) expect(dec(good.subarray(0, n))).toBeNull();
      const bad = Buffer.from(good);
      bad[0] ^= 0xff;
      expect(dec(bad)).toBeNull();
    }
    for (const [good, dec] of [
      [QEMU_IMG.setMetaContext.subarray(16), nbd.decodeMetaContextRequest],
      [QEMU_IMG.go.subarray(16), nbd.decodeInfoRequest],
    ] as const) {
      for (let n = 0; n < good.length; n++) expect(dec(good.subarray(0, n))).toBeNull();
      expect(dec(Buffer.concat([good, Buffer.from([0])]))).toBeNull(); // trailing bytes
    }
  });

  it('refuses lying counts, NUL in names, over-long strings and empty extents', () => {
    // A query count of 2^32-1 with no queries: refused without looping.
    expect(nbd.decodeMetaContextRequest(hex(['00000000', 'ffffffff']))).toBeNull();
    expect(nbd.decodeInfoRequest(hex(['00000002', '6100', '0000']))).toBeNull();
    const long = Buffer.alloc(4 + NBD.MAX_STRING + 1 + 2, 0x61);
    long.writeUInt32BE(NBD.MAX_STRING + 1, 0);
    long.writeUInt16BE(0, long.length - 2);
    expect(nbd.decodeInfoRequest(long)).toBeNull();
    expect(nbd.decodeInfoRequest(hex(['00000002', 'c328', '0000']))).toBeNull(); // not UTF-8
    expect(nbd.decodeBlockStatus(hex(['00000001', '00000000', '00000000']))).toBeNull();
    expect(nbd.decodeClientFlags(hex(['00000002']))).toBeNull(); // no C_FIXED_NEWSTYLE
    expect(nbd.decodeClientFlags(hex(['00000101']))).toBeNull(); // unknown bit
    expect(nbd.decodeStructuredError(hex(['00000000', '0000']))).toBeNull(); // error 0 is no error
  });

  it('never throws on random bytes (20,000 inputs per decoder)', () => {
    const decoders: ((b: Buffer) => unknown)[] = [
      nbd.decodeClientFlags, nbd.decodeOptionHeader, nbd.decodeInfoRequest, nbd.decodeMetaContextRequest, nbd.decodeRequest,
      nbd.decodeGreeting, nbd.decodeOptionReplyHeader, nbd.decodeInfoExport, nbd.decodeMetaContextReply, nbd.decodeReplyHeader,
      nbd.decodeBlockStatus, nbd.decodeOffsetHole, nbd.decodeStructuredError,
    ];
    let decoded = 0;
    for (const dec of decoders) {
      for (let i = 0; i < 20000; i++) {
        const b = randomBytes(Math.floor(Math.random() * 64));
        // Sometimes start with a real magic so the decoder gets past its first check.
        if (i % 4 === 0 && b.length >= 8) b.writeBigUInt64BE(NBD.IHAVEOPT, 0);
        if (i % 4 === 1 && b.length >= 4) b.writeUInt32BE(NBD.STRUCTURED_REPLY_MAGIC, 0);
        if (dec(b) !== null) decoded++;
      }
    }
    expect(decoded).toBeGreaterThan(0);
  });
});
