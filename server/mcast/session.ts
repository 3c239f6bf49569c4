/**
 * A multicast session as the CLI runs it: a Sender for one image version,
 * and a small HTTP endpoint on the sender's address from which receivers
 * fetch the session description (GET /session) and the manifest
 * (GET /manifest). The control channel (WebSocket) later replaces the HTTP
 * part; the engine stays the same.
 */
import { createServer, type Server } from 'node:http';
import { networkInterfaces } from 'node:os';
import { encodeManifest, chunkAt } from '../../protocol/manifest.js';
import { ClonecastError, ERR } from '../../protocol/errors.js';
import type { SessionInfo } from '../../agent/receiver.js';
import { Sender, type SenderOptions } from './sender.js';
import type { ImageRef, Store } from '../store/store.js';

/** Default multicast group and port (inside the lab's 239.77.0.0/16). */
export const DEFAULT_GROUP = '239.77.0.1';
export const DEFAULT_PORT = 9000;

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
export interface SessionOptions extends Omit<SenderOptions, 'manifest' | 'loadChunk' | 'group' | 'port'> {
  group?: string;
  port?: number;
  /** HTTP port for the session description (0: any free one). */
  httpPort?: number;
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
  const manifest = await store.readManifest(name, version);
  const encoded = encodeManifest(manifest);
  const group = options.group ?? DEFAULT_GROUP;
  const port = options.port ?? DEFAULT_PORT;
  const sender = new Sender({
    ...options,
    manifest,
    group,
    port,
    loadChunk: (i) => store.readChunk(chunkAt(manifest.table, i).sha256),
  });
  const senderPort = await sender.start();
  const info: SessionInfo = {
    session: sender.session,
    group,
    port,
    sender: { address: options.address, port: senderPort },
    fragmentSize: options.fragmentSize ?? 1440,
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
  return {
    sender,
    info,
    url: `http://${options.address}:${httpPort}/`,
    image: { name, version },
    close() {
      sender.stop();
      http.close();
    },
  };
}
