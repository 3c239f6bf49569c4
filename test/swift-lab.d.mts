/** Types of test/swift-lab.mjs: the tests' real S3 server (Swift with s3api). */
export declare const SWIFT_ACCESS_KEY: string;
export declare const SWIFT_SECRET_KEY: string;
export declare const SWIFT_REGION: string;
export declare const DEFAULT_START_TIMEOUT_MS: number;

/** Options of startSwift(). */
export interface SwiftOptions {
  dir: string;
  spawnPrefix?: string[];
  bindIp?: string;
  port?: number;
  tls?: { cert: string; key: string };
  bucket?: string;
  timeoutMs?: number;
}

/** A running single-node Swift. */
export interface SwiftLab {
  endpoint: string;
  accessKey: string;
  secretKey: string;
  region: string;
  s3cmdConfig: string;
  killProxy(): Promise<void>;
  startProxy(): Promise<void>;
  stop(): Promise<void>;
  readonly pids: number[];
  output(): string;
}

/** Starts Swift in opts.dir and waits until its proxy answers (and opts.bucket exists). */
export declare function startSwift(opts: SwiftOptions): Promise<SwiftLab>;
