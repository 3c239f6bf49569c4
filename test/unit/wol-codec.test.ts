import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { decodeMagic, encodeMagic, parseMac, WOL } from '../../protocol/wol.js';

// The magic packet for 52:54:00:12:34:56, as etherwake and wakeonlan send it:
// the sync stream, then the MAC sixteen times (AMD white paper 20213).
const GOLDEN = ['ffffffffffff', '525400123456'.repeat(16)].join('');

describe('Wake-on-LAN magic packets', () => {
  const mac = parseMac('52:54:00:12:34:56')!;

  it('encodes the golden packet', () => {
    expect(encodeMagic(mac).toString('hex')).toBe(GOLDEN);
    expect(encodeMagic(mac)).toHaveLength(WOL.SIZE);
  });

  it('decodes the golden packet', () => {
    expect(decodeMagic(Buffer.from(GOLDEN, 'hex'))).toBe('52:54:00:12:34:56');
  });

  it('round-trips random MACs, with and without a SecureOn password', () => {
    for (let i = 0; i < 200; i++) {
      const m = randomBytes(6);
      const text = m.toString('hex').replace(/(..)(?!$)/g, '$1:');
      expect(decodeMagic(encodeMagic(m))).toBe(text);
      expect(decodeMagic(encodeMagic(m, randomBytes(4)))).toBe(text);
      expect(decodeMagic(encodeMagic(m, randomBytes(6)))).toBe(text);
    }
  });

  it('parses MACs the way people write them and refuses the rest', () => {
    expect(parseMac('52-54-00-AB-CD-EF')?.toString('hex')).toBe('525400abcdef');
    for (const bad of ['', '52:54:00:12:34', '52:54:00:12:34:56:78', 'zz:54:00:12:34:56', '525400123456', '52:54:00:12:34:5']) expect(parseMac(bad)).toBeNull();
    expect(() => encodeMagic(Buffer.alloc(5))).toThrow(RangeError);
    expect(() => encodeMagic(mac, Buffer.alloc(5))).toThrow(RangeError);
  });

  it('refuses truncated packets at every length, a broken sync and a wrong repetition', () => {
    const golden = Buffer.from(GOLDEN, 'hex');
    for (let n = 0; n < golden.length; n++) expect(decodeMagic(golden.subarray(0, n))).toBeNull();
    for (let i = 0; i < WOL.SIZE; i++) {
      const bad = Buffer.from(golden);
      bad[i] ^= 0x01;
      expect(decodeMagic(bad), `byte ${i} changed`).toBeNull();
    }
    expect(decodeMagic(Buffer.concat([golden, Buffer.alloc(1)]))).toBeNull();
  });

  it('never throws on random bytes', () => {
    for (let i = 0; i < 20_000; i++) {
      const b = randomBytes(i % 3 === 0 ? WOL.SIZE : Math.floor(Math.random() * 120));
      if (i % 5 === 0) b.fill(0xff, 0, Math.min(6, b.length));
      expect(() => decodeMagic(b)).not.toThrow();
    }
  });
});
