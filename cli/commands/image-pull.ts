/** `clonecast image pull`: prefetch a repository version into the local store (an edge's cache). */
import { COMMON, type Command } from '../command.js';
import { CREDENTIALS_HELP, openRepository, REPOSITORY } from '../repository-options.js';
import { repoProgress } from '../repository-progress.js';

/** clonecast image pull */
export const imagePull: Command = {
  name: 'image pull',
  summary: 'Fetch a version from the image repository into the local store, e.g. the night before a deploy.',
  usage: 'NAME[@V]',
  positionals: [{ name: 'NAME[@V]' }],
  options: { ...REPOSITORY, ...COMMON },
  details: [
    'Only the chunks the store lacks are fetched, each checked (SHA-256 against its name) before it is stored; the version appears in the store, under the repository\'s number, only once all of them are there.',
    'The store becomes the cache of that repository (an edge\'s store): it then takes no versions of its own; a store that has some is refused.',
    CREDENTIALS_HELP,
  ],
  interrupted: 'nothing was published; the chunks fetched so far are kept and the next pull skips them',
  async run(ctx) {
    const { parseRef } = await import('../../server/store/store.js');
    const { pull } = await import('../../server/repo/pull.js');
    const { repositoryAddress } = await import('../../server/repo/s3.js');
    const store = ctx.store();
    const ref = parseRef(ctx.positionals[0]);
    const repo = await openRepository(ctx);
    try {
      const progress = repoProgress(ctx, `pull ${ctx.positionals[0]}`);
      const report = await pull(repo, store, ref, { onProgress: progress.update, bind: { address: repositoryAddress(repo.bucket.target), endpoint: repo.bucket.target.endpoint, id: repo.id } });
      progress.end();
      ctx.out(() => {
        const what = `${report.name}@${report.version}`;
        if (report.fetched === 0) console.log(`${what} is cached in ${store.root}; nothing to fetch`);
        else console.log(`pulled ${what} from ${repo.where}: ${report.fetched} of ${report.chunks} chunks fetched (${report.fetchedBytes} bytes), the rest were cached`);
      }, { ...report, repository: repo.where });
      return 0;
    } finally {
      repo.close();
    }
  },
};
