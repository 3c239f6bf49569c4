/** `clonecast serve`: the server (store, API, dashboard, PXE, multicast). */
import { DEFAULT_LISTEN } from '../../server/defaults.js';
import { list } from '../args.js';
import { secureBootModeError } from '../../pxe/secureboot.js';
import { COMMON, logLine, version, type Command, type Context } from '../command.js';
import { emitJson } from '../output.js';
import { edgeLine, serveStore } from '../edge.js';
import { CREDENTIALS_HELP, REPOSITORY } from '../repository-options.js';

/** --static-lease MAC=IP,MAC=IP */
function parseStatics(ctx: Context): Map<string, string> | undefined {
  const items = list(ctx.str('static-lease'));
  if (items === undefined) return undefined;
  const out = new Map<string, string>();
  for (const item of items) {
    const m = /^([0-9a-fA-F]{2}(?:[:-][0-9a-fA-F]{2}){5})=(\d+\.\d+\.\d+\.\d+)$/.exec(item);
    if (m === null) throw ctx.usage(`--static-lease takes MAC=IP[,MAC=IP...], e.g. 52:54:00:12:34:56=10.77.0.50; got "${item}"`);
    out.set(m[1].toLowerCase().replace(/-/g, ':'), m[2]);
  }
  return out;
}

function oneOf<T extends string>(ctx: Context, name: string, allowed: readonly T[], fallback: T | undefined, what: string): T | undefined {
  const v = ctx.str(name) ?? fallback;
  if (v !== undefined && !allowed.includes(v as T)) throw ctx.usage(`--${name} takes ${what}; got "${v}"`);
  return v as T | undefined;
}

/** clonecast serve */
export const serve: Command = {
  name: 'serve',
  summary: 'Run the server: image store, admin API and dashboard, the agents\' control channel, multicast, and optionally PXE.',
  usage: '',
  positionals: [],
  options: {
    listen: { kind: 'string', value: 'HOST:PORT', help: 'Where the API, the dashboard and the agents\' channel listen (HTTPS, with a certificate made on first start in DATA/tls).', default: DEFAULT_LISTEN },
    'boot-listen': { kind: 'string', value: 'HOST:PORT', help: 'With --pxe: the plain-HTTP listener for what firmware fetches (boot scripts, kernel, initramfs) and nothing else.', default: 'the --listen host, port + 1' },
    interface: { kind: 'string', value: 'IF', help: 'The network the machines are on: multicast goes out there, and PXE answers only there.' },
    'max-message': { kind: 'positive', value: 'BYTES', help: 'The largest control message an agent may send.' },
    pxe: { kind: 'string', value: 'proxy|full', help: 'Boot machines from this server: proxy beside the lab\'s own DHCP server, full to hand out addresses too (needs --interface).' },
    pool: { kind: 'string', value: 'START-END', help: 'With --pxe full: the addresses to hand out.' },
    router: { kind: 'string', value: 'IP', help: 'With --pxe full: the router to tell machines.' },
    dns: { kind: 'string', value: 'IP,...', help: 'With --pxe full: the DNS servers to tell machines.' },
    'lease-time': { kind: 'positive', value: 'S', help: 'With --pxe full: the lease time in seconds.' },
    'static-lease': { kind: 'string', value: 'MAC=IP,...', help: 'With --pxe full: fixed addresses for these machines.' },
    'boot-dir': { kind: 'string', value: 'DIR', help: 'The boot environment to serve ("clonecast bootenv build").', default: 'DATA/pxe/boot' },
    'pxe-idle': { kind: 'string', value: 'local|agent|menu', help: 'What a machine with no work boots: its own disk, the agent, or a menu.', default: 'local' },
    'pxe-unknown': { kind: 'string', value: 'boot|ignore', help: 'Machines the server does not know (not in its registry, no --static-lease, no entry in DATA/pxe/machines.json): boot them, or ignore them (DHCP says nothing to them: no address, no boot file).', default: 'boot' },
    'pxe-known-only': { kind: 'flag', help: 'Answer only machines the server knows: --pxe-unknown ignore, and their boot scripts are refused too (404). Add a machine by running its agent once, a --static-lease or an entry in DATA/pxe/machines.json.' },
    'wake-broadcast': { kind: 'string', value: 'ADDR,...', help: 'Directed broadcast addresses (e.g. 10.1.2.255) that Wake-on-LAN packets also go to, for machines on a subnet behind a router that forwards them; the limited broadcast on --interface is always used.' },
    'boot-credential-ttl': { kind: 'positive', value: 'S', help: 'How long a boot credential in a named machine\'s boot script stays good for its first Hello.', default: '900' },
    'secure-boot': { kind: 'flag', help: 'UEFI machines boot through Debian\'s signed shim, GRUB and kernel (collected by "clonecast bootenv build") instead of iPXE, so Secure Boot can stay on; per machine: "secureBoot": true|false in DATA/pxe/machines.json. BIOS machines keep iPXE.' },
    efi: { kind: 'string', value: 'ipxe.efi|snponly.efi', help: 'The iPXE binary for UEFI machines.', default: 'ipxe.efi' },
    ...REPOSITORY,
    'repository-refresh': { kind: 'positive', value: 'S', help: 'With --repository: how often the repository\'s catalogue is listed again.', default: '60' },
    ...COMMON,
  },
  details: [
    'The API, the dashboard and both WebSockets (agents, dashboard events) speak only HTTPS/WSS on --listen, with a self-signed',
    'certificate made on first start in DATA/tls (key.pem mode 0600) and kept across restarts. Clients pin its SHA-256 fingerprint,',
    'printed at start ("clonecast fingerprint" prints it again; "clonecast tls renew" makes a new one). With --pxe, a second,',
    'plain-HTTP listener (--boot-listen) serves only what firmware fetches: boot scripts, kernel and initramfs. The dashboard',
    'asks for the token in its login field and keeps it in page memory only; no URL carries it.',
    'With --repository s3://BUCKET/PREFIX (and --endpoint URL) the server is an edge: its --data folder becomes a read-through cache of that repository (refused if it holds images of its own). It lists the repository\'s versions, fetches the chunks it lacks while it multicasts (each checked by SHA-256), keeps them, and sends captures to the repository. If the repository is unreachable it serves its cached versions and refuses the others at once.',
    CREDENTIALS_HELP,
  ],
  interrupted: 'the server stops; sessions are saved and resume at the next start, and agents reconnect when it is back',
  async run(ctx) {
    const pxeMode = oneOf(ctx, 'pxe', ['proxy', 'full'] as const, undefined, "proxy (beside the lab's own DHCP server) or full (this server hands out addresses)");
    const idle = oneOf(ctx, 'pxe-idle', ['local', 'agent', 'menu'] as const, 'local', 'local, agent or menu')!;
    const knownOnly = ctx.flag('pxe-known-only');
    if (knownOnly && ctx.str('pxe-unknown') === 'boot') throw ctx.usage('--pxe-known-only ignores unknown machines; it cannot go with --pxe-unknown boot');
    const unknown = oneOf(ctx, 'pxe-unknown', ['boot', 'ignore'] as const, knownOnly ? 'ignore' : 'boot', 'boot or ignore')!;
    if (ctx.flag('secure-boot') && pxeMode !== undefined) {
      const why = secureBootModeError(pxeMode);
      if (why !== null) throw ctx.usage(why);
    }
    const efi = oneOf(ctx, 'efi', ['ipxe.efi', 'snponly.efi'] as const, 'ipxe.efi', 'ipxe.efi or snponly.efi')!;
    const statics = parseStatics(ctx);
    const { store, edge } = await serveStore(ctx);
    const { startServer } = await import('../../server/app.js');
    const srv = await startServer({
      store,
      listen: ctx.str('listen') ?? DEFAULT_LISTEN,
      bootListen: ctx.str('boot-listen'),
      interface: ctx.str('interface'),
      pxe:
        pxeMode === undefined
          ? undefined
          : {
              mode: pxeMode,
              pool: ctx.str('pool'),
              router: ctx.str('router'),
              dns: list(ctx.str('dns')),
              leaseSeconds: ctx.num('lease-time'),
              statics,
              bootDir: ctx.str('boot-dir'),
              idle,
              unknown,
              knownOnly,
              efiBinary: efi,
              secureBoot: ctx.flag('secure-boot'),
              credentialTtlS: ctx.num('boot-credential-ttl'),
            },
      maxMessage: ctx.num('max-message'),
      wakeBroadcasts: wakeBroadcasts(ctx),
      version: version(),
      log: logLine,
    });
    // The dashboard's URL carries no token (browsers keep URLs): the page asks for it.
    // The token is printed once, when it is made: after that, output that ends up in a log (a service's journal) never holds it.
    if (ctx.json) emitJson({ url: srv.url, dashboard: srv.url, fingerprint: srv.fingerprint, bootUrl: srv.bootUrl ?? null, token: srv.tokenCreated ? srv.token : null, tokenPath: srv.tokenPath, data: store.root, multicastFrom: srv.senderAddress ?? null, repository: edge?.repositoryStatus() ?? null });
    else {
      console.log(`clonecast server ${version()}
  dashboard:   ${srv.url}  (paste the token below into its login field)
  fingerprint: ${srv.fingerprint}${srv.certCreated ? '  (new certificate in ' + srv.certDir + ')' : ''}
               the SHA-256 of this server's self-signed certificate: clients pin it (--fingerprint or CLONECAST_FINGERPRINT);
               a browser warns about the certificate: check that the fingerprint it shows is this one before you accept it
  token:       ${srv.tokenCreated ? `${srv.token}  (new; kept in ${srv.tokenPath}, mode 0600; printed this once)` : `in ${srv.tokenPath} ("clonecast token" prints it; not printed again, so that logs never hold it)`}
               agents and admin commands need it: CLONECAST_TOKEN=T or --token-file ${srv.tokenPath}
  agents:      clonecast agent --server ${srv.url} --fingerprint ${srv.fingerprint} --token-file FILE
  deploy:      clonecast deploy NAME --server ${srv.url} --any --clients N
  multicast:   ${srv.senderAddress !== undefined ? `from ${srv.senderAddress}` : 'off: restart with --interface IF (the network the machines are on) to deploy'}
  network boot: ${srv.pxe !== undefined ? `${pxeMode === 'proxy' ? "proxyDHCP (the lab's DHCP server hands out addresses)" : 'DHCP'} + TFTP on ${ctx.str('interface')}, iPXE scripts${ctx.flag('secure-boot') ? ' (BIOS; UEFI: shim and GRUB, Secure Boot)' : ''} and boot files over plain HTTP at ${srv.bootUrl}boot/` : 'off (--pxe proxy|full to boot machines from this server)'}
  image store: ${store.root}
  repository:  ${edgeLine(edge)}
  stop with Ctrl-C`);
    }
    // Stopped by the operator, or by a fault that already closed every listener (srv.ended).
    const fault = await new Promise<Error | undefined>((resolve) => {
      ctx.onInterrupt(() => resolve(undefined));
      process.once('SIGTERM', () => resolve(undefined));
      void srv.ended.then(resolve);
    });
    if (fault !== undefined) {
      edge?.close();
      logLine('warn', `the server stopped: ${fault.message}; sessions are saved and resume at the next start`);
      return 1;
    }
    logLine('info', 'stopping: sessions are saved and resume at the next start');
    await srv.close();
    edge?.close();
    return 0;
  },
};

/** --wake-broadcast, checked before the server starts. */
function wakeBroadcasts(ctx: Context): string[] | undefined {
  const given = list(ctx.str('wake-broadcast'));
  if (given === undefined) return undefined;
  if (given.some((a) => !/^(\d{1,3})(\.\d{1,3}){3}$/.test(a) || a.split('.').some((o) => Number(o) > 255))) {
    throw ctx.usage(`--wake-broadcast takes IPv4 broadcast addresses such as 10.1.2.255; got "${given.join(',')}"`);
  }
  return given;
}
