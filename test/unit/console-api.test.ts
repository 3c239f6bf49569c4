/**
 * What the dashboard's console stands on: each machine's event log
 * (bounded, saved with the registry, hidden from the list), forget (refused
 * while connected or held), the superseded mark for an offline machine whose
 * address another took, a last error that a later success clears, and the
 * console routes over HTTP (machine page, forget, versions, prune preview,
 * verify) with the token and against hostile input.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { BOOT_EVENT_LIMIT, EVENT_LIMIT, Registry } from '../../server/registry.js';
import { Store } from '../../server/store/store.js';
import { importImage } from '../../server/store/import.js';
import { startServer, type RunningServer } from '../../server/app.js';
import { serverFetch, tempDir } from '../helpers.js';

const A = '02:00:00:00:0a:01';
const B = '02:00:00:00:0a:02';
const hello = (id: string, address: string) => ({ id, macs: [id], hostname: `host-${id.slice(-2)}`, bootMode: 'bios', agentVersion: 't', disks: [], address });

describe('registry for the console', () => {
  it('keeps a bounded event log per machine, saved across a restart, and leaves it out of the list', async () => {
    const data = join(tempDir('reg-ev'), 'data');
    const r = new Registry(Store.open(data));
    r.seen(hello(A, '10.77.0.10'));
    r.apply(A, { type: 'claim', by: { kind: 'session', id: 7 }, state: 'assigned', image: 'img@1' });
    r.apply(A, { type: 'release', by: { kind: 'session', id: 7 }, state: 'dropped', error: 'no progress for 30 s' });
    const kinds = r.get(A)!.events!.map((e) => e.kind);
    expect(kinds).toEqual(['drop', 'join', 'connect']);
    expect(r.get(A)!.events![0].text).toMatch(/session 7 ended: dropped \(no progress for 30 s\)/);
    for (let i = 0; i < EVENT_LIMIT + 20; i++) r.event(A, 'connect', `connect ${i}`);
    expect(r.get(A)!.events!.length).toBe(EVENT_LIMIT);
    expect(r.get(A)!.events![0].text).toBe(`connect ${EVENT_LIMIT + 19}`);
    expect(r.list()[0]).not.toHaveProperty('events');
    await r.close();
    const again = new Registry(Store.open(data));
    expect(again.get(A)!.events!.length).toBe(EVENT_LIMIT);
    await again.close();
  });

  it('boot events cannot push drops and results out of the event log (a machine booting every 5 s flooded it)', async () => {
    const r = new Registry(Store.open(join(tempDir('reg-boot'), 'data')));
    r.seen(hello(A, '10.77.0.10'));
    r.apply(A, { type: 'claim', by: { kind: 'session', id: 7 }, state: 'assigned', image: 'img@1' });
    r.apply(A, { type: 'release', by: { kind: 'session', id: 7 }, state: 'dropped', error: 'no progress for 30 s' });
    // The same boot again and again: one entry, counted.
    for (let i = 0; i < 500; i++) r.event(A, 'boot', 'network boot: fetched its boot script');
    let events = r.get(A)!.events!;
    expect(events[0]).toMatchObject({ kind: 'boot', text: 'network boot: fetched its boot script (×500)' });
    expect(events.map((e) => e.kind)).toEqual(['boot', 'drop', 'join', 'connect']);
    // Boots that differ: at most BOOT_EVENT_LIMIT of them are kept, and the drop stays.
    for (let i = 0; i < 2 * EVENT_LIMIT; i++) r.event(A, 'boot', `boot ${i}`);
    events = r.get(A)!.events!;
    expect(events.filter((e) => e.kind === 'boot')).toHaveLength(BOOT_EVENT_LIMIT);
    expect(events[0].text).toBe(`boot ${2 * EVENT_LIMIT - 1}`);
    expect(events.map((e) => e.kind).filter((k) => k !== 'boot')).toEqual(['drop', 'join', 'connect']);
    await r.close();
  });

  it('an unverified agent from a trusted machine\'s address does not mark it superseded (it hid a machine a group deploy still overwrote)', async () => {
    const r = new Registry(Store.open(join(tempDir('reg-sup-trust'), 'data')));
    const C = '02:00:00:00:0a:03';
    const E = 'ee:00:00:00:00:01';
    r.seen(hello(A, '10.77.0.10'));
    r.seen(hello(C, '10.77.0.11'));
    r.label(A, { groups: ['room101'] });
    r.label(C, { groups: ['room101'] });
    r.online(A, false);
    r.seen({ ...hello(E, '10.77.0.10'), trust: 'unverified' });
    expect(r.get(A)!.supersededBy).toBe('');
    expect(r.inGroup('room101').map((m) => m.id).sort()).toEqual([A, C]);
    // A machine that proves who it is (token or credential) from that address does mark it.
    r.online(E, false);
    r.seen({ ...hello(B, '10.77.0.10'), trust: 'credential' });
    expect(r.get(A)!.supersededBy).toBe(B);
    await r.close();
  });

  it('a later successful capture clears the last error of a failed one (stale last error)', async () => {
    const r = new Registry(Store.open(join(tempDir('reg-err'), 'data')));
    r.seen(hello(A, '10.77.0.10'));
    r.claim(A, { kind: 'capture', id: 1 }, 'capturing');
    r.apply(A, { type: 'release', by: { kind: 'capture', id: 1 }, state: 'failed', error: 'capture 1: it has no disk /dev/sdb' });
    expect(r.get(A)!.lastError).toMatch(/no disk/);
    r.claim(A, { kind: 'capture', id: 2 }, 'capturing');
    r.apply(A, { type: 'release', by: { kind: 'capture', id: 2 }, state: 'idle' });
    expect(r.get(A)!.lastError).toBe('');
    await r.close();
  });

  it('marks an offline machine superseded when another connects from its address, and forgets only an offline idle one', async () => {
    const r = new Registry(Store.open(join(tempDir('reg-sup'), 'data')));
    r.seen(hello(A, '10.77.0.10'));
    expect(() => r.forget(A)).toThrow(/connected/);
    r.online(A, false);
    r.seen(hello(B, '10.77.0.10'));
    expect(r.get(A)!.supersededBy).toBe(B);
    expect(r.get(B)!.supersededBy).toBe('');
    // It comes back: no longer superseded.
    r.seen(hello(A, '10.77.0.12'));
    expect(r.get(A)!.supersededBy).toBe('');
    r.online(A, false);
    r.claim(A, { kind: 'session', id: 3 }, 'assigned');
    expect(() => r.forget(A)).toThrow(/session 3/);
    r.apply(A, { type: 'release', by: { kind: 'session', id: 3 }, state: 'idle' });
    expect(r.forget(A).id).toBe(A);
    expect(r.get(A)).toBeUndefined();
    expect(() => r.forget(A)).toThrow(/no machine/);
    await r.close();
  });
});

describe('console routes', () => {
  const dir = tempDir('console');
  let srv: RunningServer;
  let store: Store;
  const call = async (method: string, path: string, body?: unknown, token: string | null = srv.token) => {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (token !== null) headers.authorization = `Bearer ${token}`;
    const res = await serverFetch(srv, path, { method, headers, body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body) });
    return { status: res.status, body: (await res.json()) as any };
  };

  beforeAll(async () => {
    store = Store.open(join(dir, 'data'));
    for (let v = 1; v <= 3; v++) {
      writeFileSync(join(dir, 'disk.img'), Buffer.alloc(1 << 20, v));
      await importImage(store, join(dir, 'disk.img'), 'img', { workers: 1 });
    }
    srv = await startServer({ store, listen: '127.0.0.1:0', version: 'test', heartbeatMs: 60_000 });
    srv.registry.seen(hello(A, '127.0.0.1'));
    srv.registry.online(A, false);
  });
  afterAll(async () => {
    await srv?.close();
  });

  it('need the token', async () => {
    for (const [method, path] of [['GET', `/api/machines/${A}`], ['DELETE', `/api/machines/${A}`], ['GET', '/api/images/img/versions'], ['POST', '/api/images/img/prune'], ['POST', '/api/images/img/verify']]) {
      expect((await call(method, path, method === 'POST' ? { keepLast: 1, dryRun: false } : undefined, null)).status, `${method} ${path}`).toBe(401);
      expect((await call(method, path, undefined, 'wrong')).status).toBe(401);
    }
    expect(store.versions('img')).toEqual([1, 2, 3]);
    expect(srv.registry.get(A)).toBeDefined();
  });

  it('show a machine with its events, and the versions of an image newest first', async () => {
    const m = await call('GET', `/api/machines/${A}`);
    expect(m.status).toBe(200);
    expect(m.body.events.map((e: { kind: string }) => e.kind)).toEqual(['disconnect', 'connect']);
    expect(m.body).not.toHaveProperty('secretHash');
    const v = await call('GET', '/api/images/img/versions');
    expect(v.body.map((x: { version: number }) => x.version)).toEqual([3, 2, 1]);
    expect(v.body[0]).toMatchObject({ diskSize: 1 << 20, usedBytes: 1 << 20, badRanges: [] });
  });

  it('prune previews by default and removes only when asked; verify checks a version', async () => {
    const preview = await call('POST', '/api/images/img/prune', { keepLast: 2 });
    expect(preview.body).toMatchObject({ removed: [1], kept: [2, 3], dryRun: true });
    expect(store.versions('img')).toEqual([1, 2, 3]);
    const ok = await call('POST', '/api/images/img/verify', { version: 3 });
    expect(ok.body).toMatchObject({ ok: true, versionsChecked: [{ name: 'img', version: 3 }] });
    const done = await call('POST', '/api/images/img/prune', { keepLast: 2, dryRun: false });
    expect(done.body).toMatchObject({ removed: [1], dryRun: false });
    expect(store.versions('img')).toEqual([2, 3]);
  });

  it('prune removes only the versions the administrator confirmed (a version published after the preview shifted what went)', async () => {
    const preview = await call('POST', '/api/images/img/prune', { keepLast: 1 });
    expect(preview.body).toMatchObject({ removed: [2], kept: [3] });
    // A version published between the preview and "Remove": the rule now removes @2 and @3.
    writeFileSync(join(dir, 'disk.img'), Buffer.alloc(1 << 20, 4));
    await importImage(store, join(dir, 'disk.img'), 'img', { workers: 1 });
    const refused = await call('POST', '/api/images/img/prune', { keepLast: 1, versions: preview.body.removed, dryRun: false });
    expect(refused.status).toBe(409);
    expect(refused.body.error.message).toMatch(/changed since the preview/);
    expect(store.versions('img')).toEqual([2, 3, 4]);
    expect((await call('POST', '/api/images/img/prune', { keepLast: 1, versions: 'all', dryRun: false })).status).toBe(400);
    // What it shows now is what goes.
    const again = await call('POST', '/api/images/img/prune', { keepLast: 2 });
    expect(again.body).toMatchObject({ removed: [2], kept: [3, 4] });
    const done = await call('POST', '/api/images/img/prune', { keepLast: 2, versions: [2], dryRun: false });
    expect(done.body).toMatchObject({ removed: [2], dryRun: false });
    expect(store.versions('img')).toEqual([3, 4]);
  });

  it('refuse hostile input without changing anything', async () => {
    const bad: [string, string, unknown, number][] = [
      ['POST', '/api/images/img/prune', {}, 400],
      ['POST', '/api/images/img/prune', { keepLast: -1, dryRun: false }, 400],
      ['POST', '/api/images/img/prune', { keepLast: '1; rm -rf /', dryRun: false }, 400],
      ['POST', '/api/images/img/prune', [1, 2], 400],
      ['POST', '/api/images/img/prune', '{not json', 400],
      ['POST', '/api/images/..%2F..%2Fetc/prune', { keepLast: 1, dryRun: false }, 400],
      ['GET', '/api/images/%3Cscript%3E/versions', undefined, 400],
      ['GET', '/api/images/nothing/versions', undefined, 404],
      ['POST', '/api/images/img/verify', { version: 99 }, 404],
      ['POST', '/api/images/img/verify', { version: 'all' }, 400],
      ['DELETE', '/api/machines/02:00:00:00:ff:ff', undefined, 404],
    ];
    for (const [method, path, body, status] of bad) expect((await call(method, path, body)).status, `${method} ${path} ${JSON.stringify(body)}`).toBe(status);
    expect(store.versions('img')).toEqual([3, 4]);
  });

  it('forget an offline machine', async () => {
    expect((await call('DELETE', `/api/machines/${A}`)).body).toEqual({ forgotten: A });
    expect((await call('GET', `/api/machines/${A}`)).status).toBe(404);
  });
});
