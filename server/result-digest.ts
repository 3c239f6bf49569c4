/**
 * The disk digest a verified machine must report (transfer/verifier.ts
 * KeyedDigest), computed by the server from its store: every data chunk is
 * read and decoded once, zero chunks are hashed as zeros. The nonce is one
 * per session (in the Assign of each of its machines), so this runs once per
 * session, in the background from when the session opens; a Result waits for
 * it. Cost: one read and decode of the image (docs/security.md, "Results").
 */
import { createHmac, randomBytes } from 'node:crypto';
import { setImmediate as yieldLoop } from 'node:timers/promises';
import { decodeChunk } from '../protocol/chunk.js';
import { chunkAt, ChunkKind, definesBytes, tableLength, type Manifest } from '../protocol/manifest.js';
import { KeyedDigest } from '../transfer/verifier.js';
import type { Store } from './store/store.js';
import type { Live } from './session-live.js';

/** What computing an expected digest cost. */
export interface DigestCost {
  digest: Buffer;
  /** Wall time, ms. */
  ms: number;
  /** Image bytes hashed (data and zero chunks, uncompressed). */
  bytes: number;
}

/** The KeyedDigest under `nonce` of the image as the store holds it. */
export async function expectedDigest(store: Pick<Store, 'readChunk'>, manifest: Manifest, nonce: Uint8Array, stopped: () => boolean = () => false): Promise<DigestCost> {
  const started = performance.now();
  const { meta, table } = manifest;
  const n = tableLength(table);
  const keyed = new KeyedDigest(nonce);
  // A zero chunk's HMAC depends only on its length: computed once per length.
  const zeros = new Map<number, Buffer>();
  let bytes = 0;
  for (let i = 0; i < n; i++) {
    const r = chunkAt(table, i);
    if (!definesBytes(r.kind)) continue; // absent and unused: not written, so not digested (protocol/manifest.ts diskDigest)
    const len = Math.min(meta.chunkSize, meta.diskSize - i * meta.chunkSize);
    bytes += len;
    if (r.kind === ChunkKind.DATA) {
      if (stopped()) throw new Error('the session ended');
      const { raw } = decodeChunk(await store.readChunk(r.sha256), `chunk ${i}`);
      keyed.add(raw);
      // Other work on this loop (the sender's pacing, DHCP) runs between chunks.
      await yieldLoop();
      continue;
    }
    let h = zeros.get(len);
    if (h === undefined) zeros.set(len, (h = createHmac('sha256', nonce).update(Buffer.alloc(len)).digest()));
    keyed.addHmac(h);
  }
  return { digest: keyed.digest(), ms: performance.now() - started, bytes };
}

/** Starts computing a session's expected digest in the background; logs what it cost, or why it failed. */
export function startExpected(store: Pick<Store, 'readChunk'>, s: { id: number; nonce: string }, live: Live, ended: () => boolean, log?: (level: 'info' | 'warn', message: string) => void): Promise<Buffer> {
  s.nonce ||= randomBytes(16).toString('hex'); // a session saved before results were keyed
  const p = expectedDigest(store, live.manifest, Buffer.from(s.nonce, 'hex'), ended).then(
    (c) => {
      log?.('info', `session ${s.id}: result digest ready (${(c.bytes / 2 ** 20).toFixed(0)} MiB hashed in ${(c.ms / 1000).toFixed(1)} s)`);
      return c.digest;
    },
    (err: Error) => {
      if (!ended()) log?.('warn', `session ${s.id}: the result digest cannot be computed from the store: ${err.message}; its machines cannot be confirmed done`);
      throw err;
    },
  );
  p.catch(() => undefined); // waited on by a result; never an unhandled rejection
  return p;
}
