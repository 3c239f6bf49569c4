/** `clonecast image info NAME[@V]`: one version's details. */
import { parseRef } from '../../server/store/store.js';
import { COMMON, type Command } from '../command.js';
import { printInfo } from '../output.js';

/** clonecast image info */
export const imageInfo: Command = {
  name: 'image info',
  summary: 'Show one version: sizes, chunks, ratios, partitions and unreadable ranges.',
  usage: 'NAME[@V]',
  positionals: [{ name: 'NAME[@V]' }],
  options: { ...COMMON },
  details: ['V is a version number, or a date for the latest version at or before it; NAME alone is the latest version.'],
  interrupted: 'nothing changed (it only reads)',
  async run(ctx) {
    const { describe } = await import('../../server/store/maintenance.js');
    const store = ctx.store();
    const { name, version } = store.resolve(parseRef(ctx.positionals[0]));
    const info = describe(await store.readManifest(name, version));
    ctx.out(() => printInfo(info), info);
    return 0;
  },
};
