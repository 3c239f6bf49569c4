/** `clonecast lab up|status|down|demo`: the network-namespace lab (root). */
import { join } from 'node:path';
import { projectRoot } from '../../native/addon.js';
import { COMMON, type Command } from '../command.js';
import { emitJson } from '../output.js';

const lab = () => import('../../server/lab/cli.js');
const cliPath = () => join(projectRoot(), 'bin', 'clonecast');
const PORT = { port: { kind: 'port', value: 'P', help: 'The host port that forwards to the lab\'s server (dashboard and API).', default: '8080' } } as const;

/** clonecast lab up */
export const labUp: Command = {
  name: 'lab up',
  summary: 'Build the lab (root): a server namespace and N machines with agents on loop devices, or PXE-booted VMs.',
  usage: '--clients N',
  positionals: [],
  options: {
    clients: { kind: 'positive', value: 'N', help: 'How many machines.', default: '4' },
    loss: { kind: 'number', value: 'PCT', help: 'Packet loss on each machine\'s link, in percent (netem).' },
    rate: { kind: 'positive', value: 'MBIT', help: 'Each machine\'s link rate in Mbit/s (netem).' },
    delay: { kind: 'number', value: 'MS', help: 'Delay on each machine\'s link in milliseconds (netem).' },
    vms: { kind: 'flag', help: 'Machines are qemu VMs that network-boot from the server instead of agents on loop devices.' },
    ...PORT,
    ...COMMON,
  },
  interrupted: 'the lab may be half built: remove it with "clonecast lab down"',
  async run(ctx) {
    const l = await lab();
    const cli = cliPath();
    const state = await l.labUp({
      clients: ctx.num('clients') ?? 4,
      lossPct: ctx.num('loss'),
      rateMbit: ctx.num('rate'),
      delayMs: ctx.num('delay'),
      vms: ctx.flag('vms'),
      data: ctx.str('data'),
      port: ctx.num('port'),
      cli,
      log: (m) => !ctx.json && console.error(m),
    });
    if (ctx.json) emitJson(state);
    else {
      console.log(`lab up: server 10.77.0.1 in namespace cclabs, ${state.clients} ${state.vms ? 'VMs network-booting from it' : 'agents on loop devices'} (${state.machines.map((m) => `${m.name} ${m.disk}`).join(', ')})
  dashboard:  ${state.dashboard}  (log in with the token below; the browser warns about the certificate: its fingerprint must be ${state.fingerprint})
  token:      ${state.token}
  image store: ${state.data}   (import into it with: clonecast image import SRC NAME --data ${state.data})
  deploy:     CLONECAST_TOKEN=${state.token} CLONECAST_FINGERPRINT=${state.fingerprint} ip netns exec cclabs ${cli} deploy NAME --server ${state.serverUrl} --any --clients ${state.clients}
  logs:       ${l.LAB_DIR}/*.log
  status:     clonecast lab status;  remove it all: clonecast lab down`);
    }
    return 0;
  },
};

/** clonecast lab status */
export const labStatus: Command = {
  name: 'lab status',
  summary: 'Show the lab: its namespaces, processes and machines.',
  usage: '',
  positionals: [],
  options: { ...PORT, ...COMMON },
  interrupted: 'nothing changed (it only reads)',
  async run(ctx) {
    const st = await (await lab()).labStatus(ctx.num('port'));
    if (ctx.json) emitJson(st);
    else if (st.state === undefined) console.log('no lab is up ("clonecast lab up --clients N")');
    else {
      const { safeText } = await import('../output.js');
      console.log(`lab since ${st.state.createdAt}: ${st.namespaces.length}/${st.state.namespaces.length} namespaces, ${st.alive.length}/${st.state.pids.length} processes running`);
      console.log(`  dashboard: ${st.state.dashboard}`);
      if (st.machines === null) console.log(`  the server does not answer through the forwarder${st.error !== undefined ? ` (${st.error})` : ''}`);
      else
        for (const m of st.machines as { id: string; address: string; online: boolean; state: string; lastImage: { name: string; version: number } | null }[]) {
          console.log(`  ${safeText(m.id)}  ${safeText(m.address).padEnd(12)} ${(m.online ? safeText(m.state) : 'offline').padEnd(10)} ${m.lastImage ? `${safeText(m.lastImage.name)}@${m.lastImage.version}` : '-'}`);
        }
    }
    return 0;
  },
};

/** clonecast lab down */
export const labDown: Command = {
  name: 'lab down',
  summary: 'Remove the lab: its namespaces, processes, loop devices and disks.',
  usage: '',
  positionals: [],
  options: { ...COMMON },
  interrupted: 'the lab may be half removed: run "clonecast lab down" again',
  async run(ctx) {
    const r = (await lab()).labDown();
    ctx.out(() => console.log(r.removed ? `lab removed: ${r.namespaces.join(', ')}, its processes, loop devices and disks` : 'no lab was up'), r);
    return 0;
  },
};

/** clonecast lab demo */
export const labDemo: Command = {
  name: 'lab demo',
  summary: 'A 4-machine walkthrough in the lab: build it, import an image, deploy it live, check every disk, remove it.',
  usage: '',
  positionals: [],
  options: { ...PORT, ...COMMON },
  interrupted: 'the lab may still be up: remove it with "clonecast lab down"',
  async run(ctx) {
    const { labDemo: demo } = await import('../../server/lab/demo.js');
    return (await demo(cliPath(), (l) => console.log(l), ctx.num('port'))) ? 0 : 1;
  },
};

/** clonecast lab forward PORT: the lab's own port forwarder (started by lab up). */
export const labForward: Command = {
  name: 'lab forward',
  summary: 'Forward a host port to the lab\'s server (lab up starts it).',
  usage: '[PORT]',
  positionals: [{ name: 'PORT', optional: true }],
  options: { ...COMMON },
  hidden: true,
  interrupted: 'the forwarder stops',
  async run(ctx) {
    const port = ctx.positionals[0] === undefined ? 8080 : Number(ctx.positionals[0]);
    if (!Number.isSafeInteger(port) || port <= 0 || port > 65535) throw ctx.usage(`PORT is a port number; got "${ctx.positionals[0]}"`);
    (await lab()).forward(port);
    await new Promise(() => {});
    return 0;
  },
};
