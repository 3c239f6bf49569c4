/**
 * The tests' real S3 server: a single-node OpenStack Swift with its s3api
 * middleware, from Debian's packages, started in a folder of its own.
 *
 * Everything it makes (rings, config files, devices, logs) is inside `dir`;
 * /etc/swift/swift.conf (the hash path prefix/suffix and the storage policy)
 * is only read. Every server runs with workers = 0 (one process, no fork) so
 * that its PID is the whole server and stop() can end it by PID.
 */
import { spawn, spawnSync } from 'node:child_process';
import { appendFileSync, chmodSync, chownSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';

/** The S3 credentials tempauth gives (`user_test_tester = testing .admin`). */
export const SWIFT_ACCESS_KEY = 'test:tester';
/** The secret key of SWIFT_ACCESS_KEY. */
export const SWIFT_SECRET_KEY = 'testing';
/** The region s3api expects in SigV4 signatures (its default location). */
export const SWIFT_REGION = 'us-east-1';
/** How long start() and startProxy() wait for the servers: generous, the machine is a busy 2-core box. */
export const DEFAULT_START_TIMEOUT_MS = 90_000;

const PYTHON = '/usr/bin/python3';
const KEEP_OUTPUT = 64 * 1024;
const SERVERS = /** @type {const} */ (['account', 'container', 'object']);

/**
 * @typedef {object} SwiftOptions
 * @property {string} dir folder the cluster lives in (made if absent; the caller removes it)
 * @property {string[]} [spawnPrefix] command prefix for every Swift process, e.g. ['ip','netns','exec','ccXr']
 * @property {string} [bindIp] what the proxy listens on (default 127.0.0.1)
 * @property {number} [port] the proxy's port (default: a free one)
 * @property {{ cert: string, key: string }} [tls] PEM files: the proxy speaks HTTPS
 * @property {string} [bucket] a bucket to create before start() returns
 * @property {number} [timeoutMs] how long to wait for the servers (default DEFAULT_START_TIMEOUT_MS)
 */

/**
 * @typedef {object} SwiftLab
 * @property {string} endpoint the proxy's URL, e.g. http://127.0.0.1:PORT
 * @property {string} accessKey
 * @property {string} secretKey
 * @property {string} region
 * @property {string} s3cmdConfig an s3cmd config file (inside dir) for this endpoint
 * @property {() => Promise<void>} killProxy SIGKILLs the proxy and waits until it is gone
 * @property {() => Promise<void>} startProxy starts the proxy again on the same port and waits until it answers
 * @property {() => Promise<void>} stop kills every process it started, by PID
 * @property {number[]} pids the PIDs of the running Swift processes
 * @property {() => string} output the servers' kept output (last 64 KiB each)
 */

/** A free TCP port on the host (a fresh namespace has every port free too). */
async function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.on('error', fail);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => ok(port));
    });
  });
}

/** @param {number} ms */
const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

/**
 * The servers drop privileges to the `swift` user: every folder above the
 * devices folder must let it through. Adds only the others' search bit
 * (traverse, not list) where it is missing.
 * @param {string} dir
 */
function letSwiftThrough(dir) {
  for (let d = resolve(dir); ; d = dirname(d)) {
    const mode = statSync(d).mode;
    if ((mode & 0o001) === 0) chmodSync(d, (mode & 0o7777) | 0o001);
    if (d === dirname(d)) break;
  }
}

/** @param {string} name */
function userIds(name) {
  const r = spawnSync('id', ['-u', name], { encoding: 'utf8' });
  const g = spawnSync('id', ['-g', name], { encoding: 'utf8' });
  if (r.status !== 0 || g.status !== 0) throw new Error(`the '${name}' user does not exist: install Debian's swift package (apt-get install swift)`);
  return { uid: Number(r.stdout.trim()), gid: Number(g.stdout.trim()) };
}

/**
 * Makes the three rings in swiftDir, one device each on 127.0.0.1.
 * @param {string} swiftDir
 * @param {Record<string, number>} ports
 */
function makeRings(swiftDir, ports) {
  for (const kind of SERVERS) {
    const builder = join(swiftDir, `${kind}.builder`);
    for (const args of [
      [builder, 'create', '10', '1', '1'],
      [builder, 'add', `r1z1-127.0.0.1:${ports[kind]}/d1`, '100'],
      [builder, 'rebalance'],
    ]) {
      const r = spawnSync('swift-ring-builder', args, { encoding: 'utf8' });
      // rebalance exits 1 for warnings (e.g. balance) on some versions; the ring file is what counts.
      if (r.status !== 0 && !(args[1] === 'rebalance' && r.status === 1)) {
        throw new Error(`swift-ring-builder ${args.join(' ')} failed (${r.status}): ${r.stdout}${r.stderr}`);
      }
    }
    if (!existsSync(join(swiftDir, `${kind}.ring.gz`))) throw new Error(`swift-ring-builder made no ${kind} ring in ${swiftDir}`);
  }
}

/**
 * Writes the four servers' config files.
 * @param {string} dir
 * @param {Record<string, number>} ports
 * @param {string} bindIp
 * @param {{ cert: string, key: string } | undefined} tls
 */
function writeConfigs(dir, ports, bindIp, tls) {
  const swiftDir = join(dir, 'swift');
  const common = (/** @type {number} */ port, /** @type {string} */ ip) =>
    [
      '[DEFAULT]',
      `bind_ip = ${ip}`,
      `bind_port = ${port}`,
      'workers = 0',
      'user = swift',
      `swift_dir = ${swiftDir}`,
      `devices = ${join(dir, 'devices')}`,
      'mount_check = false',
      'log_level = INFO',
      `log_address = ${join(dir, 'no-syslog')}`,
    ].join('\n');
  for (const kind of SERVERS) {
    writeFileSync(
      join(dir, `${kind}-server.conf`),
      `${common(ports[kind], '127.0.0.1')}\n\n[pipeline:main]\npipeline = ${kind}-server\n\n[app:${kind}-server]\nuse = egg:swift#${kind}\n` +
        `\n[${kind}-replicator]\n[${kind}-updater]\n[${kind}-auditor]\n`,
    );
  }
  const tlsLines = tls ? `\ncert_file = ${resolve(tls.cert)}\nkey_file = ${resolve(tls.key)}` : '';
  writeFileSync(
    join(dir, 'proxy-server.conf'),
    `${common(ports.proxy, bindIp)}${tlsLines}

[pipeline:main]
pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth copy slo dlo proxy-logging proxy-server

[app:proxy-server]
use = egg:swift#proxy
account_autocreate = true

[filter:catch_errors]
use = egg:swift#catch_errors

[filter:gatekeeper]
use = egg:swift#gatekeeper

[filter:healthcheck]
use = egg:swift#healthcheck

[filter:proxy-logging]
use = egg:swift#proxy_logging

# tempauth keeps its tokens in swift.cache and refuses to run without one. No
# memcached runs here: a port that refuses at once makes every lookup a fast miss.
[filter:cache]
use = egg:swift#memcache
memcache_servers = 127.0.0.1:1

[filter:listing_formats]
use = egg:swift#listing_formats

[filter:s3api]
use = egg:swift#s3api
location = ${SWIFT_REGION}

[filter:tempauth]
use = egg:swift#tempauth
user_test_tester = testing .admin

[filter:copy]
use = egg:swift#copy

[filter:slo]
use = egg:swift#slo

[filter:dlo]
use = egg:swift#dlo
`,
  );
}

/**
 * Starts a single-node Swift with the S3 API in `opts.dir` and waits until
 * its proxy answers and (if asked) a bucket exists.
 * @param {SwiftOptions} opts
 * @returns {Promise<SwiftLab>}
 */
export async function startSwift(opts) {
  const dir = resolve(opts.dir);
  const prefix = opts.spawnPrefix ?? [];
  const bindIp = opts.bindIp ?? '127.0.0.1';
  const timeoutMs = opts.timeoutMs ?? DEFAULT_START_TIMEOUT_MS;
  const swiftDir = join(dir, 'swift');
  const devices = join(dir, 'devices');
  mkdirSync(swiftDir, { recursive: true });
  mkdirSync(join(devices, 'd1'), { recursive: true });
  const { uid, gid } = userIds('swift');
  chownSync(devices, uid, gid);
  chownSync(join(devices, 'd1'), uid, gid);
  letSwiftThrough(devices);

  /** @type {Record<string, number>} */
  const ports = { proxy: opts.port ?? (await freePort()) };
  for (const kind of SERVERS) ports[kind] = await freePort();
  makeRings(swiftDir, ports);
  writeConfigs(dir, ports, bindIp, opts.tls);

  const scheme = opts.tls ? 'https' : 'http';
  const host = bindIp === '0.0.0.0' ? '127.0.0.1' : bindIp;
  const localEndpoint = `${scheme}://${host}:${ports.proxy}`;
  const s3cmdConfig = join(dir, 's3cmd.cfg');
  writeFileSync(
    s3cmdConfig,
    [
      '[default]',
      `access_key = ${SWIFT_ACCESS_KEY}`,
      `secret_key = ${SWIFT_SECRET_KEY}`,
      `host_base = ${host}:${ports.proxy}`,
      `host_bucket = ${host}:${ports.proxy}`,
      `bucket_location = ${SWIFT_REGION}`,
      'signature_v2 = False',
      `use_https = ${opts.tls ? 'True' : 'False'}`,
      ...(opts.tls ? [`ca_certs_file = ${resolve(opts.tls.cert)}`, 'check_ssl_certificate = True', 'check_ssl_hostname = False'] : []),
      '',
    ].join('\n'),
  );

  /** @type {Map<string, import('node:child_process').ChildProcess>} */
  const children = new Map();
  /** @type {Map<string, string>} log file of each server */
  const logs = new Map();

  // A caller that dies (an uncaught error, process.exit) must not leave servers behind: kill them by PID on exit.
  const onExit = () => {
    for (const c of children.values()) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  };
  process.on('exit', onExit);

  /** @param {string} name */
  function launch(name) {
    const conf = join(dir, `${name}-server.conf`);
    const argv = [...prefix, PYTHON, `/usr/bin/swift-${name}-server`, conf, '-v'];
    // Output goes to a file, not a pipe: a caller that blocks its event loop (spawnSync of a client)
    // would stop draining a pipe, and a server blocked writing its log stops answering.
    const log = join(dir, `${name}-server.log`);
    const fd = openSync(log, 'a');
    let child;
    try {
      child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', fd, fd], detached: false });
    } finally {
      closeSync(fd);
    }
    child.on('error', (e) => appendFileSync(log, `spawn failed: ${e.message}\n`));
    logs.set(name, log);
    children.set(name, child);
    return child;
  }

  const tail = (/** @type {string} */ path) => {
    try {
      const b = readFileSync(path);
      return b.subarray(Math.max(0, b.length - KEEP_OUTPUT)).toString('utf8');
    } catch {
      return '';
    }
  };
  const output = () => [...logs].map(([n, path]) => `--- ${n}-server ---\n${tail(path)}`).join('\n');

  /**
   * Runs a check inside the servers' network namespace; true when it exits 0.
   * @param {string[]} argv
   */
  function probe(argv) {
    return new Promise((ok) => {
      const all = [...prefix, ...argv];
      const c = spawn(all[0], all.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
      let err = '';
      c.stderr?.on('data', (d) => (err += d));
      const t = setTimeout(() => c.kill('SIGKILL'), 20_000);
      c.on('error', () => { clearTimeout(t); ok(false); });
      c.on('close', (code) => { clearTimeout(t); lastProbeError = err.slice(-2000); ok(code === 0); });
    });
  }
  let lastProbeError = '';

  // A node one-liner run beside the servers: the proxy's /healthcheck answers "OK", the backends accept TCP.
  const healthScript = `
const ports = ${JSON.stringify(SERVERS.map((k) => ports[k]))};
const net = require('node:net');
const mod = require(${JSON.stringify(scheme === 'https' ? 'node:https' : 'node:http')});
const tcp = (p) => new Promise((ok, no) => { const s = net.connect(p, '127.0.0.1', () => { s.destroy(); ok(); }); s.on('error', no); });
Promise.all(ports.map(tcp)).then(() => new Promise((ok, no) => {
  const req = mod.get(${JSON.stringify(`${localEndpoint}/healthcheck`)}, { rejectUnauthorized: false }, (res) => {
    let b = ''; res.on('data', (d) => (b += d)); res.on('end', () => (res.statusCode === 200 && b === 'OK' ? ok() : no(new Error('healthcheck ' + res.statusCode))));
  });
  req.on('error', no);
})).then(() => process.exit(0), (e) => { console.error(e.message); process.exit(1); });`;

  /** @param {string} what */
  async function waitFor(what, /** @type {() => Promise<boolean>} */ check) {
    const until = Date.now() + timeoutMs;
    for (;;) {
      for (const [name, c] of children) {
        if (c.exitCode !== null || c.signalCode !== null) {
          throw new Error(`the Swift ${name} server exited (${c.exitCode ?? c.signalCode}) while waiting for ${what}\n${output()}`);
        }
      }
      if (await check()) return;
      if (Date.now() > until) throw new Error(`Swift did not become ready (${what}) within ${timeoutMs} ms: ${lastProbeError}\n${output()}`);
      await sleep(250);
    }
  }

  const healthy = () => probe([process.execPath, '-e', healthScript]);

  async function stop() {
    const live = [...children.values()].filter((c) => c.exitCode === null && c.signalCode === null);
    const gone = live.map((c) => new Promise((ok) => c.once('exit', ok)));
    for (const c of live) c.kill('SIGKILL');
    await Promise.all(gone);
    children.clear();
    process.off('exit', onExit);
  }

  try {
    for (const kind of SERVERS) launch(kind);
    launch('proxy');
    await waitFor('proxy healthcheck and backends', healthy);
    if (opts.bucket) {
      const bucket = opts.bucket;
      // The first requests after start can get 503 while the account is made: retry until the bucket exists.
      await waitFor(`bucket ${bucket}`, async () =>
        (await probe(['s3cmd', '-c', s3cmdConfig, 'mb', `s3://${bucket}`])) || (await probe(['s3cmd', '-c', s3cmdConfig, 'info', `s3://${bucket}`])),
      );
    }
  } catch (e) {
    await stop();
    throw e;
  }

  return {
    endpoint: `${scheme}://${bindIp === '0.0.0.0' ? '127.0.0.1' : bindIp}:${ports.proxy}`,
    accessKey: SWIFT_ACCESS_KEY,
    secretKey: SWIFT_SECRET_KEY,
    region: SWIFT_REGION,
    s3cmdConfig,
    async killProxy() {
      const c = children.get('proxy');
      if (!c || c.exitCode !== null || c.signalCode !== null) return;
      const gone = new Promise((ok) => c.once('exit', ok));
      c.kill('SIGKILL');
      await gone;
    },
    async startProxy() {
      const c = children.get('proxy');
      if (c && c.exitCode === null && c.signalCode === null) return;
      launch('proxy');
      await waitFor('proxy healthcheck after restart', healthy);
    },
    stop,
    get pids() {
      return [...children.values()].filter((c) => c.exitCode === null && c.signalCode === null).map((c) => /** @type {number} */ (c.pid));
    },
    output,
  };
}
