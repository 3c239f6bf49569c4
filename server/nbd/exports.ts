/**
 * NBD exports the running server offers on request of a token holder
 * (POST /api/images/NAME/V/nbd): each request gets its own TCP listener on
 * the server's address, a fresh TLS-PSK key (returned only in that HTTPS
 * answer), and is closed when no client past GO has been connected for
 * idleMs (a peer that only connects, without the key, keeps nothing open).
 */
import { ClonecastError, ERR } from '../../protocol/errors.js';
import type { Store } from '../store/store.js';
import { NbdServer, type NbdServerOptions } from './server.js';
import { newPsk } from './tls.js';

/** An export is closed after this long without a connected client (default 10 minutes). */
export const DEFAULT_IDLE_MS = 10 * 60_000;
/** Most exports open at once. */
export const MAX_EXPORTS = 8;

/** What POST /api/images/NAME/V/nbd answers. */
export interface OfferedExport {
  export: string;
  host: string;
  port: number;
  size: number;
  tls: 'psk';
  identity: string;
  /** The PSK in hex, as qemu's keys.psk holds it after "IDENTITY:". */
  psk: string;
  idleSeconds: number;
  /** How to connect, with DIR a folder holding keys.psk ("IDENTITY:PSK"). */
  qemuImg: string;
}

/** The exports of one running server. */
export class NbdExports {
  private readonly open = new Set<NbdServer>();
  /** Offers between their check of MAX_EXPORTS and their listener's opening: each holds a slot. */
  private reserved = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly store: Store,
    private readonly host: string,
    private readonly idleMs = DEFAULT_IDLE_MS,
    private readonly serverOptions: NbdServerOptions = {},
  ) {
    this.timer = setInterval(() => this.sweep(), Math.min(30_000, Math.max(50, idleMs / 4)));
    this.timer.unref();
  }

  /** Opens an export of NAME@V. */
  async offer(name: string, version: number): Promise<OfferedExport> {
    this.sweep();
    // The slot is taken before the first await, so concurrent offers cannot all pass the check.
    if (this.open.size + this.reserved >= MAX_EXPORTS) throw new ClonecastError(ERR.BUSY, `${MAX_EXPORTS} NBD exports are open already; wait until one goes idle (${Math.round(this.idleMs / 1000)} s without a client) and ask again`);
    const srv = new NbdServer(this.store, this.serverOptions);
    this.reserved++;
    try {
      const e = await srv.add({ name, version });
      const psk = newPsk();
      const port = await srv.listenTls(this.host, 0, psk.options);
      this.reserved--;
      this.open.add(srv);
      const host = /^(0\.0\.0\.0|::)$/.test(this.host) ? 'SERVER' : this.host;
      return {
        export: e.name,
        host: this.host,
        port,
        size: e.source.size,
        tls: 'psk',
        identity: psk.identity,
        psk: psk.keyHex,
        idleSeconds: Math.round(this.idleMs / 1000),
        qemuImg: `qemu-img info --object tls-creds-psk,id=tls0,dir=DIR,username=${psk.identity},endpoint=client --image-opts driver=raw,file.driver=nbd,file.host=${host},file.port=${port},file.export=${e.name},file.tls-creds=tls0`,
      };
    } catch (err) {
      if (!this.open.has(srv)) this.reserved--;
      await srv.close();
      throw err;
    }
  }

  /** Exports open now. */
  get count(): number {
    return this.open.size;
  }

  /** The servers of the open exports (for tests and counters). */
  get servers(): NbdServer[] {
    return [...this.open];
  }

  private sweep(): void {
    const now = Date.now();
    for (const srv of this.open) {
      if (srv.connections === 0 && now - srv.lastActivity >= this.idleMs) {
        this.open.delete(srv);
        void srv.close();
      }
    }
  }

  /** Closes every export. */
  async close(): Promise<void> {
    clearInterval(this.timer);
    await Promise.all([...this.open].map((s) => s.close()));
    this.open.clear();
  }
}
