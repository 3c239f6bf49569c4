/** `clonecast image push`: publish a local version to the image repository. */
import { COMMON, type Command } from '../command.js';
import { CREDENTIALS_HELP, openRepository, REPOSITORY } from '../repository-options.js';
import { repoProgress } from '../repository-progress.js';

/** clonecast image push */
export const imagePush: Command = {
  name: 'image push',
  summary: 'Publish a version from the local store to the image repository (S3), as the next version there.',
  usage: 'NAME[@V]',
  positionals: [{ name: 'NAME[@V]' }],
  options: {
    repair: { kind: 'flag', help: 'Also read and check every chunk the repository already has, and replace damaged ones with the local copy.' },
    ...REPOSITORY,
    ...COMMON,
  },
  details: [
    'Only the chunks the repository lacks are uploaded (each is looked for first); the manifest is written last, so no reader ever sees a version with a missing chunk.',
    'Two servers pushing versions of the same image at once get different version numbers; a running repository gc makes the push wait until it ends.',
    'Pushing a version whose chunks equal the repository\'s latest version of that image publishes no new version, but uploads again any of its chunks the repository lost (with --repair, also those it holds damaged).',
    CREDENTIALS_HELP,
  ],
  interrupted: 'no version was published; chunks already uploaded are reused by the next push (or removed by "clonecast repository gc" after its grace period)',
  async run(ctx) {
    const { parseRef } = await import('../../server/store/store.js');
    const { push } = await import('../../server/repo/push.js');
    const store = ctx.store();
    const { name, version } = store.resolve(parseRef(ctx.positionals[0]));
    const repo = await openRepository(ctx, true);
    try {
      const { repositoryAddress } = await import('../../server/repo/s3.js');
      if (store.repository() === repositoryAddress(repo.bucket.target)) {
        throw ctx.usage(`${store.root} is the cache of ${repo.where}: its versions are already there (${name}@${version} is the repository's own)`);
      }
      const progress = repoProgress(ctx, `push ${name}@${version}`);
      const report = await push(repo, store, name, version, { onProgress: progress.update, onWait: (why) => process.stderr.write(`${why}\n`), repair: ctx.flag('repair') });
      progress.end();
      ctx.out(() => {
        if (report.alreadyThere) console.log(`${name}@${version} is already in ${repo.where} as ${name}@${report.version}; ${report.uploaded === 0 ? 'nothing was written' : `${report.uploaded} of its chunks were missing there or damaged and were uploaded again`}`);
        else console.log(`pushed ${name}@${version} to ${repo.where} as ${name}@${report.version}: ${report.uploaded} of ${report.chunks} chunks uploaded (${report.uploadedBytes} bytes), the rest were there`);
      }, { ...report, repository: repo.where });
      return 0;
    } finally {
      repo.close();
    }
  },
};
