/**
 * The server's HTTP side. For now: a read-only page and JSON API over the
 * image store (GET /, GET /api/images). Sessions, machines and the live
 * dashboard build on this.
 */
import { createServer, type Server } from 'node:http';
import { listImages } from './store/maintenance.js';
import { formatBytes } from './progress.js';
import type { Store } from './store/store.js';

import { DEFAULT_LISTEN } from './defaults.js';

export { DEFAULT_LISTEN };

/** Parses HOST:PORT (PORT may be 0 for any free port). */
export function parseListen(listen: string): { host: string; port: number } {
  const i = listen.lastIndexOf(':');
  const port = Number(listen.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`--listen takes HOST:PORT, e.g. ${DEFAULT_LISTEN}; got "${listen}"`);
  return { host: listen.slice(0, i).replace(/^\[|\]$/g, ''), port };
}

function escape(s: string): string {
  return s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** Starts the HTTP server; resolves once it listens. */
export async function startHttp(store: Store, listen: string): Promise<{ server: Server; url: string }> {
  const { host, port } = parseListen(listen);
  const server = createServer(async (req, res) => {
    try {
      const path = new URL(req.url ?? '/', 'http://x').pathname;
      if (req.method !== 'GET') {
        res.writeHead(405, { allow: 'GET' }).end();
      } else if (path === '/api/images') {
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(await listImages(store)));
      } else if (path === '/') {
        const rows = (await listImages(store))
          .map((e) => {
            const l = e.latest;
            const detail = 'error' in l ? `<td colspan=3>unreadable: ${escape(l.error)}</td>` : `<td>${formatBytes(l.diskSize)}</td><td>${formatBytes(l.storedBytes)}</td><td>${escape(l.createdAt)}</td>`;
            return `<tr><td>${escape(e.name)}</td><td>${e.versions.join(', ')}</td>${detail}</tr>`;
          })
          .join('');
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(
          `<!doctype html><meta charset=utf-8><title>clonecast</title><h1>clonecast</h1><p>Image store: ${escape(store.root)}</p>` +
            `<table border=1 cellpadding=4><tr><th>image</th><th>versions</th><th>size</th><th>stored</th><th>latest</th></tr>${rows || '<tr><td colspan=5>no images yet: clonecast image import SRC NAME</td></tr>'}</table>`,
        );
      } else {
        res.writeHead(404).end('not found\n');
      }
    } catch (err) {
      res.writeHead(500).end(`${(err as Error).message}\n`);
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const addr = server.address();
  const actual = typeof addr === 'object' && addr !== null ? addr.port : port;
  return { server, url: `http://${host.includes(':') ? `[${host}]` : host}:${actual}/` };
}
