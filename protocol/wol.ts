/**
 * Wake-on-LAN magic packets (AMD, "Magic Packet Technology", white paper
 * 20213, 1995): six 0xFF bytes, then the target's MAC repeated sixteen
 * times, anywhere in a frame; sent here as the whole payload of a UDP
 * datagram to the discard port (9), which is what network cards in
 * standby and every common WoL tool look for.
 *
 * Layout:
 *
 *   offset size field
 *        0    6 synchronization stream, 0xFF x 6
 *        6   96 the MAC, 16 times
 *   // sizeof = 102
 *      102  0|4|6 optional SecureOn password (cards that support it)
 */

/** Constants of the magic packet. */
export const WOL = Object.freeze({
  /** The UDP port: discard (RFC 863); port 7 (echo) is the other common choice. */
  PORT: 9,
  SYNC_LENGTH: 6,
  REPEATS: 16,
  /** Bytes without a password. */
  SIZE: 102,
  /** Sizes a SecureOn password may have. */
  PASSWORD_SIZES: [0, 4, 6] as readonly number[],
});

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

/** Parses "52:54:00:12:34:56" (or with dashes, any case) into 6 bytes; null if it is not a MAC. */
export function parseMac(text: string): Buffer | null {
  const mac = text.trim().toLowerCase().replace(/-/g, ':');
  if (!MAC_RE.test(mac)) return null;
  return Buffer.from(mac.replace(/:/g, ''), 'hex');
}

/** The magic packet that wakes mac (6 bytes), with an optional SecureOn password. */
export function encodeMagic(mac: Uint8Array, password: Uint8Array = Buffer.alloc(0)): Buffer {
  if (mac.length !== 6) throw new RangeError(`a MAC is 6 bytes, not ${mac.length}`);
  if (!WOL.PASSWORD_SIZES.includes(password.length)) throw new RangeError(`a SecureOn password is 4 or 6 bytes, not ${password.length}`);
  const out = Buffer.alloc(WOL.SIZE + password.length, 0xff);
  for (let i = 0; i < WOL.REPEATS; i++) out.set(mac, WOL.SYNC_LENGTH + 6 * i);
  out.set(password, WOL.SIZE);
  return out;
}

/** The MAC a magic packet wakes ("aa:bb:..."), or null if buf is not one. */
export function decodeMagic(buf: Uint8Array): string | null {
  if (!WOL.PASSWORD_SIZES.includes(buf.length - WOL.SIZE)) return null;
  for (let i = 0; i < WOL.SYNC_LENGTH; i++) if (buf[i] !== 0xff) return null;
  const mac = buf.subarray(WOL.SYNC_LENGTH, WOL.SYNC_LENGTH + 6);
  for (let i = 1; i < WOL.REPEATS; i++) {
    const o = WOL.SYNC_LENGTH + 6 * i;
    for (let j = 0; j < 6; j++) if (buf[o + j] !== mac[j]) return null;
  }
  return Buffer.from(mac).toString('hex').replace(/(..)(?!$)/g, '$1:');
}
