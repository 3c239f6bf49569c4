/** `clonecast agent`: the target-side program (normally started by the boot environment). */
import { COMMON, logLine, SERVER, version, type Command } from '../command.js';
import { emitJson } from '../output.js';
import { clientFingerprint } from '../api.js';
import { dataDir } from '../../server/store/store.js';

/** Exit codes of agent --once --power-exit (main's EXIT has the same values). */
const AFTER_REBOOT = 10;
const AFTER_POWEROFF = 11;

/** clonecast agent */
export const agent: Command = {
  name: 'agent',
  summary: 'Run the agent on a machine to be imaged: it connects to the server, reports its disks and receives deploys.',
  usage: '',
  positionals: [],
  options: {
    disk: { kind: 'string', value: 'PATH|auto', help: 'The one disk this agent may write, or auto (every disk; the session\'s target rule chooses).', default: 'auto' },
    once: { kind: 'flag', help: 'Exit after one session (exit 0 if it finished and verified).' },
    'no-verify': { kind: 'flag', help: 'Do not read chunks back after writing them, whatever the session says.' },
    'final-verify': { kind: 'flag', help: 'Also read the whole disk back once more at the end, whatever the session says.' },
    'allow-power': { kind: 'flag', help: 'Really reboot or power off when the session says so; without it the agent only says it would.' },
    'power-exit': { kind: 'flag', help: 'With --once: leave the reboot or power-off to the caller, exiting 10 (reboot) or 11 (power off).' },
    'machine-id': { kind: 'string', value: 'MAC', help: 'Use this MAC as the machine\'s id instead of its first Ethernet interface\'s.' },
    unicast: { kind: 'flag', help: 'Ask for data by unicast from the start (multicast cannot reach this machine); otherwise automatic.' },
    'secret-file': { kind: 'string', value: 'PATH', help: 'Keep this machine\'s own secret here (the boot environment); with it the agent may start without a token (the server lists it as unverified) or with a boot credential, and uses the secret once the server has given one.' },
    'write-limit': { kind: 'positive', value: 'BYTES/S', help: 'Emulate a slow disk (tests and demos).' },
    ...SERVER,
    ...COMMON,
  },
  interrupted: 'the agent disconnects and the server shows the machine offline; a disk it was writing is incomplete until the machine is deployed again',
  async run(ctx) {
    const secretFile = ctx.str('secret-file');
    let client: { server: string; token: string; fingerprint: string };
    try {
      client = ctx.client();
    } catch (err) {
      // A network-booted machine no session names has no credential: it connects unverified, keeping the secret it is given.
      if (secretFile === undefined) throw err;
      const server = ctx.str('server') ?? process.env.CLONECAST_SERVER ?? '';
      if (server === '') throw ctx.usage('--server URL is needed');
      client = { server, token: '', fingerprint: clientFingerprint({ flag: ctx.str('fingerprint'), dataRoot: dataDir(ctx.str('data')) }) };
    }
    const { Agent } = await import('../../agent/agent.js');
    const a = new Agent({
      server: client.server,
      fingerprint: client.fingerprint,
      token: client.token,
      secretFile,
      disk: ctx.str('disk'),
      machineId: ctx.str('machine-id'),
      once: ctx.flag('once'),
      verify: ctx.flag('no-verify') ? false : undefined,
      finalVerify: ctx.flag('final-verify') ? true : undefined,
      allowPower: ctx.flag('allow-power'),
      powerExit: ctx.flag('power-exit'),
      unicast: ctx.flag('unicast'),
      writeLimit: ctx.num('write-limit'),
      version: version(),
      log: logLine,
    });
    ctx.onInterrupt(() => a.stop());
    process.once('SIGTERM', () => a.stop());
    const result = await a.run();
    const { MachineState, After } = await import('../../protocol/control.js');
    if (ctx.json) emitJson(result === undefined ? null : { ...result, diskDigest: Buffer.from(result.diskDigest ?? []).toString('hex'), state: MachineState[result.state ?? 0] });
    if (!ctx.flag('once')) return 0;
    if (result?.state !== MachineState.STATE_DONE) return 1;
    // --power-exit: the caller (the boot environment's init) reboots or powers off.
    if (ctx.flag('power-exit') && a.afterAction === After.AFTER_REBOOT) return AFTER_REBOOT;
    if (ctx.flag('power-exit') && a.afterAction === After.AFTER_POWEROFF) return AFTER_POWEROFF;
    return 0;
  },
};
