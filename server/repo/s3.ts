/**
 * The object store under an image repository: a bucket and a key prefix on
 * any S3-compatible server, reached with the AWS SDK v3 S3 client. This file
 * is the only one that knows the SDK: the repository above it sees head, get,
 * put, delete and list, and ClonecastErrors that never carry a credential.
 *
 * Credentials come from the environment (AWS_ACCESS_KEY_ID,
 * AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN) or the shared files
 * (~/.aws/credentials, AWS_PROFILE, AWS_SHARED_CREDENTIALS_FILE). The SDK's
 * default chain would also ask the cloud metadata service at a link-local
 * address: an edge server on a school LAN must not, so it is left out.
 */
import { DeleteObjectCommand, GetObjectCommand, HeadObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client, S3ServiceException } from '@aws-sdk/client-s3';
import { fromEnv } from '@aws-sdk/credential-provider-env';
import { fromIni } from '@aws-sdk/credential-provider-ini';
import { NodeHttpHandler } from '@smithy/node-http-handler';
import { readFileSync } from 'node:fs';
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import { ClonecastError, ERR } from '../../protocol/errors.js';

/** Where a repository lives: s3://BUCKET/PREFIX on ENDPOINT. */
export interface RepositoryTarget {
  bucket: string;
  /** Key prefix, '' or ending in '/'. */
  prefix: string;
  /** The S3 endpoint URL (http or https); undefined: AWS itself. */
  endpoint?: string;
  region: string;
  /** PEM file of the CA that signed the endpoint's certificate (a private CA), if not a public one. */
  caBundle?: string;
}

// The SDK warns on every run under Node 20 that releases after January 2027 will need Node 22;
// package-lock.json pins a release that supports Node 20, so the warning only confuses people.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

/** Requests in flight at once per repository (pull, push and read-through share them). */
export const DEFAULT_S3_CONCURRENCY = 16;
/** Attempts per request, with the SDK's exponential back-off and jitter between them. */
export const DEFAULT_S3_ATTEMPTS = 4;

const BUCKET_RE = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
const PREFIX_RE = /^([A-Za-z0-9._-]+\/)*$/;

/**
 * Parses "s3://BUCKET[/PREFIX]" and an endpoint URL. The prefix is limited to
 * plain path segments so that no key this program makes can reach outside it.
 */
export function parseRepository(url: string, endpoint?: string, region?: string, caBundle?: string): RepositoryTarget {
  const m = /^s3:\/\/([^/]+)(?:\/(.*))?$/.exec(url);
  if (m === null) throw new ClonecastError(ERR.USAGE, `"${url}" is not a repository address: write s3://BUCKET or s3://BUCKET/PREFIX (e.g. s3://images/district)`);
  const bucket = m[1];
  if (!BUCKET_RE.test(bucket) || bucket.includes('..')) throw new ClonecastError(ERR.USAGE, `"${bucket}" is not a valid bucket name: 3-63 lower-case letters, digits, '.' or '-'`);
  let prefix = (m[2] ?? '').replace(/\/*$/, '');
  prefix = prefix === '' ? '' : `${prefix}/`;
  if (!PREFIX_RE.test(prefix) || prefix.split('/').some((s) => s === '.' || s === '..')) {
    throw new ClonecastError(ERR.USAGE, `"${m[2]}" is not a valid repository prefix: use folders of letters, digits, '.', '_' or '-' separated by '/'`);
  }
  const ep = endpoint ?? process.env.AWS_ENDPOINT_URL_S3 ?? process.env.AWS_ENDPOINT_URL;
  if (ep !== undefined) {
    let u: URL;
    try {
      u = new URL(ep);
    } catch {
      // Not echoed: an unparsable URL may still carry a key or a secret.
      throw new ClonecastError(ERR.USAGE, 'the endpoint given is not a URL: write http(s)://HOST[:PORT]');
    }
    if ((u.protocol !== 'http:' && u.protocol !== 'https:') || u.username !== '' || u.password !== '' || (u.pathname !== '/' && u.pathname !== '') || u.search !== '') {
      const shown = `${u.protocol}//${u.username !== '' || u.password !== '' ? '…@' : ''}${u.host}${u.pathname !== '/' || u.search !== '' ? '/…' : ''}`;
      throw new ClonecastError(ERR.USAGE, `"${shown}" is not an endpoint URL: write http(s)://HOST[:PORT], with no path and no credentials in it (they come from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws/credentials)`);
    }
  }
  const ca = caBundle ?? (process.env.AWS_CA_BUNDLE || undefined);
  return { bucket, prefix, endpoint: ep, region: region ?? process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1', ...(ca !== undefined ? { caBundle: ca } : {}) };
}

/**
 * A warning when images would cross the network in clear: an http:// endpoint
 * that is not this host. SigV4 never sends the secret, but chunks and
 * manifests are the disks themselves.
 */
export function cleartextWarning(t: RepositoryTarget): string | null {
  if (t.endpoint === undefined) return null;
  const u = new URL(t.endpoint);
  if (u.protocol === 'https:' || ['localhost', '127.0.0.1', '[::1]'].includes(u.hostname)) return null;
  return `the repository's endpoint ${t.endpoint} is plain http: images cross the network in clear and a machine on the path could read them; use https:// (requests are signed, so the secret itself never travels)`;
}

/** The repository's canonical address, s3://BUCKET[/PREFIX] (what an edge's store records). */
export function repositoryAddress(t: RepositoryTarget): string {
  return `s3://${t.bucket}${t.prefix === '' ? '' : `/${t.prefix.slice(0, -1)}`}`;
}

/** How the repository is named to people: never with a credential. */
export function describeTarget(t: RepositoryTarget): string {
  return `${repositoryAddress(t)}${t.endpoint !== undefined ? ` at ${t.endpoint}` : ''}`;
}

/** One listed object. */
export interface ListedObject {
  key: string;
  size: number;
  lastModified: Date;
}

/** What head() learns of an object. */
export interface ObjectHead {
  size: number;
  lastModified: Date;
  /** User metadata (x-amz-meta-*), lower-case names. */
  meta: Record<string, string>;
}

/** A bucket and prefix, with keys given relative to the prefix. */
export class Bucket {
  private readonly client: S3Client;
  private readonly where: string;

  constructor(readonly target: RepositoryTarget, options: { concurrency?: number; attempts?: number; requestTimeoutMs?: number } = {}) {
    const sockets = options.concurrency ?? DEFAULT_S3_CONCURRENCY;
    this.where = describeTarget(target);
    this.client = new S3Client({
      region: target.region,
      endpoint: target.endpoint,
      forcePathStyle: target.endpoint !== undefined,
      credentials: credentialChain(),
      maxAttempts: options.attempts ?? DEFAULT_S3_ATTEMPTS,
      // Many S3-compatible servers reject the newer default CRC32 checksum headers; integrity is checked here by SHA-256.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      requestHandler: new NodeHttpHandler({
        connectionTimeout: 5_000,
        requestTimeout: options.requestTimeoutMs ?? 60_000,
        httpAgent: new HttpAgent({ keepAlive: true, maxSockets: sockets }),
        httpsAgent: new HttpsAgent({ keepAlive: true, maxSockets: sockets, ...(target.caBundle !== undefined ? { ca: readCaBundle(target.caBundle) } : {}) }),
      }),
    });
  }

  /** The object's size and time, or null if there is none. */
  async head(key: string): Promise<ObjectHead | null> {
    try {
      const r = await this.client.send(new HeadObjectCommand({ Bucket: this.target.bucket, Key: this.target.prefix + key }));
      return { size: r.ContentLength ?? 0, lastModified: r.LastModified ?? new Date(0), meta: r.Metadata ?? {} };
    } catch (err) {
      if (isNotFound(err)) return null;
      throw this.failure(err, `look for ${key}`);
    }
  }

  /** The object's bytes (or bytes [start, end) of it), or null if there is none; more than `limit` bytes is refused before they are all read. */
  async get(key: string, limit: number, range?: { start: number; end: number }): Promise<Buffer | null> {
    try {
      const r = await this.client.send(
        new GetObjectCommand({ Bucket: this.target.bucket, Key: this.target.prefix + key, Range: range === undefined ? undefined : `bytes=${range.start}-${range.end - 1}` }),
      );
      const tooLarge = () => new ClonecastError(ERR.TOO_LARGE, `${this.where}: ${key} is larger than the ${limit} bytes it can be; the repository holds something clonecast did not write there`);
      const body = r.Body as (AsyncIterable<Uint8Array> & { destroy?: () => void }) | undefined;
      if ((r.ContentLength ?? 0) > limit) {
        body?.destroy?.();
        throw tooLarge();
      }
      if (body === undefined) return Buffer.alloc(0);
      // Counted as it arrives: a response without a length (chunked) cannot make us buffer more than the limit.
      const parts: Buffer[] = [];
      let n = 0;
      for await (const part of body) {
        n += part.length;
        if (n > limit) {
          body.destroy?.();
          throw tooLarge();
        }
        parts.push(Buffer.from(part.buffer, part.byteOffset, part.byteLength));
      }
      return parts.length === 1 ? parts[0] : Buffer.concat(parts, n);
    } catch (err) {
      if (isNotFound(err)) return null;
      if (err instanceof ClonecastError) throw err;
      throw this.failure(err, `read ${key}`);
    }
  }

  /** Writes an object (whole: S3 makes it visible only complete). */
  async put(key: string, body: Uint8Array, contentType = 'application/octet-stream', meta?: Record<string, string>): Promise<void> {
    try {
      await this.client.send(new PutObjectCommand({ Bucket: this.target.bucket, Key: this.target.prefix + key, Body: body, ContentLength: body.length, ContentType: contentType, Metadata: meta }));
    } catch (err) {
      throw this.failure(err, `write ${key}`);
    }
  }

  /** Deletes an object (no error if it is already gone). */
  async delete(key: string): Promise<void> {
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.target.bucket, Key: this.target.prefix + key }));
    } catch (err) {
      if (isNotFound(err)) return;
      throw this.failure(err, `delete ${key}`);
    }
  }

  /** Every object under a key prefix (relative keys), page by page. */
  async *list(under: string): AsyncGenerator<ListedObject> {
    let token: string | undefined;
    do {
      let r;
      try {
        r = await this.client.send(new ListObjectsV2Command({ Bucket: this.target.bucket, Prefix: this.target.prefix + under, ContinuationToken: token }));
      } catch (err) {
        throw this.failure(err, `list ${under || 'the repository'}`);
      }
      for (const o of r.Contents ?? []) {
        if (o.Key === undefined || !o.Key.startsWith(this.target.prefix)) continue;
        yield { key: o.Key.slice(this.target.prefix.length), size: o.Size ?? 0, lastModified: o.LastModified ?? new Date(0) };
      }
      token = r.IsTruncated === true ? r.NextContinuationToken : undefined;
    } while (token !== undefined);
  }

  /** Closes the connections. */
  close(): void {
    this.client.destroy();
  }

  /** A ClonecastError for a failed request: what failed, why, what to do; never a credential or a signature. */
  private failure(err: unknown, doing: string): ClonecastError {
    const e = err as { name?: string; message?: string; code?: string; $metadata?: { httpStatusCode?: number } };
    const status = e.$metadata?.httpStatusCode;
    if (err instanceof S3ServiceException && (status === 403 || e.name === 'AccessDenied' || e.name === 'InvalidAccessKeyId' || e.name === 'SignatureDoesNotMatch')) {
      return new ClonecastError(ERR.REFUSED, `${this.where} refused to ${doing} (${e.name}): check the access key and secret (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or ~/.aws/credentials) and that they may use bucket ${this.target.bucket}`);
    }
    if (e.name === 'NoSuchBucket') return new ClonecastError(ERR.NOT_FOUND, `${this.where}: there is no bucket "${this.target.bucket}"; create it first (e.g. s3cmd mb s3://${this.target.bucket})`);
    if (e.name === 'CredentialsProviderError') return new ClonecastError(ERR.REFUSED, `no credentials for ${this.where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or write them in ~/.aws/credentials (AWS_PROFILE picks a profile)`);
    const why = redact(e.code ?? e.name ?? 'error') + (status !== undefined ? ` (HTTP ${status})` : '') + (e.message ? `: ${redact(e.message)}` : '');
    return new ClonecastError(ERR.UNREACHABLE, `cannot ${doing} in ${this.where}: ${why}; check that the repository is up and reachable, then try again`);
  }
}

/** The CA bundle's certificates; a clear error if it cannot be read. */
function readCaBundle(path: string): string {
  try {
    const pem = readFileSync(path, 'utf8');
    if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new Error('no PEM certificate in it');
    return pem;
  } catch (err) {
    throw new ClonecastError(ERR.USAGE, `cannot use ${path} as the repository's CA bundle: ${(err as Error).message}; give a PEM file of the CA that signed the S3 server's certificate`);
  }
}

/** Credentials from the environment, then the shared files; never from a metadata service. */
function credentialChain() {
  const env = fromEnv();
  const ini = fromIni({ profile: process.env.AWS_PROFILE });
  return async () => {
    let c;
    try {
      c = await env();
    } catch {
      c = await ini();
    }
    // Whatever their source, the secrets in use are cut out of any error text.
    for (const s of [c.secretAccessKey, c.sessionToken]) if (typeof s === 'string' && s.length >= 4) SECRETS.add(s);
    return c;
  };
}

/** The secrets the credential chain handed out, for redact(). */
const SECRETS = new Set<string>();

function isNotFound(err: unknown): boolean {
  const e = err as { name?: string; $metadata?: { httpStatusCode?: number } };
  if (e.name === 'NoSuchBucket') return false;
  return e.name === 'NotFound' || e.name === 'NoSuchKey' || e.$metadata?.httpStatusCode === 404;
}

/** Removes anything that looks like a signature or a key from an error text. */
function redact(text: string): string {
  let out = text.replace(/(Signature|Credential|X-Amz-Security-Token)=[^&\s,]+/gi, '$1=…');
  for (const secret of [process.env.AWS_SECRET_ACCESS_KEY, ...SECRETS]) if (secret !== undefined && secret.length >= 4) out = out.split(secret).join('…');
  return out.slice(0, 300);
}
