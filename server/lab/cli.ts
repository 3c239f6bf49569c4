/**
 * `clonecast lab`: the network-namespace lab for users. `lab up` builds a
 * bridge, a server namespace (10.77.0.1, running `clonecast serve`) and N
 * client namespaces, each running `clonecast agent` on a loop device (or,
 * with --vms, N qemu VMs with virtual disks that PXE-boot from the server);
 * everything it starts runs on after `lab up` returns and is recorded in
 * LAB_DIR/state.json, so that `lab status` and `lab down` find it by name.
 * The dashboard is forwarded to 127.0.0.1 on the host. `lab demo` runs the
 * whole story once and tears down.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { Lab, labAvailable } from './netns.js';
import { readCert } from '../tls.js';
import { pinnedFetch } from '../../native/pinned-tls.js';

/** Where the lab keeps its state, logs and disks. */
export const LAB_DIR = process.env.CLONECAST_LAB_DIR ?? '/var/tmp/clonecast-lab';
const TAG = 'lab';
const SERVER_URL = 'https://10.77.0.1:8080/';

/** What `lab up` made, for status and down. */
export interface LabState {
  createdAt: string;
  clients: number;
  vms: boolean;
  namespaces: string[];
  pids: number[];
  loops: string[];
  data: string;
  serverUrl: string;
  /** The server certificate's fingerprint (clients pin it). */
  fingerprint: string;
  /** The dashboard's address on the host (no token in it: the page asks for it). */
  dashboard: string;
  token: string;
  machines: { name: string; disk: string; mac: string }[];
}

/** Options of `lab up`. */
export interface LabUpOptions {
  clients: number;
  lossPct?: number;
  rateMbit?: number;
  delayMs?: number;
  vms?: boolean;
  /** Image store the server uses (default LAB_DIR/data). */
  data?: string;
  diskBytes?: number;
  /** Host port the dashboard is forwarded to (default 8080). */
  port?: number;
  cli: string;
  log?: (m: string) => void;
}

function statePath(): string {
  return join(LAB_DIR, 'state.json');
}

/** The recorded lab, if one is up. */
export function labState(): LabState | undefined {
  return existsSync(statePath()) ? (JSON.parse(readFileSync(statePath(), 'utf8')) as LabState) : undefined;
}

function needRoot(): void {
  const why = labAvailable();
  if (why !== null) throw new ClonecastError(ERR.REFUSED, `the lab ${why} (it makes network namespaces, a bridge and loop devices): run it as root`);
}

function detached(cmd: string, args: string[], log: string): ChildProcess {
  const fd = openSync(log, 'a');
  const child = spawn(cmd, args, { detached: true, stdio: ['ignore', fd, fd] });
  closeSync(fd);
  child.unref();
  return child;
}

async function waitFor(check: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new ClonecastError(ERR.BUSY, `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Builds the lab and starts the server and the machines; returns the state. */
export async function labUp(o: LabUpOptions): Promise<LabState> {
  needRoot();
  if (labState() !== undefined) throw new ClonecastError(ERR.BUSY, `a lab is already up (${statePath()}); "clonecast lab down" first`);
  if (!Number.isInteger(o.clients) || o.clients < 1 || o.clients > 64) throw new ClonecastError(ERR.USAGE, '--clients takes 1 to 64');
  mkdirSync(LAB_DIR, { recursive: true });
  const data = o.data ?? join(LAB_DIR, 'data');
  const lab = Lab.up({ tag: TAG, clients: o.vms ? 0 : o.clients, loss: o.lossPct !== undefined ? o.lossPct / 100 : undefined, rateMbit: o.rateMbit, delayMs: o.delayMs });
  const state: LabState = { createdAt: new Date().toISOString(), clients: o.clients, vms: o.vms === true, namespaces: lab.namespaceNames, pids: lab.childPids(), loops: [], data, serverUrl: SERVER_URL, fingerprint: '', dashboard: '', token: '', machines: [] };
  const save = () => writeFileSync(statePath(), JSON.stringify(state, null, 1));
  save();
  try {
    const serveArgs = ['netns', 'exec', lab.server.ns, process.execPath, o.cli, 'serve', '--data', data, '--listen', '10.77.0.1:8080', '--interface', 'eth0'];
    if (o.vms) {
      // The VMs boot the agent's environment: build it once into the store's boot folder.
      const bootDir = join(data, 'pxe', 'boot');
      if (!existsSync(join(bootDir, 'initrd.img'))) {
        o.log?.(`building the boot environment into ${bootDir} (once)`);
        const { buildBootEnv } = await import('../../pxe/bootenv.js');
        buildBootEnv({ out: bootDir, log: o.log, xzPreset: '1' }); // the lab's VMs: a quick build over the smallest download
      }
      serveArgs.push('--pxe', 'full', '--pxe-idle', 'agent');
      // Router advertisements: without them iPXE waits ~13 s for IPv6 at every start.
      if (spawnSync('sh', ['-c', 'command -v radvd']).status === 0) {
        writeFileSync(join(LAB_DIR, 'radvd.conf'), 'interface eth0 { AdvSendAdvert on; MinRtrAdvInterval 3; MaxRtrAdvInterval 4; prefix fd77::/64 { AdvOnLink on; AdvAutonomous on; }; };\n');
        spawnSync('ip', ['netns', 'exec', lab.server.ns, 'sysctl', '-qw', 'net.ipv6.conf.all.forwarding=1']);
        state.pids.push(detached('ip', ['netns', 'exec', lab.server.ns, 'radvd', '-n', '-C', join(LAB_DIR, 'radvd.conf'), '-p', join(LAB_DIR, 'radvd.pid'), '-m', 'stderr'], join(LAB_DIR, 'radvd.log')).pid!);
      }
    }
    // A new log for this server: what an earlier lab's server printed must not pass for its start.
    writeFileSync(join(LAB_DIR, 'server.log'), '');
    const server = detached('ip', serveArgs, join(LAB_DIR, 'server.log'));
    state.pids.push(server.pid!);
    save();
    await waitFor(() => existsSync(join(data, 'token')) && readCert(data) !== undefined && readFileSync(join(LAB_DIR, 'server.log'), 'utf8').includes('stop with Ctrl-C'), 20_000, 'the server to start (see server.log)');
    state.token = readFileSync(join(data, 'token'), 'utf8').trim();
    state.fingerprint = readCert(data)!.fingerprint;
    const size = o.diskBytes ?? 256 * 1024 * 1024;
    for (let k = 0; k < o.clients; k++) {
      const disk = join(LAB_DIR, `pc${k + 1}.img`);
      writeFileSync(disk, Buffer.alloc(0));
      spawnSync('truncate', ['-s', String(size), disk]);
      if (o.vms) {
        const tap = lab.addTap(`tap${k}`);
        const mac = `52:54:00:77:10:${(k + 1).toString(16).padStart(2, '0')}`;
        const args = ['netns', 'exec', lab.bridgeNamespace, 'qemu-system-x86_64', '-m', '1024', '-nographic', '-machine', 'graphics=off', '-netdev', `tap,id=n0,ifname=${tap},script=no,downscript=no`, '-device', `e1000,netdev=n0,mac=${mac}`, '-drive', `file=${disk},if=virtio,format=raw`, '-boot', 'n'];
        state.pids.push(detached('ip', args, join(LAB_DIR, `pc${k + 1}.serial.log`)).pid!);
        state.machines.push({ name: `pc${k + 1}`, disk, mac });
      } else {
        const loop = spawnSync('losetup', ['-f', '--show', disk], { encoding: 'utf8' }).stdout.trim();
        if (!loop.startsWith('/dev/loop')) throw new ClonecastError(ERR.NOT_FOUND, `losetup failed for ${disk}`);
        state.loops.push(loop);
        const ns = lab.clients[k].ns;
        const mac = lab.execIn(ns, 'cat', ['/sys/class/net/eth0/address']).trim();
        const agent = detached('ip', ['netns', 'exec', ns, ...ownHostname(`pc${k + 1}`), process.execPath, o.cli, 'agent', '--server', SERVER_URL, '--fingerprint', state.fingerprint, '--token-file', join(data, 'token'), '--disk', loop], join(LAB_DIR, `pc${k + 1}.log`));
        state.pids.push(agent.pid!);
        state.machines.push({ name: `pc${k + 1}`, disk: loop, mac });
      }
      save();
    }
    // The dashboard on the host's loopback, relayed into the server's namespace.
    const port = o.port ?? 8080;
    const fwd = detached(process.execPath, [o.cli, 'lab', 'forward', String(port)], join(LAB_DIR, 'forward.log'));
    state.pids.push(fwd.pid!);
    state.dashboard = `https://127.0.0.1:${port}/`;
    save();
    return state;
  } catch (err) {
    labDown();
    throw err;
  }
}

/**
 * A command prefix that runs the rest in a UTS namespace of its own named
 * NAME, so each lab machine reports its own host name ("pc1"...) instead
 * of the host's.
 */
export function ownHostname(name: string): string[] {
  return ['unshare', '--uts', 'sh', '-c', 'echo "$0" > /proc/sys/kernel/hostname && exec "$@"', name];
}

/** Stops everything the lab started and deletes what it made, by name. */
export function labDown(): { removed: boolean; namespaces: string[] } {
  needRoot();
  const state = labState();
  if (state === undefined) return { removed: false, namespaces: [] };
  for (const pid of state.pids) {
    try {
      process.kill(-pid, 'SIGTERM'); // the process group of a detached child
    } catch {
      try {
        process.kill(pid, 'SIGTERM');
      } catch {
        // already gone
      }
    }
  }
  spawnSync('sleep', ['0.5']);
  for (const pid of state.pids) {
    try {
      process.kill(-pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  for (const ns of [...state.namespaces].reverse()) spawnSync('ip', ['netns', 'del', ns]);
  for (const loop of state.loops) spawnSync('losetup', ['-d', loop]);
  // The machines' disk files (behind the loop devices, or the VMs' disks).
  for (const f of readdirSync(LAB_DIR)) if (/^pc\d+\.img$/.test(f)) rmSync(join(LAB_DIR, f), { force: true });
  rmSync(statePath(), { force: true });
  return { removed: true, namespaces: state.namespaces };
}

/** Relays 127.0.0.1:port on the host to the server in its namespace (one helper process per connection). */
export function forward(port: number, serverNs = `cc${TAG}s`): Server {
  const relay = "const s=require('net').connect(8080,'10.77.0.1');process.stdin.pipe(s);s.pipe(process.stdout);s.on('error',()=>process.exit(0));s.on('close',()=>process.exit(0))";
  const server = createServer((sock) => {
    const child = spawn('ip', ['netns', 'exec', serverNs, process.execPath, '-e', relay], { stdio: ['pipe', 'pipe', 'ignore'] });
    sock.pipe(child.stdin);
    child.stdout.pipe(sock);
    const end = () => {
      sock.destroy();
      child.kill();
    };
    // A relay that ends while bytes are still flowing (EPIPE) ends this connection, never the forwarder.
    sock.on('error', end);
    sock.on('close', end);
    child.on('error', end);
    child.stdin.on('error', end);
    child.stdout.on('error', end);
    child.on('close', end);
  });
  server.listen(port, '127.0.0.1');
  return server;
}

/** What `lab status` shows. */
export async function labStatus(port = 8080): Promise<{ state: LabState | undefined; alive: number[]; namespaces: string[]; machines: unknown[] | null; error?: string }> {
  const state = labState();
  if (state === undefined) return { state, alive: [], namespaces: [], machines: null };
  const alive = state.pids.filter((pid) => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  });
  const present = spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' }).stdout;
  const namespaces = state.namespaces.filter((ns) => new RegExp(`^${ns}( |$)`, 'm').test(present));
  let machines: unknown[] | null = null;
  let error: string | undefined;
  try {
    // The forwarder starts a relay process per connection: allow for a loaded machine.
    const res = await pinnedFetch(`https://127.0.0.1:${port}/api/machines`, { pin: state.fingerprint, headers: { authorization: `Bearer ${state.token}` }, signal: AbortSignal.timeout(10_000) });
    if (res.ok) machines = (await res.json()) as unknown[];
    else error = `the server answered ${res.status}`;
  } catch (err) {
    error = (err as Error).message;
  }
  return { state, alive, namespaces, machines, ...(error !== undefined ? { error } : {}) };
}
