/**
 * The image store: a local directory (docs/image-format.md, "Store layout").
 *
 *   DATA/store.json              format marker
 *   DATA/chunks/ab/<sha256 hex>  stored chunks, named by content
 *   DATA/images/NAME/<N>.manifest  one file per version
 *   DATA/locks/                  import-NAME.lock, gc.lock
 *   DATA/tmp/                    files being written
 *
 * Every file appears by rename from tmp/. Manifests are fsynced before their
 * rename; chunk files are made durable together by one syncfs() before the
 * manifest that references them is published, so a crash at any moment
 * leaves no version pointing at a missing chunk.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, fstatSync, linkSync, mkdirSync, openSync, closeSync, readSync, readdirSync, readFileSync, statSync, writeFileSync, fsyncSync, renameSync, unlinkSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CHUNK } from '../../protocol/chunk.js';
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { decodeManifest, encodeManifest, type Manifest } from '../../protocol/manifest.js';
import { native } from '../../native/addon.js';
import { acquireLock, liveLocks, type Lock } from './lock.js';
import { checkedStoredForm, chunkOpenError, fsyncDir, paddedChunkSize } from './chunk-file.js';
import { checkName, NAME_RE, type ImageRef } from './names.js';

export { checkName, dataDir, DEFAULT_DATA_DIR, parseRef, type ImageRef } from './names.js';

const STORE_FORMAT = 1;

export { chunkFileFits, DIRECT_UNIT, fsyncDir, paddedChunkSize, storedForm } from './chunk-file.js';

/** An open image store. */
export class Store {
  protected constructor(readonly root: string) {}

  /** Opens (creating if needed) the store at root. */
  static open(root: string): Store {
    return Store.prepare(new Store(root));
  }

  /** Checks the format marker and makes the folders of a store object not yet used. */
  protected static prepare<S extends Store>(store: S): S {
    const root = store.root;
    const marker = join(root, 'store.json');
    if (existsSync(marker)) {
      const format = (JSON.parse(readFileSync(marker, 'utf8')) as { format?: number }).format ?? 0;
      if (format > STORE_FORMAT) {
        throw new ClonecastError(ERR.MANIFEST_VERSION, `the store at ${root} has format ${format}, newer than this clonecast reads (${STORE_FORMAT}); upgrade clonecast`);
      }
    }
    for (const dir of ['chunks', 'images', 'locks', 'tmp']) mkdirSync(join(root, dir), { recursive: true });
    const chunks = join(root, 'chunks');
    if (readdirSync(chunks).length < 256) {
      for (let i = 0; i < 256; i++) mkdirSync(join(chunks, i.toString(16).padStart(2, '0')), { recursive: true });
    }
    if (!existsSync(marker)) store.writeAtomic(marker, Buffer.from(JSON.stringify({ format: STORE_FORMAT }) + '\n'));
    return store;
  }

  /** The repository this store is the cache of (store.json), if it is an edge's, and the endpoint it was last reached at. */
  repository(): string | undefined {
    return this.marker().repository;
  }

  /** The endpoint the bound repository was last reached at (the default for later pulls). */
  repositoryEndpoint(): string | undefined {
    return this.marker().endpoint;
  }

  private marker(): { repository?: string; endpoint?: string; repositoryId?: string } {
    const m = JSON.parse(readFileSync(join(this.root, 'store.json'), 'utf8')) as Record<string, unknown>;
    const str = (v: unknown) => (typeof v === 'string' ? v : undefined);
    return { repository: str(m.repository), endpoint: str(m.endpoint), repositoryId: str(m.repositoryId) };
  }

  /**
   * Throws unless this store is, or may become, the cache of the repository
   * at address with identity id (a repository made again under the same
   * address numbers its versions afresh: the cached NAME@N would be another disk).
   */
  checkBindable(address: string, id?: string): void {
    const bound = this.marker();
    if (bound.repository === address) {
      if (id !== undefined && bound.repositoryId !== undefined && id !== bound.repositoryId) {
        throw new ClonecastError(ERR.EXISTS, `the repository at ${address} is not the one ${this.root} caches (it was made again, or it is another server's bucket of the same name): its versions could be other disks under the same numbers; give this repository an empty --data folder`);
      }
      return;
    }
    const other = bound.repository;
    if (other !== undefined) throw new ClonecastError(ERR.EXISTS, `${this.root} is the cache of ${other}, not ${address}; use another --data folder for this repository`);
    const own = this.images();
    if (own.length > 0) {
      throw new ClonecastError(ERR.EXISTS, `${this.root} holds images of its own (${own.slice(0, 5).join(', ')}${own.length > 5 ? ', ...' : ''}), so it cannot become the cache of ${address}: push them with "clonecast image push", and give the edge an empty --data folder`);
    }
  }

  /**
   * Makes this store the cache of a repository (an edge's): from then on its
   * versions carry the repository's numbers, and new versions are published
   * to the repository, never here alone. Refused for a store that already
   * holds images of its own, or caches another repository.
   */
  bindRepository(address: string, endpoint?: string, id?: string): void {
    this.checkBindable(address, id);
    const path = join(this.root, 'store.json');
    const current = JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
    const next = { ...current, repository: address, ...(endpoint !== undefined ? { endpoint } : {}), ...(id !== undefined ? { repositoryId: id } : {}) };
    if (JSON.stringify(next) === JSON.stringify(current)) return;
    this.writeAtomic(path, Buffer.from(JSON.stringify(next) + '\n'));
  }

  /** Path of a stored chunk by its SHA-256. */
  chunkPath(sha: Buffer | string): string {
    const hex = typeof sha === 'string' ? sha : sha.toString('hex');
    return join(this.root, 'chunks', hex.slice(0, 2), hex);
  }

  /** A fresh temporary path inside the store (same filesystem, so rename is atomic). */
  tmpPath(tag: string): string {
    return join(this.root, 'tmp', `${tag}.${process.pid}.${randomBytes(6).toString('hex')}`);
  }

  /** Writes a file atomically and durably: temp file, fsync, rename, fsync of the folder. */
  writeAtomic(path: string, data: Buffer): void {
    const tmp = this.tmpPath('atomic');
    const fd = openSync(tmp, 'w', 0o644);
    try {
      writeFileSync(fd, data);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
    fsyncDir(join(path, '..'));
  }

  /** Makes every file written to the store so far durable (one syncfs). */
  async barrier(): Promise<void> {
    const fd = openSync(this.root, 'r');
    try {
      await native().syncfs(fd);
    } finally {
      closeSync(fd);
    }
  }

  /** Names of all images, sorted. */
  images(): string[] {
    return readdirSync(join(this.root, 'images'))
      .filter((n) => NAME_RE.test(n) && this.versions(n).length > 0)
      .sort();
  }

  /** Version numbers of an image, ascending (empty if none). */
  versions(name: string): number[] {
    let files: string[];
    try {
      files = readdirSync(join(this.root, 'images', name));
    } catch {
      return [];
    }
    return files
      .map((f) => /^([1-9][0-9]*)\.manifest$/.exec(f)?.[1])
      .filter((v): v is string => v !== undefined)
      .map(Number)
      .sort((a, b) => a - b);
  }

  /** Resolves NAME or NAME@N to an existing version; throws NOT_FOUND with what exists. */
  resolve(ref: ImageRef): { name: string; version: number } {
    const versions = this.versions(ref.name);
    if (versions.length === 0) {
      const known = this.images();
      throw new ClonecastError(
        ERR.NOT_FOUND,
        `no image named "${ref.name}" in ${this.root}${known.length ? ` (images: ${known.join(', ')})` : ''}; "clonecast image list" shows what is stored`,
      );
    }
    if (ref.asOf !== undefined) return { name: ref.name, version: this.versionAsOf(ref.name, versions, ref.asOf) };
    const version = ref.version ?? versions[versions.length - 1];
    if (!versions.includes(version)) {
      throw new ClonecastError(ERR.NOT_FOUND, `image "${ref.name}" has no version ${version} (versions: ${versions.join(', ')})`);
    }
    return { name: ref.name, version };
  }

  /** The latest version created at or before asOf. */
  private versionAsOf(name: string, versions: number[], asOf: string): number {
    const limit = Date.parse(asOf);
    let first = '';
    for (const v of [...versions].reverse()) {
      const created = decodeManifest(readFileSync(this.manifestPath(name, v)), `manifest of ${name}@${v}`).meta.createdAt;
      first = `${name}@${v} of ${created}`;
      if (Date.parse(created) <= limit) return v;
    }
    throw new ClonecastError(ERR.NOT_FOUND, `image "${name}" has no version at or before ${asOf} (the first is ${first})`);
  }

  /** Path of a version's manifest. */
  manifestPath(name: string, version: number): string {
    return join(this.root, 'images', name, `${version}.manifest`);
  }

  /** Reads and checks a version's manifest. */
  async readManifest(name: string, version: number): Promise<Manifest> {
    const path = this.manifestPath(name, version);
    return decodeManifest(await readFile(path), `manifest of ${name}@${version} (${path})`);
  }

  /**
   * Publishes a manifest as the next version of its image and returns that
   * number. The caller holds the image's import lock and has already made
   * every chunk it references durable with barrier().
   */
  publish(manifest: Manifest): number {
    const name = manifest.meta.name;
    const bound = this.repository();
    if (bound !== undefined) {
      throw new ClonecastError(ERR.USAGE, `${this.root} is the cache of ${bound}: new versions go to the repository. Import into a store of your own (--data) and "clonecast image push" it, or capture through the edge server`);
    }
    mkdirSync(join(this.root, 'images', name), { recursive: true });
    fsyncDir(join(this.root, 'images'));
    const versions = this.versions(name);
    const version = (versions[versions.length - 1] ?? 0) + 1;
    manifest.meta.version = version;
    const data = encodeManifest(manifest);
    // Only what the normal decoder reads back is published: an unknown record kind would stop every later gc.
    try {
      decodeManifest(data, `the new manifest of ${name}@${version}`);
    } catch (err) {
      const why = (err as Error).message.replace(/; remove that version.*$/, '');
      throw new ClonecastError(ERR.MANIFEST_CORRUPT, `refusing to publish ${name}@${version}, nothing was written: ${why}`);
    }
    this.writeAtomic(this.manifestPath(name, version), data);
    return version;
  }

  /**
   * Publishes a new version and returns its number. Here the same as
   * publish(); an edge's store publishes it to its repository first.
   */
  async publishVersion(manifest: Manifest): Promise<number> {
    return this.publish(manifest);
  }

  /** Starts filling the rest of a version a session sends (an edge's cache); a no-op here. */
  async warm(_m: Manifest): Promise<void> {}

  /**
   * Publishes a repository's version under the repository's number (a cache
   * fill). The caller holds the image's lock and has made its chunks durable.
   */
  publishAs(manifest: Manifest): void {
    const { name, version } = manifest.meta;
    checkName(name);
    if (!Number.isSafeInteger(version) || version < 1) throw new ClonecastError(ERR.USAGE, `cannot publish ${name} as version ${version}`);
    if (existsSync(this.manifestPath(name, version))) throw new ClonecastError(ERR.EXISTS, `${name}@${version} is already in ${this.root}`);
    mkdirSync(join(this.root, 'images', name), { recursive: true });
    fsyncDir(join(this.root, 'images'));
    const data = encodeManifest(manifest);
    decodeManifest(data, `the cached manifest of ${name}@${version}`);
    this.writeAtomic(this.manifestPath(name, version), data);
  }

  /**
   * Replaces a published version's manifest in place (atomically, durably)
   * with one that names the same chunks; used when chunks change their
   * stored form (image recompress). The caller holds the maintenance lock.
   */
  replaceManifest(manifest: Manifest): void {
    const data = encodeManifest(manifest);
    decodeManifest(data, `the rewritten manifest of ${manifest.meta.name}@${manifest.meta.version}`);
    this.writeAtomic(this.manifestPath(manifest.meta.name, manifest.meta.version), data);
  }

  /** Removes one version's manifest (its chunks stay until gc). */
  removeVersion(name: string, version: number): void {
    unlinkSync(this.manifestPath(name, version));
    fsyncDir(join(this.root, 'images', name));
  }

  /** Takes the lock that serialises work on one image name. */
  lockImage(name: string, purpose: string): Lock {
    const lock = acquireLock(join(this.root, 'locks', `image-${name}.lock`), `image "${name}"`, purpose);
    const gc = liveLocks(join(this.root, 'locks'), 'gc.lock');
    if (gc.length > 0) {
      lock.release();
      throw new ClonecastError(ERR.BUSY, `the store is being garbage-collected or recompressed by process ${gc[0].pid}; try again when it finishes`);
    }
    return lock;
  }

  /**
   * Takes a reader's lock (export, verify): many readers may hold one at
   * once; gc waits for all of them, so no chunk vanishes under a reader.
   */
  lockReader(purpose: string): Lock {
    const lock = acquireLock(join(this.root, 'locks', `reader-${process.pid}-${randomBytes(4).toString('hex')}.lock`), 'the store', purpose);
    const gc = liveLocks(join(this.root, 'locks'), 'gc.lock');
    if (gc.length > 0) {
      lock.release();
      throw new ClonecastError(ERR.BUSY, `the store is being garbage-collected or recompressed by process ${gc[0].pid}; try again when it finishes`);
    }
    return lock;
  }

  /** Takes the store-wide maintenance lock (gc, recompress); refuses while any image is locked or read. */
  lockGc(purpose = 'collecting garbage'): Lock {
    const lock = acquireLock(join(this.root, 'locks', 'gc.lock'), 'the store', purpose);
    const busy = [...liveLocks(join(this.root, 'locks'), 'image-'), ...liveLocks(join(this.root, 'locks'), 'reader-')];
    if (busy.length > 0) {
      lock.release();
      throw new ClonecastError(ERR.BUSY, `cannot start ${purpose} while ${busy.map((b) => `process ${b.pid} is ${b.doing} (${b.file})`).join(', ')}; try again later`);
    }
    return lock;
  }

  /**
   * Stores a chunk file at its final path from `out`, whose first `length`
   * bytes are the stored form and which is aligned and long enough to round
   * length up to DIRECT_UNIT. The file is written with O_DIRECT (no
   * page-cache copy, no writeback later) and so keeps its zero padding up to
   * a multiple of DIRECT_UNIT (chunkHead() users and readers allow for it);
   * barrier() still makes its metadata durable. Returns false if the chunk
   * was already there (another writer won).
   */
  async putChunk(sha: Buffer, out: Buffer, length: number, replace: boolean): Promise<boolean> {
    const tmp = this.tmpPath('chunk');
    const addon = native();
    let fd: number | undefined;
    try {
      fd = addon.open(tmp, true, true, true);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EINVAL') throw err;
    }
    if (fd === undefined) {
      writeFileSync(tmp, out.subarray(0, length)); // a filesystem without O_DIRECT: exact size
    } else {
      try {
        const padded = paddedChunkSize(length);
        out.fill(0, length, padded);
        await addon.write(fd, out, 0, padded, 0);
      } finally {
        addon.close(fd);
      }
    }
    const path = this.chunkPath(sha);
    if (replace) {
      renameSync(tmp, path);
      return true;
    }
    // link() fails if another writer stored the same chunk meanwhile, so
    // every chunk is counted as new exactly once.
    try {
      linkSync(tmp, path);
      return true;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      return false;
    } finally {
      unlinkSync(tmp);
    }
  }

  /** Reads a stored chunk's stored form (header + payload, padding removed); throws CHUNK_MISSING or CHUNK_CORRUPT. */
  async readChunk(sha: Buffer | string): Promise<Buffer> {
    const hex = typeof sha === 'string' ? sha : sha.toString('hex');
    let file: Buffer;
    try {
      file = await readFile(this.chunkPath(hex));
    } catch (err) {
      throw chunkOpenError(err, hex);
    }
    return checkedStoredForm(file, hex);
  }

  /**
   * The blocking form of readChunk() for worker threads: reads the chunk
   * file into `into` (reused between calls) and returns a view of its stored form.
   */
  readChunkInto(sha: string, into: Buffer): Buffer {
    let fd: number;
    try {
      fd = openSync(this.chunkPath(sha), 'r');
    } catch (err) {
      throw chunkOpenError(err, sha);
    }
    try {
      const size = fstatSync(fd).size;
      if (size > into.length) throw new ClonecastError(ERR.CHUNK_CORRUPT, `chunk ${sha} is corrupt: ${size} bytes, more than a chunk can hold`, { sha });
      let done = 0;
      while (done < size) {
        const n = readSync(fd, into, done, size - done, done);
        if (n === 0) break;
        done += n;
      }
      return checkedStoredForm(into.subarray(0, done), sha);
    } finally {
      closeSync(fd);
    }
  }

  /**
   * The header of a stored chunk and its file's size, or null if it is not
   * there (one open instead of a stat and an open).
   */
  chunkHead(sha: Buffer): { head: Buffer; size: number } | null {
    let fd: number;
    try {
      fd = openSync(this.chunkPath(sha), 'r');
    } catch {
      return null;
    }
    try {
      const size = fstatSync(fd).size;
      const head = Buffer.alloc(CHUNK.HEADER_SIZE);
      const n = size >= head.length ? readSync(fd, head, 0, head.length, 0) : 0;
      return { head: head.subarray(0, n), size };
    } finally {
      closeSync(fd);
    }
  }
}
