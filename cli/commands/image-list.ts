/** `clonecast image list`: every image in the store with its latest version. */
import { COMMON, type Command } from '../command.js';
import { printList } from '../output.js';

/** clonecast image list */
export const imageList: Command = {
  name: 'image list',
  summary: 'List the images in the store: versions, size, stored size, latest version.',
  usage: '',
  positionals: [],
  options: { ...COMMON },
  interrupted: 'nothing changed (it only reads)',
  async run(ctx) {
    const { listImages } = await import('../../server/store/maintenance.js');
    const store = ctx.store();
    const list = await listImages(store);
    ctx.out(() => printList(list, store.root), list);
    return 0;
  },
};
