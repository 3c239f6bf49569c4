import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { copyFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { keepIcuItem, readCommonData, trimIcu, writeCommonData } from '../../pxe/bootenv-icu.js';
import { tempDir } from '../helpers.js';

/** A CmnD header as ICU writes it (headerSize 32, magic 0xda27, little-endian, "CmnD"). */
function header(): Buffer {
  const h = Buffer.alloc(32);
  h.writeUInt16LE(32, 0);
  h[2] = 0xda;
  h[3] = 0x27;
  h.writeUInt16LE(20, 4);
  h.write('CmnD', 12, 'latin1');
  return h;
}

describe('ICU common data trimming', () => {
  it('writes a package ICU can search (sorted names, 16-byte aligned items) and reads it back', () => {
    const items = [
      { name: 'icudt78l/zz.res', data: Buffer.from('zz-data') },
      { name: 'icudt78l/en.res', data: Buffer.from('english') },
      { name: 'icudt78l/coll/root.res', data: Buffer.alloc(40, 7) },
    ];
    const buf = writeCommonData(header(), items, 4096);
    expect(buf.length).toBe(4096);
    const back = readCommonData(buf)!;
    expect(back.items.map((i) => i.name)).toEqual(['icudt78l/coll/root.res', 'icudt78l/en.res', 'icudt78l/zz.res']);
    expect(back.items[1].data.subarray(0, 7).toString()).toBe('english');
    for (let i = 0; i < 3; i++) expect((32 + buf.readUInt32LE(32 + 8 + i * 8)) % 16).toBe(0);
    expect(() => writeCommonData(header(), items, 128)).toThrow(/does not fit/);
  });

  it('refuses what is not a common data package, or a truncated table', () => {
    expect(readCommonData(Buffer.alloc(64))).toBeNull();
    const bad = writeCommonData(header(), [{ name: 'a/b.res', data: Buffer.from('x') }], 256);
    bad.writeUInt32LE(1_000_000, 32); // count far beyond the buffer
    expect(readCommonData(bad)).toBeNull();
  });

  it('keeps root, English and the shared tables; drops other locales, converters and dictionaries', () => {
    for (const kept of ['root.res', 'en.res', 'en_US.res', 'pool.res', 'supplementalData.res', 'zoneinfo64.res', 'units.res', 'nfc.nrm', 'uprops.icu', 'coll/ucadata.icu', 'coll/root.res', 'brkitr/word.brk', 'brkitr/en.res']) {
      expect(keepIcuItem(kept), kept).toBe(true);
    }
    for (const dropped of ['de.res', 'zh_Hant_TW.res', 'es_419.res', 'ibm-1390_P110-2003.cnv', 'brkitr/cjdict.dict', 'coll/de.res', 'lang/fr.res', 'translit/el_Latn.res']) {
      expect(keepIcuItem(dropped), dropped).toBe(false);
    }
  });

  it('trims this Node\'s ICU in place: same size, and the copy still formats, normalizes and collates', () => {
    if (spawnSync('nm', ['--version']).status !== 0) throw new Error('needs nm (binutils), which the native build needs too');
    const copy = join(tempDir('icu'), 'node');
    copyFileSync(process.execPath, copy);
    const r = trimIcu(copy);
    expect(r.trimmed, r.reason).toBe(true);
    expect(r.keptBytes!).toBeLessThan(r.totalBytes! / 3);
    expect(statSync(copy).size).toBe(statSync(process.execPath).size);
    const run = spawnSync(copy, ['-e', 'console.log((1234.5).toLocaleString("en-US"), "\\u00c5".normalize("NFD").length, new Intl.DateTimeFormat("de-DE",{timeZone:"UTC"}).format(0))'], { encoding: 'utf8' });
    expect(run.stdout.trim()).toMatch(/^1,234\.5 2 \S+$/);
  }, 120_000);
});
