/**
 * The NBD export server: serves stored versions read-only over a Unix socket
 * (mode 0600, local use) or over TCP, where TLS is required (STARTTLS in the
 * handshake, proto.md "TLS support"). While any export is open the server
 * holds a store reader's lock, so gc cannot remove a chunk under a client.
 */
import { chmodSync, unlinkSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import type { TLSSocketOptions } from 'node:tls';
import type { Manifest } from '../../protocol/manifest.js';
import type { Lock } from '../store/lock.js';
import type { ImageRef, Store } from '../store/store.js';
import { serveConnection, type CloseReason } from './connection.js';
import { ImageSource } from './image-source.js';

/** Most clients past GO at once per server. */
export const DEFAULT_MAX_CONNECTIONS = 16;
/** Most connections still in the handshake (TLS included) at once per server. */
export const DEFAULT_MAX_HANDSHAKES = 8;
/** Most connections in the handshake at once from one TCP address. */
export const DEFAULT_MAX_HANDSHAKES_PER_ADDRESS = 4;

/** Options of NbdServer. */
export interface NbdServerOptions {
  /** Clients past GO (default DEFAULT_MAX_CONNECTIONS). */
  maxConnections?: number;
  /** Connections in the handshake (default DEFAULT_MAX_HANDSHAKES). */
  maxHandshakes?: number;
  /** Connections in the handshake from one TCP address (default DEFAULT_MAX_HANDSHAKES_PER_ADDRESS). */
  maxHandshakesPerAddress?: number;
  /** Time from accept to GO, TLS included (default DEFAULT_HANDSHAKE_MS in connection.ts). */
  handshakeMs?: number;
  /** Decoded-chunk cache per export, in bytes. */
  cacheBytes?: number;
}

/** One export. */
export interface NbdExport {
  name: string;
  source: ImageSource;
  ref: string;
}

/** Serves exports over any number of listeners. */
export class NbdServer {
  private readonly exports = new Map<string, NbdExport>();
  private readonly listeners: Server[] = [];
  /** Connections in the handshake, with their TCP address (undefined on a Unix socket). */
  private readonly handshaking = new Map<Socket, string | undefined>();
  /** Connections past GO. */
  private readonly serving = new Set<Socket>();
  private readonly unixPaths: string[] = [];
  private lock: Lock | undefined;
  /** Connections closed, by reason. */
  readonly closed: Partial<Record<CloseReason, number>> = {};
  /** Milliseconds-since-epoch of the last activity of a client past GO (GO, a request, its close); handshakes do not count. */
  lastActivity = Date.now();

  constructor(
    readonly store: Store,
    private readonly options: NbdServerOptions = {},
  ) {}

  /** Adds an export of ref under name (default: "NAME@V"); with base, a difference export (see image-source.ts). */
  async add(ref: ImageRef, name?: string, base?: ImageRef): Promise<NbdExport> {
    this.lock ??= this.store.lockReader('serving NBD exports');
    const { name: image, version } = this.store.resolve(ref);
    const manifest = await this.store.readManifest(image, version);
    let baseManifest: Manifest | undefined;
    if (base !== undefined) {
      const b = this.store.resolve(base);
      baseManifest = await this.store.readManifest(b.name, b.version);
    }
    const exportName = name ?? `${image}@${version}`;
    const e = { name: exportName, ref: `${image}@${version}`, source: new ImageSource(this.store, manifest, baseManifest, this.options.cacheBytes) };
    this.exports.set(exportName, e);
    return e;
  }

  /** The export by name; "" is the only export when there is exactly one. */
  lookup(name: string): ImageSource | undefined {
    if (name === '' && this.exports.size === 1) return [...this.exports.values()][0].source;
    return this.exports.get(name)?.source;
  }

  /** Clients past GO now. */
  get connections(): number {
    return this.serving.size;
  }

  /** Connections still in the handshake now. */
  get handshakes(): number {
    return this.handshaking.size;
  }

  /** Listens on a Unix socket, made mode 0600 before anyone can connect. */
  async listenUnix(path: string): Promise<void> {
    const server = this.makeServer(undefined, false);
    const old = process.umask(0o177);
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen(path, () => resolve());
      });
    } finally {
      process.umask(old);
    }
    chmodSync(path, 0o600);
    this.unixPaths.push(path);
  }

  /** Listens on TCP; every client must STARTTLS first. Returns the port. */
  async listenTls(host: string, port: number, tls: TLSSocketOptions): Promise<number> {
    const server = this.makeServer(tls, true);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    const addr = server.address();
    return typeof addr === 'object' && addr !== null ? addr.port : port;
  }

  /**
   * Room for a new connection in the handshake. On TCP nobody has shown a key yet, so a full table
   * never locks newcomers out (someone silent from two addresses could otherwise hold every slot):
   * an address at its cap gives up its own oldest handshake, and a full table loses the oldest one
   * of the address that holds the most. A Unix socket (mode 0600) refuses the newcomer instead.
   */
  private admitHandshake(socket: Socket, address: string | undefined): boolean {
    const o = this.options;
    const evict = (from: string | undefined) => {
      for (const [s, a] of this.handshaking) {
        if (a !== from) continue;
        this.handshaking.delete(s);
        this.closed.busy = (this.closed.busy ?? 0) + 1;
        s.destroy();
        return;
      }
    };
    const counts = new Map<string | undefined, number>();
    for (const a of this.handshaking.values()) counts.set(a, (counts.get(a) ?? 0) + 1);
    if (address === undefined) {
      if (this.handshaking.size >= (o.maxHandshakes ?? DEFAULT_MAX_HANDSHAKES)) return false;
    } else if ((counts.get(address) ?? 0) >= (o.maxHandshakesPerAddress ?? DEFAULT_MAX_HANDSHAKES_PER_ADDRESS)) {
      evict(address);
    } else if (this.handshaking.size >= (o.maxHandshakes ?? DEFAULT_MAX_HANDSHAKES)) {
      const busiest = [...counts.entries()].sort((x, y) => y[1] - x[1])[0][0];
      evict(busiest);
    }
    this.handshaking.set(socket, address);
    return true;
  }

  private makeServer(tls: TLSSocketOptions | undefined, requireTls: boolean): Server {
    const o = this.options;
    const server = createServer({ noDelay: true }, (socket) => {
      socket.on('error', () => undefined);
      const address = requireTls ? socket.remoteAddress : undefined;
      if (!this.admitHandshake(socket, address)) {
        this.closed.busy = (this.closed.busy ?? 0) + 1;
        socket.destroy();
        return;
      }
      void serveConnection(socket, {
        lookup: (n) => this.lookup(n),
        names: () => [...this.exports.keys()],
        tls,
        requireTls,
        handshakeMs: o.handshakeMs,
        onReady: () => {
          this.handshaking.delete(socket);
          if (this.serving.size >= (o.maxConnections ?? DEFAULT_MAX_CONNECTIONS)) return false;
          this.serving.add(socket);
          this.lastActivity = Date.now();
          return true;
        },
        onRequest: () => {
          this.lastActivity = Date.now();
        },
        onClose: (reason) => {
          this.handshaking.delete(socket);
          if (this.serving.delete(socket)) this.lastActivity = Date.now();
          this.closed[reason] = (this.closed[reason] ?? 0) + 1;
        },
      });
    });
    this.listeners.push(server);
    return server;
  }

  /** Closes every listener and connection and releases the reader's lock. */
  async close(): Promise<void> {
    for (const s of [...this.handshaking.keys(), ...this.serving]) s.destroy();
    await Promise.all(this.listeners.map((l) => new Promise<void>((resolve) => l.close(() => resolve()))));
    for (const p of this.unixPaths) {
      try {
        unlinkSync(p);
      } catch {
        // already gone
      }
    }
    this.lock?.release();
    this.lock = undefined;
  }
}
