/** `clonecast deploy NAME[@V]`: start a session on the server and follow it live. */
import { list } from '../args.js';
import { COMMON, SERVER, type Command, type Context } from '../command.js';
import type { DeployRequest, StartRule } from '../api.js';
import { emitJson } from '../output.js';

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;
/** Machine and group names, as the server accepts them. */
export const NAME_RE = /^[A-Za-z0-9._-]{1,64}$/;

/** Which machines and when, from the options; every mistake is found before the server is asked. */
export function startRule(ctx: Context): StartRule {
  const macs = list(ctx.str('machines'));
  const group = ctx.str('group');
  const any = ctx.flag('any');
  const chosen = [macs !== undefined, group !== undefined, any].filter(Boolean).length;
  if (chosen === 0) throw ctx.usage('say which machines take part: --machines MAC,..., --group NAME or --any');
  if (chosen > 1) throw ctx.usage('give only one of --machines, --group and --any');
  const rule: StartRule = {};
  if (macs !== undefined) {
    if (macs.length === 0) throw ctx.usage('--machines needs at least one MAC address');
    rule.machines = macs.map((m) => m.toLowerCase().replace(/-/g, ':'));
    const bad = rule.machines.find((m) => !MAC_RE.test(m));
    if (bad !== undefined) throw ctx.usage(`--machines takes MAC addresses such as 52:54:00:12:34:56; "${bad}" is not one`);
  }
  if (group !== undefined) {
    if (!NAME_RE.test(group)) throw ctx.usage(`--group takes a group name of 1-64 letters, digits, ".", "_" or "-"; got "${group}"`);
    rule.group = group;
  }
  if (any) rule.any = true;
  const at = ctx.str('at');
  if (at !== undefined && Number.isNaN(Date.parse(at))) throw ctx.usage(`--at takes a time such as 2026-11-22T08:00:00Z; got "${at}"`);
  rule.clients = ctx.num('clients');
  rule.waitS = ctx.num('wait');
  rule.at = at;
  if (ctx.flag('now')) rule.now = true;
  if (any && rule.clients === undefined && rule.waitS === undefined && rule.at === undefined && rule.now === undefined) {
    throw ctx.usage('with --any say when to start: --clients N (how many machines), --wait S, --at TIME or --now');
  }
  for (const k of Object.keys(rule) as (keyof StartRule)[]) if (rule[k] === undefined) delete rule[k];
  return rule;
}

/** clonecast deploy */
export const deploy: Command = {
  name: 'deploy',
  summary: 'Deploy an image version to the named machines by multicast and show each machine live until the session ends.',
  usage: 'NAME[@V] (--machines MAC,... | --group NAME | --any) [options]',
  positionals: [{ name: 'NAME[@V]' }],
  options: {
    machines: { kind: 'string', value: 'MAC,...', help: 'These machines take part (and only they); the session starts when all have joined.' },
    group: { kind: 'string', value: 'NAME', help: 'The machines of this group take part ("clonecast machines set MAC --groups G").' },
    any: { kind: 'flag', help: 'Any machine that comes takes part, up to --clients.' },
    clients: { kind: 'positive', value: 'N', help: 'Start once N machines have joined; with --any also the most that may join (with --machines or --group the rest join the running session).' },
    wait: { kind: 'number', value: 'S', help: 'Start S seconds after the first machine joined, with those that have.' },
    at: { kind: 'string', value: 'TIME', help: 'Start at this time (ISO 8601, e.g. 2026-11-22T08:00:00Z).' },
    now: { kind: 'flag', help: 'Start at once with the machines already waiting.' },
    rate: { kind: 'positive', value: 'MBIT', help: 'Target rate in Mbit/s (the sender backs off on loss).' },
    after: { kind: 'string', value: 'reboot|poweroff|wait', help: 'What each machine does when it has finished.', default: 'wait' },
    target: { kind: 'string', value: 'DEV|auto', help: 'The disk to write on each machine; auto picks the only disk that can be the target.', default: 'auto' },
    'no-verify': { kind: 'flag', help: 'Do not read chunks back after writing them (the disks are then not verified).' },
    'final-verify': { kind: 'flag', help: 'Also read each whole disk back once more at the end (each chunk is read back soon after its write anyway).' },
    discard: { kind: 'flag', help: 'Trim (discard) the areas no filesystem uses on each disk instead of leaving what they hold.' },
    'grow-last': { kind: 'flag', help: 'On a disk larger than the image, grow the last partition and its filesystem to the end of the disk (ext2/3/4, NTFS, XFS, btrfs).' },
    'drop-after': { kind: 'positive', value: 'S', help: 'Drop a machine that has made no progress for S seconds, so the others go on.' },
    encrypt: { kind: 'flag', help: 'Encrypt the image on the wire (AES-256-GCM per chunk), for images that hold secrets; costs CPU (docs/performance.md).' },
    'no-name-machines': { kind: 'flag', help: 'Do not write the machines\' registry names into the deployed systems (by default a machine with a name gets it in its Linux /etc/hostname and /etc/hosts and its Windows computer name, after its disk verified).' },
    wake: { kind: 'flag', help: 'Wake the machines the session names (--machines or --group) with Wake-on-LAN as soon as it exists.' },
    differential: { kind: 'flag', help: 'Have every machine check what its disk already holds and receive only the rest (automatic when the registry says the disk has a version of this image).' },
    ...SERVER,
    ...COMMON,
  },
  details: [
    'Exactly one of --machines, --group and --any says which machines take part; the start options say when (any one met starts it).',
    'The exit status is 0 if every machine finished and verified, 1 otherwise.',
  ],
  interrupted: 'if the server had created the session, it keeps running there; see it with "clonecast sessions" and cancel it with "clonecast sessions cancel ID"',
  async run(ctx) {
    const rule = startRule(ctx);
    const after = ctx.str('after') ?? 'wait';
    if (after !== 'wait' && after !== 'reboot' && after !== 'poweroff') throw ctx.usage(`--after takes reboot, poweroff or wait; got "${after}"`);
    const req: DeployRequest = {
      image: ctx.positionals[0],
      rule,
      rateMbit: ctx.num('rate'),
      after,
      target: ctx.str('target'),
      verify: !ctx.flag('no-verify'),
      finalVerify: ctx.flag('final-verify') ? true : undefined,
      discard: ctx.flag('discard') ? true : undefined,
      growLast: ctx.flag('grow-last') ? true : undefined,
      dropAfterS: ctx.num('drop-after'),
      differential: ctx.flag('differential') ? true : undefined,
      encrypt: ctx.flag('encrypt') ? true : undefined,
      wake: ctx.flag('wake') ? true : undefined,
      nameMachines: ctx.flag('no-name-machines') ? false : undefined,
    };
    if (req.wake === true && rule.any === true) throw ctx.usage('--wake needs the machines named (--machines or --group): with --any there is no list of machines to wake');
    const client = ctx.client();
    const { deploy: follow } = await import('../admin.js');
    const { ok, summary } = await follow(client, req, {
      json: ctx.json,
      stream: process.stderr,
      started: (s) =>
        ctx.setInterrupted(`session ${s.id} keeps running on the server; follow it again with "clonecast sessions" or cancel it with "clonecast sessions cancel ${s.id}"`),
    });
    if (ctx.json) emitJson(summary);
    return ok ? 0 : 1;
  },
};
