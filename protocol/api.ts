/**
 * Shapes of the admin HTTP API's JSON bodies that more than one side
 * writes or reads (the server, the CLI, the agent's capture upload). The
 * server checks every field of them before use (server/session-rules.ts,
 * server/capture-checks.ts); these are the names, not the checks.
 */

/** Which machines a session takes and when it starts (POST /api/sessions `rule`). Any start rule met starts it; none means now. */
export interface StartRule {
  /** Start as soon as this many machines joined; with `any`, also the most that may join. */
  clients?: number;
  /** Only these machines (MACs) take part; start as soon as every one joined. */
  machines?: string[];
  /** Only machines of this registry group take part. */
  group?: string;
  /** Any machine that comes may take part (up to `clients`). */
  any?: boolean;
  /** Start this many seconds after the first machine joined. */
  waitS?: number;
  /** Start at this time (ISO 8601). */
  at?: string;
  now?: boolean;
}

/** POST /api/captures: read a machine's disk into the next version of an image. */
export interface CaptureRequest {
  machine: string;
  image: string;
  disk?: string;
  partitions?: number[];
  ignoreReadErrors?: boolean;
  force?: boolean;
  /** Read every byte, not only the blocks filesystems use. */
  raw?: boolean;
}

/** Progress of a capture as its agent reports it (POST /api/captures/ID/progress). */
export interface CaptureProgress {
  chunksDone: number;
  chunksTotal: number;
  bytesRead: number;
  /** Data chunks the server already had (not sent). */
  reused: number;
  /** Compressed bytes uploaded. */
  bytesSent: number;
}
