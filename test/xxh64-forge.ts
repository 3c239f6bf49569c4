/**
 * XXH64 written out from its specification (xxhash.com, "xxHash fast digest
 * algorithm", XXH64), and a forgery built on it: any content of a given
 * length made to hash to a chosen value. It shows what the issue showed:
 * xxh64 is a checksum, not a check against someone who wants a match.
 *
 * The forgery needs one 8-byte word in the tail (the bytes after the last
 * whole 32-byte stripe, so length % 32 >= 8): every step after the stripes
 * is a bijection of the running hash, so the word that lands on the target
 * is solved for directly.
 */
const M = (1n << 64n) - 1n;
const P1 = 0x9e3779b185ebca87n;
const P2 = 0xc2b2ae3d27d4eb4fn;
const P3 = 0x165667b19e3779f9n;
const P4 = 0x85ebca77c2b2ae63n;
const P5 = 0x27d4eb2f165667c5n;

const rotl = (x: bigint, r: bigint) => ((x << r) | (x >> (64n - r))) & M;
const rotr = (x: bigint, r: bigint) => rotl(x, 64n - r);
const mul = (a: bigint, b: bigint) => (a * b) & M;
const add = (a: bigint, b: bigint) => (a + b) & M;

/** The inverse of an odd a modulo 2^64 (Newton's iteration). */
function inverse(a: bigint): bigint {
  let x = a;
  for (let i = 0; i < 6; i++) x = mul(x, (2n - mul(a, x)) & M);
  return x;
}
const I1 = inverse(P1);
const I2 = inverse(P2);
const I3 = inverse(P3);

const round = (acc: bigint, input: bigint) => mul(rotl(add(acc, mul(input, P2)), 31n), P1);
const mergeRound = (acc: bigint, v: bigint) => add(mul(acc ^ round(0n, v), P1), P4);

/** The state after the stripes and the length, and where the tail starts. */
function head(data: Buffer): { h: bigint; tail: number } {
  const len = data.length;
  let h: bigint;
  let p = 0;
  if (len >= 32) {
    let v1 = add(add(P1, P2), 0n);
    let v2 = P2;
    let v3 = 0n;
    let v4 = (0n - P1) & M;
    for (; p + 32 <= len; p += 32) {
      v1 = round(v1, data.readBigUInt64LE(p));
      v2 = round(v2, data.readBigUInt64LE(p + 8));
      v3 = round(v3, data.readBigUInt64LE(p + 16));
      v4 = round(v4, data.readBigUInt64LE(p + 24));
    }
    h = add(add(rotl(v1, 1n), rotl(v2, 7n)), add(rotl(v3, 12n), rotl(v4, 18n)));
    for (const v of [v1, v2, v3, v4]) h = mergeRound(h, v);
  } else {
    h = P5;
  }
  return { h: add(h, BigInt(len)), tail: p };
}

const word8 = (h: bigint, k: bigint) => add(mul(rotl(h ^ round(0n, k), 27n), P1), P4);
const word4 = (h: bigint, k: bigint) => add(mul(rotl(h ^ mul(k, P1), 23n), P2), P3);
const byte1 = (h: bigint, b: bigint) => mul(rotl(h ^ mul(b, P5), 11n), P1);

function avalanche(h: bigint): bigint {
  h ^= h >> 33n;
  h = mul(h, P2);
  h ^= h >> 29n;
  h = mul(h, P3);
  return h ^ (h >> 32n);
}

function unavalanche(h: bigint): bigint {
  h ^= h >> 32n;
  h = mul(h, I3);
  h ^= (h >> 29n) ^ (h >> 58n);
  h = mul(h, I2);
  return h ^ (h >> 33n);
}

/** XXH64 with seed 0. */
export function xxh64Spec(data: Buffer): bigint {
  let { h, tail: p } = head(data);
  for (; p + 8 <= data.length; p += 8) h = word8(h, data.readBigUInt64LE(p));
  if (p + 4 <= data.length) {
    h = word4(h, BigInt(data.readUInt32LE(p)));
    p += 4;
  }
  for (; p < data.length; p++) h = byte1(h, BigInt(data[p]));
  return avalanche(h);
}

/**
 * Rewrites the last 8-byte word of data's tail so that xxh64Spec(data) ===
 * target; the other bytes are kept. Throws if the tail holds no whole word.
 */
export function forgeXxh64(data: Buffer, target: bigint): Buffer {
  const out = Buffer.from(data);
  const { h: start, tail } = head(out);
  const words = Math.floor((out.length - tail) / 8);
  if (words === 0) throw new RangeError('the tail after the last 32-byte stripe holds no 8-byte word (length % 32 < 8)');
  const w = tail + (words - 1) * 8;
  // Forwards to just before the word.
  let h = start;
  for (let p = tail; p < w; p += 8) h = word8(h, out.readBigUInt64LE(p));
  // Backwards from the target to just after it.
  let t = unavalanche(target);
  let p = w + 8;
  const fours = p + 4 <= out.length;
  const bytesFrom = fours ? p + 4 : p;
  for (let q = out.length - 1; q >= bytesFrom; q--) t = rotr(mul(t, I1), 11n) ^ mul(BigInt(out[q]), P5);
  if (fours) t = rotr(mul((t - P3) & M, I2), 23n) ^ mul(BigInt(out.readUInt32LE(p)), P1);
  // word8: t = rotl(h ^ k, 27) * P1 + P4, k = round(0, x) = rotl(x * P2, 31) * P1.
  const k = rotr(mul((t - P4) & M, I1), 27n) ^ h;
  const x = mul(rotr(mul(k, I1), 31n), I2);
  out.writeBigUInt64LE(x, w);
  return out;
}
