// Packet authentication and encryption, measured alone (docs/performance.md):
// µs per 1472-byte datagram to sign and to verify its MAC (the addon's HMAC-SHA256
// with precomputed key state, and node:crypto's), and MB/s to seal and open
// 1 MiB chunks with AES-256-GCM. run.mjs prints these too.
//
//   node test/bench/packet-crypto.mjs
import { randomBytes } from 'node:crypto';

/** Returns the figures; prints them unless quiet. */
export async function packetCrypto({ quiet = false } = {}) {
  const { MacKey } = await import('../../dist/protocol/mac.js');
  const { seal, open } = await import('../../dist/transfer/seal.js');
  const packet = randomBytes(1472);
  const N = 200_000;
  const per = (f) => {
    for (let i = 0; i < 2000; i++) f();
    const t = performance.now();
    for (let i = 0; i < N; i++) f();
    return ((performance.now() - t) * 1000) / N;
  };
  const js = new MacKey(randomBytes(32));
  const jsSign = per(() => js.sign(packet));
  await import('../../dist/native/addon.js'); // registers the addon's HMAC
  const native = new MacKey(randomBytes(32));
  const nativeSign = per(() => native.sign(packet));
  const nativeVerify = per(() => native.verify(packet));
  const key = randomBytes(32);
  const chunk = randomBytes(1 << 20);
  const out = Buffer.alloc(chunk.length + 16);
  const mbs = (f) => {
    const t = performance.now();
    for (let i = 0; i < 200; i++) f(i);
    return 200 / ((performance.now() - t) / 1000);
  };
  const sealed = seal(key, 1, chunk);
  const sealMBs = mbs((i) => seal(key, i, chunk));
  const openMBs = mbs(() => open(key, 1, sealed, out));
  const r = { jsSignUs: jsSign, nativeSignUs: nativeSign, nativeVerifyUs: nativeVerify, sealMiBs: sealMBs, openMiBs: openMBs };
  if (!quiet) {
    console.log(`packet MAC, 1472-byte datagram: addon sign ${nativeSign.toFixed(2)} µs, verify ${nativeVerify.toFixed(2)} µs; node:crypto HMAC ${jsSign.toFixed(2)} µs`);
    console.log(`--encrypt, 1 MiB chunks: AES-256-GCM seal ${sealMBs.toFixed(0)} MiB/s, open ${openMBs.toFixed(0)} MiB/s`);
  }
  return r;
}

if (import.meta.url === `file://${process.argv[1]}`) await packetCrypto();
