import fs from 'node:fs/promises';
import path from 'node:path';
import type { DiskWriter } from '../../dataplane';
import { NbdClient } from './nbd';
import { QmpClient } from './qmp';
import { startStorageDaemon } from './storage-daemon';

const FILES = { pid: 'daemon.pid', nbd: 'nbd.sock' } as const;
const EXPORT_NAME = 'restore';
// How long a daemon left behind by a dead worker gets to exit after SIGKILL.
const STALE_EXIT_TIMEOUT_MS = 10_000;

/**
 * One disk of a VM that is not running, opened for writing (what a restore writes through): a `qemu-storage-daemon`
 * opens the disk's qcow2 image with QEMU's own block layer and exports it writable over NBD on a private socket in
 * `dir`; writes go through our NbdClient. Closing flushes, disconnects and stops the daemon, which closes the image
 * cleanly. A daemon a dead worker left holding the image (its pid in `dir`) is ended first, so a retry can open it.
 */
export async function openQemuDiskWriter(o: { dir: string; nodeName: string; path: string }): Promise<DiskWriter> {
  await endStaleDaemon(path.join(o.dir, FILES.pid));
  await fs.rm(o.dir, { recursive: true, force: true });
  await fs.mkdir(o.dir, { recursive: true });
  const daemon = await startStorageDaemon({
    dir: o.dir,
    disks: [{ nodeName: o.nodeName, path: o.path }],
    pidFile: path.join(o.dir, FILES.pid),
  });
  try {
    const nbd = await exportWritable(daemon.qmpSocket, {
      socketPath: path.join(o.dir, FILES.nbd),
      nodeName: o.nodeName,
      exportName: EXPORT_NAME,
    });
    const maximum = nbd.blockSize.maximumPayload;
    return {
      async write(data, position) {
        const pieces: Promise<void>[] = [];
        for (let at = 0; at < data.length; at += maximum) {
          pieces.push(nbd.write(position + at, data.subarray(at, Math.min(at + maximum, data.length))));
        }
        await Promise.all(pieces);
      },
      flush: () => nbd.flush(),
      async close() {
        try {
          await nbd.disconnect();
        } finally {
          await daemon.stop();
          await fs.rm(o.dir, { recursive: true, force: true });
        }
      },
    };
  } catch (error) {
    await daemon.stop();
    throw error;
  }
}

/**
 * Starts the QEMU process's NBD server on `socketPath` (one server per process), exports block node `nodeName`
 * writable as `exportName`, and connects to it: a disk written from outside the guest (a restore; tests and the
 * benchmark playing the guest).
 */
export async function exportWritable(
  qmpSocket: string,
  o: { socketPath: string; nodeName: string; exportName: string },
): Promise<NbdClient> {
  const qmp = await QmpClient.connect(qmpSocket);
  try {
    await qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: o.socketPath } } });
    const name = o.exportName;
    await qmp.execute('block-export-add', { type: 'nbd', id: name, 'node-name': o.nodeName, name, writable: true });
  } finally {
    await qmp.close();
  }
  return NbdClient.connect({ socketPath: o.socketPath, exportName: o.exportName });
}

/** Ends the storage daemon whose pid `pidFile` holds, if that process still runs and is one. */
async function endStaleDaemon(pidFile: string): Promise<void> {
  const pid = Number(await fs.readFile(pidFile, 'utf8').catch(() => ''));
  if (!Number.isSafeInteger(pid) || pid <= 0) return;
  const command = await fs.readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  if (!command.includes('qemu-storage-daemon')) return;
  process.kill(pid, 'SIGKILL');
  const deadline = Date.now() + STALE_EXIT_TIMEOUT_MS;
  while (
    await fs.access(`/proc/${pid}`).then(
      () => true,
      () => false,
    )
  ) {
    if (Date.now() > deadline) throw new Error(`qemu-storage-daemon ${pid} (left by an earlier attempt) did not exit.`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
