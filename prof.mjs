import { readFileSync, writeFileSync } from 'node:fs';
import { compressSync } from 'lz4-napi';
const C = 1 << 20;
const buf = readFileSync('/tmp/bench1g.img');
const parts=[];
for (let o = 0; o < buf.length; o += C) { const b = buf.subarray(o, o + C); const c=compressSync(b); if (c.length < 0.8*C) parts.push(b); }
writeFileSync('/tmp/text.bin', Buffer.concat(parts)); console.log(parts.length);
writeFileSync('/tmp/c392.bin', buf.subarray(392*C, 393*C));
