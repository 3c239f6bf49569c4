/**
 * Progress of long work: a redrawn bar with bytes, rate and ETA on a
 * terminal, a plain line every few seconds otherwise, nothing in --json mode.
 */

/** Where progress goes and how. */
export interface ProgressOptions {
  /** Stream to draw on; undefined or null for silence. */
  stream?: NodeJS.WritableStream & { isTTY?: boolean; columns?: number } | null;
  /** Seconds between plain lines when the stream is not a terminal. */
  lineInterval?: number;
}

/** Default seconds between plain progress lines. */
export const DEFAULT_LINE_INTERVAL = 5;

/** Formats a byte count with binary units: "1.5 GiB". */
export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

/** Formats seconds as "1h02m", "3m05s" or "12s". */
export function formatDuration(s: number): string {
  if (!Number.isFinite(s)) return '--';
  s = Math.max(0, Math.round(s));
  if (s >= 3600) return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${s}s`;
}

/** A progress display for one operation over `total` bytes. */
export class Progress {
  private done = 0;
  private readonly start = performance.now();
  private lastDraw = -Infinity;
  private samples: { t: number; done: number }[] = [];
  private readonly stream;
  private readonly tty: boolean;
  private readonly interval: number;

  constructor(
    private readonly label: string,
    private readonly total: number,
    options: ProgressOptions = {},
  ) {
    this.stream = options.stream ?? null;
    this.tty = this.stream?.isTTY === true;
    this.interval = (options.lineInterval ?? DEFAULT_LINE_INTERVAL) * 1000;
  }

  /** Adds n bytes of work done. */
  add(n: number): void {
    this.done += n;
    const now = performance.now();
    if (this.stream === null) return;
    if (now - this.lastDraw < (this.tty ? 200 : this.interval)) return;
    this.lastDraw = now;
    this.draw(now, false);
  }

  /** Bytes per second over the last few seconds. */
  rate(now = performance.now()): number {
    this.samples.push({ t: now, done: this.done });
    while (this.samples.length > 2 && now - this.samples[0].t > 5000) this.samples.shift();
    const first = this.samples[0];
    const dt = (now - first.t) / 1000;
    return dt > 0.2 ? (this.done - first.done) / dt : this.done / Math.max((now - this.start) / 1000, 1e-3);
  }

  /** Draws the final state and ends the line. */
  finish(): void {
    if (this.stream === null) return;
    this.draw(performance.now(), true);
  }

  private draw(now: number, final: boolean): void {
    const rate = final ? this.done / Math.max((now - this.start) / 1000, 1e-3) : this.rate(now);
    const pct = this.total > 0 ? Math.min(100, (100 * this.done) / this.total) : 100;
    const eta = final ? 'done' : `ETA ${formatDuration(rate > 0 ? (this.total - this.done) / rate : Infinity)}`;
    const text = `${this.label} ${pct.toFixed(1).padStart(5)}% ${formatBytes(this.done)} / ${formatBytes(this.total)} ${formatBytes(rate)}/s ${eta}`;
    if (this.tty) {
      const width = Math.max(10, Math.min(30, (this.stream!.columns ?? 80) - text.length - 4));
      const fill = Math.round((pct / 100) * width);
      this.stream!.write(`\r[${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${text}\x1b[K${final ? '\n' : ''}`);
    } else {
      this.stream!.write(`${text}\n`);
    }
  }
}
