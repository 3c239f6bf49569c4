/** `clonecast bootenv build`: the kernel and initramfs machines network-boot. */
import { join } from 'node:path';
import { COMMON, type Command } from '../command.js';

/** clonecast bootenv build */
export const bootenvBuild: Command = {
  name: 'bootenv build',
  summary: 'Build the network-boot environment: a Linux kernel and an initramfs with Node and the agent.',
  usage: '',
  positionals: [],
  options: {
    out: { kind: 'string', value: 'DIR', help: 'Where to put it.', default: 'DATA/pxe/boot, where "serve --pxe" looks' },
    'kernel-deb': { kind: 'string', value: 'FILE', help: 'Take the kernel and its modules from this Debian linux-image package.', default: 'the cached package, else apt-get download' },
    ...COMMON,
  },
  interrupted: 'the boot environment is incomplete: run "clonecast bootenv build" again',
  async run(ctx) {
    const { buildBootEnv } = await import('../../pxe/bootenv.js');
    const outOpt = ctx.str('out');
    const outDir = outOpt ?? join(ctx.store().root, 'pxe', 'boot');
    const quiet = ctx.json;
    if (!quiet) console.error(`building the network-boot environment in ${outDir}`);
    const env = buildBootEnv({ out: outDir, kernelDeb: ctx.str('kernel-deb'), log: (m) => !quiet && console.error(`  ${m}`) });
    const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
    ctx.out(
      () =>
        console.log(`boot environment built in ${env.seconds.toFixed(1)} s
  kernel      ${env.kernel} (${env.kernelVersion}, ${mib(env.kernelBytes)})
  initramfs   ${env.initrd} (${mib(env.initrdBytes)} xz: busybox, node ${process.version}, the agent, ${env.modules.length} kernel modules)
  download    ${mib(env.kernelBytes + env.initrdBytes)} per machine (kernel + initramfs)
  inside      ${env.parts.map((p) => `${p.part} ${mib(p.bytes)}`).join(', ')} (uncompressed)
  secure boot ${env.secureBoot.ok ? `${env.secureBoot.shim}, ${env.secureBoot.grub} (Debian's signed shim and GRUB; kernel and ${env.secureBoot.modulesChecked} modules signed): serve --secure-boot` : `not collected: ${env.secureBoot.error}`}
  serve it:   clonecast serve --interface IF --pxe proxy|full${outOpt !== undefined ? ` --boot-dir ${outDir}` : ''}`),
      env,
    );
    return 0;
  },
};
