import { describe, expect, it } from 'vitest';
import { DropReason, ReceiverState } from '../../protocol/mcast.js';
import { dropReasonText, liveness, startRuleMet } from '../../transfer/policy.js';

describe('start rule (transfer/policy.ts)', () => {
  const none = { count: 0, firstJoinAt: null };
  it('starts at once with no rule or "now"', () => {
    expect(startRuleMet({}, none, 0)).not.toBeNull();
    expect(startRuleMet({ now: true, clients: 5 }, none, 0)).not.toBeNull();
  });
  it('clients N: once N joined', () => {
    expect(startRuleMet({ clients: 3 }, { count: 2, firstJoinAt: 1 }, 10)).toBeNull();
    expect(startRuleMet({ clients: 3 }, { count: 3, firstJoinAt: 1 }, 10)).toBe('3 joined');
  });
  it('wait S: S seconds after the first joined, never before anyone joined', () => {
    expect(startRuleMet({ clients: 9, waitS: 2 }, none, 1e9)).toBeNull();
    expect(startRuleMet({ clients: 9, waitS: 2 }, { count: 1, firstJoinAt: 1000 }, 2999)).toBeNull();
    expect(startRuleMet({ clients: 9, waitS: 2 }, { count: 1, firstJoinAt: 1000 }, 3000)).toMatch(/2 s since/);
  });
  it('at TIME: from that time on', () => {
    const at = '2026-11-22T08:00:00.000Z';
    expect(startRuleMet({ at }, none, Date.parse(at) - 1)).toBeNull();
    expect(startRuleMet({ at }, none, Date.parse(at))).toMatch(/it is/);
  });
});

describe('liveness (transfer/policy.ts)', () => {
  const base = { state: ReceiverState.RECEIVING, lastProgressAt: 1000, lastHeardAt: 1000 };
  it('keeps a receiver that writes and reports', () => {
    expect(liveness(base, 1500, 1000)).toBeNull();
  });
  it('drops a silent receiver as SILENT, one that reports but writes nothing as NO_PROGRESS', () => {
    expect(liveness(base, 2001, 1000)).toBe(DropReason.SILENT);
    expect(liveness({ ...base, lastHeardAt: 2000 }, 2001, 1000)).toBe(DropReason.NO_PROGRESS);
  });
  it('a verifying receiver writes nothing: only silence counts', () => {
    expect(liveness({ ...base, state: ReceiverState.VERIFYING, lastHeardAt: 5000 }, 5001, 1000)).toBeNull();
    expect(liveness({ ...base, state: ReceiverState.VERIFYING }, 5001, 1000)).toBe(DropReason.SILENT);
  });
  it('never drops a receiver that has ended', () => {
    for (const state of [ReceiverState.DONE, ReceiverState.FAILED, ReceiverState.DROPPED]) expect(liveness({ ...base, state }, 1e9, 1000)).toBeNull();
  });
  it('says why in words', () => {
    expect(dropReasonText(DropReason.NO_PROGRESS, 3000)).toBe('it made no progress for 3 s');
    expect(dropReasonText(DropReason.SILENT)).toMatch(/nothing was heard from it for too long/);
  });
});
