import { spawn } from 'node:child_process';
import readline from 'node:readline';
import { QmpClient } from './qmp';

// Between two probes of the ready socket while the process starts.
const PROBE_INTERVAL_MS = 20;
// Lines of the process's own output kept for error messages.
const OUTPUT_TAIL_LINES = 20;

/** Why a QEMU process (or the guest inside it) is not usable. */
export type QemuProcessErrorType = 'QemuProcessExited' | 'QemuProcessNotListening' | 'QemuGuestAgentNotReady';

/** A QEMU process failed to start, or its guest did not come up; the message carries what QEMU (or the guest) said. */
export class QemuProcessError extends Error {
  constructor(
    readonly type: QemuProcessErrorType,
    message: string,
  ) {
    super(message);
  }
}

/** Options of {@link startQemuProcess}. */
export interface QemuProcessOptions {
  binary: string;
  args: readonly string[];
  /**
   * Its QMP monitor's unix socket. The process is ready once the monitor answers a command, not merely once the socket
   * listens: QEMU listens before it opens its disks, and runs commands only from its main loop, after all of its set-up.
   */
  readySocket: string;
  readyTimeoutMs: number;
  /** How long `stop()` waits after SIGTERM before SIGKILL. */
  stopTimeoutMs: number;
}

/** A running QEMU process (`qemu-storage-daemon`, `qemu-system-x86_64`). */
export interface QemuProcess {
  pid: number;
  /** Resolves with the exit status (`code 0`, `signal SIGKILL`, ...) once the process has ended. */
  exited: Promise<string>;
  /** The exit status, or undefined while it runs. */
  exitStatus: () => string | undefined;
  /** The last lines of its stdout and stderr, as a suffix for error messages ('' when it said nothing). */
  outputTail: () => string;
  /**
   * Stops it cleanly and waits for the exit: SIGTERM (QEMU then closes its block nodes, which writes persistent dirty
   * bitmaps back into the qcow2 files), SIGKILL if it has not exited within `stopTimeoutMs`. Idempotent.
   */
  stop: () => Promise<void>;
}

/**
 * Spawns a QEMU binary and resolves once the QMP monitor on `readySocket` answers. Rejects with a `QemuProcessError`
 * carrying the process's output if it exits first (`QemuProcessExited`) or does not listen in time
 * (`QemuProcessNotListening`, after stopping it). The process is killed if this Node process exits without calling
 * `stop()`, so no orphan keeps holding the disks.
 */
export async function startQemuProcess(options: QemuProcessOptions): Promise<QemuProcess> {
  const { binary, readySocket } = options;
  const child = spawn(binary, options.args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const tail: string[] = [];
  const collect = (line: string): void => {
    tail.push(line);
    if (tail.length > OUTPUT_TAIL_LINES) tail.shift();
  };
  readline.createInterface({ input: child.stdout }).on('line', collect);
  readline.createInterface({ input: child.stderr }).on('line', collect);
  const outputTail = (): string => (tail.length ? `\nIts output (last lines):\n${tail.join('\n')}` : '');
  let status: string | undefined;
  const exited = new Promise<string>((resolve) => {
    child.once('exit', (code, signal) => resolve((status ??= signal ? `signal ${signal}` : `code ${code}`)));
    child.once('error', (error) => resolve((status ??= `error: ${error.message}`)));
  });
  const killOnExit = (): void => void child.kill('SIGKILL');
  process.once('exit', killOnExit);

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      if (status === undefined) {
        child.kill('SIGTERM');
        // A process stopped with SIGSTOP (tests do) acts on the SIGTERM only once continued.
        child.kill('SIGCONT');
        const timer = setTimeout(() => child.kill('SIGKILL'), options.stopTimeoutMs);
        await exited;
        clearTimeout(timer);
      }
      process.removeListener('exit', killOnExit);
    })());

  const deadline = Date.now() + options.readyTimeoutMs;
  for (;;) {
    if (status !== undefined) {
      process.removeListener('exit', killOnExit);
      const message = `${binary} exited with ${status} before listening on ${readySocket}.${outputTail()}`;
      throw new QemuProcessError('QemuProcessExited', message);
    }
    if (await monitorAnswers(readySocket, deadline - Date.now())) break;
    if (Date.now() > deadline) {
      await stop();
      const message = `${binary} did not listen on ${readySocket} within ${options.readyTimeoutMs} ms.${outputTail()}`;
      throw new QemuProcessError('QemuProcessNotListening', message);
    }
    await new Promise((resolve) => setTimeout(resolve, PROBE_INTERVAL_MS));
  }
  return { pid: child.pid!, exited, exitStatus: () => status, outputTail, stop };
}

/**
 * Whether the QMP monitor on `socketPath` completes its handshake within `timeoutMs`: not while nothing listens there
 * yet, nor if QEMU exits meanwhile.
 */
async function monitorAnswers(socketPath: string, timeoutMs: number): Promise<boolean> {
  if (timeoutMs <= 0) return false;
  try {
    const monitor = await QmpClient.connect(socketPath, { timeoutMs });
    await monitor.close();
    return true;
  } catch {
    return false;
  }
}

/** QEMU's option syntax ends a value at a comma; a literal comma is written twice. */
export function escapeOption(value: string): string {
  return value.replaceAll(',', ',,');
}
