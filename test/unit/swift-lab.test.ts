/**
 * The tests' real S3 server (test/swift-lab.mjs): Swift with s3api answers
 * s3cmd and the AWS SDK v3 client, its proxy can be killed and restarted,
 * stop() leaves nothing running, and it serves from inside a namespace.
 */
import { describe, expect, afterAll } from 'vitest';
import { spawnSync } from 'node:child_process';
import { randomBytes, createHash } from 'node:crypto';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { S3Client, CreateBucketCommand, PutObjectCommand, GetObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { itNeeds, tempDir } from '../helpers.js';
import { startSwift } from '../swift-lab.mjs';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

function run(argv: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(argv[0], argv.slice(1), { encoding: 'utf8', timeout: 120_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** True when a process with this PID exists (signal 0 only checks). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** An s3cmd config for a client reaching the proxy at hostPort. */
function s3cmdConfig(dir: string, hostPort: string): string {
  const file = join(dir, `s3cmd-${hostPort.replace(/[^0-9]/g, '_')}.cfg`);
  writeFileSync(
    file,
    ['[default]', 'access_key = test:tester', 'secret_key = testing', `host_base = ${hostPort}`, `host_bucket = ${hostPort}`, 'bucket_location = us-east-1', 'signature_v2 = False', 'use_https = False', ''].join('\n'),
  );
  return file;
}

describe('swift-lab: a real S3 server for the repository tests', () => {
  const stops: Array<() => Promise<void>> = [];
  const namespaces: string[] = [];
  afterAll(async () => {
    for (const stop of stops.splice(0)) await stop();
    for (const ns of namespaces.splice(0)) spawnSync('ip', ['netns', 'del', ns]);
  });

  itNeeds(['s3'], 's3cmd and the AWS SDK both PUT, list by prefix and GET; killProxy makes a GET fail, startProxy brings it back; stop leaves no process', async () => {
    const work = tempDir('swift');
    const lab = await startSwift({ dir: join(work, 'swift'), bucket: 'images-one' });
    stops.push(lab.stop);
    const pids = lab.pids;
    expect(pids).toHaveLength(4);
    for (const pid of pids) expect(alive(pid)).toBe(true);
    expect(lab.endpoint).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);

    // s3cmd with a config file of the test's own.
    const cfg = s3cmdConfig(work, lab.endpoint.replace('http://', ''));
    const payload = randomBytes(300_000);
    const src = join(work, 'payload.bin');
    writeFileSync(src, payload);
    let r = run(['s3cmd', '-c', cfg, 'put', src, 's3://images-one/chunks/aa11']);
    expect(r.status, r.stderr).toBe(0);
    r = run(['s3cmd', '-c', cfg, 'put', src, 's3://images-one/manifests/m1']);
    expect(r.status, r.stderr).toBe(0);
    r = run(['s3cmd', '-c', cfg, 'ls', 's3://images-one/chunks/']);
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toContain('s3://images-one/chunks/aa11');
    expect(r.stdout).not.toContain('manifests/m1');
    const back = join(work, 'back.bin');
    r = run(['s3cmd', '-c', cfg, 'get', '--force', 's3://images-one/chunks/aa11', back]);
    expect(r.status, r.stderr).toBe(0);
    expect(sha(readFileSync(back))).toBe(sha(payload));

    // The AWS SDK v3 client, path-style, explicit credentials.
    const s3 = new S3Client({
      endpoint: lab.endpoint,
      region: lab.region,
      forcePathStyle: true,
      credentials: { accessKeyId: lab.accessKey, secretAccessKey: lab.secretKey },
      maxAttempts: 1,
    });
    try {
      await s3.send(new CreateBucketCommand({ Bucket: 'images-two' }));
      const body = randomBytes(200_000);
      await s3.send(new PutObjectCommand({ Bucket: 'images-two', Key: 'chunks/bb22', Body: body }));
      await s3.send(new PutObjectCommand({ Bucket: 'images-two', Key: 'other/cc33', Body: Buffer.from('x') }));
      const listed = await s3.send(new ListObjectsV2Command({ Bucket: 'images-two', Prefix: 'chunks/' }));
      expect((listed.Contents ?? []).map((o) => o.Key)).toEqual(['chunks/bb22']);
      const got = await s3.send(new GetObjectCommand({ Bucket: 'images-two', Key: 'chunks/bb22' }));
      expect(sha(Buffer.from(await got.Body!.transformToByteArray()))).toBe(sha(body));
      // What s3cmd put, the SDK reads (the same server, the same bucket).
      const cross = await s3.send(new GetObjectCommand({ Bucket: 'images-one', Key: 'chunks/aa11' }));
      expect(sha(Buffer.from(await cross.Body!.transformToByteArray()))).toBe(sha(payload));

      // The repository dies mid-work: a GET fails; it comes back on the same port: the GET works.
      const proxyPid = pids[3];
      await lab.killProxy();
      expect(alive(proxyPid)).toBe(false);
      await expect(s3.send(new GetObjectCommand({ Bucket: 'images-two', Key: 'chunks/bb22' }))).rejects.toThrow();
      await lab.startProxy();
      const again = await s3.send(new GetObjectCommand({ Bucket: 'images-two', Key: 'chunks/bb22' }));
      expect(sha(Buffer.from(await again.Body!.transformToByteArray()))).toBe(sha(body));
    } finally {
      s3.destroy();
    }

    const all = [...pids.slice(0, 3), ...lab.pids];
    await lab.stop();
    expect(lab.pids).toEqual([]);
    for (const pid of all) expect(alive(pid)).toBe(false);
  }, 300_000);

  itNeeds(['s3', 'netns'], 'inside a namespace, reached from another namespace through a veth', async () => {
    const tag = randomBytes(3).toString('hex');
    const server = `cc${tag}r`;
    const client = `cc${tag}c`;
    for (const ns of [server, client]) {
      expect(run(['ip', 'netns', 'add', ns]).status).toBe(0);
      namespaces.push(ns);
      expect(run(['ip', '-n', ns, 'link', 'set', 'lo', 'up']).status).toBe(0);
    }
    expect(run(['ip', '-n', server, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', client]).status).toBe(0);
    expect(run(['ip', '-n', server, 'addr', 'add', '10.77.201.1/30', 'dev', 'eth0']).status).toBe(0);
    expect(run(['ip', '-n', client, 'addr', 'add', '10.77.201.2/30', 'dev', 'eth0']).status).toBe(0);
    expect(run(['ip', '-n', server, 'link', 'set', 'eth0', 'up']).status).toBe(0);
    expect(run(['ip', '-n', client, 'link', 'set', 'eth0', 'up']).status).toBe(0);

    const work = tempDir('swiftns');
    const lab = await startSwift({ dir: join(work, 'swift'), spawnPrefix: ['ip', 'netns', 'exec', server], bindIp: '0.0.0.0', bucket: 'images-ns' });
    stops.push(lab.stop);
    const port = new URL(lab.endpoint).port;

    // Nothing of it listens on the host.
    expect(run(['ss', '-ltnH', `sport = :${port}`]).stdout.trim()).toBe('');

    const payload = randomBytes(100_000);
    const src = join(work, 'obj.bin');
    writeFileSync(src, payload);
    const cfg = s3cmdConfig(work, `10.77.201.1:${port}`);
    let r = run(['ip', 'netns', 'exec', client, 's3cmd', '-c', cfg, 'put', src, 's3://images-ns/chunks/dd44']);
    expect(r.status, r.stderr).toBe(0);
    const back = join(work, 'back.bin');
    r = run(['ip', 'netns', 'exec', client, 's3cmd', '-c', cfg, 'get', '--force', 's3://images-ns/chunks/dd44', back]);
    expect(r.status, r.stderr).toBe(0);
    expect(sha(readFileSync(back))).toBe(sha(payload));

    const pids = lab.pids;
    await lab.stop();
    for (const pid of pids) expect(alive(pid)).toBe(false);
  }, 300_000);

  itNeeds(['s3', 'curl'], 'TLS: the proxy speaks HTTPS with a self-signed certificate that curl --cacert and s3cmd accept, and plain curl refuses', async () => {
    const work = tempDir('swifttls');
    const cert = join(work, 'cert.pem');
    const key = join(work, 'key.pem');
    const made = run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1']);
    expect(made.status, made.stderr).toBe(0);
    chmodSync(key, 0o644); // the proxy reads it as the swift user
    const lab = await startSwift({ dir: join(work, 'swift'), tls: { cert, key }, bucket: 'images-tls' });
    stops.push(lab.stop);
    expect(lab.endpoint).toMatch(/^https:/);
    const ok = run(['curl', '-sS', '--cacert', cert, `${lab.endpoint}/healthcheck`]);
    expect(ok.stdout).toBe('OK');
    const refused = run(['curl', '-sS', `${lab.endpoint}/healthcheck`]);
    expect(refused.status).not.toBe(0);
    const ls = run(['s3cmd', '-c', lab.s3cmdConfig, 'ls']);
    expect(ls.status, ls.stderr).toBe(0);
    expect(ls.stdout).toContain('s3://images-tls');
    await lab.stop();
  }, 300_000);
});
