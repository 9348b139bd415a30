import path from 'node:path';
import { escapeOption, startQemuProcess } from './process';

// It listens within tens of milliseconds here; 10 s leaves room for a loaded 2-core CI machine.
const READY_TIMEOUT_MS = 10_000;
// A clean exit writes persistent dirty bitmaps back into the qcow2 files; after this long the daemon is killed.
const STOP_TIMEOUT_MS = 10_000;

/** A qcow2 image the daemon opens as a block node. */
export interface StorageDaemonDisk {
  /** The qcow2 format node's name, as QMP commands address it (`node` of `block-dirty-bitmap-add`, ...). */
  nodeName: string;
  /** The qcow2 file. */
  path: string;
}

/** Options of {@link startStorageDaemon}. */
export interface StorageDaemonOptions {
  /** Folder for the QMP socket (it must exist; the caller owns and removes it). */
  dir: string;
  disks: readonly StorageDaemonDisk[];
  /** Where it writes its pid, so a later process can end one its starter left behind (it removes the file on exit). */
  pidFile?: string;
  /** The binary. Default `qemu-storage-daemon` from `PATH`. */
  binary?: string;
}

/** A running `qemu-storage-daemon`. */
export interface StorageDaemon {
  /** Its QMP monitor's unix socket, for `QmpClient.connect`. */
  qmpSocket: string;
  pid: number;
  /** Resolves with the exit status (`code 0`, `signal SIGKILL`, ...) once the process has ended. */
  exited: Promise<string>;
  /** Stops it cleanly (SIGTERM, so bitmaps are saved; SIGKILL after 10 s) and waits for the exit. Idempotent. */
  stop(): Promise<void>;
}

/**
 * Starts `qemu-storage-daemon` with a QMP monitor on `<dir>/qmp.sock` and each disk opened as a qcow2 node, and
 * resolves once the monitor answers (the disks are then open). QEMU's own block layer and QMP, without a guest: what
 * a VM's disks look like to the driver. Rejects with a `QemuProcessError` carrying the daemon's output if it exits or
 * does not listen within 10 s.
 */
export async function startStorageDaemon(options: StorageDaemonOptions): Promise<StorageDaemon> {
  const qmpSocket = path.join(options.dir, 'qmp.sock');
  const args = ['--chardev', `socket,id=qmp,path=${escapeOption(qmpSocket)},server=on,wait=off`];
  args.push('--monitor', 'chardev=qmp');
  if (options.pidFile) args.push('--pidfile', options.pidFile);
  for (const disk of options.disks) {
    // JSON syntax: no escaping of commas in file names.
    const node = { driver: 'qcow2', 'node-name': disk.nodeName, file: { driver: 'file', filename: disk.path } };
    args.push('--blockdev', JSON.stringify(node));
  }
  const daemon = await startQemuProcess({
    binary: options.binary ?? 'qemu-storage-daemon',
    args,
    readySocket: qmpSocket,
    readyTimeoutMs: READY_TIMEOUT_MS,
    stopTimeoutMs: STOP_TIMEOUT_MS,
  });
  return { qmpSocket, pid: daemon.pid, exited: daemon.exited, stop: daemon.stop };
}
