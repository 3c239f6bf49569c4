import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { initHashes, xxh64 } from '../../protocol/hash.js';
import { forgeXxh64, xxh64Spec } from '../xxh64-forge.js';

describe('xxh64 from its specification, and a forgery', () => {
  it('matches the library on lengths around every branch', async () => {
    await initHashes();
    for (const n of [0, 1, 3, 4, 7, 8, 15, 31, 32, 33, 40, 63, 64, 107, 1000, 65536 + 11]) {
      const b = randomBytes(n);
      expect(xxh64Spec(b), `length ${n}`).toBe(xxh64(b));
    }
  });

  it('makes other content of the same length hash to a chosen chunk\'s xxh64', async () => {
    await initHashes();
    for (const n of [12, 40, 107, 65536 + 12, (1 << 20) + 9]) {
      const real = randomBytes(n);
      const forged = forgeXxh64(randomBytes(n), xxh64(real));
      expect(forged.equals(real)).toBe(false);
      expect(forged.length).toBe(n);
      expect(xxh64(forged), `length ${n}`).toBe(xxh64(real));
    }
  });
});
