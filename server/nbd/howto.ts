/** The exact commands that use an NBD export, as `clonecast image nbd` and the API print them. */

/** Where a TCP export listens and the client's PSK folder. */
export interface TcpExport {
  host: string;
  port: number;
  /** A folder holding keys.psk for qemu's tls-creds-psk. */
  pskDir: string;
  identity: string;
}

/** The NBD URI of an export on a Unix socket. */
export function nbdUnixUri(socket: string, name: string): string {
  return `nbd+unix:///${encodeURIComponent(name)}?socket=${socket}`;
}

/** Commands for qemu-img and qemu, as text and as data. */
export function nbdHowTo(name: string, size: number, socket: string | undefined, tcp: TcpExport | undefined): { text: string; data: Record<string, unknown> } {
  const lines = [`serving ${name} read-only (${size} bytes); stop with Ctrl-C`];
  const data: Record<string, unknown> = { export: name, size };
  if (socket !== undefined) {
    const uri = nbdUnixUri(socket, name);
    data.socket = socket;
    data.uri = uri;
    lines.push(
      `  socket:   ${socket} (mode 0600)`,
      `  info:     qemu-img info -f raw '${uri}'`,
      `  convert:  qemu-img convert -p -f raw -O qcow2 '${uri}' OUT.qcow2`,
      `  boot:     qemu-img create -f qcow2 -b '${uri}' -F raw /tmp/overlay.qcow2 && qemu-system-x86_64 -m 2048 -drive file=/tmp/overlay.qcow2,format=qcow2`,
      `            (writes go to the throw-away overlay; the store is never written)`,
    );
  }
  if (tcp !== undefined) {
    const host = tcp.host === '0.0.0.0' || tcp.host === '::' ? 'SERVER' : tcp.host;
    const obj = `--object tls-creds-psk,id=tls0,dir=${tcp.pskDir},username=${tcp.identity},endpoint=client`;
    const img = `--image-opts driver=raw,file.driver=nbd,file.host=${host},file.port=${tcp.port},file.export=${name},file.tls-creds=tls0`;
    data.tcp = { host: tcp.host, port: tcp.port, pskDir: tcp.pskDir, identity: tcp.identity };
    data.qemuImgInfo = `qemu-img info ${obj} ${img}`;
    lines.push(
      `  tcp:      ${tcp.host}:${tcp.port}, TLS-PSK required (identity ${tcp.identity}; key in ${tcp.pskDir}/keys.psk: copy that folder to the client)`,
      `  info:     qemu-img info ${obj} ${img}`,
      `  convert:  qemu-img convert -p -O qcow2 ${obj} ${img} OUT.qcow2`,
    );
  }
  return { text: lines.join('\n'), data };
}
