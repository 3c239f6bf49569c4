// Builds the native addon with node-gyp against the running Node's own
// headers, so that `npm ci` needs no header download.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

/** The directory whose include/node holds the running Node's headers. */
function nodeDir() {
  const candidates = [
    process.env.npm_config_nodedir,
    resolve(dirname(process.execPath), '..'),
    '/usr',
    '/usr/local',
  ].filter(Boolean);
  for (const dir of candidates) {
    if (existsSync(join(dir, 'include', 'node', 'node_api.h')) && existsSync(join(dir, 'include', 'node', 'common.gypi'))) {
      return dir;
    }
  }
  throw new Error(
    `clonecast: cannot find the running Node's headers (include/node/node_api.h) under ${candidates.join(', ')}; ` +
      'install the Node.js development headers that match this node (Debian: the nodejs package ships them) and run npm ci again',
  );
}

/** npm's bundled node-gyp, or one on the PATH. */
function nodeGyp() {
  const candidates = [
    process.env.npm_config_node_gyp,
    join(dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ].filter(Boolean);
  for (const file of candidates) if (existsSync(file)) return [process.execPath, file];
  return ['node-gyp'];
}

const [cmd, ...pre] = nodeGyp();
const args = [...pre, 'rebuild', `--nodedir=${nodeDir()}`, '--release'];
const result = spawnSync(cmd, args, { cwd: here, stdio: 'inherit', env: { ...process.env, npm_config_nodedir: nodeDir() } });
if (result.status !== 0) {
  console.error('clonecast: building the native addon failed (see the compiler output above); it needs python3, make and a C compiler');
  process.exit(result.status ?? 1);
}
