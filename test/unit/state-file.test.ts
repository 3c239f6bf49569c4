import { describe, expect, it, afterEach } from 'vitest';
import * as fsp from 'node:fs/promises';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { listFile, StateFile, type StateFs, type StateHealth } from '../../state/state-file.js';

const dirs: string[] = [];
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'cc-state-'));
  dirs.push(d);
  return d;
}
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

/** The real fs/promises, counting calls, with a switch that makes file writes fail like a full disk. */
function countingFs() {
  const calls = { open: 0, sync: 0, rename: 0, unlink: 0 };
  const state = { full: false };
  const fs: StateFs = {
    async open(path, flags, mode) {
      calls.open++;
      const fh = await fsp.open(path, flags, mode);
      return {
        async writeFile(data: Buffer) {
          if (state.full) throw Object.assign(new Error('no space left on device, write'), { code: 'ENOSPC' });
          await fh.writeFile(data);
        },
        async sync() {
          calls.sync++;
          await fh.sync();
        },
        close: () => fh.close(),
      };
    },
    async rename(from, to) {
      calls.rename++;
      await fsp.rename(from, to);
    },
    async unlink(path) {
      calls.unlink++;
      await fsp.unlink(path);
    },
    mkdir: (path, o) => fsp.mkdir(path, o),
  };
  return { fs, calls, state };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('StateFile', () => {
  it('group commit: 50 concurrent commits share one write, fsync and rename', async () => {
    const dir = tempDir();
    const { fs, calls } = countingFs();
    const f = listFile<number>(join(dir, 'leases.json'), { fs, debounceMs: 10_000 });
    const commits: Promise<void>[] = [];
    for (let i = 0; i < 50; i++) {
      f.set((l) => [...l, i]);
      commits.push(f.commit());
    }
    await Promise.all(commits);
    expect(calls.rename).toBe(1);
    expect(calls.sync).toBe(2); // the file and its folder, once
    expect(JSON.parse(readFileSync(join(dir, 'leases.json'), 'utf8'))).toHaveLength(50);
    expect(f.dirty).toBe(false);
    await f.close();
  });

  it('commits made while a write runs share the next write, and each sees its own change on disk', async () => {
    const dir = tempDir();
    const { fs, calls } = countingFs();
    const f = listFile<number>(join(dir, 's.json'), { fs, debounceMs: 10_000 });
    f.set([1]);
    const first = f.commit();
    const later: Promise<void>[] = [];
    for (let i = 2; i <= 20; i++) {
      f.set((l) => [...l, i]);
      later.push(f.commit().then(() => expect(JSON.parse(readFileSync(join(dir, 's.json'), 'utf8'))).toContain(i)));
    }
    await Promise.all([first, ...later]);
    expect(calls.rename).toBeLessThanOrEqual(2);
    await f.close();
  });

  it('set() without commit writes after the debounce', async () => {
    const dir = tempDir();
    const f = listFile<string>(join(dir, 'm.json'), { debounceMs: 20 });
    f.set(['a']);
    expect(existsSync(join(dir, 'm.json'))).toBe(false);
    await sleep(200);
    expect(JSON.parse(readFileSync(join(dir, 'm.json'), 'utf8'))).toEqual(['a']);
    await f.close();
  });

  it('a failing disk: nothing throws, the state stays dirty, health shows it, the retry saves once space is back, no temp file is left', async () => {
    const dir = tempDir();
    const { fs, state } = countingFs();
    const f = listFile<number>(join(dir, 'machines.json'), { fs, debounceMs: 5, retryMs: 20, retryMaxMs: 40 });
    const events: StateHealth[] = [];
    f.on('health', (h: StateHealth) => events.push(h));
    state.full = true;
    f.set([1, 2, 3]);
    await expect(f.commit()).rejects.toThrow(/machines.json could not be saved: ENOSPC/);
    await sleep(150); // a few retries, all failing
    const h = f.health();
    expect(h.ok).toBe(false);
    expect(h.error).toMatch(/ENOSPC/);
    expect(h.since).not.toBeNull();
    expect(h.pendingSince).not.toBeNull();
    expect(h.failures).toBeGreaterThanOrEqual(2);
    expect(f.dirty).toBe(true);
    expect(events).toHaveLength(1); // reported once, not once per retry
    expect(readdirSync(dir)).toEqual([]); // temp files of the failed writes removed
    state.full = false;
    await sleep(150);
    expect(f.health()).toMatchObject({ ok: true, error: null, since: null, pendingSince: null });
    expect(f.dirty).toBe(false);
    expect(events.at(-1)?.ok).toBe(true);
    expect(JSON.parse(readFileSync(join(dir, 'machines.json'), 'utf8'))).toEqual([1, 2, 3]);
    expect(readdirSync(dir)).toEqual(['machines.json']);
    await f.close();
  });

  it('while writes fail, a flood of commits costs at most one write per retry interval, and none throws', async () => {
    const dir = tempDir();
    const { fs, calls, state } = countingFs();
    const f = listFile<number>(join(dir, 'leases.json'), { fs, debounceMs: 5, retryMs: 200, retryMaxMs: 200 });
    state.full = true;
    f.set([1]);
    await expect(f.commit()).rejects.toThrow(/ENOSPC/);
    const opensAfterFirst = calls.open;
    const results = await Promise.allSettled(Array.from({ length: 100 }, (_, i) => (f.set([i]), f.commit())));
    expect(results.every((r) => r.status === 'rejected')).toBe(true);
    expect(calls.open).toBe(opensAfterFirst); // failed fast, no write each
    state.full = false;
    await sleep(250);
    f.set([42]);
    await f.commit(); // the first commit after the interval writes at once
    expect(JSON.parse(readFileSync(join(dir, 'leases.json'), 'utf8'))).toEqual([42]);
    await f.close();
  });

  it('a value that cannot be serialised is a failed write, not an exception', async () => {
    const dir = tempDir();
    const f = new StateFile<{ n: bigint }>({ path: join(dir, 'b.json'), initial: () => ({ n: 1n }), retryMs: 10_000 });
    f.set({ n: 2n });
    await expect(f.commit()).rejects.toThrow(/could not be saved/);
    expect(f.health()).toMatchObject({ ok: false });
    await f.close();
  });

  it('a real write error (the folder is a file) is reported, not thrown', async () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'notadir'), 'x');
    const f = new StateFile<number[]>({ path: join(dir, 'notadir', 'x.json'), initial: () => [], retryMs: 10_000 });
    f.set([1]);
    await expect(f.commit()).rejects.toThrow(/could not be saved/);
    expect(f.health().ok).toBe(false);
    await f.close();
  });

  it('an unreadable file is set aside, never overwritten', async () => {
    const dir = tempDir();
    const path = join(dir, 'sessions.json');
    writeFileSync(path, '{"not": "a list"');
    const f = listFile<number>(path);
    expect(f.value).toEqual([]);
    expect(f.setAside).toMatch(/sessions\.json\.unreadable-\d+$/);
    expect(readFileSync(f.setAside!, 'utf8')).toBe('{"not": "a list"');
    expect(existsSync(path)).toBe(false);
    writeFileSync(path, '{"a": 1}');
    expect(listFile(path).setAside).toBeDefined(); // valid JSON but not a list
    await f.close();
  });

  it('a readable file is loaded, and temp files a crash left beside it are removed', async () => {
    const dir = tempDir();
    writeFileSync(join(dir, 'l.json'), '[{"id":1}]');
    writeFileSync(join(dir, '.l.json.tmp.123.4'), '[{"id"');
    writeFileSync(join(dir, 'other.json'), '[]');
    const f = listFile<{ id: number }>(join(dir, 'l.json'));
    expect(f.value).toEqual([{ id: 1 }]);
    expect(f.setAside).toBeUndefined();
    expect(f.dirty).toBe(false);
    expect(readdirSync(dir).sort()).toEqual(['l.json', 'other.json']);
    await f.commit(); // nothing to write
    await f.close();
  });

  it('close() flushes what is pending', async () => {
    const dir = tempDir();
    const f = listFile<number>(join(dir, 'c.json'), { debounceMs: 60_000 });
    f.set([7]);
    await f.close();
    expect(JSON.parse(readFileSync(join(dir, 'c.json'), 'utf8'))).toEqual([7]);
  });

  it('close() on a failing disk gives up after closeMs', async () => {
    const dir = tempDir();
    const { fs, state } = countingFs();
    state.full = true;
    const f = listFile<number>(join(dir, 'c.json'), { fs, closeMs: 50, retryMs: 10 });
    f.set([7]);
    const t0 = Date.now();
    await f.close();
    expect(Date.now() - t0).toBeLessThan(1000);
    expect(f.health().ok).toBe(false);
  });
});
