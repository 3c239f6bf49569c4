/**
 * A classroom in the namespace lab: `clonecast serve` in the server
 * namespace and `clonecast agent` processes in client namespaces, each
 * writing its own disk file, plus helpers to deploy and to call the API
 * from inside the lab (nothing here talks to an address outside it).
 */
import { execFileSync, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CLI, curlPin, until } from '../helpers.js';
export { until } from '../helpers.js';
import { fingerprintOf } from '../../server/tls.js';
import { Lab, type LabOptions } from '../../server/lab/netns.js';

export const PORT = 8080;
export const URL_ = `https://10.77.0.1:${PORT}/`;

/** A process and everything it printed so far. */
export interface Proc {
  child: ChildProcess;
  out: string;
  exited: Promise<number | null>;
}

function watch(child: ChildProcess): Proc {
  const p: Proc = { child, out: '', exited: new Promise((r) => child.on('close', (code) => r(code))) };
  child.stdout?.on('data', (d) => (p.out += d));
  child.stderr?.on('data', (d) => (p.out += d));
  return p;
}

export class Fleet {
  readonly lab: Lab;
  server: Proc | undefined;
  readonly agents: (Proc | undefined)[] = [];
  /** Block devices standing in for client k's disk file (loop devices), when given. */
  readonly devices: (string | undefined)[] = [];
  token = '';
  /** The server certificate's fingerprint, once it started. */
  fingerprint = '';

  constructor(
    readonly dir: string,
    readonly data: string,
    clients: number,
    net: Pick<LabOptions, 'loss' | 'delayMs'> = {},
  ) {
    this.lab = Lab.up({ clients, ...net });
  }

  /** Starts (or restarts) the server; resolves when it listens. */
  async startServer(extra: string[] = []): Promise<Proc> {
    const p = watch(this.lab.spawnIn(this.lab.server.ns, process.execPath, [CLI, 'serve', '--data', this.data, '--listen', `10.77.0.1:${PORT}`, '--interface', 'eth0', ...extra]));
    this.server = p;
    await until(() => p.out.includes('stop with Ctrl-C') || p.child.exitCode !== null, 15_000, 'the server to start');
    if (p.child.exitCode !== null) throw new Error(`server exited: ${p.out}`);
    this.token = readFileSync(join(this.data, 'token'), 'utf8').trim();
    this.fingerprint = fingerprintOf(readFileSync(join(this.data, 'tls', 'cert.pem'), 'utf8'));
    return p;
  }

  /** Makes client k's disk: a file of size bytes. */
  disk(k: number, size: number): string {
    const file = join(this.dir, `disk${k}.img`);
    writeFileSync(file, Buffer.alloc(0));
    execFileSync('truncate', ['-s', String(size), file]);
    return file;
  }

  diskPath(k: number): string {
    return join(this.dir, `disk${k}.img`);
  }

  /** Starts an agent in client k's namespace. */
  startAgent(k: number, extra: string[] = [], token = this.token): Proc {
    const p = watch(this.lab.spawnIn(this.lab.clients[k].ns, process.execPath, [CLI, 'agent', '--server', URL_, '--fingerprint', this.fingerprint, '--token', token, '--disk', this.devices[k] ?? this.diskPath(k), ...extra]));
    this.agents[k] = p;
    return p;
  }

  /** The MAC (machine id) of client k. */
  mac(k: number): string {
    return this.lab.execIn(this.lab.clients[k].ns, 'cat', ['/sys/class/net/eth0/address']).trim();
  }

  /** Runs a clonecast client command inside the server namespace. */
  run(args: string[], token = this.token): Proc {
    return watch(this.lab.spawnIn(this.lab.server.ns, process.execPath, [CLI, ...args, '--server', URL_, '--fingerprint', this.fingerprint, '--token', token]));
  }

  /** Starts `clonecast deploy` with args. */
  deploy(image: string, args: string[]): Proc {
    return this.run(['deploy', image, ...args]);
  }

  /** GET or POST on the admin API from inside the lab. */
  async api(method: 'GET' | 'POST', path: string, body?: unknown): Promise<any> {
    const args = ['-s', ...curlPin(join(this.data, 'tls')), '-X', method, '-H', `authorization: Bearer ${this.token}`, '-H', 'content-type: application/json'];
    if (body !== undefined) args.push('--data', JSON.stringify(body));
    const out = this.lab.execIn(this.lab.server.ns, 'curl', [...args, `${URL_}${path.replace(/^\//, '')}`]);
    return path === '/metrics' ? out : JSON.parse(out);
  }

  /** Machines the server knows and are online. */
  async online(): Promise<number> {
    const ms = (await this.api('GET', '/api/machines')) as { online: boolean }[];
    return ms.filter((m) => m.online).length;
  }

  down(): void {
    this.lab.down();
  }
}
