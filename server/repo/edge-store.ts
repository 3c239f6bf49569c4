/**
 * An edge server's store: a local store kept as a read-through cache of a
 * repository (docs/repository.md, "Edge servers"). It lists the union of
 * what it holds and what the repository's catalogue names; a chunk it lacks
 * is fetched from the repository when someone reads it (checked by SHA-256
 * and length before it is stored or used, one fetch per chunk however many
 * ask) and kept; a version a session sends is filled in the background in
 * table order and then published locally under the repository's number, so
 * the next session and the local gc see an ordinary cached version.
 *
 * The repository may be unreachable at any time. The edge then serves what
 * it has, refuses at once what it cannot serve whole, and a read that needs
 * a missing chunk waits (retrying with back-off, one warning per outage)
 * until the repository returns or its patience runs out.
 */
import { existsSync, readFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { decodeManifest, type Manifest } from '../../protocol/manifest.js';
import { Store, type ImageRef } from '../store/store.js';
import { pushManifest } from './push.js';
import { fetchInto, fillCache, publishCached } from './pull.js';
import { currentRecords } from '../store/recompress.js';
import { dataChunks, Repository, type NeededChunk } from './repository.js';
import { describeTarget, repositoryAddress, type RepositoryTarget } from './s3.js';

import { EDGE_DEFAULTS, MANIFEST_MEMORY, MANIFEST_MEMORY_BYTES, type CacheState, type EdgeOptions, type RepositoryStatus } from './edge-types.js';
export { EDGE_DEFAULTS, type CacheState, type EdgeOptions, type RepositoryStatus } from './edge-types.js';

/** Versions the dashboard's Pull may cache at once (a session's own fill is never refused). */
const MAX_PULLS = 3;

/** A local store that caches a repository. */
export class EdgeStore extends Store {
  /** The same folder as a plain store: what the cache holds, without the repository's versions. */
  readonly local: Store;
  /** Distinct chunks fetched from the repository since this edge started. */
  fetched = 0;
  private repo: Repository | undefined;
  private catalogue = new Map<string, number[]>();
  /** Remote manifests lately read (up to MANIFEST_MEMORY_BYTES of tables, the oldest forgotten first), and every remote version's creation time. */
  private readonly manifests = new Map<string, Manifest>();
  private readonly created = new Map<string, string>();
  private readonly states = new Map<string, { at: number; state: CacheState }>();
  private readonly lengths = new Map<string, number>();
  private readonly fetching = new Map<string, Promise<number>>();
  private readonly fills = new Map<string, { running: boolean; error?: string }>();
  private refreshing: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private stalledAt = 0;
  private upAt = 0;
  private downAt = 0;
  private readonly warned = new Set<string>();
  private closed = false;
  private readonly status: RepositoryStatus;
  private readonly o: Required<Omit<EdgeOptions, 'log' | 'open'>> & EdgeOptions;

  private constructor(root: string, readonly target: RepositoryTarget, o: EdgeOptions) {
    super(root);
    this.local = Store.open(root);
    this.o = { ...EDGE_DEFAULTS, ...(Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as EdgeOptions) };
    this.status = { address: repositoryAddress(target), reachable: null, since: new Date().toISOString(), lastError: null, refreshedAt: null };
  }

  /**
   * Opens the store at root as the cache of target: binds it (refused if it
   * holds images of its own), then reaches for the repository. An
   * unreachable repository does not stop the edge: it serves its cached
   * versions, and the first refresh that reaches the repository opens it.
   */
  static async openEdge(root: string, target: RepositoryTarget, o: EdgeOptions = {}): Promise<EdgeStore> {
    Store.open(root).bindRepository(repositoryAddress(target), target.endpoint);
    const edge = EdgeStore.prepare(new EdgeStore(root, target, o));
    await edge.refresh();
    edge.timer = setInterval(() => void edge.refresh(), edge.o.refreshMs);
    edge.timer.unref();
    return edge;
  }

  /** How the repository is doing. */
  repositoryStatus(): RepositoryStatus {
    return { ...this.status };
  }

  /** Lists the catalogue again (on demand; also every refreshMs); never throws. */
  refresh(): Promise<void> {
    this.refreshing ??= this.refreshNow().finally(() => (this.refreshing = undefined));
    return this.refreshing;
  }

  private async refreshNow(): Promise<void> {
    const started = performance.now();
    try {
      if (this.repo === undefined) {
        const repo = await (this.o.open ?? ((t) => Repository.open(t)))(this.target);
        try {
          // The cache records the repository's id: a repository made again at the same address is not taken for it.
          if (repo.id !== undefined) this.local.bindRepository(repositoryAddress(this.target), this.target.endpoint, repo.id);
        } catch (err) {
          repo.close();
          throw err;
        }
        this.repo = repo;
      }
      this.catalogue = await this.repo.catalogue();
      this.status.refreshedAt = new Date().toISOString();
      this.up(started);
    } catch (err) {
      this.down(err, started);
      return;
    }
    // Remote manifests are read ahead (small), so that NAME@DATE and the images page never wait on the network.
    for (const [name, versions] of this.catalogue) {
      for (const v of versions) {
        if (this.closed || this.created.has(`${name}@${v}`) || existsSync(this.manifestPath(name, v))) continue;
        try {
          await this.readManifest(name, v);
        } catch {
          // a damaged manifest is reported when it is asked for; an outage was noted by down()
        }
      }
    }
  }

  /**
   * A request that began at startedAt was answered. An answer to a request sent before the
   * outage began (it was on its way, over a slow link) does not say the repository is back.
   */
  private up(startedAt = performance.now()): void {
    if (this.status.reachable === false && startedAt <= this.downAt) return;
    if (this.status.reachable !== true) {
      if (this.status.reachable === false) this.o.log?.('info', `the repository ${describeTarget(this.target)} is reachable again`);
      this.status.reachable = true;
      this.status.since = new Date().toISOString();
      this.upAt = performance.now();
    }
  }

  /**
   * A request that began at startedAt failed: one warning per outage. A request
   * sent during the outage that fails after the repository answered again is not a new outage.
   */
  private down(err: unknown, startedAt = performance.now()): void {
    if (this.status.reachable === true && startedAt <= this.upAt) return;
    const message = err instanceof ClonecastError ? err.message : 'the repository could not be reached';
    this.status.lastError = message;
    if (this.status.reachable !== false) {
      this.status.reachable = false;
      this.status.since = new Date().toISOString();
      this.downAt = performance.now();
      this.o.log?.('warn', `${message}; this edge serves its cached versions (${this.cachedList() || 'none'}) until the repository is back`);
    }
  }

  /** Cached versions as NAME@N, for messages. */
  cachedList(): string {
    return this.local.images().flatMap((n) => this.local.versions(n).map((v) => `${n}@${v}`)).join(', ');
  }

  private unreachable(what: string): ClonecastError {
    const cached = this.cachedList();
    return new ClonecastError(
      ERR.UNREACHABLE,
      `${what} is not wholly cached on this edge and the repository ${describeTarget(this.target)} is unreachable (${this.status.lastError ?? 'not reached yet'}); ${cached ? `cached versions it can deploy now: ${cached}` : 'it has no cached version yet'}`,
    );
  }

  override images(): string[] {
    return [...new Set([...this.local.images(), ...[...this.catalogue].filter(([, v]) => v.length > 0).map(([n]) => n)])].sort();
  }

  override versions(name: string): number[] {
    return [...new Set([...this.local.versions(name), ...(this.catalogue.get(name) ?? [])])].sort((a, b) => a - b);
  }

  /** NAME, NAME@N or NAME@DATE; NAME@DATE uses the manifests read ahead, never the network. */
  override resolve(ref: ImageRef): { name: string; version: number } {
    if (ref.asOf === undefined) return super.resolve(ref);
    const versions = this.versions(ref.name);
    if (versions.length === 0) return super.resolve(ref);
    const limit = Date.parse(ref.asOf);
    for (const v of [...versions].reverse()) {
      const created = this.createdAt(ref.name, v);
      if (created !== undefined && Date.parse(created) <= limit) return { name: ref.name, version: v };
    }
    throw new ClonecastError(ERR.NOT_FOUND, `image "${ref.name}" has no version at or before ${ref.asOf} that this edge knows of`);
  }

  private createdAt(name: string, v: number): string | undefined {
    const path = this.manifestPath(name, v);
    if (existsSync(path)) return decodeManifest(readFileSync(path), `manifest of ${name}@${v}`).meta.createdAt;
    return this.created.get(`${name}@${v}`);
  }

  /** A version's manifest: the cached one, else the repository's (checked, then kept). */
  override async readManifest(name: string, version: number): Promise<Manifest> {
    let m: Manifest;
    if (existsSync(this.manifestPath(name, version))) m = await super.readManifest(name, version);
    else {
      const key = `${name}@${version}`;
      let kept = this.manifests.get(key);
      if (kept === undefined) {
        if (this.repo === undefined) throw this.unreachable(key);
        const started = performance.now();
        try {
          kept = await this.repo.readManifest(name, version);
          this.up(started);
        } catch (err) {
          if (!(err instanceof ClonecastError) || err.code !== ERR.UNREACHABLE) throw err;
          this.down(err, started);
          throw this.unreachable(key);
        }
        this.created.set(key, kept.meta.createdAt);
      }
      this.manifests.delete(key);
      this.manifests.set(key, kept);
      let bytes = 0;
      for (const k of this.manifests.values()) bytes += k.table.length;
      // The most lately read stay, up to MANIFEST_MEMORY_BYTES of tables: the images page lists every version every few seconds.
      for (const [k, old] of this.manifests) {
        if (bytes <= MANIFEST_MEMORY_BYTES || this.manifests.size <= 1) break;
        this.manifests.delete(k);
        bytes -= old.table.length;
      }
      m = kept;
    }
    if (this.lengths.size > 1 << 22) this.lengths.clear(); // refilled by the manifests in use
    for (const c of dataChunks(m)) this.lengths.set(c.sha, c.rawLength);
    // Callers may align the table's records with the chunk files (currentRecords): they get their own copy.
    return { meta: { ...m.meta }, table: Buffer.from(m.table) };
  }

  /** A chunk's stored form: the cached file, else fetched from the repository (checked), stored, then read. */
  override async readChunk(sha: Buffer | string): Promise<Buffer> {
    const hex = typeof sha === 'string' ? sha : sha.toString('hex');
    try {
      return await super.readChunk(hex);
    } catch (err) {
      const rawLength = this.lengths.get(hex);
      if (!(err instanceof ClonecastError) || err.code !== ERR.CHUNK_MISSING || rawLength === undefined) throw err;
      await this.fetchPatiently({ sha: hex, rawLength, storedLength: 0 });
    }
    return super.readChunk(hex);
  }

  /** One fetch per chunk at a time, however many readers ask. */
  private fetchOne(c: NeededChunk): Promise<number> {
    let p = this.fetching.get(c.sha);
    if (p === undefined) {
      p = this.fetchNow(c).finally(() => this.fetching.delete(c.sha));
      this.fetching.set(c.sha, p);
    }
    return p;
  }

  private async fetchNow(c: NeededChunk): Promise<number> {
    if (this.local.chunkHead(Buffer.from(c.sha, 'hex')) !== null) return 0;
    if (this.repo === undefined) {
      await this.refresh();
      if (this.repo === undefined) throw new ClonecastError(ERR.UNREACHABLE, this.status.lastError ?? `the repository ${describeTarget(this.target)} is unreachable`);
    }
    const started = performance.now();
    try {
      const n = await fetchInto(this.repo, this.local, c);
      this.fetched++;
      this.states.clear(); // counts changed
      this.up(started);
      return n;
    } catch (err) {
      if (err instanceof ClonecastError && err.code === ERR.UNREACHABLE) this.down(err, started);
      else if (err instanceof ClonecastError && err.code === ERR.CHUNK_CORRUPT && !this.warned.has(c.sha)) {
        this.warned.add(c.sha);
        this.o.log?.('warn', `${err.message}; it was not stored`);
      }
      throw err;
    }
  }

  /** fetchOne, waiting through an outage (with back-off) for up to patienceMs; other failures at once. */
  private async fetchPatiently(c: NeededChunk): Promise<number> {
    const deadline = Date.now() + this.o.patienceMs;
    for (let wait = this.o.retryMs; ; wait = Math.min(wait * 2, this.o.retryMaxMs)) {
      try {
        const n = await this.fetchOne(c);
        if (this.stalledAt !== 0) this.stalledAt = Date.now(); // machines get their grace from the end of the outage
        return n;
      } catch (err) {
        if (!(err instanceof ClonecastError) || err.code !== ERR.UNREACHABLE || this.closed || Date.now() + wait > deadline) {
          // A damaged or missing object fails each time: a sender that asks again does so at most once a retryMs.
          if (!this.closed) await sleep(this.o.retryMs);
          throw err;
        }
        this.stalledAt = Date.now();
        await sleep(wait);
        if (this.closed) throw err;
      }
    }
  }

  /** True if a read waited for the repository within the last ms (a running session's machines are not dropped for it). */
  stalledWithin(ms: number): boolean {
    return this.stalledAt !== 0 && Date.now() - this.stalledAt < ms;
  }

  /**
   * Gets a version a session sends ready: the records of chunks not held
   * here are set to what the repository's objects hold (the sender will
   * send those, and receivers size fragments by the records), then the rest
   * is filled in table order in the background and published locally.
   * Throws at once if the version is not wholly cached and the repository is
   * unreachable.
   */
  override async warm(m: Manifest): Promise<void> {
    const key = `${m.meta.name}@${m.meta.version}`;
    if (existsSync(this.manifestPath(m.meta.name, m.meta.version))) return;
    const isLocal = (sha: string) => this.local.chunkHead(Buffer.from(sha, 'hex')) !== null;
    // A version being filled already (another session, a Pull) may start while the repository is away: its reads wait.
    const filling = this.fills.get(key)?.running === true;
    if (!dataChunks(m).every((c) => isLocal(c.sha))) {
      if (!filling && (this.repo === undefined || this.status.reachable !== true)) throw this.unreachable(key);
      const started = performance.now();
      try {
        await this.repo?.alignRecords(m, isLocal);
      } catch (err) {
        if (!(err instanceof ClonecastError) || err.code !== ERR.UNREACHABLE) throw err;
        this.down(err, started);
        if (!filling) throw this.unreachable(key);
      }
      await currentRecords(this.local, m); // chunks another fill stored meanwhile: as their files say
    }
    this.startFill(m);
  }

  /** Starts the background fill of m (once at a time per version). */
  private startFill(m: Manifest): void {
    const { name, version } = m.meta;
    if (existsSync(this.manifestPath(name, version))) return;
    const key = `${name}@${version}`;
    if (this.fills.get(key)?.running === true) return;
    const needed = dataChunks(m);
    for (const c of needed) this.lengths.set(c.sha, c.rawLength);
    const whole = needed.every((c) => this.local.chunkHead(Buffer.from(c.sha, 'hex')) !== null);
    if (!whole && this.status.reachable !== true) throw this.unreachable(key);
    const fill = { running: true } as { running: boolean; error?: string };
    this.fills.set(key, fill);
    void this.fill(m).then(
      () => (fill.running = false),
      (err: Error) => {
        fill.running = false;
        fill.error = err.message;
        if (!this.closed) this.o.log?.('warn', `caching ${key} stopped: ${err.message}`);
      },
    );
  }

  private async fill(m: Manifest): Promise<void> {
    const repo = this.repo;
    if (repo === undefined) throw this.unreachable(`${m.meta.name}@${m.meta.version}`);
    const o = { concurrency: this.o.fillConcurrency, stopped: () => this.closed };
    // A reader's lock: a local gc must not remove the chunks fetched so far, which no published manifest names yet.
    const reader = this.local.lockReader(`caching ${m.meta.name}@${m.meta.version} from the repository`);
    try {
      const p = await fillCache(repo, this.local, m, o, (c) => this.fetchPatiently(c));
      // The image's lock may be held by a capture or another fill: try again a little later.
      for (let attempt = 0; ; attempt++) {
        try {
          await publishCached(this.local, m);
          break;
        } catch (err) {
          if (!(err instanceof ClonecastError) || err.code !== ERR.BUSY || attempt >= 30 || this.closed) throw err;
          await sleep(2_000);
        }
      }
      this.states.clear();
      this.o.log?.('info', `cached ${m.meta.name}@${m.meta.version} (${p.moved} of ${p.total} chunks fetched from the repository)`);
    } finally {
      reader.release();
    }
  }

  /** Starts caching name@version in the background (the dashboard's Pull); returns its state. */
  async prefetch(name: string, version: number): Promise<CacheState> {
    // Each fill holds connections and a reader's lock (no local gc meanwhile): Pulls queue behind a few.
    const running = [...this.fills.entries()].filter(([k, f]) => f.running && k !== `${name}@${version}`).length;
    if (running >= MAX_PULLS) throw new ClonecastError(ERR.BUSY, `${running} versions are being cached already; pull ${name}@${version} when one of them is done`);
    this.startFill(await this.readManifest(name, version));
    this.states.delete(`${name}@${version}`);
    return this.cacheState(name, version);
  }

  /** Where a version's chunks are: all here (cached), some (partial) or none (remote). */
  async cacheState(name: string, version: number): Promise<CacheState> {
    // Counting a version's chunk files costs a stat each: the dashboard's every snapshot reuses a count for a few seconds.
    const memo = this.states.get(`${name}@${version}`);
    if (memo !== undefined && performance.now() - memo.at < 5_000) return { ...memo.state, filling: this.fills.get(`${name}@${version}`)?.running === true };
    const state = await this.countCache(name, version);
    this.states.set(`${name}@${version}`, { at: performance.now(), state });
    if (this.states.size > 4 * MANIFEST_MEMORY) this.states.delete(this.states.keys().next().value!);
    return state;
  }

  private async countCache(name: string, version: number): Promise<CacheState> {
    const fill = this.fills.get(`${name}@${version}`);
    const extra = { filling: fill?.running === true, ...(fill?.error !== undefined ? { error: fill.error } : {}) };
    const m = await this.readManifest(name, version);
    const needed = dataChunks(m);
    if (existsSync(this.manifestPath(name, version))) return { state: 'cached', chunks: needed.length, cachedChunks: needed.length, ...extra };
    const here = needed.filter((c) => this.local.chunkHead(Buffer.from(c.sha, 'hex')) !== null).length;
    return { state: here === 0 ? 'remote' : 'partial', chunks: needed.length, cachedChunks: here, ...extra };
  }

  /**
   * A new version (a capture at the edge): pushed to the repository, then
   * published here under the repository's number. The caller holds the
   * image's lock and has made its chunks durable, as for publish().
   */
  override async publishVersion(manifest: Manifest): Promise<number> {
    if (this.repo === undefined) await this.refresh();
    if (this.repo === undefined) throw this.unreachable(`a new version of ${manifest.meta.name}`);
    const report = await pushManifest(this.repo, this.local, manifest);
    const remote = await this.repo.readManifest(manifest.meta.name, report.version);
    // Here the table keeps the local chunk files' stored forms; the repository's names the same chunks.
    const mine: Manifest = { meta: { ...remote.meta }, table: manifest.table };
    if (!existsSync(this.manifestPath(mine.meta.name, mine.meta.version))) this.publishAs(mine);
    this.catalogue.set(mine.meta.name, [...new Set([...(this.catalogue.get(mine.meta.name) ?? []), report.version])].sort((a, b) => a - b));
    manifest.meta.version = report.version;
    return report.version;
  }

  /** Removes a cached version from the cache; the repository's own versions are removed there. */
  override removeVersion(name: string, version: number): void {
    if (!existsSync(this.manifestPath(name, version))) {
      throw new ClonecastError(ERR.USAGE, `${name}@${version} is not cached on this edge: it is the repository's; remove it there with "clonecast repository rm ${name}@${version} --repository ${this.status.address}"`);
    }
    super.removeVersion(name, version);
  }

  /** Stops the refresh timer, the fills and the repository's connections. */
  close(): void {
    this.closed = true;
    clearInterval(this.timer);
    this.repo?.close();
  }
}
