/**
 * Fetches a session's description and manifest from the sender's HTTP
 * endpoint (session.ts beside it); used by `clonecast receive`.
 */
import { decodeManifest, type Manifest } from '../../protocol/manifest.js';
import { ClonecastError, ERR } from '../../protocol/errors.js';
import type { SessionInfo } from '../../transfer/session.js';

/** What a receiver fetches before it joins. */
export interface JoinInfo {
  info: SessionInfo;
  image: { name: string; version: number };
  manifest: Manifest;
}

/** Fetches /session and /manifest from url (e.g. http://10.77.0.1:8100/). */
export async function fetchSession(url: string): Promise<JoinInfo> {
  const base = url.endsWith('/') ? url : `${url}/`;
  let sessionRes: Response;
  let manifestRes: Response;
  try {
    [sessionRes, manifestRes] = await Promise.all([fetch(`${base}session`), fetch(`${base}manifest`)]);
  } catch (err) {
    throw new ClonecastError(ERR.NOT_FOUND, `cannot reach the sender at ${base} (${(err as Error).message}); check the URL the sender printed and the network`, {}, { cause: err });
  }
  if (!sessionRes.ok || !manifestRes.ok) throw new ClonecastError(ERR.NOT_FOUND, `the sender at ${base} has no session (HTTP ${sessionRes.status}/${manifestRes.status})`);
  const described = (await sessionRes.json()) as SessionInfo & { image: { name: string; version: number } };
  const manifest = decodeManifest(Buffer.from(await manifestRes.arrayBuffer()), `manifest from ${base}`);
  const { image, ...info } = described;
  return { info, image, manifest };
}
