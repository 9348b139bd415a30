import { spawn } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import { socketAccepts } from './wire';

// It listens within tens of milliseconds here; 10 s leaves room for a loaded 2-core CI machine.
const READY_TIMEOUT_MS = 10_000;
// Between two probes of the monitor socket while the daemon starts.
const PROBE_INTERVAL_MS = 20;
// A clean exit writes persistent dirty bitmaps back into the qcow2 files; after this long the daemon is killed.
const STOP_TIMEOUT_MS = 10_000;
// Lines of the daemon's output kept for error messages.
const OUTPUT_TAIL_LINES = 20;

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
 * resolves once the monitor accepts connections. QEMU's own block layer and QMP, without a guest: what a VM's disks
 * look like to the driver. Rejects with the daemon's output if it exits or does not listen within 10 s.
 */
export async function startStorageDaemon(options: StorageDaemonOptions): Promise<StorageDaemon> {
  const qmpSocket = path.join(options.dir, 'qmp.sock');
  const args = ['--chardev', `socket,id=qmp,path=${escapeOption(qmpSocket)},server=on,wait=off`];
  args.push('--monitor', 'chardev=qmp');
  for (const disk of options.disks) {
    // JSON syntax: no escaping of commas in file names.
    const node = { driver: 'qcow2', 'node-name': disk.nodeName, file: { driver: 'file', filename: disk.path } };
    args.push('--blockdev', JSON.stringify(node));
  }
  const binary = options.binary ?? 'qemu-storage-daemon';
  const child = spawn(binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const tail: string[] = [];
  const collect = (line: string): void => {
    tail.push(line);
    if (tail.length > OUTPUT_TAIL_LINES) tail.shift();
  };
  readline.createInterface({ input: child.stdout }).on('line', collect);
  readline.createInterface({ input: child.stderr }).on('line', collect);
  let exitStatus: string | undefined;
  const exited = new Promise<string>((resolve) => {
    child.once('exit', (code, signal) => resolve((exitStatus ??= signal ? `signal ${signal}` : `code ${code}`)));
    child.once('error', (error) => resolve((exitStatus ??= `error: ${error.message}`)));
  });
  // Never leave an orphan daemon holding the disks if this process exits without calling stop().
  const killOnExit = (): void => void child.kill('SIGKILL');
  process.once('exit', killOnExit);

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      if (exitStatus === undefined) {
        child.kill('SIGTERM');
        // A daemon stopped with SIGSTOP (tests do) acts on the SIGTERM only once continued.
        child.kill('SIGCONT');
        const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
        await exited;
        clearTimeout(timer);
      }
      process.removeListener('exit', killOnExit);
    })());

  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (;;) {
    if (exitStatus !== undefined) {
      process.removeListener('exit', killOnExit);
      throw new Error(`${binary} exited with ${exitStatus} before listening on ${qmpSocket}.${outputOf(tail)}`);
    }
    if (await socketAccepts(qmpSocket)) break;
    if (Date.now() > deadline) {
      await stop();
      throw new Error(`${binary} did not listen on ${qmpSocket} within ${READY_TIMEOUT_MS} ms.${outputOf(tail)}`);
    }
    await new Promise((resolve) => setTimeout(resolve, PROBE_INTERVAL_MS));
  }
  return { qmpSocket, pid: child.pid!, exited, stop };
}

/** QEMU's option syntax ends a value at a comma; a literal comma is written twice. */
function escapeOption(value: string): string {
  return value.replaceAll(',', ',,');
}

function outputOf(tail: readonly string[]): string {
  return tail.length ? `\nIts output (last lines):\n${tail.join('\n')}` : '';
}
