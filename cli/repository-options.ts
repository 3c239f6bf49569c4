/**
 * The options every repository command shares (--repository, --endpoint,
 * --region) and opening the repository they name. Credentials are never
 * options: they come from the environment or ~/.aws/credentials.
 */
import type { OptionSpec } from './args.js';
import type { Context } from './command.js';
import { ClonecastError, ERR } from '../protocol/errors.js';
import type { Repository } from '../server/repo/repository.js';

/** --repository, --endpoint, --region. */
export const REPOSITORY: Record<string, OptionSpec> = {
  repository: { kind: 'string', value: 's3://BUCKET[/PREFIX]', help: 'The image repository.', default: "$CLONECAST_REPOSITORY, else the one the store caches" },
  endpoint: { kind: 'string', value: 'URL', help: 'The S3 server (https://HOST[:PORT]; http:// only on a trusted network).', default: '$AWS_ENDPOINT_URL_S3, else $AWS_ENDPOINT_URL, else where the store\'s own repository was last reached, else AWS' },
  region: { kind: 'string', value: 'REGION', help: 'The S3 region.', default: '$AWS_REGION, else us-east-1' },
  'ca-bundle': { kind: 'string', value: 'PEM', help: 'Trust this CA for an https:// endpoint whose certificate a private CA signed.', default: '$AWS_CA_BUNDLE, else the system\'s CAs' },
};

/** What the repository commands say about credentials in --help. */
export const CREDENTIALS_HELP = 'Credentials come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), or from ~/.aws/credentials (AWS_PROFILE picks a profile); they are never printed.';

/** Opens the repository the options name (with create, an empty prefix becomes one). */
export async function openRepository(ctx: Context, create = false): Promise<Repository> {
  const { cleartextWarning, parseRepository } = await import('../server/repo/s3.js');
  const { Repository } = await import('../server/repo/repository.js');
  const bound = boundRepository(ctx);
  const url = ctx.str('repository') ?? process.env.CLONECAST_REPOSITORY ?? bound?.address;
  if (url === undefined) throw ctx.usage('which repository? give --repository s3://BUCKET/PREFIX (or set CLONECAST_REPOSITORY)');
  const target = parseRepository(url, endpointFor(ctx, url, bound), ctx.str('region'), ctx.str('ca-bundle'));
  const warning = cleartextWarning(target);
  if (warning !== null) process.stderr.write(`warning: ${warning}\n`);
  return Repository.open(target, { create });
}

/**
 * The endpoint to use for url: --endpoint; else, for the store's own
 * repository and with no AWS_ENDPOINT_URL(_S3) set, where it was last reached;
 * else undefined (parseRepository then takes the environment's or AWS).
 */
export function endpointFor(ctx: Context, url: string, bound: { address: string; endpoint?: string } | undefined): string | undefined {
  const given = ctx.str('endpoint');
  if (given !== undefined) return given;
  return url === bound?.address && !process.env.AWS_ENDPOINT_URL_S3 && !process.env.AWS_ENDPOINT_URL ? bound.endpoint : undefined;
}

/** The repository the store caches and where it was last reached, if it is an edge's. */
export function boundRepository(ctx: Context): { address: string; endpoint?: string } | undefined {
  try {
    const store = ctx.store();
    const address = store.repository();
    return address === undefined ? undefined : { address, endpoint: store.repositoryEndpoint() };
  } catch (err) {
    if (err instanceof ClonecastError && err.code !== ERR.USAGE) throw err;
    return undefined;
  }
}
