/**
 * A multicast session as the CLI runs it: a Sender for one image version,
 * a small HTTP endpoint on the sender's address from which receivers fetch
 * the session description (GET /session) and the manifest (GET /manifest),
 * and a policy timer that applies the start rule and the liveness rule of
 * transfer/policy.ts (the server's sessions apply the same functions).
 */
import { createServer, type Server } from 'node:http';
import { networkInterfaces } from 'node:os';
import { encodeManifest, chunkAt } from '../../protocol/manifest.js';
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { liveness, startRuleMet, type StartRule } from '../../transfer/policy.js';
import { Sender, type SenderOptions } from '../../transfer/sender.js';
import { TRANSFER_DEFAULTS, type SessionInfo } from '../../transfer/session.js';
import type { ImageRef, Store } from '../store/store.js';
import { currentRecords } from '../store/recompress.js';

/** How often the policy timer looks at the receivers, ms. */
const POLICY_MS = 250;

/** The IPv4 address of a named interface; throws with the interfaces there are. */
export function interfaceAddress(name: string): string {
  const all = networkInterfaces();
  const v4 = (all[name] ?? []).find((a) => a.family === 'IPv4');
  if (v4 === undefined) {
    throw new ClonecastError(ERR.NOT_FOUND, `interface "${name}" has no IPv4 address (interfaces here: ${Object.keys(all).join(', ')})`);
  }
  return v4.address;
}

/** Options of startSession(). */
export interface SessionOptions extends Omit<SenderOptions, 'manifest' | 'loadChunk' | 'group' | 'port' | 'hold'> {
  group?: string;
  port?: number;
  /** HTTP port for the session description (0: any free one). */
  httpPort?: number;
  /** When to start sending (default: as soon as one receiver joined). */
  rule?: StartRule;
  /** A receiver without progress or word this long is dropped (default TRANSFER_DEFAULTS.dropAfterMs). */
  dropAfterMs?: number;
  /** Sender errors (a chunk that cannot be read, a socket error). */
  onError?: (err: Error) => void;
}

/** A running session. */
export interface RunningSession {
  sender: Sender;
  info: SessionInfo;
  url: string;
  image: { name: string; version: number };
  close(): void;
}

/** Starts a sender for ref and the HTTP endpoint that describes it. */
export async function startSession(store: Store, ref: ImageRef, options: SessionOptions): Promise<RunningSession> {
  const { name, version } = store.resolve(ref);
  // gc and recompress wait while this process sends (a killed send leaves a lock the next one takes over).
  const lock = store.lockReader(`sending ${name}@${version}`);
  let sender: Sender | undefined;
  let policy: NodeJS.Timeout | undefined;
  try {
    const manifest = await store.readManifest(name, version);
    await currentRecords(store, manifest); // after an interrupted recompress: the stored lengths the chunk files have
    const encoded = encodeManifest(manifest);
    const group = options.group ?? TRANSFER_DEFAULTS.group;
    const port = options.port ?? TRANSFER_DEFAULTS.port;
    const { rule = { clients: 1 }, dropAfterMs = TRANSFER_DEFAULTS.dropAfterMs, onError, httpPort: _h, ...senderOptions } = options;
    sender = new Sender({
      ...senderOptions,
      manifest,
      group,
      port,
      hold: true,
      // Every receiver of a CLI session holds the session secret (send's key file): admission is by the key derived for its id.
      openAdmission: true,
      loadChunk: (i) => store.readChunk(chunkAt(manifest.table, i).sha256),
    });
    sender.on('error', (err: Error) => onError?.(err));
    const senderPort = await sender.start();
    policy = applyPolicy(sender, rule, dropAfterMs);
    const info: SessionInfo = {
      session: sender.session,
      group,
      port,
      sender: { address: options.address, port: senderPort },
      fragmentSize: options.fragmentSize ?? TRANSFER_DEFAULTS.fragmentSize,
      encrypted: options.encrypt === true,
    };
    const body = JSON.stringify({ ...info, image: { name, version } });
    const http: Server = createServer((req, res) => {
      if (req.method === 'GET' && req.url === '/session') res.writeHead(200, { 'content-type': 'application/json' }).end(body);
      else if (req.method === 'GET' && req.url === '/manifest') res.writeHead(200, { 'content-type': 'application/octet-stream' }).end(encoded);
      else res.writeHead(404).end();
    });
    await new Promise<void>((resolve, reject) => {
      http.once('error', reject);
      http.listen(options.httpPort ?? 0, options.address, () => resolve());
    });
    const addr = http.address();
    const httpPort = typeof addr === 'object' && addr !== null ? addr.port : 0;
    const running = sender;
    return {
      sender: running,
      info,
      url: `http://${options.address}:${httpPort}/`,
      image: { name, version },
      close() {
        clearInterval(policy);
        running.stop();
        http.close();
        lock.release();
      },
    };
  } catch (err) {
    clearInterval(policy);
    sender?.stop();
    lock.release();
    throw err;
  }
}

/** The standalone session's policy: release the sender once the rule is met; drop receivers liveness gives up. */
function applyPolicy(sender: Sender, rule: StartRule, dropAfterMs: number): NodeJS.Timeout {
  let firstJoinAt: number | null = null;
  let started = false;
  const start = () => {
    if (!started && startRuleMet(rule, { count: sender.receivers().length, firstJoinAt }, Date.now()) !== null) {
      started = true;
      sender.release();
    }
  };
  // A join may meet the rule: start at once, not at the next look.
  sender.on('join', () => {
    firstJoinAt ??= Date.now();
    start();
  });
  return setInterval(() => {
    start();
    const now = performance.now();
    for (const r of sender.receivers()) {
      const reason = liveness(r, now, dropAfterMs);
      if (reason !== null) sender.drop(r.receiverId, reason);
    }
  }, POLICY_MS);
}
