/**
 * The one error type clonecast throws on purpose. Every error has a stable
 * `code` (CLONECAST_ERR_...) that scripts and tests can match, and a message
 * that says what went wrong and what to do next.
 */
export class ClonecastError extends Error {
  /** Stable machine-readable code, e.g. CLONECAST_ERR_MANIFEST_CORRUPT. */
  readonly code: string;
  /** Extra facts for --json output (offsets, names, paths). */
  readonly details: Record<string, unknown>;

  constructor(code: string, message: string, details: Record<string, unknown> = {}, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ClonecastError';
    this.code = code;
    this.details = details;
  }
}

/** The codes in use, so that a typo is a compile error. */
export const ERR = Object.freeze({
  USAGE: 'CLONECAST_ERR_USAGE',
  NOT_FOUND: 'CLONECAST_ERR_NOT_FOUND',
  EXISTS: 'CLONECAST_ERR_EXISTS',
  BUSY: 'CLONECAST_ERR_BUSY',
  /** The capture (or other job) a request is for has ended; it takes nothing more. */
  ENDED: 'CLONECAST_ERR_ENDED',
  MANIFEST_CORRUPT: 'CLONECAST_ERR_MANIFEST_CORRUPT',
  MANIFEST_VERSION: 'CLONECAST_ERR_MANIFEST_VERSION',
  CHUNK_CORRUPT: 'CLONECAST_ERR_CHUNK_CORRUPT',
  /** A chunk's codec (zstd) cannot be used here: its system library is missing. */
  CODEC_UNAVAILABLE: 'CLONECAST_ERR_CODEC_UNAVAILABLE',
  CHUNK_MISSING: 'CLONECAST_ERR_CHUNK_MISSING',
  READ_ERROR: 'CLONECAST_ERR_READ',
  WRITE_ERROR: 'CLONECAST_ERR_WRITE',
  TARGET_TOO_SMALL: 'CLONECAST_ERR_TARGET_TOO_SMALL',
  DISK_IN_USE: 'CLONECAST_ERR_DISK_IN_USE',
  BOOT_DISK: 'CLONECAST_ERR_BOOT_DISK',
  BAD_NAME: 'CLONECAST_ERR_BAD_NAME',
  DAMAGED: 'CLONECAST_ERR_DAMAGED',
  NATIVE_UNAVAILABLE: 'CLONECAST_ERR_NATIVE_UNAVAILABLE',
  PARTITION_TABLE: 'CLONECAST_ERR_PARTITION_TABLE',
  CONTROL_MALFORMED: 'CLONECAST_ERR_CONTROL_MALFORMED',
  UNAUTHORIZED: 'CLONECAST_ERR_UNAUTHORIZED',
  REFUSED: 'CLONECAST_ERR_REFUSED',
  UNREACHABLE: 'CLONECAST_ERR_UNREACHABLE',
  /** A request body over what its route takes. */
  TOO_LARGE: 'CLONECAST_ERR_TOO_LARGE',
  CANCELLED: 'CLONECAST_ERR_CANCELLED',
  /** The sender gave this receiver up; details.dropped holds the DropReason (protocol/mcast.ts). */
  DROPPED: 'CLONECAST_ERR_DROPPED',
  PACKET_MALFORMED: 'CLONECAST_ERR_PACKET_MALFORMED',
  PROTOCOL_VERSION: 'CLONECAST_ERR_PROTOCOL_VERSION',
  /** The server's TLS certificate is not the one pinned by its fingerprint. */
  CERT_MISMATCH: 'CLONECAST_ERR_CERT_MISMATCH',
  /** The request would overwrite a disk at once (a relabel that makes a machine join a session): send it again with "confirm": true. */
  NEEDS_CONFIRM: 'CLONECAST_ERR_NEEDS_CONFIRM',
});

/** True if err is a ClonecastError with the given code. */
export function isError(err: unknown, code: string): err is ClonecastError {
  return err instanceof ClonecastError && err.code === code;
}
