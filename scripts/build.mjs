// npm run build: generates the control-channel code from
// protocol/control.proto with protobufjs-cli (static ES module + .d.ts, in
// protocol/generated/, not committed), compiles the TypeScript, and puts the
// generated module beside the compiled code in dist/.
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const bin = (name) => join(root, 'node_modules', '.bin', name);

function run(cmd, args) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: 'inherit' });
  if (r.status !== 0) {
    console.error(`clonecast build: ${cmd} ${args.join(' ')} failed (exit ${r.status ?? r.signal}); run npm ci to install the build tools`);
    process.exit(1);
  }
}

mkdirSync(join(root, 'protocol', 'generated'), { recursive: true });
run(bin('pbjs'), [
  '-t', 'static-module', '-w', 'es6', '--force-number',
  '--no-verify', '--no-convert', '--no-delimited', '--no-comments',
  '-o', 'protocol/generated/control.js', 'protocol/control.proto',
]);
// pbts needs the comments to name the types; generate them from a commented copy.
run(bin('pbjs'), ['-t', 'static-module', '-w', 'es6', '--force-number', '--no-verify', '--no-convert', '--no-delimited', '-o', 'protocol/generated/control.full.js', 'protocol/control.proto']);
run(bin('pbts'), ['--no-comments', '-o', 'protocol/generated/control.d.ts', 'protocol/generated/control.full.js']);
rmSync(join(root, 'protocol', 'generated', 'control.full.js'));
run(bin('tsc'), ['-p', 'tsconfig.json']);
mkdirSync(join(root, 'dist', 'protocol', 'generated'), { recursive: true });
copyFileSync(join(root, 'protocol', 'generated', 'control.js'), join(root, 'dist', 'protocol', 'generated', 'control.js'));
