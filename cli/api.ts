/**
 * The client side of the server's admin API: where the server is, the
 * token, one request function, and the shapes of what the routes answer
 * (only the fields the CLI reads; --json prints whatever the server sent).
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ClonecastError, ERR } from '../protocol/errors.js';
import { TOKEN_FILE } from '../server/token.js';
import { readCert } from '../server/tls.js';
import { normalizeFingerprint, pinnedFetch, type PinnedResponse } from '../native/pinned-tls.js';
import type { CaptureRequest, StartRule } from '../protocol/api.js';

export type { CaptureRequest, StartRule };

/** Where the server is and how to prove we may talk to it. */
export interface Client {
  server: string;
  token: string;
  /** SHA-256 fingerprint of the server's certificate; nothing is sent to a server that shows another. */
  fingerprint: string;
}

/** A machine as GET /api/machines lists it. */
export interface MachineView {
  id: string;
  hostname: string;
  /** The name an operator gave it (machines set --name); may be absent on older servers. */
  name?: string;
  groups?: string[];
  address: string;
  online: boolean;
  state: string;
  progress: { etaSeconds?: number | null } | null;
  lastError: string;
  lastSeen: string;
  lastImage: { name: string; version: number } | null;
  /** How its agent proved who it is: token, credential or unverified (absent on older servers). */
  trust?: string;
}

/** One machine's part of a session. */
export interface SessionMachineView {
  state: string;
  error: string;
  chunksDone: number;
  chunksTotal: number;
  rateBps: number;
  loss: number;
  skipped: number;
  seconds: number;
}

/** A session as /api/sessions answers it. */
export interface SessionView {
  id: number;
  image: string;
  version: number;
  group: string;
  port: number;
  state: string;
  reason: string;
  verify: boolean;
  createdAt: string;
  machines: Record<string, SessionMachineView>;
}

/** The body of POST /api/sessions. */
export interface DeployRequest {
  image: string;
  rule: StartRule;
  rateMbit?: number;
  after?: 'wait' | 'reboot' | 'poweroff';
  target?: string;
  verify?: boolean;
  /** Also read each whole disk back at the end. */
  finalVerify?: boolean;
  /** Trim the image's unused chunks on each disk. */
  discard?: boolean;
  /** Grow the last partition and its filesystem to the end of a larger disk. */
  growLast?: boolean;
  dropAfterS?: number;
  differential?: boolean;
  /** Seal every chunk with AES-256-GCM on the wire. */
  encrypt?: boolean;
  /** Wake the named machines (Wake-on-LAN) once the session exists. */
  wake?: boolean;
  /** false: do not write the machines' names into the deployed systems. */
  nameMachines?: boolean;
}

/** A capture as /api/captures answers it. */
export interface CaptureView {
  id: number;
  machine: string;
  image: string;
  device: string;
  state: string;
  error: string;
  progress: { chunksDone: number; chunksTotal: number; bytesRead: number; reused: number; bytesSent: number };
  received: { chunks: number; bytes: number; newBytes: number };
  result: { version: number; newBytes: number; diskSize: number; dedupeRatio: number; badRanges: unknown[] } | null;
}

/**
 * The token: --token, else --token-file, else CLONECAST_TOKEN, else the
 * local data directory's token file (on the server's own host).
 */
export function clientToken(o: { flag?: string; file?: string; dataRoot: string }): string {
  if (o.flag !== undefined && o.flag !== '') return o.flag;
  if (o.file !== undefined) {
    let t: string;
    try {
      t = readFileSync(o.file, 'utf8').trim();
    } catch (err) {
      throw new ClonecastError(ERR.UNAUTHORIZED, `cannot read the token file ${o.file} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
    }
    if (t === '') throw new ClonecastError(ERR.UNAUTHORIZED, `the token file ${o.file} is empty`);
    return t;
  }
  const env = process.env.CLONECAST_TOKEN;
  if (env !== undefined && env !== '') return env;
  const file = join(o.dataRoot, TOKEN_FILE);
  if (existsSync(file)) {
    try {
      return readFileSync(file, 'utf8').trim();
    } catch {
      // not readable by this user: fall through to the message
    }
  }
  throw new ClonecastError(ERR.UNAUTHORIZED, 'no token: set CLONECAST_TOKEN or pass --token-file PATH (the server prints the token at start; "clonecast token" on the server prints it too)');
}

/**
 * The server certificate's fingerprint: --fingerprint, else
 * CLONECAST_FINGERPRINT, else the local data directory's certificate (on the
 * server's own host).
 */
export function clientFingerprint(o: { flag?: string; dataRoot: string }): string {
  if (o.flag !== undefined && o.flag !== '') return normalizeFingerprint(o.flag);
  const env = process.env.CLONECAST_FINGERPRINT;
  if (env !== undefined && env !== '') return normalizeFingerprint(env);
  let local;
  try {
    local = readCert(o.dataRoot);
  } catch {
    local = undefined;
  }
  if (local !== undefined) return local.fingerprint;
  throw new ClonecastError(ERR.USAGE, 'no fingerprint for the server\'s certificate: pass --fingerprint SHA256 or set CLONECAST_FINGERPRINT ("clonecast serve" prints it at start; "clonecast fingerprint" on the server prints it too)');
}

/** Calls the admin API; errors become ClonecastErrors with the server's message. */
export async function api<T>(c: Client, method: string, path: string, body?: unknown): Promise<T> {
  const url = new URL(path, c.server);
  let res: PinnedResponse;
  try {
    res = await pinnedFetch(url, {
      method,
      pin: c.fingerprint,
      headers: { authorization: `Bearer ${c.token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      body: body !== undefined ? JSON.stringify(body) : undefined,
    });
  } catch (err) {
    if (err instanceof ClonecastError) throw err;
    throw new ClonecastError(ERR.UNREACHABLE, `cannot reach the server at ${c.server} (${(err as Error & { cause?: Error }).cause?.message ?? (err as Error).message}); is "clonecast serve" running there?`);
  }
  const text = await res.text();
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  if (!res.ok) {
    const e = (parsed as { error?: { code?: string; message?: string } } | undefined)?.error;
    throw new ClonecastError(e?.code ?? ERR.UNREACHABLE, e?.message ?? `the server answered ${res.status}`);
  }
  return parsed as T;
}
