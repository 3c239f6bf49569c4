// The tests' S3 server (test/swift-lab.mjs) on this machine: its start time
// (median of 3) and the raw throughput of one large object GET through the
// proxy, with s3cmd (the baseline) and with the AWS SDK v3 client.
// Run: flock /tmp/cc-lab.lock node test/bench/swift-lab.mjs [MiB]
import { spawnSync } from 'node:child_process';
import { createWriteStream, mkdtempSync, rmSync, statSync } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { S3Client, GetObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { createReadStream } from 'node:fs';
import { startSwift } from '../swift-lab.mjs';

const MIB = Number(process.argv[2] ?? 256);
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const root = mkdtempSync(join(tmpdir(), 'clonecast-swiftbench-'));
try {
  const starts = [];
  const cpu0 = process.cpuUsage();
  let lab;
  for (let i = 0; i < 3; i++) {
    if (lab) await lab.stop();
    const t0 = performance.now();
    lab = await startSwift({ dir: join(root, `s${i}`), bucket: 'bench-bucket' });
    starts.push((performance.now() - t0) / 1000);
  }
  console.log(`start (to healthcheck + bucket): ${starts.map((s) => s.toFixed(1)).join(' ')} s, median ${median(starts).toFixed(1)} s`);

  const src = join(root, 'object.bin');
  spawnSync('sh', ['-c', `head -c ${MIB}M /dev/urandom > ${src}`]);
  const s3 = new S3Client({ endpoint: lab.endpoint, region: lab.region, forcePathStyle: true, credentials: { accessKeyId: lab.accessKey, secretAccessKey: lab.secretKey },
    // Swift 2.30's s3api answers 501 NotImplemented to the SDK's default streaming upload with a trailing checksum.
    requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' });
  await s3.send(new PutObjectCommand({ Bucket: 'bench-bucket', Key: 'big', Body: createReadStream(src), ContentLength: statSync(src).size }));
  const s3cmd = [];
  const sdk = [];
  for (let i = 0; i < 3; i++) {
    const out = join(root, 'got.bin');
    let t0 = performance.now();
    const r = spawnSync('s3cmd', ['-c', lab.s3cmdConfig, '--no-progress', 'get', '--force', 's3://bench-bucket/big', out]);
    if (r.status !== 0) throw new Error(`s3cmd get failed: ${r.stderr}`);
    s3cmd.push(MIB / ((performance.now() - t0) / 1000));
    rmSync(out);
    t0 = performance.now();
    const got = await s3.send(new GetObjectCommand({ Bucket: 'bench-bucket', Key: 'big' }));
    await pipeline(got.Body, createWriteStream(out));
    sdk.push(MIB / ((performance.now() - t0) / 1000));
    if (statSync(out).size !== MIB * 1048576) throw new Error('short SDK download');
    rmSync(out);
  }
  console.log(`${MIB} MiB GET, s3cmd (baseline): ${s3cmd.map((x) => x.toFixed(0)).join(' ')} MiB/s, median ${median(s3cmd).toFixed(0)}`);
  console.log(`${MIB} MiB GET, AWS SDK v3:       ${sdk.map((x) => x.toFixed(0)).join(' ')} MiB/s, median ${median(sdk).toFixed(0)}; ratio to s3cmd ${(median(sdk) / median(s3cmd)).toFixed(2)}x`);
  s3.destroy();
  await lab.stop();
} finally {
  rmSync(root, { recursive: true, force: true });
}
