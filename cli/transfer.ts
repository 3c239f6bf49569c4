/**
 * `clonecast send` and `clonecast receive`: one multicast session from the
 * command line, for the lab and for trying the engine by hand. (The server's
 * deploy command and the agent replace them in daily use.)
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ClonecastError, ERR } from '../protocol/errors.js';
import { deriveKey, KEY_SIZE, receiverLabel } from '../protocol/mac.js';
import { ReceiverState } from '../protocol/mcast.js';
import { RECEIVER_STATE_NAMES } from '../protocol/states.js';
import { defaultReceiverId, Receiver } from '../transfer/receiver.js';
import type { ReceiverStats } from '../transfer/sender.js';
import { dropReasonText } from '../transfer/policy.js';
import { fetchSession } from '../server/mcast/session-client.js';
import { interfaceAddress, startSession } from '../server/mcast/session.js';
import { formatBytes, formatDuration, Progress } from '../server/progress.js';
import { parseRef, type Store } from '../server/store/store.js';

const STATE_NAMES = RECEIVER_STATE_NAMES;

/**
 * Benchmarks only (test/bench/mcast.mjs, docs/performance.md): with this set to 1 in the
 * environment of both send and receive, no packet carries or is checked for a MAC, to
 * measure what authentication costs. Never a setting for real use: anyone on the LAN can then inject.
 */
const UNAUTHENTICATED = process.env.CLONECAST_BENCH_UNAUTHENTICATED === '1';

/** Options of the send command. */
export interface SendArgs {
  ref: string;
  address?: string;
  interface?: string;
  clients?: number;
  group?: string;
  port?: number;
  httpPort?: number;
  rateMbit?: number;
  fragmentSize?: number;
  dropAfterSeconds?: number;
  /** With clients: start after this many seconds even if fewer have joined. */
  waitSeconds?: number;
  /** Seal every chunk with AES-256-GCM. */
  encrypt?: boolean;
  /** Where to write the session secret (default: send-SESSION.key in the data folder, removed at the end). */
  keyFile?: string;
  json: boolean;
}

function localAddress(args: { address?: string; interface?: string }): string | undefined {
  if (args.address !== undefined) return args.address;
  if (args.interface !== undefined) return interfaceAddress(args.interface);
  return undefined;
}

function describeReceiver(r: ReceiverStats, chunkSize: number): string {
  const pct = r.wanted > 0 ? ((100 * r.done) / r.wanted).toFixed(1) : '100.0';
  const rate = formatBytes(r.chunksPerSecond * chunkSize);
  const eta = r.chunksPerSecond > 0 ? formatDuration((r.wanted - r.done) / r.chunksPerSecond) : '--';
  return `  ${r.receiverId.toString(16).padStart(8, '0')} ${r.address.padEnd(15)} ${STATE_NAMES[r.state].padEnd(9)} ${pct.padStart(5)}% ${rate}/s ETA ${eta} loss ${(100 * r.loss).toFixed(1)}% nacks ${r.nacks}`;
}

/** Runs a sender until `clients` receivers have finished (or forever); returns the exit code. */
export async function send(store: Store, args: SendArgs): Promise<{ code: number; summary: unknown }> {
  const address = localAddress(args);
  if (address === undefined) throw new ClonecastError(ERR.USAGE, 'send needs --interface IF or --address IP: the interface to multicast on');
  // The session secret: receivers need it (--key-file) to check the data and to be heard.
  const secret = randomBytes(KEY_SIZE);
  const keyFile = args.keyFile ?? join(store.root, `send-${secret.readUInt32BE(0).toString(16).padStart(8, '0')}.key`);
  try {
    writeFileSync(keyFile, `${secret.toString('hex')}\n`, { mode: 0o600, flag: 'wx' });
  } catch (err) {
    throw new ClonecastError(ERR.WRITE_ERROR, `cannot write the session key to ${keyFile}: ${(err as Error).message}; choose another --key-file`);
  }
  try {
    return await sendWith(store, args, address, secret, keyFile);
  } finally {
    if (args.keyFile === undefined) rmSync(keyFile, { force: true });
  }
}

async function sendWith(store: Store, args: SendArgs, address: string, secret: Buffer, keyFile: string): Promise<{ code: number; summary: unknown }> {
  const session = await startSession(store, parseRef(args.ref), {
    address,
    secret,
    unauthenticated: UNAUTHENTICATED,
    encrypt: args.encrypt === true,
    group: args.group,
    port: args.port,
    httpPort: args.httpPort,
    rateMbit: args.rateMbit,
    fragmentSize: args.fragmentSize,
    dropAfterMs: args.dropAfterSeconds !== undefined ? args.dropAfterSeconds * 1000 : undefined,
    // The start rule: all expected receivers joined (one if not said), or --wait seconds after the first.
    rule: { clients: args.clients ?? 1, waitS: args.waitSeconds },
    onError: (err) => process.stderr.write(`clonecast send: ${err.message}\n`),
  });
  const { sender } = session;
  const manifest = await store.readManifest(session.image.name, session.image.version);
  const chunkSize = manifest.meta.chunkSize;
  process.stderr.write(`clonecast send: ${session.image.name}@${session.image.version} on ${session.info.group}:${session.info.port} from ${address}\n`);
  process.stderr.write(`session: ${session.url}\n`);
  process.stderr.write(`key file: ${keyFile}\n`);
  process.stderr.write(`receivers run: clonecast receive --from ${session.url} --key-file ${keyFile} --disk DISK (copy the key file to them over a trusted channel)\n`);
  const started = performance.now();
  sender.on('start', ({ receivers }: { receivers: number }) => {
    if (!args.json) process.stderr.write(`sending to ${receivers} receiver(s); latecomers join as they come\n`);
  });
  sender.on('version', (m: string) => process.stderr.write(`${m}\n`));
  sender.on('state', (r: ReceiverStats) => {
    if (!args.json) process.stderr.write(`receiver ${r.receiverId.toString(16).padStart(8, '0')} (${r.address}) is ${STATE_NAMES[r.state]}${r.state === ReceiverState.DROPPED ? `: ${dropReasonText(r.reason)}` : ''}\n`);
  });
  // Where everyone stood each time a receiver ended: shows whether a slow one held the others back.
  const ends: { receiverId: number; state: string; seconds: number; progress: Record<number, number> }[] = [];
  sender.on('state', (r: ReceiverStats) => {
    if (r.state < ReceiverState.DONE) return;
    const progress: Record<number, number> = {};
    for (const o of sender.receivers()) progress[o.receiverId] = o.state === ReceiverState.DONE ? 1 : o.wanted > 0 ? o.done / o.wanted : 0;
    ends.push({ receiverId: r.receiverId, state: STATE_NAMES[r.state], seconds: (performance.now() - started) / 1000, progress });
  });
  const table = setInterval(() => {
    if (args.json) return;
    const rs = sender.receivers();
    process.stderr.write(`${formatDuration((performance.now() - started) / 1000)} rate ${formatBytes(sender.rate)}/s sent ${formatBytes(sender.counters.bytesSent)}, ${rs.length} receiver(s)\n${rs.map((r) => describeReceiver(r, chunkSize)).join('\n')}\n`);
  }, 2000);
  try {
    await new Promise<void>((resolve) => {
      const check = () => {
        const rs = sender.receivers();
        const finished = rs.filter((r) => r.state >= ReceiverState.DONE);
        if (args.clients !== undefined && finished.length >= args.clients && finished.length === rs.length) resolve();
      };
      sender.on('state', check);
    });
  } finally {
    clearInterval(table);
    session.close();
  }
  const receivers = sender.receivers();
  const seconds = (performance.now() - started) / 1000;
  const ok = receivers.every((r) => r.state === ReceiverState.DONE);
  const summary = { image: session.image, seconds, counters: sender.counters, receivers: receivers.map((r) => ({ ...r, state: STATE_NAMES[r.state] })), ends };
  if (!args.json) {
    process.stdout.write(`session ${ok ? 'complete' : 'finished with failures'} in ${formatDuration(seconds)}; sent ${formatBytes(sender.counters.bytesSent)} (${sender.counters.repairPackets} repair packets)\n`);
    for (const r of receivers) process.stdout.write(`${describeReceiver(r, chunkSize)}\n`);
  }
  return { code: ok ? 0 : 1, summary };
}

/** Options of the receive command. */
export interface ReceiveArgs {
  from: string;
  disk: string;
  address?: string;
  interface?: string;
  resume: boolean;
  force: boolean;
  verify: boolean;
  finalVerify?: boolean;
  writeLimit?: number;
  /** The session secret "clonecast send" wrote. */
  keyFile: string;
  json: boolean;
}

/** Reads a session secret (64 hex digits) from a key file. */
function readSecret(file: string): Buffer {
  let text: string;
  try {
    text = readFileSync(file, 'utf8').trim();
  } catch (err) {
    throw new ClonecastError(ERR.NOT_FOUND, `cannot read the key file ${file}: ${(err as Error).message}; copy the file "clonecast send" printed`);
  }
  if (!/^[0-9a-fA-F]{64}$/.test(text)) throw new ClonecastError(ERR.USAGE, `${file} is not a clonecast session key (64 hex digits); copy the file "clonecast send" printed`);
  return Buffer.from(text, 'hex');
}

/** Joins a session and writes the disk; returns the summary. */
export async function receive(args: ReceiveArgs): Promise<unknown> {
  const secret = readSecret(args.keyFile);
  const join = await fetchSession(args.from);
  const receiverId = defaultReceiverId(localAddress(args), args.disk);
  const receiver = new Receiver({
    receiverId,
    keys: { data: deriveKey(secret, 'data'), receiver: deriveKey(secret, receiverLabel(receiverId)), encrypt: join.info.encrypted === true ? deriveKey(secret, 'encrypt') : undefined },
    unauthenticated: UNAUTHENTICATED,
    session: join.info,
    manifest: join.manifest,
    target: args.disk,
    force: args.force,
    interfaceAddress: localAddress(args),
    resume: args.resume,
    verify: args.verify,
    finalVerify: args.finalVerify,
    writeLimit: args.writeLimit,
  });
  const { meta } = join.manifest;
  const progress = new Progress(`receive ${join.image.name}@${join.image.version}`, meta.diskSize, { stream: args.json ? null : process.stderr });
  let last = 0;
  receiver.on('version', (m: string) => process.stderr.write(`${m}\n`));
  receiver.on('resume', ({ skipped }: { skipped: number }) => {
    if (!args.json) process.stderr.write(`resume: ${skipped} chunks already on ${args.disk}\n`);
  });
  receiver.on('progress', ({ bytesWritten }: { bytesWritten: number }) => {
    progress.add(bytesWritten - last);
    last = bytesWritten;
  });
  const result = await receiver.run();
  progress.finish();
  if (!args.json) {
    process.stdout.write(
      `received ${join.image.name}@${join.image.version} onto ${args.disk}: ${result.chunks} chunks (${result.skipped} already there), ${formatBytes(result.bytesWritten)} written in ${formatDuration(result.seconds)}, ${result.verified ? 'verified' : 'not verified'}\n` +
        `  packets ${result.counters.packets}, lost ${result.counters.lost}, duplicates ${result.counters.duplicates}, parity ${result.counters.parity} (${result.counters.rebuilt} fragments rebuilt), repair asks ${result.counters.nacksSent}, rejected ${JSON.stringify(result.counters.rejected)}\n`,
    );
  }
  return { image: join.image, ...result };
}
