/**
 * Used-byte maps of a disk (docs/image-format.md, "Unused chunks"): the
 * parser of partclone's ddrescue-style domain map, the range arithmetic,
 * and the per-chunk plan import and capture follow (which chunks are not
 * read at all, which byte ranges of a partly used chunk are kept).
 *
 * A domain map (GNU ddrescue's mapfile format, as `partclone -D` writes it):
 *
 *   # comment lines
 *   0xCURRENT_POS  STATUS            (one line: where the tool stopped)
 *   0xPOS  0xSIZE  STATUS            (one line per range, in disk order)
 *
 * STATUS '+' is a used range; '?', '-', '*', '/' are not. The map is file
 * input written by another program: every line is checked, and anything
 * odd throws, so the caller reads that partition in full.
 */

/** A byte range [start, end) on the disk. */
export interface Span {
  start: number;
  end: number;
}

/** Limits on a domain map: a map larger than this is refused, not parsed. */
export const DOMAIN_MAP = Object.freeze({
  /** Characters of map text accepted (a fragmented 2 TB filesystem stays well below). */
  MAX_TEXT: 256 << 20,
  /** The status characters ddrescue defines (ddrescue manual, "Mapfile structure"). */
  STATUSES: '?*/-+',
  /** The status of a range that holds used (finished) data. */
  USED: '+',
});

const HEX = /^0x[0-9a-fA-F]{1,16}$/;

function hexNumber(s: string, where: string): number {
  if (!HEX.test(s)) throw new Error(`${where}: "${s.slice(0, 40)}" is not a hexadecimal number`);
  const n = Number.parseInt(s.slice(2), 16);
  if (!Number.isSafeInteger(n)) throw new Error(`${where}: ${s} is too large`);
  return n;
}

/**
 * Parses a domain map whose positions are disk offsets (partclone
 * --offset_domain) of a partition [start, start+length). Returns the used
 * ranges, sorted and joined. Throws an Error naming the first line that is
 * malformed, out of the partition, out of order or overlapping.
 */
export function parseDomainMap(text: string, start: number, length: number): Span[] {
  if (text.length > DOMAIN_MAP.MAX_TEXT) throw new Error(`the map is ${text.length} characters long, over ${DOMAIN_MAP.MAX_TEXT}`);
  const end = start + length;
  const used: Span[] = [];
  let sawCurrent = false;
  let sawRange = false;
  let prevEnd = start;
  const lines = text.split('\n');
  for (let k = 0; k < lines.length; k++) {
    const line = lines[k].trim();
    if (line === '' || line.startsWith('#')) continue;
    const where = `line ${k + 1}`;
    const f = line.split(/\s+/);
    if (!sawCurrent) {
      // The current-position line: 0xPOS STATUS [PASS] (ddrescue's PASS is a decimal number). A range
      // line here (0xPOS 0xSIZE STATUS) means the line was left out: refused, or its range would be lost.
      if (f.length < 2 || f.length > 3) throw new Error(`${where}: expected "0xPOSITION STATUS"`);
      if (f[1].length !== 1 || !DOMAIN_MAP.STATUSES.includes(f[1])) throw new Error(`${where}: expected "0xPOSITION STATUS" as the current position, got "${line.slice(0, 60)}"`);
      if (f.length === 3 && !/^\d{1,9}$/.test(f[2])) throw new Error(`${where}: the current position's pass "${f[2].slice(0, 20)}" is not a number`);
      const pos = hexNumber(f[0], where);
      if (pos < start || pos > end) throw new Error(`${where}: current position ${f[0]} is outside the partition`);
      sawCurrent = true;
      continue;
    }
    if (f.length !== 3) throw new Error(`${where}: expected "0xPOSITION 0xSIZE STATUS"`);
    const pos = hexNumber(f[0], where);
    const size = hexNumber(f[1], where);
    const status = f[2];
    if (status.length !== 1 || !DOMAIN_MAP.STATUSES.includes(status)) throw new Error(`${where}: unknown status "${status.slice(0, 8)}"`);
    if (size <= 0) throw new Error(`${where}: a range of ${size} bytes`);
    if (pos < start || pos + size > end) throw new Error(`${where}: range ${f[0]}+${f[1]} is outside the partition`);
    if (pos < prevEnd) throw new Error(`${where}: range ${f[0]} overlaps or precedes the one before it`);
    prevEnd = pos + size;
    sawRange = true;
    if (status === DOMAIN_MAP.USED) addSpan(used, { start: pos, end: pos + size });
  }
  if (!sawCurrent || !sawRange) throw new Error('the map holds no ranges');
  return used;
}

/** Appends a span after the last one (which it must not precede), joining spans that touch or overlap. */
export function addSpan(into: Span[], s: Span): void {
  if (s.end <= s.start) return;
  const last = into[into.length - 1];
  if (last !== undefined && s.start <= last.end) last.end = Math.max(last.end, s.end);
  else into.push({ ...s });
}

/** The union of spans in any order: sorted and joined. */
export function unionSpans(spans: Span[]): Span[] {
  const out: Span[] = [];
  for (const s of [...spans].sort((a, b) => a.start - b.start)) addSpan(out, s);
  return out;
}

/** Total bytes of sorted, disjoint spans. */
export function spanBytes(spans: Span[]): number {
  let n = 0;
  for (const s of spans) n += s.end - s.start;
  return n;
}

/** Bytes of sorted, disjoint spans that lie inside [start, end). */
export function bytesWithin(spans: Span[], start: number, end: number): number {
  let n = 0;
  for (let k = firstEndingAfter(spans, start); k < spans.length && spans[k].start < end; k++) {
    n += Math.min(end, spans[k].end) - Math.max(start, spans[k].start);
  }
  return n;
}

// Index of the first span whose end is after pos (binary search).
function firstEndingAfter(spans: Span[], pos: number): number {
  let lo = 0;
  let hi = spans.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (spans[mid].end <= pos) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * What to do with one chunk [position, position+length): 'unused' (no used
 * byte: not read), 'whole' (every byte used), or 'partial' with the kept
 * ranges, relative to the chunk's start; the bytes between them are stored
 * as zeros.
 */
export type ChunkUse = { use: 'unused' } | { use: 'whole' } | { use: 'partial'; keep: [number, number][] };

/** The use of one chunk under sorted, disjoint used spans. */
export function chunkUse(used: Span[], position: number, length: number): ChunkUse {
  const end = position + length;
  const keep: [number, number][] = [];
  for (let k = firstEndingAfter(used, position); k < used.length && used[k].start < end; k++) {
    const a = Math.max(position, used[k].start);
    const b = Math.min(end, used[k].end);
    keep.push([a - position, b - a]);
  }
  if (keep.length === 0) return { use: 'unused' };
  if (keep.length === 1 && keep[0][0] === 0 && keep[0][1] === length) return { use: 'whole' };
  return { use: 'partial', keep };
}

/** Zeros every byte of buf[0, length) outside the kept ranges (sorted, disjoint, relative to buf). */
export function zeroOutside(buf: Uint8Array, length: number, keep: [number, number][]): void {
  let at = 0;
  for (const [offset, n] of keep) {
    if (offset > at) buf.fill(0, at, offset);
    at = offset + n;
  }
  if (at < length) buf.fill(0, at, length);
}

/** The spans of [0, size) not covered by sorted, disjoint spans. */
export function complement(spans: Span[], size: number): Span[] {
  const out: Span[] = [];
  let at = 0;
  for (const s of spans) {
    if (s.start > at) out.push({ start: at, end: Math.min(s.start, size) });
    at = Math.max(at, s.end);
  }
  if (at < size) out.push({ start: at, end: size });
  return out.filter((s) => s.end > s.start);
}
