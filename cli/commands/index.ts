/** Every command, in the order "clonecast --help" lists them. */
import type { Command } from '../command.js';
import { agent } from './agent.js';
import { bootenvBuild } from './bootenv.js';
import { capture } from './capture.js';
import { captures, capturesFail } from './captures.js';
import { deploy } from './deploy.js';
import { imageAssemble } from './image-assemble.js';
import { imageExport } from './image-export.js';
import { imageGc } from './image-gc.js';
import { imageHistory } from './image-history.js';
import { imageImport } from './image-import.js';
import { imageNbd } from './image-nbd.js';
import { imageInfo } from './image-info.js';
import { imageList } from './image-list.js';
import { imageRecompress } from './image-recompress.js';
import { imagePrune } from './image-prune.js';
import { imagePull } from './image-pull.js';
import { imagePush } from './image-push.js';
import { imageRm } from './image-rm.js';
import { imageVerify } from './image-verify.js';
import { labDemo, labDown, labForward, labStatus, labUp } from './lab.js';
import { machines, machinesSet } from './machines.js';
import { machinesForget, machinesShow } from './machines-console.js';
import { receive } from './receive.js';
import { repositoryGc, repositoryList, repositoryRm } from './repository.js';
import { send } from './send.js';
import { serve } from './serve.js';
import { sessions, sessionsCancel, sessionsStart } from './sessions.js';
import { token } from './token.js';
import { fingerprint, tlsRenew } from './tls.js';
import { versionCommand } from './version.js';
import { wakeCommand } from './wake.js';

/** All commands. */
export const COMMANDS: readonly Command[] = [
  imageImport,
  imageList,
  imageInfo,
  imageVerify,
  imageExport,
  imageNbd,
  imageRecompress,
  imageAssemble,
  imageHistory,
  imagePrune,
  imageRm,
  imageGc,
  imagePush,
  imagePull,
  repositoryList,
  repositoryRm,
  repositoryGc,
  serve,
  token,
  fingerprint,
  tlsRenew,
  bootenvBuild,
  deploy,
  machines,
  machinesSet,
  wakeCommand,
  machinesShow,
  machinesForget,
  sessions,
  sessionsStart,
  sessionsCancel,
  capture,
  captures,
  capturesFail,
  agent,
  send,
  receive,
  labUp,
  labStatus,
  labDown,
  labDemo,
  labForward,
  versionCommand,
];
