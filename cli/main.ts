/**
 * The clonecast command line. The only place that calls process.exit; exit
 * codes are listed in EXIT and in the README.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { projectRoot } from '../../native/addon.js';
import { dataDir, parseRef, Store } from '../store/store.js';
import { DEFAULT_LISTEN } from '../defaults.js';
import { printInfo, printList, printVerify, printImport, printExport, printGc } from './output.js';
import { formatBytes as fmtBytes } from '../progress.js';

// Each command loads only what it uses: startup time counts in every run.
const importImage = async (...a: Parameters<typeof import('../store/import.js').importImage>) => (await import('../store/import.js')).importImage(...a);
const exportImage = async (...a: Parameters<typeof import('../store/export.js').exportImage>) => (await import('../store/export.js')).exportImage(...a);
const maintenance = () => import('../store/maintenance.js');
const transfer = () => import('./transfer.js');
const admin = () => import('./admin.js');

/** Exit codes (also in the README). */
export const EXIT = Object.freeze({
  OK: 0,
  FAILURE: 1,
  USAGE: 2,
  NOT_FOUND: 3,
  DAMAGED: 4,
  BUSY: 5,
  REFUSED: 6,
  TOO_SMALL: 7,
  IO: 8,
  NEWER_FORMAT: 9,
  /** agent --once --power-exit: done, and the session asks for a reboot / a power-off. */
  AFTER_REBOOT: 10,
  AFTER_POWEROFF: 11,
  INTERRUPTED: 130,
});

const CODE_TO_EXIT: Record<string, number> = {
  [ERR.USAGE]: EXIT.USAGE,
  [ERR.BAD_NAME]: EXIT.USAGE,
  [ERR.NOT_FOUND]: EXIT.NOT_FOUND,
  [ERR.DAMAGED]: EXIT.DAMAGED,
  [ERR.CHUNK_CORRUPT]: EXIT.DAMAGED,
  [ERR.CHUNK_MISSING]: EXIT.DAMAGED,
  [ERR.MANIFEST_CORRUPT]: EXIT.DAMAGED,
  [ERR.BUSY]: EXIT.BUSY,
  [ERR.DISK_IN_USE]: EXIT.REFUSED,
  [ERR.BOOT_DISK]: EXIT.REFUSED,
  [ERR.TARGET_TOO_SMALL]: EXIT.TOO_SMALL,
  [ERR.READ_ERROR]: EXIT.IO,
  [ERR.WRITE_ERROR]: EXIT.IO,
  [ERR.MANIFEST_VERSION]: EXIT.NEWER_FORMAT,
  [ERR.UNAUTHORIZED]: EXIT.REFUSED,
  [ERR.REFUSED]: EXIT.REFUSED,
  [ERR.UNREACHABLE]: EXIT.NOT_FOUND,
};

const USAGE = `clonecast - multicast disk imaging

usage:
  clonecast image import SRC NAME [--ignore-read-errors] [--chunk-size BYTES]
  clonecast image list
  clonecast image info NAME[@V]        (V: a version, or a date for the latest version at or before it)
  clonecast image verify [NAME[@V]]
  clonecast image export NAME[@V] DEST [--force]
  clonecast image history NAME
  clonecast image prune NAME [--keep-last K] [--keep-daily D] [--dry-run]
  clonecast image rm NAME[@V]
  clonecast image gc
  clonecast serve [--listen HOST:PORT] [--interface IF] [--max-message BYTES]
                 [--pxe proxy|full [--pool START-END] [--router IP] [--dns IP,...] [--lease-time S]
                  [--static-lease MAC=IP,...]
                  [--boot-dir DIR] [--pxe-idle local|agent|menu] [--pxe-unknown boot|ignore]
                  [--efi ipxe.efi|snponly.efi]]
  clonecast token
  clonecast bootenv build [--out DIR] [--kernel-deb FILE]
  clonecast lab up --clients N [--loss PCT] [--rate MBIT] [--delay MS] [--vms] [--port P]
  clonecast lab status | lab down | lab demo [--port P]
  clonecast deploy NAME[@V] [--server URL] [--clients N | --machines MAC,...] [--wait S] [--at TIME]
                 [--rate MBIT] [--after reboot|poweroff|wait] [--target DEV|auto] [--no-verify]
                 [--drop-after S] [--differential] [--token T]
  clonecast agent [--server URL] [--disk PATH|auto] [--token T] [--once] [--no-verify]
                 [--allow-power] [--power-exit] [--machine-id MAC] [--unicast]
  clonecast capture MACHINE NAME [--disk DEV] [--partitions 1,3] [--ignore-read-errors] [--force]
  clonecast machines [--server URL] [--token T]
  clonecast sessions [start|cancel ID] [--server URL] [--token T]
  clonecast send NAME[@V] (--interface IF | --address IP) [--clients N [--wait S]] [--rate MBIT]
                 [--group ADDR] [--port P] [--http-port P] [--fragment BYTES] [--drop-after S]
  clonecast receive --from URL --disk PATH [--interface IF | --address IP] [--resume]
                 [--force] [--no-verify]
  clonecast version

options for every command:
  --data DIR   image store (default: $CLONECAST_DATA, else ~/.local/share/clonecast)
  --json       machine-readable output on stdout
  --workers N  worker threads for chunk work (default: cores + 1)
  --server URL a running server (default: $CLONECAST_SERVER, else http://127.0.0.1:8080/)
  --token T    the server's token (default: $CLONECAST_TOKEN, else the data directory's)
  -h, --help   this text
`;

const OPTIONS = {
  data: { type: 'string' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
  workers: { type: 'string' },
  'ignore-read-errors': { type: 'boolean' },
  'chunk-size': { type: 'string' },
  force: { type: 'boolean' },
  listen: { type: 'string' },
  interface: { type: 'string' },
  address: { type: 'string' },
  clients: { type: 'string' },
  rate: { type: 'string' },
  group: { type: 'string' },
  port: { type: 'string' },
  'http-port': { type: 'string' },
  fragment: { type: 'string' },
  'drop-after': { type: 'string' },
  wait: { type: 'string' },
  from: { type: 'string' },
  disk: { type: 'string' },
  resume: { type: 'boolean' },
  'no-verify': { type: 'boolean' },
  'write-limit': { type: 'string' },
  server: { type: 'string' },
  token: { type: 'string' },
  machines: { type: 'string' },
  at: { type: 'string' },
  after: { type: 'string' },
  target: { type: 'string' },
  once: { type: 'boolean' },
  'allow-power': { type: 'boolean' },
  'machine-id': { type: 'string' },
  'max-message': { type: 'string' },
  pxe: { type: 'string' },
  pool: { type: 'string' },
  router: { type: 'string' },
  dns: { type: 'string' },
  'boot-dir': { type: 'string' },
  'pxe-idle': { type: 'string' },
  'pxe-unknown': { type: 'string' },
  efi: { type: 'string' },
  'lease-time': { type: 'string' },
  'static-lease': { type: 'string' },
  'power-exit': { type: 'boolean' },
  unicast: { type: 'boolean' },
  out: { type: 'string' },
  'kernel-deb': { type: 'string' },
  'keep-last': { type: 'string' },
  'keep-daily': { type: 'string' },
  'dry-run': { type: 'boolean' },
  partitions: { type: 'string' },
  differential: { type: 'boolean' },
  loss: { type: 'string' },
  delay: { type: 'string' },
  vms: { type: 'boolean' },
} satisfies ParseArgsConfig['options'];

type Values = { [K in keyof typeof OPTIONS]?: (typeof OPTIONS)[K]['type'] extends 'boolean' ? boolean : string };

function usage(message: string): ClonecastError {
  return new ClonecastError(ERR.USAGE, `${message}\nRun "clonecast --help" for usage.`);
}

function positiveInt(v: string | undefined, flag: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n <= 0) throw usage(`${flag} takes a positive whole number, got "${v}"`);
  return n;
}

function version(): string {
  return (JSON.parse(readFileSync(join(projectRoot(), 'package.json'), 'utf8')) as { version: string }).version;
}

/** Writes a JSON document on stdout; bigints become decimal strings. */
function emitJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, (_, v) => (typeof v === 'bigint' ? v.toString() : v), 2) + '\n');
}

async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true }) as { values: Values; positionals: string[] };
  const [command, sub, ...rest] = positionals;
  if (values.help || command === undefined || command === 'help') {
    process.stdout.write(USAGE);
    return command === undefined && !values.help ? EXIT.USAGE : EXIT.OK;
  }
  const json = values.json === true;
  const progress = { stream: json ? null : process.stderr };
  const workers = positiveInt(values.workers, '--workers');
  const out = (human: () => void, data: unknown) => (json ? emitJson(data) : human());

  if (command === 'version') {
    out(() => console.log(`clonecast ${version()}`), { version: version() });
    return EXIT.OK;
  }
  if (command === 'serve') return serve(values, json);
  if (command === 'token') {
    const { loadOrCreateToken } = await import('../token.js');
    const t = loadOrCreateToken(Store.open(dataDir(values.data)).root);
    out(() => console.log(t.token), { token: t.token, path: t.path, created: t.created });
    return EXIT.OK;
  }
  if (command === 'deploy' || command === 'machines' || command === 'sessions') return adminCommand(command, sub, rest, values, json);
  if (command === 'capture') {
    if (sub === undefined || rest.length !== 1) throw usage('"clonecast capture" takes MACHINE NAME');
    const a = await admin();
    const client = { server: serverUrl(values), token: a.clientToken(values.token, dataDir(values.data)) };
    const partitions = values.partitions?.split(',').map((p) => positiveInt(p.trim(), '--partitions')!);
    const r = await a.capture(client, { machine: sub, image: rest[0], disk: values.disk, partitions, ignoreReadErrors: values['ignore-read-errors'] === true, force: values.force === true }, { json, stream: process.stderr });
    if (json) emitJson(r);
    return r.state === 'done' ? EXIT.OK : EXIT.FAILURE;
  }
  if (command === 'agent') return agentCommand(values, json);
  if (command === 'lab') return labCommand(sub, rest, values, json);
  if (command === 'bootenv') {
    if (sub !== 'build') throw usage('"clonecast bootenv" takes build');
    const { buildBootEnv } = await import('../../pxe/bootenv.js');
    const { join } = await import('node:path');
    const outDir = values.out ?? join(Store.open(dataDir(values.data)).root, 'pxe', 'boot');
    if (!json) console.error(`building the network-boot environment in ${outDir}`);
    const env = buildBootEnv({ out: outDir, kernelDeb: values['kernel-deb'], log: (m) => !json && console.error(`  ${m}`) });
    const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
    out(() => console.log(`boot environment built in ${env.seconds.toFixed(1)} s
  kernel      ${env.kernel} (${env.kernelVersion}, ${mib(env.kernelBytes)})
  initramfs   ${env.initrd} (${mib(env.initrdBytes)}: busybox, node ${process.version}, the agent, ${env.modules.length} kernel modules)
  serve it:   clonecast serve --interface IF --pxe proxy|full${values.out !== undefined ? ` --boot-dir ${outDir}` : ''}`), env);
    return EXIT.OK;
  }
  if (command === 'send') {
    if (sub === undefined || rest.length > 0) throw usage('"clonecast send" takes NAME[@V]');
    const { send } = await transfer();
    const { code, summary } = await send(Store.open(dataDir(values.data)), {
      ref: sub,
      address: values.address,
      interface: values.interface,
      clients: positiveInt(values.clients, '--clients'),
      group: values.group,
      port: positiveInt(values.port, '--port'),
      httpPort: values['http-port'] === '0' ? 0 : positiveInt(values['http-port'], '--http-port'),
      rateMbit: positiveInt(values.rate, '--rate'),
      fragmentSize: positiveInt(values.fragment, '--fragment'),
      dropAfterSeconds: positiveInt(values['drop-after'], '--drop-after'),
      waitSeconds: positiveInt(values.wait, '--wait'),
      json,
    });
    if (json) emitJson(summary);
    return code;
  }
  if (command === 'receive') {
    if (values.from === undefined || values.disk === undefined) throw usage('"clonecast receive" needs --from URL and --disk PATH');
    const { receive } = await transfer();
    const summary = await receive({
      from: values.from,
      disk: values.disk,
      address: values.address,
      interface: values.interface,
      resume: values.resume === true,
      force: values.force === true,
      verify: values['no-verify'] !== true,
      writeLimit: positiveInt(values['write-limit'], '--write-limit'),
      json,
    });
    if (json) emitJson(summary);
    return EXIT.OK;
  }
  if (command !== 'image') throw usage(`unknown command "${command}"`);
  const store = Store.open(dataDir(values.data));
  const args = (n: number, names: string) => {
    if (rest.length !== n) throw usage(`"clonecast image ${sub}" takes ${names}`);
    return rest;
  };
  switch (sub) {
    case 'import': {
      const [src, name] = args(2, 'SRC NAME');
      const summary = await importImage(store, src, name, {
        ignoreReadErrors: values['ignore-read-errors'],
        chunkSize: positiveInt(values['chunk-size'], '--chunk-size'),
        workers,
        progress,
      });
      out(() => printImport(summary), summary);
      return EXIT.OK;
    }
    case 'list': {
      args(0, 'no arguments');
      const list = await (await maintenance()).listImages(store);
      out(() => printList(list, store.root), list);
      return EXIT.OK;
    }
    case 'info': {
      const [ref] = args(1, 'NAME[@V]');
      const { name, version: v } = store.resolve(parseRef(ref));
      const info = (await maintenance()).describe(await store.readManifest(name, v));
      out(() => printInfo(info), info);
      return EXIT.OK;
    }
    case 'verify': {
      if (rest.length > 1) throw usage('"clonecast image verify" takes at most NAME[@V]');
      const report = await (await maintenance()).verifyStore(store, rest[0] === undefined ? undefined : parseRef(rest[0]), { workers, progress });
      out(() => printVerify(report), report);
      return report.ok ? EXIT.OK : EXIT.DAMAGED;
    }
    case 'export': {
      const [ref, dest] = args(2, 'NAME[@V] DEST');
      const summary = await exportImage(store, parseRef(ref), dest, { force: values.force, workers, progress });
      out(() => printExport(summary), summary);
      return EXIT.OK;
    }
    case 'history': {
      const [name] = args(1, 'NAME');
      const history = await (await maintenance()).imageHistory(store, name);
      out(() => {
        console.log(`VERSION  CREATED                   SIZE        NEW STORED  BAD  SOURCE`);
        for (const h of history) {
          console.log(`${`@${h.version}`.padEnd(8)} ${h.createdAt.padEnd(25)} ${fmtBytes(h.diskSize).padStart(10)} ${fmtBytes(h.newBytes).padStart(11)} ${String(h.badRanges).padStart(4)}  ${h.source}`);
        }
      }, history);
      return EXIT.OK;
    }
    case 'prune': {
      const [name] = args(1, 'NAME');
      const keepLast = positiveInt(values['keep-last'], '--keep-last');
      const keepDaily = positiveInt(values['keep-daily'], '--keep-daily');
      const r = await (await maintenance()).pruneImage(store, name, { keepLast, keepDaily }, values['dry-run'] === true);
      out(
        () =>
          console.log(
            `${values['dry-run'] ? 'would remove' : 'removed'} ${r.removed.length ? r.removed.map((v) => `${name}@${v}`).join(', ') : 'nothing'}; kept ${r.kept.map((v) => `@${v}`).join(', ')}${r.removed.length && !values['dry-run'] ? '; "clonecast image gc" frees the chunks only they used' : ''}`,
          ),
        r,
      );
      return EXIT.OK;
    }
    case 'rm': {
      const [ref] = args(1, 'NAME[@V]');
      const result = (await maintenance()).removeImage(store, parseRef(ref));
      out(() => console.log(`removed ${result.removed.map((v) => `${result.name}@${v}`).join(', ')}; run "clonecast image gc" to free chunks no version uses`), result);
      return EXIT.OK;
    }
    case 'gc': {
      args(0, 'no arguments');
      const report = await (await maintenance()).collectGarbage(store);
      out(() => printGc(report), report);
      return EXIT.OK;
    }
    default:
      throw usage(sub === undefined ? '"clonecast image" needs a subcommand' : `unknown image subcommand "${sub}"`);
  }
}

function serverUrl(values: Values): string {
  return values.server ?? process.env.CLONECAST_SERVER ?? `http://${DEFAULT_LISTEN}/`;
}

function logLine(level: string, message: string): void {
  process.stderr.write(`${new Date().toISOString()} ${level.padEnd(4)} ${message}\n`);
}

/** --static-lease MAC=IP,MAC=IP */
function parseStatics(v: string | undefined): Map<string, string> | undefined {
  if (v === undefined) return undefined;
  const out = new Map<string, string>();
  for (const item of v.split(',').filter((x) => x !== '')) {
    const m = /^([0-9a-fA-F]{2}(?:[:-][0-9a-fA-F]{2}){5})=(\d+\.\d+\.\d+\.\d+)$/.exec(item.trim());
    if (m === null) throw usage(`--static-lease takes MAC=IP[,MAC=IP...], e.g. 52:54:00:12:34:56=10.77.0.50; got "${item}"`);
    out.set(m[1].toLowerCase().replace(/-/g, ':'), m[2]);
  }
  return out;
}

async function serve(values: Values, json: boolean): Promise<number> {
  const store = Store.open(dataDir(values.data));
  const { startServer } = await import('../app.js');
  const pxeMode = values.pxe;
  if (pxeMode !== undefined && pxeMode !== 'proxy' && pxeMode !== 'full') throw usage('--pxe takes proxy (beside the lab\'s own DHCP server) or full (this server hands out addresses)');
  const idle = values['pxe-idle'] ?? 'local';
  if (idle !== 'local' && idle !== 'agent' && idle !== 'menu') throw usage('--pxe-idle takes local, agent or menu');
  const unknown = values['pxe-unknown'] ?? 'boot';
  if (unknown !== 'boot' && unknown !== 'ignore') throw usage('--pxe-unknown takes boot or ignore');
  const efi = values.efi ?? 'ipxe.efi';
  if (efi !== 'ipxe.efi' && efi !== 'snponly.efi') throw usage('--efi takes ipxe.efi or snponly.efi');
  const srv = await startServer({
    store,
    listen: values.listen ?? DEFAULT_LISTEN,
    interface: values.interface,
    pxe:
      pxeMode === undefined
        ? undefined
        : {
            mode: pxeMode,
            pool: values.pool,
            router: values.router,
            dns: values.dns?.split(',').filter((d) => d !== ''),
            leaseSeconds: positiveInt(values['lease-time'], '--lease-time'),
            statics: parseStatics(values['static-lease']),
            bootDir: values['boot-dir'],
            idle,
            unknown,
            efiBinary: efi,
          },
    maxMessage: positiveInt(values['max-message'], '--max-message'),
    version: version(),
    log: logLine,
  });
  const dashboard = `${srv.url}#token=${srv.token}`;
  if (json) emitJson({ url: srv.url, dashboard, token: srv.token, tokenPath: srv.tokenPath, data: store.root, multicastFrom: srv.senderAddress ?? null });
  else {
    console.log(`clonecast server ${version()}
  dashboard:   ${dashboard}
  token:       ${srv.token}${srv.tokenCreated ? '  (new; kept in ' + srv.tokenPath + ', mode 0600)' : ''}
               agents and admin commands need it: --token T or CLONECAST_TOKEN=T
  agents:      clonecast agent --server ${srv.url} --token ${srv.token}
  deploy:      clonecast deploy NAME --server ${srv.url} --clients N
  multicast:   ${srv.senderAddress !== undefined ? `from ${srv.senderAddress}` : 'off: restart with --interface IF (the network the machines are on) to deploy'}
  network boot: ${srv.pxe !== undefined ? `${pxeMode === 'proxy' ? 'proxyDHCP (the lab\'s DHCP server hands out addresses)' : 'DHCP'} + TFTP on ${values.interface}, iPXE scripts at ${srv.url}boot/ipxe` : 'off (--pxe proxy|full to boot machines from this server)'}
  image store: ${store.root}
  stop with Ctrl-C`);
  }
  process.removeAllListeners('SIGINT');
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  logLine('info', 'stopping: sessions are saved and resume at the next start');
  await srv.close();
  return EXIT.OK;
}

async function adminCommand(command: string, sub: string | undefined, rest: string[], values: Values, json: boolean): Promise<number> {
  const a = await admin();
  const client = { server: serverUrl(values), token: a.clientToken(values.token, dataDir(values.data)) };
  if (command === 'machines') {
    const ms = await a.api<import('../registry.js').MachineRecord[]>(client, 'GET', '/api/machines');
    if (json) emitJson(ms);
    else a.printMachines(ms);
    return EXIT.OK;
  }
  if (command === 'sessions') {
    if (sub === 'start' || sub === 'cancel') {
      const id = positiveInt(rest[0], `sessions ${sub} ID`);
      if (id === undefined) throw usage(`"clonecast sessions ${sub}" takes a session ID`);
      const s = await a.api<import('../sessions.js').SessionRecord>(client, 'POST', `/api/sessions/${id}/${sub}`);
      if (json) emitJson(s);
      else console.log(`session ${s.id}: ${s.state}${s.reason ? ` (${s.reason})` : ''}`);
      return EXIT.OK;
    }
    if (sub !== undefined) throw usage(`unknown sessions subcommand "${sub}"`);
    const ss = await a.api<import('../sessions.js').SessionRecord[]>(client, 'GET', '/api/sessions');
    if (json) emitJson(ss);
    else a.printSessions(ss);
    return EXIT.OK;
  }
  if (sub === undefined || rest.length > 0) throw usage('"clonecast deploy" takes NAME[@V]');
  const after = values.after ?? 'wait';
  if (after !== 'wait' && after !== 'reboot' && after !== 'poweroff') throw usage('--after takes reboot, poweroff or wait');
  const wait = values.wait === undefined ? undefined : Number(values.wait);
  if (wait !== undefined && !(wait >= 0)) throw usage(`--wait takes seconds, got "${values.wait}"`);
  const { ok, summary } = await a.deploy(
    client,
    {
      image: sub,
      rule: {
        clients: positiveInt(values.clients, '--clients'),
        machines: values.machines?.split(',').map((m) => m.trim()).filter((m) => m !== ''),
        waitS: wait,
        at: values.at,
      },
      rateMbit: positiveInt(values.rate, '--rate'),
      after,
      target: values.target,
      verify: values['no-verify'] !== true,
      dropAfterS: positiveInt(values['drop-after'], '--drop-after'),
      differential: values.differential === true ? true : undefined,
    },
    { json, stream: process.stderr },
  );
  if (json) emitJson(summary);
  return ok ? EXIT.OK : EXIT.FAILURE;
}

async function agentCommand(values: Values, json: boolean): Promise<number> {
  const { Agent } = await import('../../agent/agent.js');
  const token = values.token ?? process.env.CLONECAST_TOKEN;
  if (token === undefined || token === '') throw new ClonecastError(ERR.UNAUTHORIZED, 'the agent needs the server\'s token: --token T or CLONECAST_TOKEN (the server prints it)');
  const agent = new Agent({
    server: serverUrl(values),
    token,
    disk: values.disk,
    machineId: values['machine-id'],
    once: values.once === true,
    verify: values['no-verify'] === true ? false : undefined,
    allowPower: values['allow-power'] === true,
    powerExit: values['power-exit'] === true,
    unicast: values.unicast === true,
    writeLimit: positiveInt(values['write-limit'], '--write-limit'),
    version: version(),
    log: logLine,
  });
  process.removeAllListeners('SIGINT');
  const stop = () => agent.stop();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  const result = await agent.run();
  const { MachineState, After } = await import('../../protocol/control.js');
  if (json) emitJson(result === undefined ? null : { ...result, diskDigest: Buffer.from(result.diskDigest ?? []).toString('hex'), state: MachineState[result.state ?? 0] });
  if (values.once !== true) return EXIT.OK;
  if (result?.state !== MachineState.STATE_DONE) return EXIT.FAILURE;
  // --power-exit: the caller (the boot environment's init) reboots or powers off.
  if (values['power-exit'] === true && agent.afterAction === After.AFTER_REBOOT) return EXIT.AFTER_REBOOT;
  if (values['power-exit'] === true && agent.afterAction === After.AFTER_POWEROFF) return EXIT.AFTER_POWEROFF;
  return EXIT.OK;
}

async function labCommand(sub: string | undefined, rest: string[], values: Values, json: boolean): Promise<number> {
  const lab = await import('../lab/cli.js');
  const cli = join(projectRoot(), 'bin', 'clonecast');
  const num = (v: string | undefined, flag: string) => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!(n >= 0) || !Number.isFinite(n)) throw usage(`${flag} takes a number, got "${v}"`);
    return n;
  };
  switch (sub) {
    case 'up': {
      const port = positiveInt(values.port, '--port');
      const state = await lab.labUp({
        clients: positiveInt(values.clients, '--clients') ?? 4,
        lossPct: num(values.loss, '--loss'),
        rateMbit: positiveInt(values.rate, '--rate'),
        delayMs: num(values.delay, '--delay'),
        vms: values.vms === true,
        data: values.data,
        port,
        cli,
        log: (m) => !json && console.error(m),
      });
      if (json) emitJson(state);
      else {
        console.log(`lab up: server 10.77.0.1 in namespace cclabs, ${state.clients} ${state.vms ? 'VMs network-booting from it' : 'agents on loop devices'} (${state.machines.map((m) => `${m.name} ${m.disk}`).join(', ')})
  dashboard:  ${state.dashboard}
  image store: ${state.data}   (import into it with: clonecast image import SRC NAME --data ${state.data})
  deploy:     ip netns exec cclabs ${cli} deploy NAME --server ${state.serverUrl} --token ${state.token} --clients ${state.clients}
  logs:       ${lab.LAB_DIR}/*.log
  status:     clonecast lab status;  remove it all: clonecast lab down`);
      }
      return EXIT.OK;
    }
    case 'status': {
      const st = await lab.labStatus(positiveInt(values.port, '--port'));
      if (json) emitJson(st);
      else if (st.state === undefined) console.log('no lab is up ("clonecast lab up --clients N")');
      else {
        console.log(`lab since ${st.state.createdAt}: ${st.namespaces.length}/${st.state.namespaces.length} namespaces, ${st.alive.length}/${st.state.pids.length} processes running`);
        console.log(`  dashboard: ${st.state.dashboard}`);
        if (st.machines === null) console.log('  the server does not answer through the forwarder');
        else for (const m of st.machines as { id: string; address: string; online: boolean; state: string; lastImage: { name: string; version: number } | null }[]) {
          console.log(`  ${m.id}  ${m.address.padEnd(12)} ${(m.online ? m.state : 'offline').padEnd(10)} ${m.lastImage ? `${m.lastImage.name}@${m.lastImage.version}` : '-'}`);
        }
      }
      return EXIT.OK;
    }
    case 'down': {
      const r = lab.labDown();
      if (json) emitJson(r);
      else console.log(r.removed ? `lab removed: ${r.namespaces.join(', ')}, its processes, loop devices and disks` : 'no lab was up');
      return EXIT.OK;
    }
    case 'demo': {
      const { labDemo } = await import('../lab/demo.js');
      return (await labDemo(cli, (l) => console.log(l), positiveInt(values.port, '--port'))) ? EXIT.OK : EXIT.FAILURE;
    }
    case 'forward': {
      lab.forward(positiveInt(rest[0], 'lab forward PORT') ?? 8080);
      await new Promise(() => {});
      return EXIT.OK;
    }
    default:
      throw usage('"clonecast lab" takes up, status, down or demo');
  }
}

/** Runs the CLI with argv and exits with the right code. */
export async function main(argv: string[]): Promise<void> {
  const json = argv.includes('--json');
  process.once('SIGINT', () => {
    const what =
      argv.includes('export')
        ? 'the export target is incomplete; run the export again'
        : 'nothing half-made was published; chunks already stored are reused by the next import (or dropped by "clonecast image gc")';
    process.stderr.write(`\ninterrupted: ${what}\n`);
    process.exit(EXIT.INTERRUPTED);
  });
  let code: number;
  try {
    code = await run(argv);
  } catch (err) {
    const e = err as ClonecastError & NodeJS.ErrnoException;
    const known = err instanceof ClonecastError;
    code = known ? (CODE_TO_EXIT[e.code] ?? EXIT.FAILURE) : e.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' || e.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' ? EXIT.USAGE : EXIT.FAILURE;
    if (json) emitJson({ error: { code: e.code ?? 'CLONECAST_ERR_INTERNAL', message: e.message, ...(known ? e.details : {}) } });
    else process.stderr.write(`clonecast: ${e.message}\n${!known && code === EXIT.FAILURE && process.env.CLONECAST_DEBUG ? `${e.stack}\n` : ''}`);
  }
  process.exit(code);
}
