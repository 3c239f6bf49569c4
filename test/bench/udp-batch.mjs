// CPU per packet of the engine's two UDP paths over loopback, in one run:
// node:dgram (one send, one 'message' event and one MAC call per datagram; the
// baseline) against the addon's batched socket (transfer/batch-socket.ts:
// sendmmsg with UDP GSO, recvmmsg, MACs signed and checked per batch).
// No root needed.
//
//   node test/bench/udp-batch.mjs [--packets 200000] [--rounds 3]
//
// The sender sends 1472-byte datagrams signed as DATA packets in ticks of 64 at
// most every millisecond (~90 MB/s); the receiver (a child process) checks every
// MAC. Each prints its own CPU time (process.cpuUsage); figures are µs per
// datagram received, medians of the rounds, batched/dgram as a ratio.
import { fork } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { parseArgs } from 'node:util';
import { native } from '../../dist/native/addon.js';
import { MacKey } from '../../dist/protocol/mac.js';
import { BatchSocket, ipv4ToNumber, listen } from '../../dist/transfer/batch-socket.js';

const SIZE = 1472;
const TICK = 64;
const KEY = Buffer.alloc(32, 5);
const { values } = parseArgs({ options: { packets: { type: 'string', default: '200000' }, rounds: { type: 'string', default: '3' }, child: { type: 'string' } } });

function packet(buf, seq) {
  buf.writeUInt32BE(0x43434d43, 0);
  buf[4] = 2;
  buf[5] = 1; // DATA
  buf.writeUInt32BE(seq >>> 0, 12);
}

if (values.child !== undefined) {
  // Receiver: counts datagrams whose MAC is good; reports when the sender says it is done.
  const mode = values.child;
  const mac = new MacKey(KEY);
  let good = 0;
  let bad = 0;
  const socket = mode === 'dgram' ? createSocket({ type: 'udp4', reuseAddr: true }) : new BatchSocket(native());
  const start = process.cpuUsage();
  listen(socket, (msg, _rinfo, checked) => {
    if (checked || mac.verify(msg)) good++;
    else bad++;
  }, { key: KEY, types: [1] }, () => bad++);
  socket.bind(0, '127.0.0.1', () => {
    socket.setRecvBufferSize(4 << 20);
    process.send({ port: socket.address().port });
  });
  process.on('message', () => {
    // The sender is done: let the queue drain, then report.
    setTimeout(() => {
      const cpu = process.cpuUsage(start);
      process.send({ good, bad, cpuUs: cpu.user + cpu.system });
      socket.close();
      process.disconnect();
    }, 300);
  });
} else {
  const rounds = Number(values.rounds);
  const total = Number(values.packets);
  const results = { dgram: [], batch: [] };
  for (let r = 0; r < rounds; r++) {
    for (const mode of r % 2 === 0 ? ['dgram', 'batch'] : ['batch', 'dgram']) {
      const child = fork(import.meta.filename, ['--child', mode]);
      const { port } = await new Promise((res) => child.once('message', res));
      const mac = new MacKey(KEY);
      const start = process.cpuUsage();
      if (mode === 'dgram') {
        const s = createSocket({ type: 'udp4', reuseAddr: true });
        await new Promise((res) => s.bind(0, '127.0.0.1', res));
        s.setSendBufferSize(4 << 20);
        for (let sent = 0; sent < total;) {
          for (let k = 0; k < TICK && sent < total; k++, sent++) {
            const p = Buffer.allocUnsafe(SIZE);
            packet(p, sent);
            mac.sign(p);
            s.send(p, port, '127.0.0.1');
          }
          await new Promise((res) => setTimeout(res, 1));
        }
        await new Promise((res) => setTimeout(res, 50));
        s.close();
      } else {
        const s = new BatchSocket(native());
        await new Promise((res) => s.bind(0, '127.0.0.1', res));
        s.setSendBufferSize(4 << 20);
        const ring = Buffer.allocUnsafe(SIZE * TICK);
        const meta = new Uint32Array(4 * TICK);
        const ip = ipv4ToNumber('127.0.0.1');
        for (let sent = 0; sent < total;) {
          let n = 0;
          for (; n < TICK && sent < total; n++, sent++) {
            packet(ring.subarray(n * SIZE), sent);
            meta[4 * n] = n * SIZE;
            meta[4 * n + 1] = SIZE;
            meta[4 * n + 2] = ip;
            meta[4 * n + 3] = port;
          }
          s.sendBatch(ring, meta, n, KEY);
          await new Promise((res) => setTimeout(res, 1));
        }
        s.close();
      }
      const cpu = process.cpuUsage(start);
      child.send('done');
      const got = await new Promise((res) => child.once('message', res));
      if (got.bad > 0) throw new Error(`${mode}: ${got.bad} datagrams failed their MAC`);
      const x = { received: got.good, sendUs: (cpu.user + cpu.system) / total, recvUs: got.cpuUs / Math.max(1, got.good) };
      results[mode].push(x);
      console.log(`  round ${r + 1} ${mode.padEnd(5)} received ${x.received}/${total}  sender ${x.sendUs.toFixed(2)} µs/packet  receiver ${x.recvUs.toFixed(2)} µs/packet`);
    }
  }
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const m = (mode, k) => median(results[mode].map((x) => x[k]));
  console.log(`loopback, ${total} datagrams of ${SIZE} bytes, MACs on, medians of ${rounds} rounds:`);
  console.log(`  node:dgram (baseline)  sender ${m('dgram', 'sendUs').toFixed(2)} µs/packet, receiver ${m('dgram', 'recvUs').toFixed(2)} µs/packet`);
  console.log(`  batched socket         sender ${m('batch', 'sendUs').toFixed(2)} µs/packet, receiver ${m('batch', 'recvUs').toFixed(2)} µs/packet`);
  console.log(`  batched/dgram: sender ${(m('batch', 'sendUs') / m('dgram', 'sendUs')).toFixed(2)}, receiver ${(m('batch', 'recvUs') / m('dgram', 'recvUs')).toFixed(2)}`);
}
