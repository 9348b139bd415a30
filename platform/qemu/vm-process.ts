import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { pathExists } from '../../dataplane';
import { GuestAgentClient } from './guest-agent';
import { escapeOption, QemuProcessError, startQemuProcess } from './process';

// QMP listens before the guest starts, within about a second here even under load; 30 s bounds a wedged start.
const READY_TIMEOUT_MS = 30_000;
// SIGTERM makes QEMU close its block nodes (persistent bitmaps are written back); after this long it is killed.
const STOP_TIMEOUT_MS = 20_000;
// One guest-ping attempt while the guest boots: the agent answers in milliseconds once it runs, so a short deadline
// only means "not up yet" and the next attempt follows.
const AGENT_ATTEMPT_TIMEOUT_MS = 2_000;
const AGENT_RETRY_INTERVAL_MS = 500;
/** The name of the guest agent's virtio-serial port, which qemu-ga in the guest looks for. */
export const GUEST_AGENT_PORT = 'org.qemu.guest_agent.0';

// Lines of the guest's console kept for error messages.
const CONSOLE_TAIL_LINES = 30;
// The serial console, no reboot loop on a kernel panic, and little kernel chatter (printing is slow under TCG).
export const BASE_APPEND = 'console=ttyS0 panic=-1 quiet';

/** What a VM's QEMU process makes in its folder: its sockets, its console log and (when launched) its pid file. */
export const VM_PROCESS_FILES = {
  qmp: 'qmp.sock',
  agent: 'qga.sock',
  console: 'console.log',
  pid: 'qemu.pid',
  /** A UEFI VM's variable store (its NVRAM), made from OVMF's template when missing. */
  uefiVars: 'uefi-vars.fd',
} as const;

/** Debian's OVMF (package `ovmf`): the UEFI firmware's code, read-only, and the template of a VM's variable store. */
const OVMF = { code: '/usr/share/OVMF/OVMF_CODE_4M.fd', vars: '/usr/share/OVMF/OVMF_VARS_4M.fd' } as const;

/**
 * How a VM boots: a direct kernel boot (kernel and initramfs files on the host; `append` is added to the kernel
 * command line, e.g. `snap.writer=1`), or from its first disk through its firmware, as a cloud image does: `bios`
 * (SeaBIOS) or `uefi` (OVMF; the VM's variable store is `<dir>/uefi-vars.fd`, kept across restarts, and the disk boots
 * through the removable-media path `\EFI\BOOT\BOOTX64.EFI`).
 */
export type QemuBoot = { kernel: string; initrd: string; append?: string } | { firmware: 'bios' | 'uefi' };

/** A qcow2 image attached to the guest as a virtio-blk disk (`/dev/vda`, `/dev/vdb`, ... in order). */
export interface VmDisk {
  /** The qcow2 format node's name, as QMP commands address it. */
  nodeName: string;
  /** The qcow2 file. */
  path: string;
}

/** Options of {@link startQemuVm}. */
export interface QemuVmOptions {
  /** Folder for the sockets and the console log (it must exist; the caller owns and removes it). */
  dir: string;
  disks: readonly VmDisk[];
  boot: QemuBoot;
  /** Default 256. */
  memoryMiB?: number;
  /** Virtual CPUs. Default 1. */
  vcpus?: number;
  /** Default `tcg`: on this kind of machine a Linux guest hangs in its decompressor under `kvm` (docs/FACTS). */
  accel?: 'tcg' | 'kvm';
  /** The binary. Default `qemu-system-x86_64` from `PATH`. */
  binary?: string;
}

/** A running `qemu-system-x86_64` with its guest booting (from a kernel and initramfs, or from its first disk). */
export interface QemuVm {
  /** Its QMP monitor's unix socket, for `QmpClient.connect`. */
  qmpSocket: string;
  /** The guest agent's chardev socket, for `GuestAgentClient.connect`. */
  agentSocket: string;
  /** The guest's serial console, written as it boots and runs. */
  consoleLog: string;
  pid: number;
  /** Resolves with the exit status (`code 0`, `signal SIGKILL`, ...) once the process has ended. */
  exited: Promise<string>;
  /**
   * Resolves once the guest agent answers `guest-ping`. Rejects with `QemuGuestAgentNotReady` and the console's last
   * lines if it has not within `timeoutMs`, and with `QemuProcessExited` as soon as QEMU exits (the guest powered off
   * or panicked).
   */
  waitForAgent(timeoutMs: number): Promise<void>;
  /**
   * Stops QEMU cleanly (SIGTERM, as `quit` does: the disks are closed and persistent bitmaps saved; the guest gets no
   * shutdown, so what it has not written is lost, as on power loss); SIGKILL after 20 s. Waits for the exit.
   * Idempotent.
   */
  stop(): Promise<void>;
}

/** The command line of a VM's QEMU process, and where it listens; see startQemuVm. A UEFI VM gets its variable store. */
async function qemuVmCommand(options: QemuVmOptions) {
  const qmpSocket = path.join(options.dir, VM_PROCESS_FILES.qmp);
  const agentSocket = path.join(options.dir, VM_PROCESS_FILES.agent);
  const consoleLog = path.join(options.dir, VM_PROCESS_FILES.console);
  // No display (and not -nographic, which -daemonize refuses): the console is the serial port, into a file.
  const args = ['-accel', options.accel ?? 'tcg', '-nodefaults', '-display', 'none', '-no-user-config', '-no-reboot'];
  args.push('-m', String(options.memoryMiB ?? 256), '-smp', String(options.vcpus ?? 1));
  args.push('-chardev', `socket,id=qmp,path=${escapeOption(qmpSocket)},server=on,wait=off`);
  args.push('-mon', 'chardev=qmp,mode=control');
  args.push('-chardev', `file,id=console,path=${escapeOption(consoleLog)}`, '-serial', 'chardev:console');
  args.push('-device', 'virtio-serial-pci,id=serial0');
  args.push('-chardev', `socket,id=qga,path=${escapeOption(agentSocket)},server=on,wait=off`);
  args.push('-device', `virtserialport,bus=serial0.0,chardev=qga,name=${GUEST_AGENT_PORT}`);
  for (const disk of options.disks) {
    // JSON syntax: no escaping of commas in file names.
    const node = { driver: 'qcow2', 'node-name': disk.nodeName, file: { driver: 'file', filename: disk.path } };
    args.push('-blockdev', JSON.stringify(node));
    args.push(
      '-device',
      JSON.stringify({ driver: 'virtio-blk-pci', drive: disk.nodeName, id: `${disk.nodeName}-dev` }),
    );
  }
  const { boot } = options;
  if ('kernel' in boot) {
    args.push('-kernel', boot.kernel, '-initrd', boot.initrd);
    args.push('-append', boot.append ? `${BASE_APPEND} ${boot.append}` : BASE_APPEND);
  } else if (boot.firmware === 'uefi') {
    const vars = path.join(options.dir, VM_PROCESS_FILES.uefiVars);
    for (const file of [OVMF.code, OVMF.vars]) {
      if (!(await pathExists(file))) throw new Error(`${file} is missing: apt-get install ovmf (UEFI firmware).`);
    }
    if (!(await pathExists(vars))) await fs.copyFile(OVMF.vars, vars);
    args.push('-drive', `if=pflash,format=raw,readonly=on,file=${escapeOption(OVMF.code)}`);
    args.push('-drive', `if=pflash,format=raw,file=${escapeOption(vars)}`);
  }
  return { binary: options.binary ?? 'qemu-system-x86_64', args, qmpSocket, agentSocket, consoleLog };
}

/**
 * Starts a VM that outlives this process, as a hypervisor host runs its VMs: QEMU daemonizes itself once it is set
 * up (its QMP socket listening) and writes its pid to `<dir>/qemu.pid`. Same command line as startQemuVm. Rejects with a
 * `QemuProcessError` carrying QEMU's output if it fails to start (a disk that does not open, a kernel missing).
 */
export async function launchQemuVm(options: QemuVmOptions): Promise<void> {
  const { binary, args } = await qemuVmCommand(options);
  await new Promise<void>((resolve, reject) => {
    execFile(
      binary,
      [...args, '-daemonize', '-pidfile', path.join(options.dir, VM_PROCESS_FILES.pid)],
      { timeout: READY_TIMEOUT_MS },
      (error, stdout, stderr) => {
        if (!error) return resolve();
        const output = `${stdout}${stderr}`.trim();
        const message = `${binary} did not start the VM (${error.message.split('\n')[0]}).`;
        reject(new QemuProcessError('QemuProcessExited', output ? `${message}\nIts output:\n${output}` : message));
      },
    );
  });
}

/**
 * Starts `qemu-system-x86_64` as a child of this process booting as `boot` says, with a
 * QMP monitor on `<dir>/qmp.sock`, the guest agent's virtio-serial port (`org.qemu.guest_agent.0`) on
 * `<dir>/qga.sock`, the serial console in `<dir>/console.log`, and each disk a qcow2 `-blockdev` node of its
 * `nodeName` attached as virtio-blk.
 * Resolves once QMP answers, so the disks are open (the guest is still booting: see `waitForAgent`). Rejects with a
 * `QemuProcessError` carrying QEMU's output if it exits first (a disk that does not open, an unknown option) or does
 * not listen within 30 s.
 */
export async function startQemuVm(options: QemuVmOptions): Promise<QemuVm> {
  const { binary, args, qmpSocket, agentSocket, consoleLog } = await qemuVmCommand(options);
  const vm = await startQemuProcess({
    binary,
    args,
    readySocket: qmpSocket,
    readyTimeoutMs: READY_TIMEOUT_MS,
    stopTimeoutMs: STOP_TIMEOUT_MS,
  });

  const waitForAgent = (timeoutMs: number): Promise<void> =>
    waitForGuestAgent({
      dir: options.dir,
      timeoutMs,
      exited: () => {
        const status = vm.exitStatus();
        return status === undefined ? undefined : `${binary} exited with ${status}.${vm.outputTail()}`;
      },
    });

  return { qmpSocket, agentSocket, consoleLog, pid: vm.pid, exited: vm.exited, waitForAgent, stop: vm.stop };
}

/**
 * Waits until the guest agent of the VM listening in `dir` answers `guest-ping`. Rejects with
 * `QemuGuestAgentNotReady` and the console's last lines if it has not within `timeoutMs`, and with
 * `QemuProcessExited` as soon as `exited` says why QEMU is gone (the guest powered off or panicked).
 */
export async function waitForGuestAgent(o: {
  dir: string;
  timeoutMs: number;
  /** Why QEMU is gone, or undefined while it runs. */
  exited: () => string | undefined;
}): Promise<void> {
  const agentSocket = path.join(o.dir, VM_PROCESS_FILES.agent);
  const consoleTail = async (): Promise<string> => {
    const text = await fs.readFile(path.join(o.dir, VM_PROCESS_FILES.console), 'utf8').catch(() => '');
    const lines = text.trimEnd().split('\n').slice(-CONSOLE_TAIL_LINES);
    return lines.join('') ? `\nThe guest's console (last lines):\n${lines.join('\n')}` : '';
  };
  const deadline = Date.now() + o.timeoutMs;
  let lastError = 'no attempt';
  for (;;) {
    const gone = o.exited();
    if (gone !== undefined) {
      const message = `QEMU ended before its guest agent answered: ${gone}`;
      throw new QemuProcessError('QemuProcessExited', message + (await consoleTail()));
    }
    const remaining = deadline - Date.now();
    if (remaining <= 0) {
      const message =
        `The guest agent on ${agentSocket} did not answer within ${o.timeoutMs} ms (${lastError}); check that the ` +
        `guest boots and runs qemu-ga on the ${GUEST_AGENT_PORT} port.`;
      throw new QemuProcessError('QemuGuestAgentNotReady', message + (await consoleTail()));
    }
    try {
      const agent = await GuestAgentClient.connect(agentSocket, {
        timeoutMs: Math.min(AGENT_ATTEMPT_TIMEOUT_MS, remaining),
      });
      try {
        await agent.ping();
        return;
      } finally {
        await agent.close();
      }
    } catch (error) {
      lastError = error instanceof Error ? error.message : String(error);
    }
    await new Promise((resolve) => setTimeout(resolve, Math.min(AGENT_RETRY_INTERVAL_MS, remaining)));
  }
}
