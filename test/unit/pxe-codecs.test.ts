/**
 * DHCP and TFTP codecs against packets captured from real clients
 * (test/fixtures/dhcp/capture.mjs: busybox udhcpc, ISC dhclient, qemu's
 * iPXE BIOS and UEFI ROMs, OVMF's own PXE client and the iPXE it
 * chainloads; test/fixtures/tftp: atftp and tftp-hpa read requests): decode
 * to the fields noted in each fixture, re-encode byte for byte, refuse every
 * truncation cleanly, and survive random bytes.
 */
import { describe, expect, it } from 'vitest';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  clientArch,
  clientMac,
  decodeDhcp,
  DHCP,
  encodeDhcp,
  isPxeClient,
  MessageType,
  messageType,
  OPT,
  userClasses,
  vendorClass,
} from '../../protocol/dhcp.js';
import { decodeTftp, encodeTftp, Opcode, TftpError } from '../../protocol/tftp.js';
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { ROOT } from '../helpers.js';

function fixture(path: string): { notes: string[]; bytes: Buffer } {
  const lines = readFileSync(path, 'utf8').split('\n');
  return { notes: lines.filter((l) => l.startsWith('#')), bytes: Buffer.from(lines.filter((l) => !l.startsWith('#')).join(''), 'hex') };
}

function onlyMalformed(fn: () => unknown): void {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ClonecastError);
    expect((err as ClonecastError).code).toBe(ERR.PACKET_MALFORMED);
  }
}

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s ^ (s >>> 15), 0x2c1b3c6d) + 0x297a2d39) >>> 0));
}

const DHCP_DIR = join(ROOT, 'test/fixtures/dhcp');
const dhcpFixtures = readdirSync(DHCP_DIR).filter((f) => f.endsWith('.hex'));

describe('DHCP packets from real clients', () => {
  it('has the clients the issue names: udhcpc, dhclient, iPXE BIOS and UEFI, OVMF', () => {
    for (const c of ['udhcpc', 'dhclient', 'ipxe-bios', 'ipxe-uefi', 'ovmf-uefi']) {
      expect(dhcpFixtures).toContain(`${c}-discover.hex`);
      expect(dhcpFixtures).toContain(`${c}-request.hex`);
    }
  });

  for (const f of dhcpFixtures) {
    const { notes, bytes } = fixture(join(DHCP_DIR, f));
    const [, mac, xid, size, flags] = /mac (\S+), xid 0x([0-9a-f]+), (\d+) bytes, flags 0x([0-9a-f]+)/.exec(notes[1])!;
    const [, vendor, user, arch] = /option 60 "(.*)", option 77 (\[.*\]), option 93 (\S+)/.exec(notes[2])!;
    const order = notes[3].replace('# options in order: ', '').split(' ').map(Number);

    it(`${f}: decodes to the noted fields`, () => {
      const p = decodeDhcp(bytes);
      expect(p.op).toBe(DHCP.BOOTREQUEST);
      expect(clientMac(p)).toBe(mac);
      expect(p.xid).toBe(parseInt(xid, 16));
      expect(bytes.length).toBe(Number(size));
      expect(p.flags).toBe(parseInt(flags, 16));
      expect(messageType(p)).toBe(f.includes('discover') ? MessageType.DISCOVER : MessageType.REQUEST);
      expect(vendorClass(p)).toBe(vendor);
      expect(userClasses(p)).toEqual(JSON.parse(user));
      expect(clientArch(p)).toBe(arch === 'null' ? null : Number(arch));
      expect([...p.options.keys()]).toEqual(order);
      expect(isPxeClient(p)).toBe(vendor.startsWith('PXEClient'));
      if (f.includes('request')) expect(p.options.has(OPT.REQUESTED_IP) || p.ciaddr !== '0.0.0.0').toBe(true);
    });

    it(`${f}: re-encodes byte for byte`, () => {
      expect(encodeDhcp(decodeDhcp(bytes)).toString('hex')).toBe(bytes.toString('hex'));
    });

    it(`${f}: every truncation is refused as malformed or decoded, never thrown otherwise`, () => {
      for (let n = 0; n < bytes.length; n++) onlyMalformed(() => decodeDhcp(bytes.subarray(0, n)));
      expect(() => decodeDhcp(bytes.subarray(0, 239))).toThrow(/shorter than a header/);
    });
  }

  it('refuses a packet without the magic cookie, a bad op, an option running past the end', () => {
    const { bytes } = fixture(join(DHCP_DIR, 'udhcpc-discover.hex'));
    const noCookie = Buffer.from(bytes);
    noCookie.writeUInt32BE(0, 236);
    expect(() => decodeDhcp(noCookie)).toThrow(/magic cookie/);
    const badOp = Buffer.from(bytes);
    badOp[0] = 9;
    expect(() => decodeDhcp(badOp)).toThrow(/op 9/);
    const runOff = Buffer.concat([bytes.subarray(0, 240), Buffer.from([OPT.HOSTNAME, 200, 0x41])]);
    expect(() => decodeDhcp(runOff)).toThrow(/runs past the end/);
  });

  it('reads options overloaded into the file and sname fields (RFC 2132 9.3)', () => {
    const { bytes } = fixture(join(DHCP_DIR, 'udhcpc-discover.hex'));
    const p = decodeDhcp(bytes);
    const buf = Buffer.from(encodeDhcp({ ...p, options: new Map([...p.options, [OPT.OVERLOAD, Buffer.from([1])]]), size: undefined }));
    Buffer.from([OPT.HOSTNAME, 3, 0x70, 0x63, 0x31, OPT.END]).copy(buf, 108);
    expect(decodeDhcp(buf).options.get(OPT.HOSTNAME)?.toString()).toBe('pc1');
    expect(decodeDhcp(buf).file).toBe('');
  });

  it('random bytes: 20,000 inputs, only ever decoded or refused as malformed', () => {
    const next = rng(77);
    const { bytes } = fixture(join(DHCP_DIR, 'ipxe-bios-discover.hex'));
    for (let i = 0; i < 20_000; i++) {
      // Half: a real packet with random bytes in its options; half: noise.
      const b = i % 2 === 0 ? Buffer.from(bytes) : Buffer.alloc(next() % 600);
      const from = i % 2 === 0 ? 240 : 0;
      for (let j = from; j < b.length; j++) if (i % 2 === 1 || next() % 8 === 0) b[j] = next() & 0xff;
      onlyMalformed(() => decodeDhcp(b));
    }
  });
});

describe('TFTP packets', () => {
  const dir = join(ROOT, 'test/fixtures/tftp');

  it('atftp read request with options: decodes, re-encodes byte for byte', () => {
    const { bytes } = fixture(join(dir, 'atftp-rrq-options.hex'));
    const p = decodeTftp(bytes);
    expect(p).toEqual({ op: Opcode.RRQ, filename: 'pxe/undionly.kpxe', mode: 'octet', options: new Map([['tsize', '0'], ['timeout', '2'], ['blksize', '1468'], ['windowsize', '16']]) });
    expect(encodeTftp(p).equals(bytes)).toBe(true);
  });

  it('tftp-hpa read request: decodes, re-encodes byte for byte', () => {
    const { bytes } = fixture(join(dir, 'tftp-hpa-rrq.hex'));
    const p = decodeTftp(bytes);
    expect(p).toEqual({ op: Opcode.RRQ, filename: 'ipxe.efi', mode: 'octet', options: new Map() });
    expect(encodeTftp(p).equals(bytes)).toBe(true);
  });

  it('DATA, ACK, ERROR and OACK in the layouts of RFC 1350 and 2347', () => {
    expect(encodeTftp({ op: Opcode.DATA, block: 65535, data: Buffer.from('ab') }).toString('hex')).toBe('0003ffff6162');
    expect(encodeTftp({ op: Opcode.ACK, block: 0x1234 }).toString('hex')).toBe('00041234');
    expect(encodeTftp({ op: Opcode.ERROR, code: TftpError.NOT_FOUND, message: 'no' }).toString('hex')).toBe('000500016e6f00');
    expect(encodeTftp({ op: Opcode.OACK, options: new Map([['blksize', '1468']]) }).toString('hex')).toBe('0006626c6b73697a65003134363800');
    for (const hex of ['0003ffff6162', '00041234', '000500016e6f00', '0006626c6b73697a65003134363800']) {
      expect(encodeTftp(decodeTftp(Buffer.from(hex, 'hex'))).toString('hex')).toBe(hex);
    }
  });

  it('refuses what it cannot read: one byte, an unknown opcode, an unterminated name, an ACK of 5 bytes', () => {
    expect(() => decodeTftp(Buffer.from([1]))).toThrow(/1 bytes/);
    expect(() => decodeTftp(Buffer.from([0, 9, 0, 0]))).toThrow(/opcode 9/);
    expect(() => decodeTftp(Buffer.from('0001616263', 'hex'))).toThrow(/terminating zero/);
    expect(() => decodeTftp(Buffer.from('0004000100', 'hex'))).toThrow(/ACK of 5 bytes/);
    expect(() => decodeTftp(Buffer.from('000161006f6374657400626c6b73697a6500', 'hex'))).toThrow(/without a value/);
  });

  it('random bytes: 20,000 inputs, only ever decoded or refused as malformed', () => {
    const next = rng(5);
    for (let i = 0; i < 20_000; i++) {
      const b = Buffer.alloc(next() % 80);
      for (let j = 0; j < b.length; j++) b[j] = next() & 0xff;
      if (b.length >= 2 && i % 2 === 0) b.writeUInt16BE(1 + (next() % 6), 0);
      onlyMalformed(() => decodeTftp(b));
    }
  });
});
