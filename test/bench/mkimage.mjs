// Writes a disk image with a realistic mix for the benchmarks: about 40%
// incompressible bytes, 35% zeros in large runs and 25% real text and
// binaries (files from /usr), laid out in segments of 4-48 MiB (or as
// given) that do not line up with chunk boundaries.
//   node test/bench/mkimage.mjs OUT SIZE_MIB [dense] [MIN_MIB-MAX_MIB]
import { randomBytes } from 'node:crypto';
import { closeSync, ftruncateSync, openSync, readdirSync, readFileSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';

/** Collects up to `limit` bytes of real files under /usr. */
function corpus(limit) {
  const parts = [];
  let total = 0;
  const walk = (dir) => {
    let entries;
    try {
      entries = readdirSync(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      if (total >= limit) return;
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.isFile()) {
        try {
          const st = statSync(p);
          if (st.size < 512 || st.size > 64 << 20) continue;
          const b = readFileSync(p);
          parts.push(b);
          total += b.length;
        } catch {
          // unreadable: skip
        }
      }
    }
  };
  for (const d of ['/usr/share/doc', '/usr/bin', '/usr/lib', '/usr/share']) walk(d);
  return Buffer.concat(parts);
}

/**
 * Makes the image; returns the layout's byte counts. dense: write the zero
 * runs out (like dd of a real disk) instead of leaving holes. segmentMiB:
 * the smallest and largest segment; smaller segments keep a small image
 * close to the 40/35/25 mix (the default [4, 48] suits 256 MiB and more).
 */
export function makeImage(out, sizeMiB, { seed = 1, dense = false, segmentMiB = [4, 48] } = {}) {
  const [segMin, segMax] = segmentMiB;
  const size = sizeMiB * 1048576;
  let state = seed;
  const rand = () => ((state = (Math.imul(state, 1103515245) + 12345) >>> 0) / 2 ** 32);
  const text = corpus(Math.min(size * 0.3, 400 << 20));
  const fd = openSync(out, 'w');
  ftruncateSync(fd, size);
  const counts = { random: 0, zero: 0, text: 0 };
  let pos = 0;
  let textPos = 0;
  while (pos < size) {
    const len = Math.min(size - pos, Math.floor((segMin + rand() * (segMax - segMin)) * 1048576) + Math.floor(rand() * 4096));
    // The kind furthest below its share so far comes next.
    const share = { random: 0.4, zero: 0.35, text: 0.25 };
    const kind = Object.keys(share).sort((a, b) => (counts[a] - share[a] * (pos + len)) - (counts[b] - share[b] * (pos + len)))[0];
    if (kind === 'zero' && dense) {
      const zeros = Buffer.alloc(1 << 20);
      for (let off = 0; off < len; off += zeros.length) writeSync(fd, zeros, 0, Math.min(zeros.length, len - off), pos + off);
    } else if (kind !== 'zero') {
      for (let off = 0; off < len; off += 1 << 20) {
        const n = Math.min(1 << 20, len - off);
        let buf;
        if (kind === 'random') buf = randomBytes(n);
        else {
          if (textPos + n > text.length) textPos = Math.floor(rand() * 4096);
          buf = text.subarray(textPos, textPos + n);
          textPos += n;
        }
        writeSync(fd, buf, 0, n, pos + off);
      }
    }
    counts[kind] += len;
    pos += len;
  }
  closeSync(fd);
  return counts;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [out, mib, mode, seg] = process.argv.slice(2);
  const c = makeImage(out, Number(mib), { dense: mode === 'dense', segmentMiB: seg === undefined ? undefined : seg.split('-').map(Number) });
  const t = c.random + c.zero + c.text;
  console.log(`${out}: ${mib} MiB, random ${(100 * c.random / t).toFixed(0)}%, zero ${(100 * c.zero / t).toFixed(0)}%, text ${(100 * c.text / t).toFixed(0)}%`);
}
