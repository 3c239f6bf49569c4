/** `clonecast repository list|gc`: what an image repository holds, and freeing its unused chunks. */
import { COMMON, type Command } from '../command.js';
import { CREDENTIALS_HELP, openRepository, REPOSITORY } from '../repository-options.js';

/** clonecast repository list */
export const repositoryList: Command = {
  name: 'repository list',
  summary: 'List the images in the image repository (S3) and their versions.',
  usage: '',
  positionals: [],
  options: { ...REPOSITORY, ...COMMON },
  details: [CREDENTIALS_HELP],
  interrupted: 'nothing changed (it only reads)',
  async run(ctx) {
    const repo = await openRepository(ctx);
    try {
      const catalogue = await repo.catalogue();
      const images = [...catalogue.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([name, versions]) => ({ name, versions }));
      ctx.out(() => {
        if (images.length === 0) console.log(`${repo.where} holds no images; "clonecast image push NAME" publishes one`);
        else {
          console.log(`${'IMAGE'.padEnd(24)} ${'LATEST'.padEnd(7)} VERSIONS`);
          for (const i of images) console.log(`${i.name.padEnd(24)} ${String(i.versions[i.versions.length - 1]).padEnd(7)} ${i.versions.join(', ')}`);
        }
      }, { repository: repo.where, images });
      return 0;
    } finally {
      repo.close();
    }
  },
};

/** clonecast repository gc */
export const repositoryGc: Command = {
  name: 'repository gc',
  summary: 'Remove the chunks no version in the image repository uses, older than a grace period.',
  usage: '',
  positionals: [],
  options: {
    'grace-minutes': { kind: 'number', value: 'M', help: 'Keep unused chunks younger than this (by the S3 server\'s clock): a writer that lost touch may still publish them.', default: '60' },
    'wait-minutes': { kind: 'number', value: 'M', help: 'Wait this long for running pushes and edge captures to finish before giving up.', default: '10' },
    'dry-run': { kind: 'flag', help: 'Count what would be removed and remove nothing.' },
    ...REPOSITORY,
    ...COMMON,
  },
  details: [
    'It never deletes while anyone writes to the repository: pushes and edge captures wait for it, and it waits for them.',
    'It refuses to run if any version\'s manifest cannot be read (its chunks would look unused).',
    CREDENTIALS_HELP,
  ],
  interrupted: 'chunks removed so far stay removed; every version is still whole; run gc again to finish',
  async run(ctx) {
    const { collectRepository } = await import('../../server/repo/gc.js');
    const grace = ctx.num('grace-minutes') ?? 60;
    const wait = ctx.num('wait-minutes') ?? 10;
    if (grace < 0 || wait < 0) throw ctx.usage('--grace-minutes and --wait-minutes cannot be negative');
    const repo = await openRepository(ctx);
    try {
      const r = await collectRepository(repo, { graceMs: grace * 60_000, waitMs: wait * 60_000, dryRun: ctx.flag('dry-run'), onWait: (why) => process.stderr.write(`${why}\n`) });
      ctx.out(() => {
        console.log(`${repo.where}: ${r.versions} versions use ${r.referenced} of ${r.chunks} chunks`);
        console.log(`${r.dryRun ? 'would remove' : 'removed'} ${r.removed} unused chunks (${r.removedBytes} bytes); kept ${r.young} unused chunks younger than ${grace} minutes${r.staleClaims ? `; ${r.dryRun ? 'would remove' : 'removed'} ${r.staleClaims} abandoned version claims` : ''}`);
      }, { repository: repo.where, ...r });
      return 0;
    } finally {
      repo.close();
    }
  },
};

/** clonecast repository rm */
export const repositoryRm: Command = {
  name: 'repository rm',
  summary: 'Remove one version (NAME@V, the number is required) from the image repository.',
  usage: 'NAME@V',
  positionals: [{ name: 'NAME@V' }],
  options: {
    'dry-run': { kind: 'flag', help: 'Say what would be removed and remove nothing.' },
    ...REPOSITORY,
    ...COMMON,
  },
  details: ['Its number is never given to another version. Edges that cached the version keep their copy until their own "image rm"; its chunks leave the repository at the next "repository gc" once no version uses them.', CREDENTIALS_HELP],
  interrupted: 'the version is either still there or removed; run the rm again to be sure',
  async run(ctx) {
    const { parseRef } = await import('../../server/store/store.js');
    const ref = parseRef(ctx.positionals[0]);
    if (ref.version === undefined) throw ctx.usage(`give the version to remove as NAME@N (e.g. ${ref.name}@2): a repository version is never removed by name alone`);
    const repo = await openRepository(ctx);
    try {
      const { name, version } = await repo.resolve(ref);
      if (!ctx.flag('dry-run')) await repo.removeVersion(name, version);
      ctx.out(() => console.log(ctx.flag('dry-run') ? `would remove ${name}@${version} from ${repo.where}; nothing was removed` : `removed ${name}@${version} from ${repo.where}; "clonecast repository gc" frees the chunks no version uses`), { repository: repo.where, name, version, dryRun: ctx.flag('dry-run') });
      return 0;
    } finally {
      repo.close();
    }
  },
};
