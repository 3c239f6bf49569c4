/**
 * The registry as the one owner of machine activity: its transition
 * function refuses a second holder, ignores reports from anyone but the
 * holder, and frees a machine only when its holder lets go.
 */
import { describe, expect, it } from 'vitest';
import { join } from 'node:path';
import { Registry } from '../../server/registry.js';
import { Store } from '../../server/store/store.js';
import { machineMoveAllowed, sessionMoveAllowed } from '../../protocol/states.js';
import { tempDir } from '../helpers.js';

const MAC = '02:00:00:00:01:01';

function registry(): Registry {
  const r = new Registry(Store.open(join(tempDir('reg'), 'data')));
  r.seen({ id: MAC, macs: [MAC], hostname: 'pc', bootMode: 'bios', agentVersion: 't', disks: [], address: '10.77.0.11' });
  return r;
}

describe('machine activity', () => {
  it('a claimed machine refuses a second holder and says who holds it', async () => {
    const r = registry();
    expect(r.apply(MAC, { type: 'claim', by: { kind: 'session', id: 1 }, state: 'assigned' })).toBeNull();
    expect(r.apply(MAC, { type: 'claim', by: { kind: 'capture', id: 4 }, state: 'capturing' })).toBe(`${MAC} is busy (session 1)`);
    expect(() => r.claim(MAC, { kind: 'session', id: 2 }, 'assigned')).toThrow(/busy \(session 1\)/);
    // The same holder may claim again (a reassignment after a reconnect).
    expect(r.apply(MAC, { type: 'claim', by: { kind: 'session', id: 1 }, state: 'assigned' })).toBeNull();
    expect(r.get(MAC)).toMatchObject({ activity: { kind: 'session', id: 1 }, session: 1, state: 'assigned' });
    await r.close();
  });

  it('reports and releases count only from the holder', async () => {
    const r = registry();
    r.claim(MAC, { kind: 'capture', id: 3 }, 'capturing');
    expect(r.apply(MAC, { type: 'report', by: { kind: 'session', id: 9 }, state: 'receiving' })).toMatch(/not held by session 9/);
    expect(r.apply(MAC, { type: 'release', by: { kind: 'session', id: 9 }, state: 'done' })).toMatch(/not held by session 9/);
    expect(r.get(MAC)?.state).toBe('capturing');
    const released = new Promise<string>((res) => r.once('released', res));
    expect(r.apply(MAC, { type: 'release', by: { kind: 'capture', id: 3 }, state: 'idle' })).toBeNull();
    expect(await released).toBe(MAC);
    expect(r.get(MAC)).toMatchObject({ activity: { kind: 'idle' }, state: 'idle', session: null });
    await r.close();
  });

  it('a holder that ended while the server was down no longer holds its machine', async () => {
    const r = registry();
    r.claim(MAC, { kind: 'session', id: 5 }, 'assigned');
    r.reconcile((a) => a.kind !== 'session' || a.id !== 5);
    expect(r.get(MAC)?.activity).toEqual({ kind: 'idle' });
    await r.close();
  });

  it('names and groups are checked labels', async () => {
    const r = registry();
    expect(r.label(MAC, { name: 'pc-12', groups: ['room-b', 'room-b', 'lab'] })).toMatchObject({ name: 'pc-12', groups: ['room-b', 'lab'] });
    expect(r.inGroup('lab').map((m) => m.id)).toEqual([MAC]);
    expect(() => r.label(MAC, { name: '<img src=x>' })).toThrow(/machine name is 1-64/);
    expect(() => r.label(MAC, { groups: 'lab' })).toThrow(/groups are a list/);
    expect(() => r.label('02:00:00:00:99:99', { name: 'x' })).toThrow(/no machine/);
    await r.close();
  });

  it('the vocabulary allows only forward moves, and none out of a final state', async () => {
    expect(machineMoveAllowed('receiving', 'verifying')).toBe(true);
    expect(machineMoveAllowed('done', 'receiving')).toBe(false);
    expect(machineMoveAllowed('offline', 'assigned')).toBe(true);
    expect(sessionMoveAllowed('waiting', 'running')).toBe(true);
    expect(sessionMoveAllowed('done', 'running')).toBe(false);
    expect(sessionMoveAllowed('cancelled', 'failed')).toBe(false);
  });
});
