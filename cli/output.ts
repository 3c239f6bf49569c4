/**
 * Human-readable output of the image commands (--json prints the same
 * objects as JSON instead), the JSON writer, and safeText() for strings
 * that came from elsewhere.
 */
import { describeFinish } from '../native/disk-finish.js';
import { typeName } from '../protocol/partitions.js';
import type { ExportSummary } from '../server/store/export.js';
import type { ImportSummary } from '../server/store/import.js';
import type { RecompressSummary } from '../server/store/recompress.js';
import type { GcReport, HistoryEntry, ImageInfo, ListEntry, VerifyReport } from '../server/store/maintenance.js';
import { formatBytes, formatDuration } from '../server/progress.js';

/** Writes a JSON document on stdout; bigints become decimal strings. */
export function emitJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, (_, v) => (typeof v === 'bigint' ? v.toString() : v), 2) + '\n');
}

/**
 * A string someone else supplied (an agent's host name, an error it sent, a
 * name typed on another console), safe to print on a terminal: control
 * characters (C0, DEL, C1, which start escape sequences) and the Unicode
 * line/paragraph separators and bidirectional overrides become "?".
 */
export function safeText(s: string | null | undefined): string {
  if (s === null || s === undefined) return '';
  // eslint-disable-next-line no-control-regex
  return String(s).replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g, '?');
}

const log = (s = '') => process.stdout.write(s + '\n');
const ratio = (r: number) => `${r.toFixed(2)}x`;

/** Prints what an import did. */
export function printImport(s: ImportSummary): void {
  log(`imported ${s.name}@${s.version}${s.parent !== null ? ` (parent ${s.name}@${s.parent})` : ''}`);
  log(`  disk        ${formatBytes(s.diskSize)} in ${s.chunks} chunks: ${s.dataChunks} data, ${s.zeroChunks} zero, ${s.unusedChunks} unused`);
  log(`  used        ${formatBytes(s.usedBytes)}; read from the source ${formatBytes(s.bytesRead)}`);
  for (const w of s.warnings) log(`  warning     ${safeText(w)}`);
  log(`  stored      ${formatBytes(s.storedBytes)} for this version (${s.codec}); new in the store: ${formatBytes(s.newBytes)} (${s.reusedChunks} chunks were already there)`);
  log(`  partitions  ${s.partitionTable.scheme}, ${s.partitionTable.partitions.length} partition(s)`);
  log(`  bad ranges  ${s.badRanges.length === 0 ? 'none' : s.badRanges.map((r) => `${r.offset}+${r.length}`).join(', ')}`);
  log(`  time        ${formatDuration(s.seconds)} (${formatBytes(s.bytesPerSecond)}/s)`);
}

/** Prints what an export did. */
export function printExport(s: ExportSummary): void {
  log(`exported ${s.name}@${s.version} to ${s.target} (${s.kind})`);
  log(`  ${formatBytes(s.diskSize)}: ${s.dataChunks} data chunks written, ${s.zeroChunks} zero chunks ${s.kind === 'file' ? 'left as holes' : 'zeroed'}, ${s.absentChunks} absent left untouched${s.unusedChunks > 0 ? `, ${s.unusedChunks} unused not written` : ''}`);
  if (s.finished) log(`  finished: ${describeFinish(s.finished)}`);
  log(`  time ${formatDuration(s.seconds)} (${formatBytes(s.bytesPerSecond)}/s)`);
}

/** Prints what a recompress did, with the saving. */
export function printRecompress(s: RecompressSummary): void {
  const saved = s.storedBefore - s.storedAfter;
  log(`recompressed ${s.name}@${s.version} with zstd -${s.level}: ${s.rewritten} of ${s.chunks} chunks rewritten`);
  log(`  stored      ${formatBytes(s.storedBefore)} before, ${formatBytes(s.storedAfter)} after: ${formatBytes(saved)} saved (${s.storedBefore > 0 ? ((100 * saved) / s.storedBefore).toFixed(1) : '0.0'}%)`);
  log(`  chunks      ${s.codecs.zstd} zstd, ${s.codecs.lz4} lz4, ${s.codecs.raw} raw`);
  log(`  versions    ${s.manifestsUpdated.length === 0 ? 'none needed updating' : `updated ${s.manifestsUpdated.join(', ')}`}`);
  log(`  time        ${formatDuration(s.seconds)} (${formatBytes(s.bytesPerSecond)}/s of chunk data)`);
}

/** Prints the image list. */
export function printList(list: ListEntry[], root: string): void {
  if (list.length === 0) {
    log(`no images in ${root}; add one with: clonecast image import SRC NAME`);
    return;
  }
  log(`${'IMAGE'.padEnd(24)} ${'VERSIONS'.padEnd(10)} ${'SIZE'.padStart(10)} ${'STORED'.padStart(10)}  LATEST`);
  for (const e of list) {
    const l = e.latest;
    const tail = 'error' in l ? `unreadable: ${l.error}` : `${formatBytes(l.diskSize).padStart(10)} ${formatBytes(l.storedBytes).padStart(10)}  @${l.version} ${l.createdAt}`;
    log(`${e.name.padEnd(24)} ${String(e.versions.length).padEnd(10)} ${tail}`);
  }
}

/** Prints one version's details. */
export function printInfo(i: ImageInfo): void {
  const m = i.meta;
  log(`${m.name}@${m.version}${m.parent !== null ? `  (parent ${m.name}@${m.parent})` : ''}`);
  log(`  created      ${m.createdAt}`);
  log(`  source       ${safeText(m.source.path)} (${m.source.kind})`);
  log(`  virtual size ${formatBytes(m.diskSize)} (${m.diskSize} bytes), sector ${m.sectorSize} B, chunk ${formatBytes(m.chunkSize)}`);
  log(`  used         ${formatBytes(i.usedBytes)}${m.usedBytes === undefined ? ' (no used-block map: the whole disk)' : ''}`);
  log(`  chunks       ${i.chunks}: ${i.dataChunks} data, ${i.zeroChunks} zero, ${i.absentChunks} absent, ${i.unusedChunks} unused`);
  log(`  stored size  ${formatBytes(i.storedBytes)} in ${i.uniqueChunks} distinct chunks; new in this version ${formatBytes(m.newBytes)}`);
  log(`  ratios       compression ${ratio(i.compressionRatio)}, dedupe ${ratio(i.dedupeRatio)}, overall ${ratio(i.totalRatio)}`);
  const t = m.partitionTable;
  log(`  partitions   ${t.scheme}${t.diskId ? `, disk id ${t.diskId}` : ''}`);
  t.partitions.forEach((p, k) => {
    const a = m.assembledFrom?.find((x) => x.index === k);
    const from = a === undefined ? '' : `  from ${a.image}@${a.version} partition ${a.partition}`;
    log(`    ${String(p.number).padStart(2)}  start ${formatBytes(p.start).padStart(10)}  size ${formatBytes(p.size).padStart(10)}  ${typeName(p.type)}${p.name ? `  "${safeText(p.name)}"` : ''}${p.bootable ? '  (boot)' : ''}${from}`);
  });
  for (const w of t.warnings) log(`    warning: ${safeText(w)}`);
  if (m.partitions !== undefined) log(`  read as      ${m.partitions.length === 0 ? 'no partitions mapped' : 'fs          method      used bytes       why'}`);
  for (const r of m.partitions ?? []) {
    const p = t.partitions[r.index];
    log(`    ${String(p?.number ?? r.index).padStart(2)}  ${safeText(r.fs ?? 'none').padEnd(11)} ${r.method.padEnd(11)} used ${formatBytes(r.usedBytes).padStart(10)}  ${safeText(r.reason)}`);
  }
  log(`  bad ranges   ${m.badRanges.length === 0 ? 'none' : ''}`);
  for (const r of m.badRanges) log(`    bytes ${r.offset}-${r.offset + r.length - 1} (${r.length} bytes) were unreadable and are stored as zeros`);
}

/** Prints a verify report. */
export function printVerify(r: VerifyReport): void {
  log(`checked ${r.chunksChecked} distinct chunks of ${r.versionsChecked.length} version(s)`);
  for (const m of r.damagedManifests) log(`  DAMAGED manifest ${m.name}@${m.version}: ${m.problem}`);
  for (const d of r.damagedChunks) {
    const uses = d.usedBy.map((u) => `${u.name}@${u.version} chunk ${u.chunk} (offset ${u.offset})`).join(', ');
    log(`  DAMAGED chunk ${d.sha}: ${d.problem}; used by ${uses}`);
  }
  for (const v of r.staleVersions) log(`  STALE records in ${v}: codec or stored length differ from the chunk files (an interrupted recompress); run "clonecast image recompress ${v}" again before deploying it`);
  if (r.ok) log('all sound');
  else if (r.damagedVersions.length > 0) log(`damaged versions: ${r.damagedVersions.join(', ')}. Re-import them, or remove them with "clonecast image rm NAME@V"`);
}

/** Prints what gc did, or with a dry run what it would do. */
export function printGc(r: GcReport): void {
  if (r.dryRun) {
    log(`gc --dry-run: ${r.referencedChunks} chunks in use; would remove ${r.removedChunks} unused chunks (${formatBytes(r.removedBytes)}) and ${r.removedTempFiles} temporary files; nothing was removed`);
    return;
  }
  log(`gc: ${r.referencedChunks} chunks in use; removed ${r.removedChunks} unused chunks (${formatBytes(r.removedBytes)}) and ${r.removedTempFiles} temporary files`);
}

/** Prints an image's versions, oldest first. */
export function printHistory(history: HistoryEntry[]): void {
  log(`VERSION  CREATED                   SIZE        NEW STORED  BAD  SOURCE`);
  for (const h of history) {
    log(`${`@${h.version}`.padEnd(8)} ${h.createdAt.padEnd(25)} ${formatBytes(h.diskSize).padStart(10)} ${formatBytes(h.newBytes).padStart(11)} ${String(h.badRanges).padStart(4)}  ${h.source}`);
  }
}
