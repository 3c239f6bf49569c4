/**
 * The client side of the server's TLS: every connection to a clonecast
 * server (admin CLI, agent, lab, tests) is made here and checked against the
 * SHA-256 fingerprint of the server's certificate before a single byte of a
 * request is written. The server's certificate is self-signed (made by
 * `serve` on first start), so no certificate authority vouches for it: the
 * fingerprint, handed out by the administrator or read from the server's own
 * data directory, is the only thing that does.
 *
 * How: an https.Agent whose createConnection opens the TLS socket itself,
 * waits for the handshake (TLS proves the peer holds the key of the
 * certificate it showed), compares that certificate's fingerprint with the
 * pin, and only then hands the socket to the HTTP or WebSocket client, which
 * writes its request (and its token) after that.
 */
import { Agent, request, type AgentOptions, type RequestOptions } from 'node:https';
import { connect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import type { Duplex } from 'node:stream';
import { ClonecastError, ERR } from '../protocol/errors.js';

/** The form fingerprints are printed in: 32 upper-case hex bytes joined by colons (as `openssl x509 -fingerprint -sha256` prints). */
export const FINGERPRINT_FORM = /^[0-9A-F]{2}(:[0-9A-F]{2}){31}$/;

/** A fingerprint as typed (any case, with or without colons, an optional "sha256:" in front) in the printed form; throws a usage error otherwise. */
export function normalizeFingerprint(text: string): string {
  const hex = text.trim().replace(/^sha-?256[:=]/i, '').replace(/[:\s]/g, '').toUpperCase();
  if (!/^[0-9A-F]{64}$/.test(hex)) {
    throw new ClonecastError(ERR.USAGE, `"${text.slice(0, 120)}" is not a SHA-256 fingerprint (64 hex digits, colons allowed); "clonecast serve" prints the server's, and "clonecast fingerprint" on the server prints it again`);
  }
  return hex.match(/../g)!.join(':');
}

/** The error for a server whose certificate is not the pinned one. */
export function pinMismatch(host: string, seen: string, pin: string): ClonecastError {
  return new ClonecastError(
    ERR.CERT_MISMATCH,
    `the server at ${host} showed a certificate with fingerprint ${seen}, not the expected ${pin}; nothing was sent to it. If the server's certificate was renewed, get the new fingerprint ("clonecast fingerprint" on the server) and pass it with --fingerprint or CLONECAST_FINGERPRINT; otherwise something else answers at that address`,
    { host, seen, expected: pin },
  );
}

/** An https.Agent that hands out only sockets whose peer showed the pinned certificate. */
export class PinnedAgent extends Agent {
  readonly pin: string;

  constructor(pin: string, options: AgentOptions = {}) {
    super({ keepAlive: false, ...options });
    this.pin = normalizeFingerprint(pin);
  }

  // Node's http Agent accepts a socket later through the callback when this returns nothing.
  override createConnection(options: RequestOptions, callback?: (err: Error | null, stream: Duplex) => void): Duplex | undefined {
    const host = (options.host ?? options.hostname ?? 'localhost').replace(/^\[|\]$/g, '');
    const servername = (options as ConnectionOptions).servername;
    pinnedSocket({ host, port: Number(options.port ?? 443), servername, timeout: options.timeout, localAddress: options.localAddress }, this.pin).then(
      (socket) => callback?.(null, socket),
      (err: Error) => callback?.(err, undefined as unknown as Duplex),
    );
    return undefined;
  }
}

/** Opens a TLS connection and resolves with it once its certificate matches pin; nothing is written to it before. */
export function pinnedSocket(o: { host: string; port: number; servername?: string; timeout?: number; localAddress?: string }, pin: string): Promise<TLSSocket> {
  const expected = normalizeFingerprint(pin);
  return new Promise((resolve, reject) => {
    // No CA vouches for a self-signed certificate: the fingerprint check below is the verification.
    const servername = o.servername ?? (/^[\d.]+$|:/.test(o.host) ? undefined : o.host);
    const options: ConnectionOptions & { localAddress?: string } = { host: o.host, port: o.port, localAddress: o.localAddress, servername, rejectUnauthorized: false, ALPNProtocols: ['http/1.1'] };
    const socket = connect(options);
    const fail = (err: Error) => {
      socket.destroy();
      reject(err);
    };
    const timer = setTimeout(() => fail(new ClonecastError(ERR.UNREACHABLE, `no TLS handshake with ${o.host}:${o.port} within 10 s`)), o.timeout ?? 10_000);
    socket.once('error', (err) => {
      clearTimeout(timer);
      const plain = /wrong version number|packet length too long|unexpected eof/i.test(err.message);
      fail(plain ? new ClonecastError(ERR.UNREACHABLE, `${o.host}:${o.port} does not speak TLS (${err.message}); the server's admin API and agent channel are on its --listen port over https://`) : err);
    });
    socket.once('secureConnect', () => {
      clearTimeout(timer);
      const seen = socket.getPeerCertificate()?.fingerprint256 ?? '';
      if (seen !== expected) return fail(pinMismatch(`${o.host}:${o.port}`, seen || 'none', expected));
      socket.removeAllListeners('error');
      resolve(socket);
    });
  });
}

/** What pinnedFetch answers: the parts of a fetch Response the clients use. */
export interface PinnedResponse {
  status: number;
  ok: boolean;
  headers: Headers;
  text(): Promise<string>;
  json(): Promise<unknown>;
  arrayBuffer(): Promise<ArrayBuffer>;
}

/** A request as pinnedFetch takes it. */
export interface PinnedInit {
  method?: string;
  headers?: Record<string, string>;
  body?: string | Uint8Array;
  /** The server certificate's SHA-256 fingerprint. */
  pin: string;
  signal?: AbortSignal;
}

/** Refuses a URL that would carry a request in clear. */
export function httpsUrl(url: string | URL): URL {
  const u = new URL(url);
  if (u.protocol === 'http:' || u.protocol === 'ws:') throw new ClonecastError(ERR.USAGE, `${u.origin} is plain HTTP; the server speaks only HTTPS there: use https://${u.host}${u.pathname}`);
  if (u.protocol !== 'https:' && u.protocol !== 'wss:') throw new ClonecastError(ERR.USAGE, `${u.href} is not an https:// URL`);
  return u;
}

/** fetch() over a pinned TLS connection: the body is read whole (the API's answers are small). */
export function pinnedFetch(url: string | URL, init: PinnedInit): Promise<PinnedResponse> {
  const u = httpsUrl(url);
  const agent = new PinnedAgent(init.pin);
  return new Promise<PinnedResponse>((resolve, reject) => {
    const body = init.body === undefined ? undefined : typeof init.body === 'string' ? Buffer.from(init.body) : init.body;
    const req = request(u, { method: init.method ?? 'GET', agent, signal: init.signal, headers: { ...init.headers, ...(body !== undefined ? { 'content-length': String(body.length) } : {}) } }, (res) => {
      const parts: Buffer[] = [];
      res.on('data', (d: Buffer) => parts.push(d));
      res.on('error', reject);
      res.on('end', () => {
        const all = Buffer.concat(parts);
        const status = res.statusCode ?? 0;
        resolve({
          status,
          ok: status >= 200 && status < 300,
          headers: new Headers(Object.entries(res.headers).flatMap(([k, v]) => (v === undefined ? [] : Array.isArray(v) ? v.map((x) => [k, x] as [string, string]) : [[k, v] as [string, string]]))),
          text: async () => all.toString('utf8'),
          json: async () => JSON.parse(all.toString('utf8')) as unknown,
          arrayBuffer: async () => all.buffer.slice(all.byteOffset, all.byteOffset + all.length) as ArrayBuffer,
        });
      });
    });
    req.on('error', reject);
    req.end(body);
  }).finally(() => agent.destroy());
}

/** Options for a `ws` WebSocket to the server: its connection goes through the pin check. */
export function pinnedWebSocketOptions(pin: string): { agent: PinnedAgent } {
  return { agent: new PinnedAgent(pin) };
}

/** The WebSocket URL for a path on the server (https → wss). */
export function wssUrl(path: string, server: string): URL {
  const u = new URL(path, httpsUrl(server));
  u.protocol = 'wss:';
  return u;
}
