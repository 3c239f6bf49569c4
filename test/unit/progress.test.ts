import { describe, expect, it } from 'vitest';
import { Writable } from 'node:stream';
import { formatBytes, formatDuration, Progress } from '../../server/progress.js';

function sink(tty: boolean): Writable & { isTTY: boolean; columns: number; text: string } {
  const w = new Writable({
    write(chunk, _enc, cb) {
      w.text += chunk.toString();
      cb();
    },
  }) as Writable & { isTTY: boolean; columns: number; text: string };
  w.isTTY = tty;
  w.columns = 100;
  w.text = '';
  return w;
}

describe('progress', () => {
  it('redraws one terminal line with a bar, bytes, rate and ETA', async () => {
    const out = sink(true);
    const p = new Progress('import x', 100 << 20, { stream: out });
    p.add(10 << 20);
    await new Promise((r) => setTimeout(r, 250));
    p.add(40 << 20);
    p.finish();
    const frames = out.text.split('\r').filter(Boolean);
    expect(frames).toHaveLength(3);
    expect(frames[0]).toMatch(/^\[###\.+\] import x  10\.0% 10\.0 MiB \/ 100\.0 MiB [\d.]+ [KMG]iB\/s ETA \d+s\x1b\[K$/);
    expect(frames[1]).toMatch(/^\[#{15}\.{15}\] import x  50\.0% 50\.0 MiB/);
    expect(frames[2]).toMatch(/import x  50\.0% .* done\x1b\[K\n$/);
  });

  it('prints plain lines at an interval when not on a terminal', async () => {
    const out = sink(false);
    const p = new Progress('export y', 1000, { stream: out, lineInterval: 0.05 });
    p.add(100);
    await new Promise((r) => setTimeout(r, 80));
    p.add(400);
    p.finish();
    const lines = out.text.trim().split('\n');
    // One line at once, one per interval after, one at the end.
    expect(lines).toHaveLength(3);
    expect(lines[0]).toMatch(/^export y  10\.0% 100 B \/ 1000 B .* ETA/);
    expect(lines[1]).toMatch(/^export y  50\.0% 500 B \/ 1000 B .* ETA \d+s$/);
    expect(lines[2]).toMatch(/done$/);
    expect(out.text).not.toContain('\r');
  });

  it('is silent without a stream and formats sizes and durations', () => {
    const p = new Progress('quiet', 10, { stream: null });
    p.add(10);
    p.finish();
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(3 * 2 ** 30)).toBe('3.0 GiB');
    expect(formatDuration(3725)).toBe('1h02m');
    expect(formatDuration(65)).toBe('1m05s');
    expect(formatDuration(Infinity)).toBe('--');
  });
});
