/**
 * Packet authentication for the multicast protocol (docs/protocol.md,
 * "Authentication"): HMAC-SHA256 (RFC 2104) truncated to 16 bytes (RFC 2104
 * section 5; RFC 4868 uses the same truncation for IPsec). The tag sits in a
 * datagram's last 16 bytes and covers every byte before them.
 *
 * Keys: a session secret of 32 random bytes; the session's data key and each
 * receiver's key are derived from it (deriveKey), so that one receiver's key
 * tells nothing of another's. HMAC needs no nonce, so nothing here can be
 * reused wrongly by a restarted receiver or sender.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';

/** Bytes of the tag at the end of every packet. */
export const MAC_SIZE = 16;
/** Bytes of every key and secret. */
export const KEY_SIZE = 32;

/** The addon's HMAC with precomputed key state (native/src/mac.c), when built. */
interface NativeMac {
  macKey(key: Buffer): Buffer;
  macSign(state: Buffer, packet: Buffer, length: number): void;
  macVerify(state: Buffer, packet: Buffer, length: number): boolean;
}
let addon: NativeMac | null = null;

/** Uses the addon's HMAC from now on (native/addon.ts registers it; protocol/ loads no addon itself). */
export function useNativeMac(impl: NativeMac): void {
  addon = impl;
}

/** A packet key; its precomputed state is made on first use. */
export class MacKey {
  private state: Buffer | undefined;
  private readonly key: Buffer;

  constructor(key: Uint8Array) {
    if (key.length !== KEY_SIZE) throw new RangeError(`a packet key has ${KEY_SIZE} bytes, not ${key.length}`);
    this.key = Buffer.from(key);
  }

  /** Writes the tag of packet[0, length - 16) into packet[length - 16, length). */
  sign(packet: Buffer, length = packet.length): void {
    if (addon !== null) {
      addon.macSign((this.state ??= addon.macKey(this.key)), packet, length);
      return;
    }
    this.tag(packet, length).copy(packet, length - MAC_SIZE);
  }

  /** True if packet ends with the tag of the bytes before it (compared in constant time). */
  verify(packet: Buffer, length = packet.length): boolean {
    if (length < MAC_SIZE || length > packet.length) return false;
    if (addon !== null) return addon.macVerify((this.state ??= addon.macKey(this.key)), packet, length);
    return timingSafeEqual(this.tag(packet, length), packet.subarray(length - MAC_SIZE, length));
  }

  private tag(packet: Buffer, length: number): Buffer {
    return createHmac('sha256', this.key).update(packet.subarray(0, length - MAC_SIZE)).digest().subarray(0, MAC_SIZE);
  }
}

/** HMAC-SHA256(secret, label): the session's data key ("data"), a receiver's key (receiverLabel), the encryption key ("encrypt"). */
export function deriveKey(secret: Uint8Array, label: string): Buffer {
  return createHmac('sha256', secret).update(label).digest();
}

/** The label of receiver id's key: "receiver:" and the id in decimal. */
export function receiverLabel(receiverId: number): string {
  return `receiver:${receiverId >>> 0}`;
}
