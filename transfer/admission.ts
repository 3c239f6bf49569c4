/**
 * Who the sender serves (docs/protocol.md, "Authentication"): the receivers
 * it was told about, each with its own key and the one address its ACKs and
 * unicast data may go to; or, with open admission (`clonecast send`, where
 * every receiver holds the session secret), any receiver whose STATUS
 * carries a MAC under the key derived from the secret for its id.
 */
import { deriveKey, MacKey, receiverLabel } from '../protocol/mac.js';

/** A receiver the sender may serve. */
export interface Admitted {
  key: MacKey;
  /** Where its ACKs and unicast data go; undefined: where its authenticated reports come from. */
  address: string | undefined;
}

/** The admitted receivers of one session, at most max. */
export class Admission {
  private readonly admitted = new Map<number, Admitted>();

  constructor(
    private readonly secret: Buffer,
    private readonly open: boolean,
    private readonly max: number,
  ) {}

  /** The key of receiver id derived from the session secret. */
  keyFor(receiverId: number): Buffer {
    return deriveKey(this.secret, receiverLabel(receiverId));
  }

  /** Admits (or re-admits) a receiver; false if the table is full. */
  admit(receiverId: number, key: Uint8Array, address: string | undefined): boolean {
    if (!this.admitted.has(receiverId) && this.admitted.size >= this.max) return false;
    this.admitted.set(receiverId, { key: new MacKey(key), address });
    return true;
  }

  /** The key and address a STATUS from receiverId must match, if it may be served at all. */
  lookup(receiverId: number): Admitted | undefined {
    const known = this.admitted.get(receiverId);
    if (known !== undefined || !this.open) return known;
    // Open admission: the key follows from the secret; it is kept once a MAC under it verified (remember()).
    return { key: new MacKey(this.keyFor(receiverId)), address: undefined };
  }

  /** With open admission, keeps the key of a receiver whose report verified (no derivation per packet). */
  remember(receiverId: number, admitted: Admitted): void {
    if (this.open && !this.admitted.has(receiverId) && this.admitted.size < this.max) this.admitted.set(receiverId, admitted);
  }

  /** Withdraws a receiver's admission, whoever admitted it: its reports are refused until it is admitted again. */
  revoke(receiverId: number): void {
    this.admitted.delete(receiverId);
  }

  /** Forgets a receiver admitted openly (an admitted one stays: the server may send it back). */
  forget(receiverId: number): void {
    if (this.open) this.admitted.delete(receiverId);
  }
}
