/**
 * Captures: a connected agent reads its disk and uploads it as a new version
 * of an image (agent/capture.ts). The server answers which chunks it lacks,
 * stores each uploaded chunk after checking it (the chunk decodes, its
 * xxh64 holds, and its SHA-256 is its name), and publishes the version only
 * when the whole chunk table is there and every chunk it names is stored:
 * then a barrier, then the manifest (atomic). Two captures of one image
 * name never run at once. A capture holds its machine in the registry (the
 * one owner of machine activity), so no session can write a disk while it
 * is read; a capture whose agent stays away for `lostAfterS` fails with
 * that reason, and an administrator can fail one by hand. Captures are
 * saved in DATA/captures.json, so an upload resumes after a server restart.
 */
import { EventEmitter } from 'node:events';
import { open, readFile, rm } from 'node:fs/promises';
import { listFile, type StateFile } from '../state/state-file.js';
import { join } from 'node:path';
import { CHUNK, decodeChunk } from '../protocol/chunk.js';
import { ClonecastError, ERR } from '../protocol/errors.js';
import { sha256 } from '../protocol/hash.js';
import type { BadRange, ManifestMeta } from '../protocol/manifest.js';
import { chunkCount } from '../protocol/chunk.js';
import type { AgentChannel } from './control.js';
import type { Registry } from './registry.js';
import { checkName, type Store } from './store/store.js';
import { native } from '../native/addon.js';
import type { Activity, CaptureState } from '../protocol/states.js';
import type { CaptureRequest } from '../protocol/api.js';
import { newSecret, secretHash, secretMatches } from './credentials.js';
import { checkFinish, checkUsedAgainstTable, checkPartitionTable, checkProgress, checkTable, maxChunkUpload, tableFromChunks } from './capture-checks.js';

/** Defaults of CaptureManager. */
export const CAPTURE_DEFAULTS = Object.freeze({
  /** A running capture whose machine has been disconnected this long fails, s. */
  lostAfterS: 120,
});

/** Options of CaptureManager. */
export interface CaptureOptions {
  lostAfterS?: number;
  log?: (level: 'info' | 'warn', message: string) => void;
}

export type { CaptureRequest };

/** A capture as saved and shown. */
export interface CaptureRecord {
  id: number;
  machine: string;
  image: string;
  device: string;
  /** Size of that disk as its agent reported it in its Hello, bytes (0 in records from before this was kept). */
  diskSize: number;
  chunkSize: number;
  partitions: number[];
  ignoreReadErrors: boolean;
  /** Read every byte (no used-block map). */
  raw?: boolean;
  force: boolean;
  state: CaptureState;
  error: string;
  createdAt: string;
  endedAt: string | null;
  progress: { chunksDone: number; chunksTotal: number; bytesRead: number; reused: number; bytesSent: number };
  /** Chunks received and stored new by the server. */
  received: { chunks: number; bytes: number; newBytes: number };
  result: { version: number; newBytes: number; diskSize: number; dedupeRatio: number; badRanges: BadRange[] } | null;
  /** SHA-256 (hex) of the capture's own secret (sent to its agent in the Capture): what its upload routes take; never shown. */
  secretHash?: string;
}

interface Pending {
  /** The uploaded chunk table, streamed to a temporary file in the store. */
  tablePath?: string;
}

/** Every capture; the API routes call into it. */
export class CaptureManager extends EventEmitter {
  private readonly captures = new Map<number, CaptureRecord>();
  private readonly pending = new Map<number, Pending>();
  /** captures.json; its health() says whether it is saved. */
  readonly file: StateFile<CaptureRecord[]>;
  /** When each running capture's machine was first seen disconnected (ms since epoch). */
  private readonly lostSince = new Map<number, number>();
  /** When each running capture's agent last called an upload route (ms since epoch). */
  private readonly heardAt = new Map<number, number>();
  /** Captures whose finish is under way (one at a time; the timeout waits for it). */
  private readonly finishing = new Set<number>();
  private readonly timer: NodeJS.Timeout;
  private readonly log: CaptureOptions['log'];
  private readonly lostAfterMs: number;

  constructor(
    private readonly store: Store,
    private readonly registry: Registry,
    private readonly agents: AgentChannel,
    options: CaptureOptions = {},
  ) {
    super();
    this.log = options.log;
    this.lostAfterMs = (options.lostAfterS ?? CAPTURE_DEFAULTS.lostAfterS) * 1000;
    this.timer = setInterval(() => this.tick(), Math.min(1000, this.lostAfterMs / 4));
    this.timer.unref();
    this.file = listFile<CaptureRecord>(join(store.root, 'captures.json'));
    const { value: list, setAside } = this.file;
    if (setAside !== undefined) this.log?.('warn', `captures.json could not be read; kept as ${setAside}, starting with no captures`);
    for (const c of list) this.captures.set(c.id, c);
  }

  /** After a restart: every running capture holds its machine again (machines.json may have lagged); one that cannot fails. */
  reclaim(): void {
    for (const c of this.captures.values()) {
      if (c.state !== 'running' || this.registry.get(c.machine) === undefined) continue;
      const refused = this.registry.apply(c.machine, { type: 'claim', by: holder(c.id), state: 'capturing' });
      if (refused !== null) this.fail(c.id, `after a restart: ${refused}`);
    }
  }

  /** True if capture `id` is running on this machine (it holds it). */
  holds(id: number, machineId: string): boolean {
    const c = this.captures.get(id);
    return c?.state === 'running' && c.machine === machineId;
  }

  list(): CaptureRecord[] {
    return [...this.captures.values()].sort((a, b) => b.id - a.id).map(({ secretHash: _h, ...c }) => c);
  }

  /** True if `presented` is capture `id`'s own secret and the capture is still running. */
  secretMatches(id: number, presented: string | undefined): boolean {
    const c = this.captures.get(id);
    return c !== undefined && c.state === 'running' && secretMatches(presented, c.secretHash);
  }

  get(id: number): CaptureRecord {
    const c = this.captures.get(id);
    if (c === undefined) throw new ClonecastError(ERR.NOT_FOUND, `no capture ${id}`);
    return c;
  }

  /** Starts a capture on a connected machine. */
  async create(req: CaptureRequest): Promise<CaptureRecord> {
    if (typeof req !== 'object' || req === null) throw new ClonecastError(ERR.USAGE, 'send {"machine": MAC, "image": NAME, ...}');
    checkName(req.image);
    if (req.disk !== undefined && (typeof req.disk !== 'string' || req.disk.length > 256)) throw new ClonecastError(ERR.USAGE, 'disk must be a device path');
    if (req.partitions !== undefined && (!Array.isArray(req.partitions) || req.partitions.length > 128 || req.partitions.some((p) => !Number.isSafeInteger(p) || p < 1 || p > 256))) {
      throw new ClonecastError(ERR.USAGE, 'partitions must be a list of partition numbers (1-256)');
    }
    for (const flag of ['ignoreReadErrors', 'force', 'raw'] as const) if (req[flag] !== undefined && typeof req[flag] !== 'boolean') throw new ClonecastError(ERR.USAGE, `${flag} must be true or false`);
    const machine = this.registry.get(String(req.machine ?? '').toLowerCase());
    if (machine === undefined) throw new ClonecastError(ERR.NOT_FOUND, `no machine ${req.machine}; "clonecast machines" lists them`);
    if (!machine.online) throw new ClonecastError(ERR.UNREACHABLE, `${machine.id} is not connected; start its agent first`);
    // An agent without a credential may be anyone claiming that MAC: what it uploads would become an image.
    if (machine.trust === 'unverified') throw new ClonecastError(ERR.REFUSED, `${machine.id} connected without a credential (unverified); capture it after booting it with a credential (pxe/machines.json action agent) or running its agent with the server's token`);
    const busy = this.list().find((c) => c.state === 'running' && c.image === req.image);
    if (busy !== undefined) throw new ClonecastError(ERR.BUSY, `capture ${busy.id} of "${req.image}" (from ${busy.machine}) is still running; captures of one image never run at once`);
    const device = req.disk ?? (machine.disks.length === 1 ? machine.disks[0].device! : '');
    if (device === '') throw new ClonecastError(ERR.USAGE, `${machine.id} has ${machine.disks.length} disks (${machine.disks.map((d) => d.device).join(', ')}); say which with --disk`);
    const disk = machine.disks.find((d) => d.device === device);
    if (disk === undefined) throw new ClonecastError(ERR.USAGE, `${device} is not one of ${machine.id}'s disks (${machine.disks.map((d) => d.device).join(', ') || 'none reported'})`);
    const id = Math.max(0, ...this.captures.keys()) + 1;
    // The machine is claimed before anything is sent: a machine in a session (or another capture) is refused.
    this.registry.claim(machine.id, holder(id), 'capturing');
    const record: CaptureRecord = {
      id,
      machine: machine.id,
      image: req.image,
      device,
      diskSize: Number(disk.size),
      chunkSize: CHUNK.DEFAULT_SIZE,
      partitions: req.partitions ?? [],
      ignoreReadErrors: req.ignoreReadErrors === true,
      force: req.force === true,
      raw: req.raw === true,
      state: 'running',
      error: '',
      createdAt: new Date().toISOString(),
      endedAt: null,
      progress: { chunksDone: 0, chunksTotal: 0, bytesRead: 0, reused: 0, bytesSent: 0 },
      received: { chunks: 0, bytes: 0, newBytes: 0 },
      result: null,
    };
    const secret = newSecret();
    record.secretHash = secretHash(secret);
    this.captures.set(id, record);
    // On disk before the agent starts reading: a server killed now still knows the capture when the agent resumes.
    this.save();
    try {
      await this.file.commit();
    } catch (err) {
      this.captures.delete(id);
      this.registry.apply(machine.id, { type: 'release', by: holder(id), state: 'idle' });
      this.save();
      throw new ClonecastError(ERR.WRITE_ERROR, `the capture could not be saved, so it was not started: ${(err as Error).message}; free space in ${this.store.root} and try again`);
    }
    if (this.captures.get(id)?.state !== 'running') return record; // failed meanwhile (its machine went away)
    const sent = this.agents.send(machine.id, {
      type: 'capture',
      capture: { captureId: id, image: req.image, device, partitions: record.partitions, ignoreReadErrors: record.ignoreReadErrors, force: record.force, raw: record.raw === true, chunkSize: record.chunkSize, secret },
    });
    if (!sent) this.fail(id, 'the machine disconnected before the capture could start');
    this.log?.('info', `capture ${id}: ${machine.id} ${device} → ${req.image}`);
    this.emit('changed');
    return record;
  }

  private running(id: number): CaptureRecord {
    const c = this.get(id);
    if (c.state !== 'running') throw new ClonecastError(ERR.ENDED, `capture ${id} has ended (${c.state}${c.error ? `: ${c.error}` : ''}); it takes no more uploads, start a new capture`);
    this.heardAt.set(id, Date.now());
    return c;
  }

  /** A running capture that takes uploads now: not ended, and not being published (its table and chunks are being checked). */
  private accepting(id: number): CaptureRecord {
    const c = this.running(id);
    if (this.finishing.has(id)) throw new ClonecastError(ERR.BUSY, `capture ${id} is being published and takes no more uploads; wait for the answer to its finish`);
    return c;
  }

  /** The disk's size as its agent last reported it (a reconnecting agent reports its disks again). */
  private refreshDiskSize(c: CaptureRecord): void {
    const now = this.registry.get(c.machine)?.disks.find((d) => d.device === c.device)?.size;
    if (now !== undefined && Number.isSafeInteger(Number(now)) && Number(now) > 0) c.diskSize = Number(now);
  }

  /**
   * Limits for uploads into a running capture, asked before any body is
   * read: an ended capture or one being published takes nothing (409), and
   * bodies are capped by what its disk can need (one chunk and its header;
   * one table record per chunk of the disk).
   */
  uploadLimits(id: number): { chunkBytes: number; tableBytes: number } {
    const c = this.accepting(id);
    this.refreshDiskSize(c);
    return { chunkBytes: maxChunkUpload(c.chunkSize), tableBytes: chunkCount(Math.max(1, c.diskSize), c.chunkSize) * 48 };
  }

  /** Which of these chunk names the store lacks. */
  have(id: number, chunks: unknown): { missing: string[] } {
    this.accepting(id);
    if (!Array.isArray(chunks) || chunks.some((c) => typeof c !== 'string' || !/^[0-9a-f]{64}$/.test(c))) throw new ClonecastError(ERR.USAGE, 'chunks must be a list of SHA-256 hex names');
    return { missing: (chunks as string[]).filter((sha) => this.store.chunkHead(Buffer.from(sha, 'hex')) === null) };
  }

  /** Stores one uploaded chunk after checking it. */
  async putChunk(id: number, sha: string, body: Buffer): Promise<void> {
    const c = this.accepting(id); // again: it may have ended while the body came in
    if (!/^[0-9a-f]{64}$/.test(sha)) throw new ClonecastError(ERR.USAGE, 'a chunk is named by its SHA-256 (64 hex digits)');
    if (body.length < CHUNK.HEADER_SIZE || body.length > maxChunkUpload(c.chunkSize)) throw new ClonecastError(ERR.USAGE, `a chunk of ${body.length} bytes`);
    const { raw } = decodeChunk(body, `uploaded chunk ${sha}`);
    if (raw.length > c.chunkSize) throw new ClonecastError(ERR.USAGE, `an uploaded chunk of ${raw.length} bytes is larger than the capture's chunk size`);
    if (sha256(raw).toString('hex') !== sha) throw new ClonecastError(ERR.CHUNK_CORRUPT, `uploaded chunk ${sha} does not hash to its name; it was damaged on the way`);
    // putChunk writes with O_DIRECT: an aligned buffer, room for the padding.
    const out = native().alignedBuffer(Math.ceil((body.length + 1) / 4096) * 4096 + 4096, 4096);
    body.copy(out);
    const isNew = await this.store.putChunk(Buffer.from(sha, 'hex'), out, body.length, false);
    c.received.chunks++;
    c.received.bytes += body.length;
    if (isNew) c.received.newBytes += body.length;
  }

  progress(id: number, p: unknown): void {
    const c = this.accepting(id);
    c.progress = checkProgress(p, Math.max(1, c.diskSize), c.chunkSize);
    this.emit('changed');
  }

  /** The chunk table, before finish: streamed to a temporary file, never more than the disk needs. */
  async table(id: number, body: AsyncIterable<Buffer>): Promise<void> {
    const { tableBytes } = this.uploadLimits(id);
    const path = this.store.tmpPath(`capture-${id}-table`);
    let size = 0;
    try {
      // Part by part to the file, awaiting each write: memory holds one part, whatever the table's size.
      const file = await open(path, 'wx', 0o600);
      try {
        for await (const part of body) {
          size += part.length;
          if (size > tableBytes) throw new ClonecastError(ERR.TOO_LARGE, `a chunk table over ${tableBytes} bytes (the disk has ${tableBytes / 48} chunks)`);
          await file.write(part);
        }
      } finally {
        await file.close();
      }
      if (size % 48 !== 0) throw new ClonecastError(ERR.USAGE, 'a chunk table is a whole number of 48-byte records');
      this.accepting(id); // it may have ended, or its finish begun, while the table streamed in
    } catch (err) {
      await rm(path, { force: true });
      throw err;
    }
    const old = this.pending.get(id)?.tablePath;
    this.pending.set(id, { tablePath: path });
    if (old !== undefined) await rm(old, { force: true });
  }

  /** Publishes the version once every chunk is stored. */
  async finish(id: number, m: unknown): Promise<CaptureRecord> {
    this.running(id);
    // One finish at a time: an agent that retries while the first is under way is told so.
    if (this.finishing.has(id)) throw new ClonecastError(ERR.BUSY, `capture ${id} is already being published`);
    this.finishing.add(id);
    try {
      return await this.publish(id, m);
    } finally {
      this.finishing.delete(id);
    }
  }

  private async publish(id: number, body: unknown): Promise<CaptureRecord> {
    const c = this.running(id);
    this.refreshDiskSize(c);
    // What the agent says is checked against what the server knows before it shapes a manifest.
    const m = checkFinish(body, { diskSize: c.diskSize, chunkSize: c.chunkSize, device: c.device, disks: this.registry.get(c.machine)?.disks ?? [] });
    const tablePath = this.pending.get(id)?.tablePath;
    if (tablePath === undefined) throw new ClonecastError(ERR.NOT_FOUND, 'no chunk table uploaded for this capture (PUT .../table first)');
    const table = await readFile(tablePath);
    await checkTable(this.store, table, m.diskSize, m.chunkSize);
    const device = m.device;
    // The table as the stored bytes say, where they hold the start of the disk; else the agent's, checked.
    const partitionTable = (await tableFromChunks(this.store, table, m.diskSize, m.chunkSize, m.sectorSize)) ?? checkPartitionTable(m.partitionTable, m.diskSize, m.sectorSize);
    const progress = checkProgress(m.progress ?? c.progress, m.diskSize, m.chunkSize);
    const lock = this.store.lockImage(c.image, `capture ${id} from ${c.machine}`);
    try {
      await this.store.barrier();
      // Failed by the administrator while the table was checked: nothing is published.
      if (c.state !== 'running') throw new ClonecastError(ERR.ENDED, `capture ${id} ended while it was being published: ${c.error}`);
      const versions = this.store.versions(c.image);
      const machine = this.registry.get(c.machine);
      const meta: ManifestMeta = {
        name: c.image,
        version: 0,
        diskSize: m.diskSize,
        sectorSize: m.sectorSize,
        chunkSize: m.chunkSize,
        createdAt: new Date().toISOString(),
        parent: versions.length > 0 ? versions[versions.length - 1] : null,
        source: { path: device, kind: m.blockDevice === true ? 'block-device' : 'file', description: `captured from ${c.machine}${machine?.hostname ? ` (${machine.hostname.replace(/[\x00-\x1f\x7f]/g, '?')})` : ''} ${device}${c.partitions.length ? `, partitions ${c.partitions.join(',')}` : ''}` },
        partitionTable,
        badRanges: m.badRanges,
        newBytes: c.received.newBytes,
        ...checkUsedAgainstTable(m.used, partitionTable),
      };
      // publishVersion() writes only what the normal manifest decoder reads back (an edge's goes to its repository first).
      const version = await this.store.publishVersion({ meta, table });
      const dataBytes = Math.max(1, progress.bytesRead);
      c.progress = progress;
      c.result = { version, newBytes: c.received.newBytes, diskSize: m.diskSize, dedupeRatio: dataBytes / Math.max(1, c.received.bytes), badRanges: m.badRanges };
      c.state = 'done';
      c.endedAt = new Date().toISOString();
      this.dropPending(id);
      this.lostSince.delete(id);
      this.registry.apply(c.machine, { type: 'release', by: holder(id), state: 'idle' });
      this.log?.('info', `capture ${id}: published ${c.image}@${version} (${c.received.newBytes} new bytes stored, ${c.received.bytes} sent)`);
      this.save();
      this.emit('changed');
      return c;
    } finally {
      lock.release();
    }
  }

  /** The agent or the administrator says the capture failed; nothing is published, the machine is free again. */
  fail(id: number, error: string): CaptureRecord {
    const c = this.get(id);
    if (c.state !== 'running') return c;
    c.state = 'failed';
    // An agent's words, shown in the dashboard and the CLI: bounded, no control characters.
    c.error = String(error).slice(0, 1024).replace(/[\x00-\x1f\x7f]/g, '?');
    c.endedAt = new Date().toISOString();
    this.dropPending(id);
    this.lostSince.delete(id);
    this.heardAt.delete(id);
    this.registry.apply(c.machine, { type: 'release', by: holder(id), state: 'failed', error: `capture ${id}: ${c.error}` });
    this.log?.('warn', `capture ${id}: failed: ${c.error}`);
    this.save();
    this.emit('changed');
    return c;
  }

  /** Forgets an ended capture's upload state and removes its temporary table. */
  private dropPending(id: number): void {
    const path = this.pending.get(id)?.tablePath;
    this.pending.delete(id);
    if (path !== undefined) rm(path, { force: true }).catch((err: Error) => this.log?.('warn', `capture ${id}: could not remove ${path}: ${err.message}`));
  }

  /** Fails running captures whose machine has been gone for too long. */
  private tick(): void {
    const now = Date.now();
    for (const c of this.captures.values()) {
      if (c.state !== 'running' || this.finishing.has(c.id)) continue;
      if (this.registry.get(c.machine)?.online === true) {
        this.lostSince.delete(c.id);
        // Connected but silent: an agent that restarted has forgotten the capture.
        const heard = this.heardAt.get(c.id) ?? now;
        this.heardAt.set(c.id, heard);
        if (now - heard >= this.lostAfterMs) this.fail(c.id, `no word from the machine's agent about it for ${Math.round((now - heard) / 1000)} s (it may have restarted); start the capture again`);
        continue;
      }
      const since = this.lostSince.get(c.id) ?? now;
      this.lostSince.set(c.id, since);
      if (now - since >= this.lostAfterMs) {
        this.fail(c.id, `the machine's agent has been gone for ${Math.round((now - since) / 1000)} s; start the capture again once the machine is back`);
      }
    }
  }

  private save(): void {
    // The records themselves (with their secrets' hashes, so that an upload resumes after a restart).
    this.file.set([...this.captures.values()].sort((a, b) => b.id - a.id).slice(0, 200));
  }

  /** Resolves once every change so far is in captures.json. */
  commit(): Promise<void> {
    return this.file.commit();
  }

  /** Stops the timer and writes pending changes (bounded wait). */
  close(): Promise<void> {
    clearInterval(this.timer);
    return this.file.close();
  }
}

/** The activity by which a capture holds its machine in the registry. */
function holder(id: number): Activity {
  return { kind: 'capture', id };
}
