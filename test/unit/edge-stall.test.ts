/**
 * A session's machines are not dropped for making no progress while its
 * sender waits for chunks from an edge's repository (nor for the grace
 * after it returns); silent machines still are, and so are stuck ones on a
 * server whose reads never wait.
 */
import { describe, expect, it } from 'vitest';
import { DropReason, ReceiverState } from '../../protocol/mcast.js';
import { pollLive, type Live } from '../../server/session-live.js';
import type { SessionRecord } from '../../server/session-types.js';

const DROP_AFTER = 60_000;

/** A session of two machines: one whose receiver made no progress for too long, one silent for too long. */
function fixture(stalled: boolean | undefined) {
  const now = performance.now();
  const drops: [number, number][] = [];
  const receivers = [
    { receiverId: 1, state: ReceiverState.RECEIVING, lastHeardAt: now, lastProgressAt: now - 2 * DROP_AFTER },
    { receiverId: 2, state: ReceiverState.RECEIVING, lastHeardAt: now - 2 * DROP_AFTER, lastProgressAt: now - 2 * DROP_AFTER },
  ];
  const sender = { counters: { bytesSent: 0, packetsSent: 0, repairPackets: 0 }, receivers: () => receivers, drop: (id: number, reason: number) => drops.push([id, reason]) };
  const live = { sender, ...(stalled === undefined ? {} : { stalled: (ms: number) => (expect(ms).toBe(DROP_AFTER), stalled) }) } as unknown as Live;
  const s = { machines: { a: { receiverId: 1, state: 'receiving' }, b: { receiverId: 2, state: 'receiving' } } } as unknown as SessionRecord;
  pollLive(s, live, DROP_AFTER);
  return drops;
}

describe('machines of a session whose sender waits on the repository', () => {
  it('are not dropped for making no progress while the edge waits (or within its grace); a silent one still is', () => {
    expect(fixture(true)).toEqual([[2, DropReason.SILENT]]);
  });
  it('are dropped for making no progress when no read waited on the repository', () => {
    expect(fixture(false)).toEqual([[1, DropReason.NO_PROGRESS], [2, DropReason.SILENT]]);
    expect(fixture(undefined)).toEqual([[1, DropReason.NO_PROGRESS], [2, DropReason.SILENT]]);
  });
});
