/**
 * Captures: a connected agent reads its disk and uploads it as a new version
 * of an image (agent/capture.ts). The server answers which chunks it lacks,
 * stores each uploaded chunk after checking it (the chunk decodes, its
 * xxh64 holds, and its SHA-256 is its name), and publishes the version only
 * when the whole chunk table is there and every chunk it names is stored:
 * then a barrier, then the manifest (atomic). Two captures of one image
 * name never run at once. Captures are saved in DATA/captures.json, so an
 * upload resumes after a server restart.
 */
import { EventEmitter } from 'node:events';
import { listFile, type StateFile } from '../state/state-file.js';
import { join } from 'node:path';
import { CHUNK, decodeChunk } from '../protocol/chunk.js';
import { ClonecastError, ERR } from '../protocol/errors.js';
import { sha256 } from '../protocol/hash.js';
import { chunkAt, ChunkKind, tableLength, type BadRange, type ManifestMeta } from '../protocol/manifest.js';
import type { PartitionTable } from '../protocol/partitions.js';
import { chunkCount } from '../protocol/chunk.js';
import type { AgentChannel } from './control.js';
import type { Registry } from './registry.js';
import { checkName, type Store } from './store/store.js';
import { native } from '../native/addon.js';

/** What an administrator asks for. */
export interface CaptureRequest {
  machine: string;
  image: string;
  disk?: string;
  partitions?: number[];
  ignoreReadErrors?: boolean;
  force?: boolean;
}

/** A capture as saved and shown. */
export interface CaptureRecord {
  id: number;
  machine: string;
  image: string;
  device: string;
  partitions: number[];
  ignoreReadErrors: boolean;
  force: boolean;
  state: 'running' | 'done' | 'failed';
  error: string;
  createdAt: string;
  endedAt: string | null;
  progress: { chunksDone: number; chunksTotal: number; bytesRead: number; reused: number; bytesSent: number };
  /** Chunks received and stored new by the server. */
  received: { chunks: number; bytes: number; newBytes: number };
  result: { version: number; newBytes: number; diskSize: number; dedupeRatio: number; badRanges: BadRange[] } | null;
}

interface Pending {
  table?: Buffer;
}

/** Every capture; the API routes call into it. */
export class CaptureManager extends EventEmitter {
  private readonly captures = new Map<number, CaptureRecord>();
  private readonly pending = new Map<number, Pending>();
  /** captures.json; its health() says whether it is saved. */
  readonly file: StateFile<CaptureRecord[]>;

  constructor(
    private readonly store: Store,
    private readonly registry: Registry,
    private readonly agents: AgentChannel,
    private readonly log?: (level: 'info' | 'warn', message: string) => void,
  ) {
    super();
    this.file = listFile<CaptureRecord>(join(store.root, 'captures.json'));
    const { value: list, setAside } = this.file;
    if (setAside !== undefined) this.log?.('warn', `captures.json could not be read; kept as ${setAside}, starting with no captures`);
    for (const c of list) this.captures.set(c.id, c);
  }

  list(): CaptureRecord[] {
    return [...this.captures.values()].sort((a, b) => b.id - a.id);
  }

  get(id: number): CaptureRecord {
    const c = this.captures.get(id);
    if (c === undefined) throw new ClonecastError(ERR.NOT_FOUND, `no capture ${id}`);
    return c;
  }

  /** Starts a capture on a connected machine. */
  create(req: CaptureRequest): CaptureRecord {
    checkName(req.image);
    const machine = this.registry.get(String(req.machine ?? '').toLowerCase());
    if (machine === undefined) throw new ClonecastError(ERR.NOT_FOUND, `no machine ${req.machine}; "clonecast machines" lists them`);
    if (!machine.online) throw new ClonecastError(ERR.UNREACHABLE, `${machine.id} is not connected; start its agent first`);
    const busy = this.list().find((c) => c.state === 'running' && c.image === req.image);
    if (busy !== undefined) throw new ClonecastError(ERR.BUSY, `capture ${busy.id} of "${req.image}" (from ${busy.machine}) is still running; captures of one image never run at once`);
    const device = req.disk ?? (machine.disks.length === 1 ? machine.disks[0].device! : '');
    if (device === '') throw new ClonecastError(ERR.USAGE, `${machine.id} has ${machine.disks.length} disks (${machine.disks.map((d) => d.device).join(', ')}); say which with --disk`);
    const id = Math.max(0, ...this.captures.keys()) + 1;
    const record: CaptureRecord = {
      id,
      machine: machine.id,
      image: req.image,
      device,
      partitions: req.partitions ?? [],
      ignoreReadErrors: req.ignoreReadErrors === true,
      force: req.force === true,
      state: 'running',
      error: '',
      createdAt: new Date().toISOString(),
      endedAt: null,
      progress: { chunksDone: 0, chunksTotal: 0, bytesRead: 0, reused: 0, bytesSent: 0 },
      received: { chunks: 0, bytes: 0, newBytes: 0 },
      result: null,
    };
    this.captures.set(id, record);
    this.save();
    const sent = this.agents.send(machine.id, {
      type: 'capture',
      capture: { captureId: id, image: req.image, device, partitions: record.partitions, ignoreReadErrors: record.ignoreReadErrors, force: record.force, chunkSize: CHUNK.DEFAULT_SIZE },
    });
    if (!sent) this.fail(id, 'the machine disconnected before the capture could start');
    this.log?.('info', `capture ${id}: ${machine.id} ${device} → ${req.image}`);
    this.emit('changed');
    return record;
  }

  /** Only the machine a capture belongs to may upload into it. */
  owns(id: number, machine: string): boolean {
    return this.captures.get(id)?.machine === machine;
  }

  private running(id: number): CaptureRecord {
    const c = this.get(id);
    if (c.state !== 'running') throw new ClonecastError(ERR.USAGE, `capture ${id} has ended (${c.state})`);
    return c;
  }

  /** Which of these chunk names the store lacks. */
  have(id: number, chunks: unknown): { missing: string[] } {
    this.running(id);
    if (!Array.isArray(chunks) || chunks.some((c) => typeof c !== 'string' || !/^[0-9a-f]{64}$/.test(c))) throw new ClonecastError(ERR.USAGE, 'chunks must be a list of SHA-256 hex names');
    return { missing: (chunks as string[]).filter((sha) => this.store.chunkHead(Buffer.from(sha, 'hex')) === null) };
  }

  /** Stores one uploaded chunk after checking it. */
  async putChunk(id: number, sha: string, body: Buffer): Promise<void> {
    const c = this.running(id);
    if (!/^[0-9a-f]{64}$/.test(sha)) throw new ClonecastError(ERR.USAGE, 'a chunk is named by its SHA-256 (64 hex digits)');
    if (body.length < CHUNK.HEADER_SIZE || body.length > CHUNK.HEADER_SIZE + CHUNK.MAX_SIZE + 4096) throw new ClonecastError(ERR.USAGE, `a chunk of ${body.length} bytes`);
    const { raw } = decodeChunk(body, `uploaded chunk ${sha}`);
    if (sha256(raw).toString('hex') !== sha) throw new ClonecastError(ERR.CHUNK_CORRUPT, `uploaded chunk ${sha} does not hash to its name; it was damaged on the way`);
    // putChunk writes with O_DIRECT: an aligned buffer, room for the padding.
    const out = native().alignedBuffer(Math.ceil((body.length + 1) / 4096) * 4096 + 4096, 4096);
    body.copy(out);
    const isNew = await this.store.putChunk(Buffer.from(sha, 'hex'), out, body.length, false);
    c.received.chunks++;
    c.received.bytes += body.length;
    if (isNew) c.received.newBytes += body.length;
  }

  progress(id: number, p: CaptureRecord['progress']): void {
    const c = this.running(id);
    c.progress = { chunksDone: Number(p.chunksDone) || 0, chunksTotal: Number(p.chunksTotal) || 0, bytesRead: Number(p.bytesRead) || 0, reused: Number(p.reused) || 0, bytesSent: Number(p.bytesSent) || 0 };
    this.emit('changed');
  }

  /** The chunk table, before finish. */
  table(id: number, body: Buffer): void {
    this.running(id);
    if (body.length % 48 !== 0) throw new ClonecastError(ERR.USAGE, 'a chunk table is a whole number of 48-byte records');
    this.pending.set(id, { table: body });
  }

  /** Publishes the version once every chunk is stored. */
  async finish(id: number, m: { diskSize: number; sectorSize: number; chunkSize: number; partitionTable: PartitionTable; badRanges: BadRange[]; device: string; blockDevice: boolean; progress: CaptureRecord['progress'] }): Promise<CaptureRecord> {
    const c = this.running(id);
    // What the agent says is checked before it shapes a manifest.
    const pow2 = (n: unknown) => Number.isInteger(n) && Number.isInteger(Math.log2(n as number));
    if (!Number.isSafeInteger(m.diskSize) || m.diskSize <= 0) throw new ClonecastError(ERR.USAGE, `disk size ${m.diskSize} is not a byte count`);
    if (!pow2(m.chunkSize) || m.chunkSize < CHUNK.MIN_SIZE || m.chunkSize > CHUNK.MAX_SIZE) throw new ClonecastError(ERR.USAGE, `chunk size ${m.chunkSize} is not a power of two from ${CHUNK.MIN_SIZE} to ${CHUNK.MAX_SIZE}`);
    if (!pow2(m.sectorSize) || m.sectorSize < 512 || m.sectorSize > 65536) throw new ClonecastError(ERR.USAGE, `sector size ${m.sectorSize}`);
    if (!Array.isArray(m.badRanges) || m.badRanges.some((r) => !Number.isSafeInteger(r?.offset) || !Number.isSafeInteger(r?.length) || r.offset < 0 || r.length <= 0 || r.offset + r.length > m.diskSize)) {
      throw new ClonecastError(ERR.USAGE, 'bad ranges must be {offset, length} inside the disk');
    }
    const table = this.pending.get(id)?.table;
    if (table === undefined) throw new ClonecastError(ERR.NOT_FOUND, 'no chunk table uploaded for this capture (PUT .../table first)');
    if (tableLength(table) !== chunkCount(m.diskSize, m.chunkSize)) throw new ClonecastError(ERR.USAGE, 'the chunk table does not match the disk size');
    for (let i = 0; i < tableLength(table); i++) {
      const r = chunkAt(table, i);
      if (r.kind === ChunkKind.DATA && this.store.chunkHead(r.sha256) === null) throw new ClonecastError(ERR.CHUNK_MISSING, `chunk ${i} (${r.sha256.toString('hex')}) was never uploaded`);
    }
    const lock = this.store.lockImage(c.image, `capture ${id} from ${c.machine}`);
    try {
      await this.store.barrier();
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
        source: { path: m.device, kind: m.blockDevice ? 'block-device' : 'file', description: `captured from ${c.machine}${machine?.hostname ? ` (${machine.hostname})` : ''} ${m.device}${c.partitions.length ? `, partitions ${c.partitions.join(',')}` : ''}` },
        partitionTable: m.partitionTable,
        badRanges: m.badRanges,
        newBytes: c.received.newBytes,
      };
      const version = this.store.publish({ meta, table });
      const dataBytes = Math.max(1, m.progress?.bytesRead ?? 0);
      c.progress = m.progress ?? c.progress;
      c.result = { version, newBytes: c.received.newBytes, diskSize: m.diskSize, dedupeRatio: dataBytes / Math.max(1, c.received.bytes), badRanges: m.badRanges };
      c.state = 'done';
      c.endedAt = new Date().toISOString();
      this.pending.delete(id);
      this.log?.('info', `capture ${id}: published ${c.image}@${version} (${c.received.newBytes} new bytes stored, ${c.received.bytes} sent)`);
      this.save();
      this.emit('changed');
      return c;
    } finally {
      lock.release();
    }
  }

  /** The agent says the capture failed; nothing is published. */
  fail(id: number, error: string): CaptureRecord {
    const c = this.get(id);
    if (c.state !== 'running') return c;
    c.state = 'failed';
    c.error = String(error).slice(0, 1024);
    c.endedAt = new Date().toISOString();
    this.pending.delete(id);
    this.log?.('warn', `capture ${id}: failed: ${c.error}`);
    this.save();
    this.emit('changed');
    return c;
  }

  private save(): void {
    this.file.set(this.list().slice(0, 200));
  }

  /** Resolves once every change so far is in captures.json. */
  commit(): Promise<void> {
    return this.file.commit();
  }

  /** Writes pending changes (bounded wait). */
  close(): Promise<void> {
    return this.file.close();
  }
}
