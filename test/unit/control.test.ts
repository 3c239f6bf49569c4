/**
 * Control messages (protocol/control.ts): golden bytes for every message,
 * decoded four ways (our decoder, our encoder, round trip, and protobufjs's
 * reflection decoder reading control.proto at run time as an independent
 * check of the generated code), then malformed and random input.
 */
import { describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import protobuf from 'protobufjs';
import {
  CONTROL,
  decodeAgentMessage,
  decodeServerMessage,
  encodeAgentMessage,
  encodeServerMessage,
  MachineState,
  type AgentMessage,
  type ServerMessage,
  UNATTEND_MAX,
} from '../../protocol/control.js';
import { ClonecastError, ERR } from '../../protocol/errors.js';
import { ROOT } from '../helpers.js';

interface Golden {
  direction: 'agent' | 'server';
  type: string;
  message: Record<string, unknown>;
  hex: string;
}

const golden = JSON.parse(readFileSync(join(ROOT, 'test/fixtures/control/messages.json'), 'utf8')) as Golden[];
const root = protobuf.loadSync(join(ROOT, 'protocol/control.proto'));

/** Turns {hex} back into bytes, as the fixture writes bytes fields. */
function revive(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(revive);
  if (v !== null && typeof v === 'object') {
    if ('hex' in v && Object.keys(v).length === 1) return Buffer.from((v as { hex: string }).hex, 'hex');
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, revive(x)]));
  }
  return v;
}

/** Bytes fields compare as hex. */
function plain(v: unknown): unknown {
  return JSON.parse(JSON.stringify(v, (_k, x) => (x instanceof Uint8Array || (x && x.type === 'Buffer') ? Buffer.from(x.data ?? x).toString('hex') : x)));
}

function decode(g: Golden, bytes: Buffer): AgentMessage | ServerMessage {
  return g.direction === 'agent' ? decodeAgentMessage(bytes) : decodeServerMessage(bytes);
}

function expectMalformed(fn: () => unknown): void {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ClonecastError);
    expect((err as ClonecastError).code).toBe(ERR.CONTROL_MALFORMED);
    return;
  }
}

describe('control messages: golden bytes', () => {
  it('has a fixture for every message type of both directions', () => {
    const types = golden.map((g) => `${g.direction}:${g.type}`).sort();
    expect(types).toEqual(['agent:heartbeat', 'agent:hello', 'agent:progress', 'agent:result', 'server:assign', 'server:cancel', 'server:heartbeat', 'server:refuse', 'server:welcome'].sort());
  });

  for (const g of golden) {
    const bytes = Buffer.from(g.hex, 'hex');
    const message = revive(g.message) as Record<string, unknown>;

    it(`${g.direction} ${g.type}: decodes to the fixture's fields`, () => {
      const m = decode(g, bytes) as Record<string, unknown>;
      expect(m.type).toBe(g.type);
      expect(plain(m[g.type])).toMatchObject(plain(message) as object);
    });

    it(`${g.direction} ${g.type}: encodes to the fixture's bytes`, () => {
      const enc = g.direction === 'agent' ? encodeAgentMessage({ type: g.type, [g.type]: message } as AgentMessage) : encodeServerMessage({ type: g.type, [g.type]: message } as ServerMessage);
      expect(enc.toString('hex')).toBe(g.hex);
    });

    it(`${g.direction} ${g.type}: round-trips`, () => {
      const m = decode(g, bytes);
      const again = g.direction === 'agent' ? encodeAgentMessage(m as AgentMessage) : encodeServerMessage(m as ServerMessage);
      expect(again.toString('hex')).toBe(g.hex);
    });

    it(`${g.direction} ${g.type}: protobufjs reflection over control.proto reads the same fields`, () => {
      const type = root.lookupType(g.direction === 'agent' ? 'clonecast.AgentMessage' : 'clonecast.ServerMessage');
      const obj = type.toObject(type.decode(bytes), { longs: Number, bytes: String, defaults: true }) as Record<string, Record<string, unknown>>;
      const expected = plain(message) as Record<string, unknown>;
      const got = obj[g.type];
      for (const [k, v] of Object.entries(expected)) {
        const value = typeof v === 'string' && /^[0-9a-f]{64}$/.test(v) ? Buffer.from(got[k] as string, 'base64').toString('hex') : got[k];
        expect(plain(value), `${g.type}.${k}`).toEqual(v);
      }
    });

    it(`${g.direction} ${g.type}: every truncation is decoded or refused as malformed, never anything else`, () => {
      for (let n = 0; n < bytes.length; n++) expectMalformed(() => decode(g, bytes.subarray(0, n)));
    });
  }
});

describe('control messages: refused input', () => {
  const hello = golden.find((g) => g.type === 'hello')!;
  const helloMsg = revive(hello.message) as any;
  const refused = (m: AgentMessage, why: RegExp) => {
    expect(() => decodeAgentMessage(encodeAgentMessage(m))).toThrow(why);
  };

  it('a frame over the size limit', () => {
    const big = encodeAgentMessage({ type: 'hello', hello: { ...helloMsg, hostname: 'x'.repeat(200) } });
    expect(() => decodeAgentMessage(big, 100)).toThrow(/more than the limit of 100/);
  });

  it('a frame with no known message (an empty frame, or a type from a newer peer)', () => {
    expect(() => decodeAgentMessage(Buffer.alloc(0))).toThrow(/no known message/);
    // field 15, length-delimited, 1 byte: unknown to this version
    expect(() => decodeAgentMessage(Buffer.from([0x7a, 0x01, 0x00]))).toThrow(/no known message/);
    expect(() => decodeServerMessage(Buffer.from([0x7a, 0x01, 0x00]))).toThrow(/no known message/);
  });

  it('bytes that are not protobuf', () => {
    expect(() => decodeAgentMessage(Buffer.from('ffffffffffffffffffff', 'hex'))).toThrow(ClonecastError);
  });

  it('a machine id or MAC that is not a MAC', () => {
    refused({ type: 'hello', hello: { ...helloMsg, machineId: 'pc-12' } }, /machine id "pc-12" is not a lower-case MAC/);
    refused({ type: 'hello', hello: { ...helloMsg, macs: ['52:54:00:12:34:5'] } }, /is not a lower-case MAC/);
  });

  it('disk sizes and sector sizes that cannot be true', () => {
    refused({ type: 'hello', hello: { ...helloMsg, disks: [{ ...helloMsg.disks[0], size: 2 ** 60 }] } }, /size .* is not a byte count/);
    refused({ type: 'hello', hello: { ...helloMsg, disks: [{ ...helloMsg.disks[0], logicalSector: 1000 }] } }, /not a sector size/);
    refused({ type: 'hello', hello: { ...helloMsg, disks: [{ ...helloMsg.disks[0], device: 'sda' }] } }, /not an absolute path/);
    refused({ type: 'hello', hello: { ...helloMsg, disks: Array(CONTROL.MAX_DISKS + 1).fill(helloMsg.disks[0]) } }, /disks \(at most/);
  });

  it('progress beyond its total, loss outside 0-1, unknown states', () => {
    refused({ type: 'progress', progress: { sessionId: 1, state: MachineState.STATE_RECEIVING, chunksDone: 5, chunksTotal: 4 } }, /5 of 4 chunks/);
    refused({ type: 'progress', progress: { sessionId: 1, state: MachineState.STATE_RECEIVING, loss: 1.5 } }, /loss 1.5/);
    refused({ type: 'progress', progress: { sessionId: 1, state: 99 as MachineState } }, /state 99 is not known/);
  });

  it('a result that is not final, or a digest that is not SHA-256', () => {
    refused({ type: 'result', result: { sessionId: 1, state: MachineState.STATE_RECEIVING } }, /not a final state/);
    refused({ type: 'result', result: { sessionId: 1, state: MachineState.STATE_DONE, diskDigest: Buffer.alloc(16) } }, /digest of 16 bytes/);
  });

  it('an assignment without a receiver id (the server names every receiver)', () => {
    const assign = revive(golden.find((g) => g.type === 'assign')!.message) as any;
    expect(() => decodeServerMessage(encodeServerMessage({ type: 'assign', assign: { ...assign, receiverId: 0 } }))).toThrow(/receiver id 0/);
  });

  it('a result nonce that is not 16 bytes, secrets that are not hex; a Confirm round-trips', () => {
    const assign = revive(golden.find((g) => g.type === 'assign')!.message) as any;
    expect(() => decodeServerMessage(encodeServerMessage({ type: 'assign', assign: { ...assign, nonce: Buffer.alloc(8) } }))).toThrow(/nonce of 8 bytes/);
    expect(decodeServerMessage(encodeServerMessage({ type: 'assign', assign: { ...assign, nonce: Buffer.alloc(16, 7) } }))).toMatchObject({ assign: { nonce: Buffer.alloc(16, 7) } });
    const welcome = { protocol: 1, serverVersion: 't', heartbeatMs: 5000, progressMs: 1000 };
    expect(() => decodeServerMessage(encodeServerMessage({ type: 'welcome', welcome: { ...welcome, agentSecret: 'x\r\nInjected: 1' } }))).toThrow(/agent secret/);
    expect(decodeServerMessage(encodeServerMessage({ type: 'welcome', welcome: { ...welcome, agentSecret: 'ab'.repeat(32) } }))).toMatchObject({ welcome: { agentSecret: 'ab'.repeat(32) } });
    expect(() => decodeServerMessage(encodeServerMessage({ type: 'capture', capture: { captureId: 1, image: 'x', secret: 'not hex' } }))).toThrow(/capture secret/);
    const confirm = { sessionId: 3, accepted: false, reason: 'the disk digest does not match' };
    expect(decodeServerMessage(encodeServerMessage({ type: 'confirm', confirm }))).toEqual({ type: 'confirm', confirm });
  });

  it('an assignment with an impossible fragment size or port', () => {
    const assign = revive(golden.find((g) => g.type === 'assign')!.message) as any;
    expect(() => decodeServerMessage(encodeServerMessage({ type: 'assign', assign: { ...assign, fragmentSize: 20 } }))).toThrow(/fragment size 20/);
    expect(() => decodeServerMessage(encodeServerMessage({ type: 'assign', assign: { ...assign, port: 0 } }))).toThrow(/port out of range/);
    // One limit with the engine: MCAST.MAX_FRAGMENT (8924: 9000 less IP, UDP, header and MAC), not 9000.
    expect(() => decodeServerMessage(encodeServerMessage({ type: 'assign', assign: { ...assign, fragmentSize: 8925 } }))).toThrow(/fragment size 8925/);
    expect(decodeServerMessage(encodeServerMessage({ type: 'assign', assign: { ...assign, fragmentSize: 8924 } }))).toMatchObject({ type: 'assign' });
  });

  it('an assignment without both 32-byte packet keys, or with an encryption key of another size', () => {
    const assign = revive(golden.find((g) => g.type === 'assign')!.message) as any;
    const decoded = (a: object) => decodeServerMessage(encodeServerMessage({ type: 'assign', assign: { ...assign, ...a } }));
    expect(() => decoded({ dataKey: Buffer.alloc(0) })).toThrow(/data key of 0 bytes/);
    expect(() => decoded({ dataKey: Buffer.alloc(31) })).toThrow(/data key of 31 bytes/);
    expect(() => decoded({ receiverKey: Buffer.alloc(0) })).toThrow(/receiver key of 0 bytes/);
    expect(() => decoded({ receiverKey: Buffer.alloc(33) })).toThrow(/receiver key of 33 bytes/);
    expect(() => decoded({ encryptKey: Buffer.alloc(16) })).toThrow(/encryption key of 16 bytes/);
    expect(decoded({ encryptKey: Buffer.alloc(32, 1) })).toMatchObject({ type: 'assign', assign: { encryptKey: Buffer.alloc(32, 1) } });
  });

  it('an assignment whose machine name is not a registry name, or whose unattend template is over 64 KiB', () => {
    const assign = revive(golden.find((g) => g.type === 'assign')!.message) as any;
    const decoded = (a: object) => decodeServerMessage(encodeServerMessage({ type: 'assign', assign: { ...assign, ...a } }));
    for (const bad of ['pc;reboot', 'a b', '../etc', 'x'.repeat(65), 'pc\n12']) expect(() => decoded({ machineName: bad }), bad).toThrow(/machine name is not/);
    expect(() => decoded({ machineName: 'pc-12', unattend: 'x'.repeat(UNATTEND_MAX + 1) })).toThrow(/unattend is/);
    expect(decoded({ machineName: 'pc-12', unattend: '<u>{{name}}</u>' })).toMatchObject({ assign: { machineName: 'pc-12', unattend: '<u>{{name}}</u>' } });
    expect(decoded({})).toMatchObject({ assign: { machineName: '', unattend: '' } });
  });

  it('random bytes: 20,000 inputs, only ever decoded or refused as malformed', () => {
    let s = 0x9e3779b9;
    const next = () => ((s = (Math.imul(s ^ (s >>> 15), 0x85ebca6b) + 0x6b79 + 1) >>> 0));
    let decoded = 0;
    for (let i = 0; i < 20_000; i++) {
      const n = next() % 64;
      const b = Buffer.alloc(n);
      for (let j = 0; j < n; j++) b[j] = next() & 0xff;
      // Half of them start with a valid field tag so the decoder goes deeper.
      if (i % 2 === 0 && n > 1) {
        b[0] = [0x0a, 0x12, 0x1a, 0x22][next() % 4];
        b[1] = n - 2;
      }
      for (const dec of [decodeAgentMessage, decodeServerMessage]) {
        try {
          dec(b);
          decoded++;
        } catch (err) {
          expect((err as ClonecastError).code).toBe(ERR.CONTROL_MALFORMED);
        }
      }
    }
    expect(decoded).toBeGreaterThan(0);
  });
});
