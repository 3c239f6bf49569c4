/**
 * Node's ICU data, trimmed to English: Node is built with full ICU, whose
 * data (33 MiB, 7.6 MiB under xz) sits in the binary as one ICU "common
 * data" package (symbol icudt<N>_dat). The agent prints English only, so in
 * the boot environment's copy of Node that package is rewritten in place
 * with the items the root and English locales need, the rest of its space
 * zeroed (which xz packs to nothing). Same size, same offset: nothing else
 * in the binary moves. The trimmed Node is run before it is kept; if it
 * fails, the untrimmed one is kept.
 *
 * Package layout (ICU ucmndata.h, little-endian here): a DataHeader of
 * headerSize bytes (magic 0xda27, dataFormat "CmnD"), then uint32 count,
 * then count x {uint32 nameOffset, uint32 dataOffset} (relative to the end
 * of the header, sorted by name: ICU searches it by bisection), then the
 * names, then the items, each 16-byte aligned.
 */
import { spawnSync } from 'node:child_process';
import { closeSync, openSync, readSync, writeSync } from 'node:fs';

/** An item of a common data package. */
interface Item {
  name: string;
  data: Buffer;
}

/** Locales kept: the root locale and English. */
const KEPT_LOCALE = /^(root|en|en_US|en_001|en_US_POSIX|res_index|pool)\.res$/;
/** A locale's bundle name (af.res, zh_Hant_TW.res, es_419.res), not a shared table (units.res, zoneinfo64.res). */
const LOCALE_BUNDLE = /^[a-z]{2,3}(_[A-Za-z0-9]+)*\.res$/;

/** Whether an item (name without the icudtNNl/ prefix) stays. */
export function keepIcuItem(path: string): boolean {
  const slash = path.lastIndexOf('/');
  const base = path.slice(slash + 1);
  if (base.endsWith('.cnv')) return false; // legacy charset converters (Shift-JIS, EBCDIC...): UTF-8 and Latin-1 need none
  if (base.endsWith('.dict')) return false; // CJK, Thai, Lao, Khmer and Burmese word dictionaries
  if (slash < 0) return !LOCALE_BUNDLE.test(base) || KEPT_LOCALE.test(base);
  if (path.startsWith('translit/') || path.startsWith('rbnf/')) return KEPT_LOCALE.test(base);
  return !base.endsWith('.res') || KEPT_LOCALE.test(base);
}

/** The items of a package, or null if buf does not start with one. */
export function readCommonData(buf: Buffer): { header: Buffer; items: Item[] } | null {
  if (buf.length < 32 || buf[2] !== 0xda || buf[3] !== 0x27 || buf.toString('latin1', 12, 16) !== 'CmnD') return null;
  const h = buf.readUInt16LE(0);
  const count = buf.readUInt32LE(h);
  if (count === 0 || h + 4 + count * 8 > buf.length) return null;
  const entries: { name: string; offset: number }[] = [];
  for (let i = 0; i < count; i++) {
    const nameAt = h + buf.readUInt32LE(h + 4 + i * 8);
    const end = buf.indexOf(0, nameAt);
    if (end < 0) return null;
    entries.push({ name: buf.toString('latin1', nameAt, end), offset: h + buf.readUInt32LE(h + 8 + i * 8) });
  }
  const items = entries.map((e, i) => {
    // The last item's length is not recorded: up to the trailing zeros of the package.
    let end = i + 1 < entries.length ? entries[i + 1].offset : buf.length;
    if (i + 1 === entries.length) while (end > e.offset && buf[end - 1] === 0) end--;
    return { name: e.name, data: buf.subarray(e.offset, end) };
  });
  return { header: buf.subarray(0, h), items };
}

/** A package of the given items (sorted by name), zero-padded to size bytes. */
export function writeCommonData(header: Buffer, items: Item[], size: number): Buffer {
  const sorted = [...items].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const h = header.length;
  const tocBytes = 4 + sorted.length * 8;
  const names = Buffer.concat(sorted.map((i) => Buffer.from(`${i.name}\0`, 'latin1')));
  const align = (n: number) => (n + 15) & ~15;
  const out = Buffer.alloc(size);
  header.copy(out, 0);
  out.writeUInt32LE(sorted.length, h);
  let nameAt = tocBytes;
  let at = align(h + tocBytes + names.length);
  names.copy(out, h + tocBytes);
  sorted.forEach((item, i) => {
    out.writeUInt32LE(nameAt, h + 4 + i * 8);
    out.writeUInt32LE(at - h, h + 8 + i * 8);
    nameAt += Buffer.byteLength(item.name, 'latin1') + 1;
    if (at + item.data.length > size) throw new Error('the trimmed ICU package does not fit');
    item.data.copy(out, at);
    at = align(at + item.data.length);
  });
  return out;
}

/** Where the ICU package is in an ELF file: [file offset, size], from the symbol table of `symbolsFrom` (nm) and the program headers (readelf). */
function locate(symbolsFrom: string, file: string): [number, number] | null {
  const nm = spawnSync('nm', ['-S', symbolsFrom], { encoding: 'utf8', maxBuffer: 256 << 20 });
  const sym = /^([0-9a-f]+) ([0-9a-f]+) [rR] icudt\d+_dat$/m.exec(nm.stdout ?? '');
  if (sym === null) return null;
  const [vma, size] = [parseInt(sym[1], 16), parseInt(sym[2], 16)];
  const ph = spawnSync('readelf', ['-lW', file], { encoding: 'utf8' }).stdout ?? '';
  for (const line of ph.split('\n')) {
    const p = line.trim().split(/\s+/);
    if (p[0] !== 'LOAD') continue;
    const [off, va, , filesz] = p.slice(1, 5).map((x) => parseInt(x, 16));
    if (va <= vma && vma + size <= va + filesz) return [off + vma - va, size];
  }
  return null;
}

/** What trimIcu() did. */
export interface IcuTrim {
  trimmed: boolean;
  reason: string;
  keptBytes?: number;
  totalBytes?: number;
}

/** Trims the ICU data of the Node binary `file` (a copy of `original`, which still has its symbols), then checks it runs. */
export function trimIcu(file: string, original: string = process.execPath): IcuTrim {
  const where = locate(original, file);
  if (where === null) return { trimmed: false, reason: 'no icudt*_dat symbol found (nm, readelf from binutils)' };
  const [offset, size] = where;
  const buf = Buffer.alloc(size);
  let kept: Item[];
  let total: number;
  let fd = openSync(file, 'r+');
  try {
    readSync(fd, buf, 0, size, offset);
    const pkg = readCommonData(buf);
    if (pkg === null) return { trimmed: false, reason: 'the icudt*_dat symbol holds no ICU common data' };
    const prefix = /^[^/]+\//.exec(pkg.items[0].name)?.[0] ?? '';
    kept = pkg.items.filter((i) => keepIcuItem(i.name.slice(prefix.length)));
    total = pkg.items.length;
    writeSync(fd, writeCommonData(pkg.header, kept, size), 0, size, offset);
  } finally {
    closeSync(fd); // (a file open for writing cannot be run: ETXTBSY)
  }
  const check = spawnSync(file, ['-e', ICU_CHECK], { encoding: 'utf8', timeout: 60_000 });
  if (check.status !== 0 || check.stdout?.trim() !== 'ok') {
    fd = openSync(file, 'r+');
    writeSync(fd, buf, 0, size, offset);
    closeSync(fd);
    const why = `${check.error?.message ?? ''}${check.stderr ?? ''}${check.stdout ?? ''}`.trim().split('\n').pop();
    return { trimmed: false, reason: `the trimmed Node failed its check (${why}); kept full ICU` };
  }
  return { trimmed: true, reason: `${kept.length} of ${total} ICU items kept`, keptBytes: kept.reduce((n, i) => n + i.data.length, 0), totalBytes: size };
}

/** What the agent and Node's own start-up use of ICU: formatting, normalization, collation, segmenting, IDNA, decoding. */
const ICU_CHECK = `
const a = require('assert');
a.strictEqual(new Intl.DateTimeFormat('en-US', { timeZone: 'UTC' }).format(0), '1/1/1970');
a.strictEqual((1234.5).toLocaleString('en-US'), '1,234.5');
a.strictEqual(new Intl.NumberFormat('en', { style: 'unit', unit: 'megabyte' }).format(3), '3 MB');
a.strictEqual('\\u00c5'.normalize('NFD').length, 2);
a.ok('a'.localeCompare('b') < 0);
a.strictEqual([...new Intl.Segmenter('en', { granularity: 'word' }).segment('two words')].length, 3);
a.strictEqual(require('url').domainToASCII('m\\u00fcnchen.de'), 'xn--mnchen-3ya.de');
a.strictEqual(new TextDecoder('latin1').decode(Buffer.from([0xe9])), '\\u00e9');
a.strictEqual(new Date(0).toLocaleString('de-DE', { timeZone: 'Europe/Berlin' }).length > 0, true);
console.log('ok');
`;
