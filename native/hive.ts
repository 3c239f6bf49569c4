/**
 * Windows registry hives through libhivex (native/src/hivex.c): read a
 * value, set string values keeping every other value of their keys.
 */
import { ClonecastError, ERR } from '../protocol/errors.js';
import { native } from './addon.js';

/** hivex's value types (hivex.h, hive_type). */
export const HIVE_TYPE = Object.freeze({ SZ: 1, DWORD: 4 });

/** True if libhivex loads here. */
export function hiveAvailable(): boolean {
  return native().hiveAvailable();
}

function need(): void {
  if (!hiveAvailable()) throw new ClonecastError(ERR.NATIVE_UNAVAILABLE, 'libhivex.so.0 could not be loaded: install libhivex0 to name Windows machines');
}

/** A REG_DWORD value, or null if absent or of another type. */
export function hiveGetDword(file: string, key: string, name: string): number | null {
  need();
  const v = native().hiveGet(file, key, name);
  return v !== null && v[0] === HIVE_TYPE.DWORD && v[1].length === 4 ? v[1].readUInt32LE(0) : null;
}

/** A REG_SZ value (UTF-16LE, NUL-terminated in the hive), or null if absent or of another type. */
export function hiveGetString(file: string, key: string, name: string): string | null {
  need();
  const v = native().hiveGet(file, key, name);
  return v !== null && v[0] === HIVE_TYPE.SZ ? v[1].toString('utf16le').replace(/\0+$/, '') : null;
}

/** Sets REG_SZ values (making missing keys), all or nothing. */
export function hiveSetStrings(file: string, edits: [key: string, name: string, value: string][]): void {
  need();
  native().hiveSet(
    file,
    edits.map(([key, name, value]) => [key, name, HIVE_TYPE.SZ, Buffer.from(`${value}\0`, 'utf16le')]),
  );
}
