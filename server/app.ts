/**
 * `clonecast serve`: the image store, the machine registry, sessions and
 * their senders, the agent control channel, the admin API, the live event
 * stream and the dashboard, on one HTTPS listener (a self-signed certificate
 * clients pin by its fingerprint: server/tls.ts). With network boot, a second
 * listener speaks plain HTTP for what firmware fetches (boot scripts, kernel,
 * initramfs) and nothing else.
 */
import { NbdExports } from './nbd/exports.js';
import { createServer as createPlainServer, type Server as PlainServer } from 'node:http';
import { createServer, type Server } from 'node:https';
import { WebSocketServer, type WebSocket } from 'ws';
import { CONTROL } from '../protocol/control.js';
import { ClonecastError, ERR } from '../protocol/errors.js';
import { handle, handleBoot, State, type ApiContext } from './api.js';
import { loadOrCreateCert } from './tls.js';
import { AgentChannel, hangUp, type AgentChannelOptions } from './control.js';
import { DEFAULT_LISTEN } from './defaults.js';
import { interfaceAddress } from './mcast/session.js';
import { LIMITED_BROADCAST, wake } from './wake.js';
import { Registry } from './registry.js';
import { SessionManager } from './sessions.js';
import { CaptureManager } from './captures.js';
import { loadOrCreateToken, tokenMatches } from './token.js';
import type { Store } from './store/store.js';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { StateHealth, StateStatus } from '../state/state-file.js';
import { ipxeScript, machineOverride, startPxe, type BootAction, type PxeOptions, type PxeServices } from '../pxe/service.js';
import { grubConfig } from '../pxe/grub.js';
import { grubOverTftp } from './boot-grub.js';
import { bootBinding, bindingStands, type BootContext } from './boot-credentials.js';

export { DEFAULT_LISTEN };

/** Parses HOST:PORT (PORT may be 0 for any free port). */
export function parseListen(listen: string): { host: string; port: number } {
  const i = listen.lastIndexOf(':');
  const port = Number(listen.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port) || port < 0 || port > 65535) throw new ClonecastError(ERR.USAGE, `--listen takes HOST:PORT, e.g. ${DEFAULT_LISTEN}; got "${listen}"`);
  return { host: listen.slice(0, i).replace(/^\[|\]$/g, ''), port };
}

/** How to run the server. */
export interface ServerOptions {
  store: Store;
  listen?: string;
  /** With pxe: where the plain-HTTP boot listener listens (default: the listen host, its port + 1; port 0 when that is 0). */
  bootListen?: string;
  /** Interface for multicast; default: the listen address when it is a concrete one. */
  interface?: string;
  version: string;
  maxMessage?: number;
  heartbeatMs?: number;
  /** A running capture whose machine has been disconnected this long fails, s (default CAPTURE_DEFAULTS.lostAfterS). */
  captureLostAfterS?: number;
  /** The sessions' housekeeping interval, ms (tests make it slow to show that start rules do not wait for it). */
  sessionTickMs?: number;
  /** How often agents report progress, ms (default the control channel's). */
  progressMs?: number;
  /** Network boot on the interface (needs interface). */
  pxe?: PxeConfig;
  /** Directed broadcast addresses Wake-on-LAN packets also go to (the limited broadcast on the interface always). */
  wakeBroadcasts?: string[];
  log?: (level: 'info' | 'warn' | 'debug', message: string) => void;
}

/** Network boot settings of `serve --pxe`. */
export interface PxeConfig extends Omit<PxeOptions, 'interface' | 'httpBase' | 'dataRoot' | 'log' | 'isKnown'> {
  /** Folder with the agent's kernel and initramfs (default DATA/pxe/boot). */
  bootDir?: string;
  kernel?: string;
  initrd?: string;
  cmdline?: string;
  /** What a machine with no work boots: its disk (default), the agent, or a menu. */
  idle?: BootAction;
  /** How long a boot credential stays good for its first Hello, s (default CREDENTIAL_DEFAULTS.ttlMs). */
  credentialTtlS?: number;
}

/** A running server. */
export interface RunningServer {
  /** https://HOST:PORT/ of the API, the dashboard and the agents' channel. */
  url: string;
  /** SHA-256 fingerprint of the server's certificate: what clients pin. */
  fingerprint: string;
  /** The folder holding the certificate (cert.pem) and its key (key.pem). */
  certDir: string;
  /** A new certificate was made at this start. */
  certCreated: boolean;
  /** With pxe: http://ADDRESS:PORT/ of the plain-HTTP boot listener (boot scripts and files only). */
  bootUrl: string | undefined;
  token: string;
  tokenPath: string;
  tokenCreated: boolean;
  senderAddress: string | undefined;
  registry: Registry;
  sessions: SessionManager;
  agents: AgentChannel;
  captures: CaptureManager;
  pxe: PxeServices | undefined;
  /** Resolves when the server has stopped: with the fault that stopped it, or undefined after close(). */
  ended: Promise<Error | undefined>;
  close(): Promise<void>;
}

/** Events are pushed to dashboards at most this often, ms. */
const PUSH_MS = 300;
/** Dashboard connections that have not sent the token yet, at most. */
const MAX_PENDING_WATCHERS = 64;
/** Dashboards connected with the token, at most. */
const MAX_WATCHERS = 256;

/** Starts everything; resolves once it listens. */
export async function startServer(o: ServerOptions): Promise<RunningServer> {
  const { host, port } = parseListen(o.listen ?? DEFAULT_LISTEN);
  const { token, path: tokenPath, created } = loadOrCreateToken(o.store.root);
  const senderAddress = o.interface !== undefined ? interfaceAddress(o.interface) : /^(0\.0\.0\.0|::|localhost)$/.test(host) ? undefined : host;
  const tls = await loadOrCreateCert(o.store.root, [host, senderAddress ?? ''].filter((n) => n !== ''));
  const registry = new Registry(o.store);
  if (registry.setAside) o.log?.('warn', `machines.json could not be read; kept as ${registry.setAside}, starting an empty registry`);
  if (o.pxe !== undefined && o.interface === undefined) throw new ClonecastError(ERR.USAGE, '--pxe needs --interface IF: the network the machines boot on');
  const agents = new AgentChannel({ token, acceptBootTokens: o.pxe !== undefined, credentialTtlMs: o.pxe?.credentialTtlS !== undefined ? o.pxe.credentialTtlS * 1000 : undefined, bindingValid: (b, mac) => bindingStands(b, mac, bootCtx), registry, version: o.version, maxMessage: o.maxMessage, heartbeatMs: o.heartbeatMs, progressMs: o.progressMs, log: o.log } satisfies AgentChannelOptions);
  const sessions = new SessionManager({ store: o.store, registry, agents, senderAddress, log: o.log, tickMs: o.sessionTickMs });
  agents.attach(sessions);
  const captures = new CaptureManager(o.store, registry, agents, { log: o.log, lostAfterS: o.captureLostAfterS });
  const bootCtx: BootContext = { sessions, captures, registry, dataRoot: o.store.root };
  await sessions.restore();
  // Machines held by a session or capture that ended while the server was down are free again.
  // The sessions and captures are the record: holds they do not know are dropped, and every machine an
  // active session still lists is held by it again (machines.json may have lagged sessions.json at a crash).
  registry.reconcile((a, id) => (a.kind === 'session' ? sessions.holds(a.id, id) : a.kind === 'capture' ? captures.holds(a.id, id) : true));
  sessions.reclaim();
  captures.reclaim();
  const stateFiles = (): { file: string; state: StateStatus }[] => [
    { file: 'machines.json', state: registry.file },
    { file: 'sessions.json', state: sessions.file },
    { file: 'captures.json', state: captures.file },
    ...(pxe?.dhcp.leases?.file !== undefined ? [{ file: 'pxe/leases.json', state: pxe.dhcp.leases.file }] : []),
  ];
  // The pacing tick and the DHCP server share this loop: its delay is the first thing to look at when they lag.
  const loopDelay = monitorEventLoopDelay({ resolution: 10 });
  loopDelay.enable();
  const ctx: ApiContext = {
    store: o.store, registry, sessions, agents, token, version: o.version, senderAddress, boot: undefined, pxe: () => pxe, captures, stateFiles, loopDelay,
    wake: (macs) => wake(macs, { device: o.interface, broadcasts: [LIMITED_BROADCAST, ...(o.wakeBroadcasts ?? [])] }),
    nbd: new NbdExports(o.store, host),
  };
  const state = new State(ctx);
  let pxe: PxeServices | undefined;

  // A connection that has not finished its TLS handshake in 5 s is closed (Node's default waits 120 s).
  const server: Server = createServer({ cert: tls.cert, key: tls.key, handshakeTimeout: 5000 }, (req, res) => void handle(ctx, state, req, res));
  // A client that does not speak TLS, or will not accept the certificate, is no fault of the server's.
  server.on('tlsClientError', (err) => o.log?.('debug', `TLS: ${err.message}`));
  let bootServer: PlainServer | undefined;
  const agentWss = new WebSocketServer({ noServer: true, maxPayload: o.maxMessage ?? CONTROL.MAX_MESSAGE });
  const eventWss = new WebSocketServer({ noServer: true, maxPayload: 4096 });
  server.on('upgrade', (req, socket, head) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    const from = req.socket.remoteAddress?.replace(/^::ffff:/, '') ?? '';
    if (path === CONTROL.AGENT_PATH && agents.admits(from)) agentWss.handleUpgrade(req, socket, head, (ws) => agents.accept(ws, req));
    else if (path === CONTROL.EVENTS_PATH && watchersPending < MAX_PENDING_WATCHERS) eventWss.handleUpgrade(req, socket, head, (ws) => watch(ws));
    else socket.destroy();
  });

  // Dashboards: the first message is {"token": "..."}; then a snapshot on every change.
  const watchers = new Set<WebSocket>();
  let watchersPending = 0;
  let dirty = false;
  const watch = (ws: WebSocket) => {
    watchersPending++;
    let pending = true;
    const settle = () => pending && ((pending = false), watchersPending--);
    const deadline = setTimeout(() => {
      settle();
      ws.terminate();
    }, 2000);
    ws.on('close', settle);
    ws.once('message', (data) => {
      clearTimeout(deadline);
      settle();
      let presented: unknown;
      try {
        presented = (JSON.parse(String(data)) as { token?: unknown }).token;
      } catch {
        presented = undefined;
      }
      if (!tokenMatches(typeof presented === 'string' ? presented : undefined, token)) {
        ws.send(JSON.stringify({ error: 'wrong or missing token' }));
        ws.close(4401, 'wrong or missing token');
        hangUp(ws);
        return;
      }
      if (watchers.size >= MAX_WATCHERS) {
        ws.close(1013, 'too many dashboards connected');
        hangUp(ws);
        return;
      }
      watchers.add(ws);
      state.snapshot().then(
        (s) => ws.send(JSON.stringify(s)),
        (err: Error) => o.log?.('warn', `dashboard snapshot: ${err.message}`),
      );
    });
    ws.on('close', () => watchers.delete(ws));
    ws.on('error', () => watchers.delete(ws));
  };
  const changed = () => (dirty = true);
  // A state file that cannot be saved is said once when it starts failing and once when it recovers.
  const watchHealth = (file: string, state: StateStatus) =>
    state.on('health', (h: StateHealth) => {
      o.log?.(h.ok ? 'info' : 'warn', h.ok ? `${file} saved again` : `${file} cannot be saved (${h.error}); the server keeps running and retries; changes since ${new Date(h.pendingSince ?? Date.now()).toISOString()} are in memory only`);
      changed();
    });
  for (const { file, state } of stateFiles()) watchHealth(file, state);
  registry.on('changed', changed);
  sessions.on('changed', changed);
  captures.on('changed', () => {
    changed();
    state.imagesChanged();
  });
  const pusher = setInterval(() => {
    if (!dirty || watchers.size === 0) return;
    dirty = false;
    state.snapshot().then(
      (s) => {
        const text = JSON.stringify(s);
        for (const ws of watchers) ws.send(text);
      },
      (err: Error) => o.log?.('warn', `dashboard snapshot: ${err.message}`),
    );
  }, PUSH_MS);

  // A start that fails stops everything started so far (timers, senders, state files) before it throws.
  const abandon = async (err: unknown): Promise<never> => {
    clearInterval(pusher);
    loopDelay.disable();
    agents.closeAll();
    server.close();
    bootServer?.close();
    await Promise.all([pxe?.close(), sessions.close(), captures.close(), registry.close(), ctx.nbd?.close()]);
    throw err;
  };
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) =>
      reject(err.code === 'EADDRINUSE' ? new ClonecastError(ERR.BUSY, `${host}:${port} is already in use; stop what listens there or pass --listen HOST:PORT`) : err),
    );
    server.listen(port, host, () => resolve());
  }).catch(abandon);
  const addr = server.address();
  const actual = typeof addr === 'object' && addr !== null ? addr.port : port;
  const url = `https://${host.includes(':') ? `[${host}]` : host}:${actual}/`;
  let bootUrl: string | undefined;
  if (o.pxe !== undefined) {
    // Booting clients must reach both listeners on the boot interface's address.
    const reachable = host === senderAddress || /^(0\.0\.0\.0|::)$/.test(host);
    if (!reachable) {
      return await abandon(new ClonecastError(ERR.USAGE, `--pxe: booting machines reach this server on ${senderAddress}, but it listens on ${host}; use --listen ${senderAddress}:${actual} or 0.0.0.0:${actual}`));
    }
    const cfg = o.pxe;
    try {
      const boot = parseListen(o.bootListen ?? `${host.includes(':') ? `[${host}]` : host}:${port === 0 ? 0 : port + 1}`);
      const plain = createPlainServer((req, res) => void handleBoot(ctx, req, res));
      bootServer = plain;
      await new Promise<void>((resolve, reject) => {
        plain.once('error', (err: NodeJS.ErrnoException) =>
          reject(err.code === 'EADDRINUSE' ? new ClonecastError(ERR.BUSY, `${boot.host}:${boot.port} (the boot listener) is already in use; stop what listens there or pass --boot-listen HOST:PORT`) : err),
        );
        plain.listen(boot.port, boot.host, () => resolve());
      });
      const bootAddr = plain.address();
      bootUrl = `http://${senderAddress}:${typeof bootAddr === 'object' && bootAddr !== null ? bootAddr.port : boot.port}/`;
    } catch (err) {
      return await abandon(err);
    }
    const base = bootUrl;
    const agentServer = `https://${senderAddress}:${actual}/`;
    try {
      pxe = await startPxe({ ...cfg, interface: o.interface!, httpBase: base, dataRoot: o.store.root, log: o.log, isKnown: (mac) => registry.get(mac) !== undefined, grubConfig: (mac, client) => grubOverTftp(ctx, mac, client), onClosed: changed });
    } catch (err) {
      return await abandon(err);
    }
    if (pxe.dhcp.leases?.file !== undefined) watchHealth('pxe/leases.json', pxe.dhcp.leases.file);
    ctx.boot = {
      dir: cfg.bootDir ?? join(o.store.root, 'pxe', 'boot'),
      script: (mac, format = 'ipxe') => {
        const wanted = sessions.wants(mac);
        const override = machineOverride(o.store.root, mac)?.action;
        const action = wanted ? 'agent' : (override ?? cfg.idle ?? 'local');
        // A credential only for a machine a session or capture names, or the administrator named (never in the log).
        const binding = action === 'local' ? null : bootBinding(mac, bootCtx);
        const credential = binding === null ? undefined : agents.credentials.issue(mac, binding);
        const why = wanted ? '' : override !== undefined ? ' (machines.json)' : action !== 'local' ? ' (--pxe-idle)' : '';
        const cred = action === 'local' ? '' : binding !== null ? `, with a boot credential for ${binding.kind === 'machine' ? 'this machine' : `${binding.kind} ${binding.id}`}` : ', no credential (unverified)';
        o.log?.('info', `boot: ${format === 'grub' ? 'GRUB config' : 'script'} for ${mac}: ${action}${why}${cred}`);
        return (format === 'grub' ? grubConfig : ipxeScript)(action, { base, server: agentServer, fingerprint: tls.fingerprint, mac, token: credential, kernel: cfg.kernel ?? 'vmlinuz', initrd: cfg.initrd ?? 'initrd.img', cmdline: cfg.cmdline });
      },
    };
    o.log?.('info', `pxe: ${cfg.mode === 'proxy' ? 'proxyDHCP (no addresses handed out)' : 'DHCP'} and TFTP on ${o.interface} (${pxe.serverAddress}); boot scripts at ${base}boot/ipxe`);
  }
  // One way down: close() ends every listener and timer once, whether asked or after a fault.
  let closing: Promise<void> | undefined;
  let endedBy: ((err: Error | undefined) => void) | undefined;
  const ended = new Promise<Error | undefined>((r) => (endedBy = r));
  const close = (err?: Error): Promise<void> =>
    (closing ??= (async () => {
      if (err !== undefined) o.log?.('warn', `the server is stopping: ${err.message}`);
      clearInterval(pusher);
      loopDelay.disable();
      agents.closeAll();
      await Promise.all([pxe?.close(), sessions.close(), registry.close(), captures.close(), ctx.nbd?.close()]);
      for (const ws of watchers) ws.terminate();
      await Promise.all([new Promise<void>((r) => server.close(() => r())), bootServer && new Promise<void>((r) => bootServer!.close(() => r()))]);
      endedBy?.(err);
    })());
  server.on('error', (err) => void close(err));
  bootServer?.on('error', (err) => void close(err));
  return {
    url,
    fingerprint: tls.fingerprint,
    certDir: tls.dir,
    certCreated: tls.created,
    bootUrl,
    token,
    tokenPath,
    tokenCreated: created,
    senderAddress,
    registry,
    sessions,
    agents,
    captures,
    pxe,
    ended,
    close: () => close(),
  };
}
