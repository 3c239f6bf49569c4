import { describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { native } from '../../native/addon.js';
import { MCAST } from '../../protocol/mcast.js';
import { ParityLedger, parityItem, plan, proactiveParity } from '../../transfer/parity.js';
import { Scratch, StripeState } from '../../transfer/stripes.js';
import { itNeeds } from '../helpers.js';

/** Every subset of {0..n-1} of at most m elements. */
function* subsets(n: number, m: number, from = 0, chosen: number[] = []): Generator<number[]> {
  yield chosen;
  if (chosen.length === m) return;
  for (let i = from; i < n; i++) yield* subsets(n, m, i + 1, [...chosen, i]);
}

describe('Reed-Solomon parity over stripes', () => {
  itNeeds(['isal'], 'ISA-L and the portable code give the same parity and the same rebuilt data, byte for byte', () => {
    const addon = native();
    expect(addon.fecIsal()).toBe(true);
    for (const k of [1, 2, 7, 22, 32, 64]) {
      const len = 1424;
      const data = randomBytes(k * len);
      const indexes = Buffer.from([0, 1, 2, 3, 9, 31, 100, MCAST.MAX_PARITY - 1].filter((p) => k + p < 255));
      const isal = Buffer.alloc(indexes.length * len);
      const portable = Buffer.alloc(indexes.length * len);
      addon.fecEncode(k, len, data, indexes, isal, 0);
      addon.fecEncode(k, len, data, indexes, portable, 1);
      expect(isal.equals(portable), `encode k=${k}`).toBe(true);
      // Lose up to 4 data fragments (the first ones), rebuild them from parity both ways.
      const lost = Math.min(k, indexes.length, 4);
      const have = Buffer.alloc(k * len);
      const rows = Buffer.alloc(k);
      for (let j = lost, r = 0; j < k; j++, r++) {
        data.copy(have, r * len, j * len, (j + 1) * len);
        rows[r] = j;
      }
      for (let i = 0; i < lost; i++) {
        isal.copy(have, (k - lost + i) * len, (indexes.length - 1 - i) * len, (indexes.length - i) * len);
        rows[k - lost + i] = k + indexes[indexes.length - 1 - i];
      }
      const want = Buffer.from(Array.from({ length: lost }, (_, j) => j));
      const a = Buffer.alloc(lost * len);
      const b = Buffer.alloc(lost * len);
      expect(addon.fecDecode(k, len, have, rows, want, a, 0)).toBe(true);
      expect(addon.fecDecode(k, len, have, rows, want, b, 1)).toBe(true);
      expect(a.equals(b), `decode k=${k}`).toBe(true);
      expect(a.equals(data.subarray(0, lost * len)), `rebuilt k=${k}`).toBe(true);
    }
  });

  it('rebuilds every loss pattern of up to m packets in a stripe exactly (interleaved stripes, a short last fragment)', () => {
    const F = 64;
    const m = 3;
    // 40 fragments, the last one short: 2 stripes of 20, stripe s holding fragments s, s+2, s+4, ...
    const data = randomBytes(39 * F + 17);
    const out = plan(5, data, F, undefined, m, new ParityLedger(), MCAST.MAX_PARITY, []);
    expect(out.stripes).toBe(2);
    expect(out.queue.filter((i) => i < 0)).toHaveLength(2 * m);
    const scratch = new Scratch();
    let patterns = 0;
    for (let s = 0; s < out.stripes; s++) {
      const k = 20;
      // Packets of stripe s: 0..k-1 data (fragment s + j*2), k..k+m-1 parity 0..m-1.
      for (const lost of subsets(k + m, m)) {
        const state = new StripeState(40);
        const buf = Buffer.alloc(data.length);
        const has = new Set<number>();
        for (let f = 0; f < 40; f++) {
          const j = (f - (f % 2)) / 2;
          if (f % 2 === s && lost.includes(j)) continue;
          data.copy(buf, f * F, f * F, Math.min((f + 1) * F, data.length));
          has.add(f);
          state.data[f % 2]++;
        }
        for (let p = 0; p < m; p++) if (!lost.includes(k + p)) state.addParity(s, p, out.parity.get(parityItem(s, p))!);
        if (state.decodable(s)) state.decode(s, buf, data.length, F, (f) => has.has(f), (f) => has.add(f), scratch);
        expect(state.complete(s), `stripe ${s} lost ${lost}`).toBe(true);
        expect(buf.equals(data), `stripe ${s} lost ${lost}`).toBe(true);
        patterns++;
      }
    }
    expect(patterns).toBe(2 * (1 + 23 + 253 + 1771));
  });

  it('says per stripe how many more packets it needs, whichever kind they are', () => {
    const state = new StripeState(40);
    state.data[0] = 15;
    state.addParity(0, 7, Buffer.alloc(64));
    expect(state.addParity(0, 7, Buffer.alloc(64))).toBe(false); // the same index twice counts once
    expect([...state.needs()]).toEqual([4, 20]);
  });

  it('plans proactive parity that grows with the loss and the number of receivers, none without loss', () => {
    expect(proactiveParity(0, 60)).toBe(0);
    expect(proactiveParity(0.02, 0)).toBe(0);
    expect(proactiveParity(0.02, 60)).toBeGreaterThanOrEqual(proactiveParity(0.01, 60));
    expect(proactiveParity(0.05, 60)).toBeGreaterThan(proactiveParity(0.01, 60));
    expect(proactiveParity(0.01, 120)).toBeGreaterThanOrEqual(proactiveParity(0.01, 8));
    expect(proactiveParity(0.5, 1000)).toBeLessThanOrEqual(16);
  });

  it('repairs with parity indexes never sent before, and with the stripe\'s data once they run out', () => {
    const F = 64;
    const data = randomBytes(40 * F);
    const ledger = new ParityLedger();
    const first = plan(1, data, F, undefined, 2, ledger, 4, []);
    expect(first.queue.filter((i) => i < 0)).toEqual([parityItem(0, 0), parityItem(1, 0), parityItem(0, 1), parityItem(1, 1)]);
    const repair = plan(1, data, F, new Uint8Array([1, 0]), 0, ledger, 4, []);
    expect(repair.queue).toEqual([parityItem(0, 2)]);
    // Stripe 0 has one index left (3) but needs two: its 20 data fragments go again.
    const more = plan(1, data, F, new Uint8Array([2, 1]), 0, ledger, 4, []);
    expect(more.queue.filter((i) => i >= 0)).toEqual(Array.from({ length: 20 }, (_, j) => 2 * j));
    expect(more.queue.filter((i) => i < 0)).toEqual([parityItem(1, 2)]);
  });
});
