/**
 * An image repository on an S3-compatible object store: the same
 * content-addressed layout as a local store (layout.ts), shared by many
 * servers. Chunks are immutable objects named by SHA-256; a version's
 * manifest is written only after every chunk it names is in the bucket
 * (the local store's barrier rule), under a version number claimed so that
 * two writers never publish the same number (leases.ts).
 *
 * Everything read from the bucket is checked before use: a manifest must
 * decode and name itself as the key does; a chunk must decode, match its
 * header's xxh64, hash to its key and have its position's length.
 */
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { CHUNK, decodeChunk, decodeChunkHeader } from '../../protocol/chunk.js';
import { sha256 } from '../../protocol/hash.js';
import { chunkAt, ChunkKind, decodeManifest, encodeManifest, MANIFEST, setChunk, tableLength, type Manifest } from '../../protocol/manifest.js';
import { checkName, type ImageRef } from '../store/store.js';
import { chunkKey, claimPrefix, LAYOUT, manifestKey, newId, parseImageKey, REPOSITORY_FORMAT, TOMBSTONE_ID } from './layout.js';
import { MAX_VERSION } from './leases.js';
import { Bucket, describeTarget, type RepositoryTarget } from './s3.js';

/** Largest stored form of a chunk. */
export const MAX_STORED_CHUNK = CHUNK.HEADER_SIZE + CHUNK.MAX_SIZE;

/** One DATA chunk a version needs: its name and the length its first position gives it. */
export interface NeededChunk {
  sha: string;
  rawLength: number;
  /** Stored length the manifest records (header not included). */
  storedLength: number;
}

/** The distinct DATA chunks of a manifest, in table order. */
export function dataChunks(m: Manifest): NeededChunk[] {
  const seen = new Set<string>();
  const out: NeededChunk[] = [];
  const n = tableLength(m.table);
  for (let i = 0; i < n; i++) {
    const r = chunkAt(m.table, i);
    if (r.kind !== ChunkKind.DATA) continue;
    const sha = r.sha256.toString('hex');
    if (seen.has(sha)) continue;
    seen.add(sha);
    out.push({ sha, rawLength: Math.min(m.meta.chunkSize, m.meta.diskSize - i * m.meta.chunkSize), storedLength: r.storedLength });
  }
  return out;
}

/** Stored bytes (headers included) of some chunks, as their manifest records them. */
export function storedBytes(chunks: readonly NeededChunk[]): number {
  let n = 0;
  for (const c of chunks) n += CHUNK.HEADER_SIZE + c.storedLength;
  return n;
}

/** Runs fn over items with at most `limit` at once; the first failure stops new starts and is thrown. */
export async function inParallel<T>(items: readonly T[], limit: number, fn: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  let failed: unknown;
  const lane = async () => {
    while (failed === undefined && next < items.length) {
      const i = next++;
      try {
        await fn(items[i], i);
      } catch (err) {
        failed ??= err;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, lane));
  if (failed !== undefined) throw failed;
}

/** A repository opened on its bucket. */
export class Repository {
  readonly where: string;

  /** The repository's identity, made when it was created: a bucket wiped and made again, or another server's bucket of the same name, has another. */
  id: string | undefined;

  private constructor(readonly bucket: Bucket) {
    this.where = describeTarget(bucket.target);
  }

  /**
   * Opens the repository at target. With create, an empty prefix becomes a
   * repository (its marker is written); without, a prefix with no marker is
   * refused, so a typo in the address never reads as "no images".
   */
  static async open(target: RepositoryTarget, o: { create?: boolean; concurrency?: number } = {}): Promise<Repository> {
    const repo = new Repository(new Bucket(target, { concurrency: o.concurrency }));
    try {
      const marker = await repo.bucket.get(LAYOUT.MARKER, 4096);
      if (marker === null) {
        if (o.create !== true) throw new ClonecastError(ERR.NOT_FOUND, `there is no clonecast repository at ${repo.where} (no ${LAYOUT.MARKER}); check the address, or push an image there first (clonecast image push)`);
        repo.id = newId();
        await repo.bucket.put(LAYOUT.MARKER, Buffer.from(JSON.stringify({ format: REPOSITORY_FORMAT, id: repo.id }) + '\n'), 'application/json');
      } else {
        let format = 0;
        try {
          const parsed = JSON.parse(marker.toString('utf8')) as { format?: unknown; id?: unknown };
          format = Number(parsed.format);
          if (typeof parsed.id === 'string' && /^[0-9a-f]{16}$/.test(parsed.id)) repo.id = parsed.id;
        } catch {
          format = Number.NaN;
        }
        if (!Number.isInteger(format) || format < 1) throw new ClonecastError(ERR.MANIFEST_CORRUPT, `${repo.where}: ${LAYOUT.MARKER} is not a clonecast repository marker; check the address`);
        if (format > REPOSITORY_FORMAT) throw new ClonecastError(ERR.MANIFEST_VERSION, `${repo.where} has repository format ${format}, newer than this clonecast reads (${REPOSITORY_FORMAT}); upgrade clonecast`);
      }
    } catch (err) {
      repo.close();
      throw err;
    }
    return repo;
  }

  /** Every image and its published versions (ascending), from one listing. */
  async catalogue(): Promise<Map<string, number[]>> {
    const out = new Map<string, number[]>();
    for await (const o of this.bucket.list(LAYOUT.IMAGES)) {
      const k = parseImageKey(o.key);
      if (k === null || k.kind !== 'manifest') continue;
      const list = out.get(k.name) ?? [];
      list.push(k.version);
      out.set(k.name, list);
    }
    for (const list of out.values()) list.sort((a, b) => a - b);
    return out;
  }

  /** Published versions of one image, ascending. */
  async versions(name: string): Promise<number[]> {
    checkName(name);
    const out: number[] = [];
    for await (const o of this.bucket.list(`${LAYOUT.IMAGES}${name}/`)) {
      const k = parseImageKey(o.key);
      if (k !== null && k.kind === 'manifest' && k.name === name) out.push(k.version);
    }
    return out.sort((a, b) => a - b);
  }

  /** NAME, NAME@N or NAME@DATE against the repository; NOT_FOUND says what exists. */
  async resolve(ref: ImageRef): Promise<{ name: string; version: number }> {
    const versions = await this.versions(ref.name);
    if (versions.length === 0) throw new ClonecastError(ERR.NOT_FOUND, `${this.where} has no image named "${ref.name}"; "clonecast repository list" shows what it holds`);
    if (ref.asOf !== undefined) {
      const limit = Date.parse(ref.asOf);
      for (const v of [...versions].reverse()) if (Date.parse((await this.readManifest(ref.name, v)).meta.createdAt) <= limit) return { name: ref.name, version: v };
      throw new ClonecastError(ERR.NOT_FOUND, `${this.where} has no version of "${ref.name}" at or before ${ref.asOf}`);
    }
    const version = ref.version ?? versions[versions.length - 1];
    if (!versions.includes(version)) throw new ClonecastError(ERR.NOT_FOUND, `${this.where} has no version ${version} of "${ref.name}" (versions: ${versions.join(', ')})`);
    return { name: ref.name, version };
  }

  /** A version's manifest, checked: it decodes, and says it is the version its key names. */
  async readManifest(name: string, version: number): Promise<Manifest> {
    const key = manifestKey(name, version);
    const data = await this.bucket.get(key, LAYOUT.MAX_MANIFEST);
    if (data === null) throw new ClonecastError(ERR.NOT_FOUND, `${this.where} has no version ${version} of "${name}"`);
    const m = decodeManifest(data, `${this.where} ${key}`);
    if (m.meta.name !== name || m.meta.version !== version) {
      throw new ClonecastError(ERR.MANIFEST_CORRUPT, `${this.where} ${key} says it is ${String(m.meta.name).slice(0, 64)}@${m.meta.version}, not ${name}@${version}; it was not written by clonecast's push: remove it`);
    }
    return m;
  }

  /**
   * A chunk's stored form from the bucket, checked before anything uses it:
   * CHUNK_MISSING if the bucket lacks it, CHUNK_CORRUPT if it does not decode,
   * does not hash to its name or is not `rawLength` bytes long.
   */
  async fetchChunk(c: NeededChunk): Promise<Buffer> {
    const data = await this.bucket.get(chunkKey(c.sha), MAX_STORED_CHUNK);
    if (data === null) throw new ClonecastError(ERR.CHUNK_MISSING, `chunk ${c.sha} is missing from ${this.where}; run "clonecast image push NAME@V" for a version that has it from a store that holds it (it uploads missing chunks again), or remove the versions that need it`, { sha: c.sha });
    const where = `chunk ${c.sha} from ${this.where}`;
    let raw: Buffer;
    try {
      raw = decodeChunk(data, where).raw;
    } catch (err) {
      const why = (err as Error).message.replace(/; run "clonecast image verify".*$/, '');
      throw new ClonecastError(ERR.CHUNK_CORRUPT, `${why}; nothing was stored. "clonecast image push --repair NAME@V" from a store that holds a version using it replaces it`, { sha: c.sha });
    }
    if (raw.length !== c.rawLength) throw new ClonecastError(ERR.CHUNK_CORRUPT, `${where} is ${raw.length} bytes, not the ${c.rawLength} its place in the image needs; nothing was stored. "clonecast image push --repair NAME@V" from a store that holds a version using it replaces it`, { sha: c.sha });
    if (!sha256(raw).equals(Buffer.from(c.sha, 'hex'))) throw new ClonecastError(ERR.CHUNK_CORRUPT, `${where} does not hash to its name: it was damaged in the repository or on the way; nothing was stored. "clonecast image push --repair NAME@V" from a store that holds a version using it replaces it`, { sha: c.sha });
    return data;
  }

  /** Size of a chunk object, or null if the bucket lacks it. */
  async chunkSize(sha: string): Promise<number | null> {
    return (await this.bucket.head(chunkKey(sha)))?.size ?? null;
  }

  /** The header of a chunk object (its first bytes), checked. */
  async chunkHeader(sha: string) {
    const head = await this.bucket.get(chunkKey(sha), CHUNK.HEADER_SIZE, { start: 0, end: CHUNK.HEADER_SIZE });
    if (head === null) return null;
    return decodeChunkHeader(head, `chunk ${sha} in ${this.where}`);
  }

  /**
   * What a chunk object holds (codec and payload length): from its metadata
   * when that agrees with its size, else from its 24-byte header; null if
   * the bucket lacks it.
   */
  async objectForm(sha: string): Promise<ChunkForm | null> {
    const head = await this.bucket.head(chunkKey(sha));
    if (head === null) return null;
    return parseForm(head.meta[FORM_META], head.size) ?? (await this.chunkHeader(sha));
  }

  /**
   * Sets the records of m's data chunks that `isLocal` says are not held
   * here to what the repository's objects hold, so that a sender that will
   * fetch them announces the lengths it will send.
   */
  async alignRecords(m: Manifest, isLocal: (sha: string) => boolean, concurrency = 16): Promise<void> {
    const forms = new Map<string, ChunkForm>();
    await inParallel(dataChunks(m).filter((c) => !isLocal(c.sha)), concurrency, async (c) => {
      const f = await this.objectForm(c.sha);
      if (f !== null) forms.set(c.sha, f);
    });
    m.table = withStoredForms(m, forms).table;
  }

  /** Uploads a chunk's stored form, with metadata that tells a HEAD its form. */
  putChunk(sha: string, stored: Buffer, meta?: Record<string, string>): Promise<void> {
    return this.bucket.put(chunkKey(sha), stored, 'application/octet-stream', meta);
  }

  /** Writes a version's manifest (the caller owns the number and has every chunk in the bucket). */
  async putManifest(m: Manifest): Promise<void> {
    if (m.meta.version > MAX_VERSION) throw new ClonecastError(ERR.REFUSED, `version ${m.meta.version} is above the highest a repository numbers`);
    const data = encodeManifest(m);
    decodeManifest(data, `the new manifest of ${m.meta.name}@${m.meta.version}`);
    await this.bucket.put(manifestKey(m.meta.name, m.meta.version), data);
  }

  /** Removes a version: a tombstone first, so its number is never given to another version, then its manifest. */
  async removeVersion(name: string, version: number): Promise<void> {
    await this.bucket.put(`${claimPrefix(name, version)}${TOMBSTONE_ID}`, Buffer.from(new Date().toISOString()), 'text/plain');
    await this.bucket.delete(manifestKey(name, version));
  }

  /** Closes the connections. */
  close(): void {
    this.bucket.close();
  }
}

/** The user metadata a chunk object carries: its codec and payload length, so a HEAD tells what it holds. */
export const FORM_META = 'cc-form';

/** A chunk's stored form, as a manifest records it. */
export interface ChunkForm {
  compression: number;
  payloadLength: number;
}

/** A form from an object's metadata, if it is there and agrees with the object's size. */
export function parseForm(meta: string | undefined, size: number): ChunkForm | null {
  const f = /^([0-2]):([0-9]{1,9})$/.exec(meta ?? '');
  if (f === null || CHUNK.HEADER_SIZE + Number(f[2]) !== size) return null;
  return { compression: Number(f[1]), payloadLength: Number(f[2]) };
}

/** A copy of a manifest whose DATA records say what the repository's objects hold (their codec and stored length). */
export function withStoredForms(m: Manifest, forms: Map<string, { compression: number; payloadLength: number }>): Manifest {
  const table = Buffer.from(m.table);
  const n = tableLength(table);
  for (let i = 0; i < n; i++) {
    const r = chunkAt(table, i);
    if (r.kind !== ChunkKind.DATA) continue;
    const f = forms.get(r.sha256.toString('hex'));
    if (f === undefined || (f.compression === r.compression && f.payloadLength === r.storedLength)) continue;
    setChunk(table, i, { ...r, compression: f.compression as typeof r.compression, storedLength: f.payloadLength, sha256: Buffer.from(r.sha256) });
  }
  return { meta: { ...m.meta }, table };
}

/** True if two manifests describe the same disk with the same chunks (codecs and stored lengths may differ). */
export function sameDisk(a: Manifest, b: Manifest): boolean {
  if (a.meta.diskSize !== b.meta.diskSize || a.meta.chunkSize !== b.meta.chunkSize || a.table.length !== b.table.length) return false;
  const n = tableLength(a.table);
  const R = MANIFEST.RECORD_SIZE;
  for (let i = 0; i < n; i++) {
    const o = i * R;
    if (a.table[o] !== b.table[o]) return false; // kind
    if (!a.table.subarray(o + R - 32, o + R).equals(b.table.subarray(o + R - 32, o + R))) return false; // SHA-256
  }
  return true;
}
