import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { z } from 'zod';
import type { Vm } from '../../domain/model';
import { DEFAULT_HOST_ID } from '../../domain/model';
import { bitmapsOf } from '../../platform/qemu/bitmaps';
import { GuestAgentClient } from '../../platform/qemu/guest-agent';
import { createBootableDisk, createRootDisk, ensureGuestImage, GUEST } from '../../platform/qemu/guest-image';
import type { GuestImage } from '../../platform/qemu/guest-image';
import { QmpClient } from '../../platform/qemu/qmp';
import { startQemuVm, type QemuVm } from '../../platform/qemu/vm-process';
import { socketAccepts } from '../../platform/qemu/wire';

/** What the QEMU tests share: a VM record, the booted test guest, and what a QEMU process holds. */

/** A TCG guest boots to a ready agent in about 30 s here; a loaded machine takes longer. */
export const BOOT_TIMEOUT_MS = 300_000;

/** The test guest's boot files, built once into `.cache/guest` (as scripts/setup.sh does). */
export function testGuestImage(): Promise<GuestImage> {
  return ensureGuestImage(path.join(__dirname, '../../.cache/guest'));
}

/** An ACTIVE VM of account `acme` in CANADA-1 on the default host, each disk of `sizeBytes`. */
export function qemuTestVm(id: string, disks: { name: string; path: string }[], sizeBytes: number): Vm {
  return {
    id,
    hostId: DEFAULT_HOST_ID,
    accountId: 'acme',
    name: id.replace(/^vm-/, ''),
    region: 'CANADA-1',
    flavor: 'H100-SXM5-80GB',
    status: 'ACTIVE',
    config: { vcpus: 1 },
    disks: disks.map((disk) => ({ ...disk, sizeBytes })),
    labels: [],
  };
}

/**
 * Boots the test guest in `dir` (which must exist) from a new root disk `<dir>/root.qcow2` holding `files`, its
 * writer writing, and waits for its agent. `boot: 'kernel'` (the default): the disk is an ext4 file system and QEMU
 * loads the kernel and initramfs; `'bios'` or `'uefi'`: the disk is partitioned and bootable (createBootableDisk),
 * and the VM boots from it through that firmware. The caller stops the VM.
 */
export async function bootTestGuest(
  dir: string,
  options: {
    sizeBytes: number;
    files?: Record<string, string>;
    vcpus?: number;
    memoryMiB?: number;
    boot?: 'kernel' | 'bios' | 'uefi';
  },
): Promise<{ qemu: QemuVm; rootDisk: string; image: GuestImage }> {
  const image = await testGuestImage();
  const rootDisk = path.join(dir, 'root.qcow2');
  const { sizeBytes, files } = options;
  const firmware = options.boot === 'bios' || options.boot === 'uefi' ? options.boot : undefined;
  if (firmware) await createBootableDisk(rootDisk, { sizeBytes, files, image, append: GUEST.writerAppend });
  else await createRootDisk(rootDisk, { sizeBytes, files });
  const qemu = await startQemuVm({
    dir,
    disks: [{ nodeName: 'root', path: rootDisk }],
    boot: firmware ? { firmware } : { kernel: image.kernel, initrd: image.initrd, append: GUEST.writerAppend },
    vcpus: options.vcpus,
    memoryMiB: options.memoryMiB,
  });
  try {
    await qemu.waitForAgent(BOOT_TIMEOUT_MS);
  } catch (error) {
    await qemu.stop();
    throw error;
  }
  return { qemu, rootDisk, image };
}

const nodesSchema = z.array(z.object({ 'node-name': z.string() }));
const exportsSchema = z.array(z.object({ id: z.string() }));
const jobsSchema = z.array(z.object({ device: z.string() }));

/** A QEMU process's state: what a snapshot could leave behind. */
export interface BlockState {
  /** Named block nodes (QEMU's anonymous `#block…` nodes left out). */
  nodes: string[];
  exports: string[];
  jobs: string[];
  /** The dirty bitmaps of each disk node asked for. */
  bitmaps: Record<string, { name: string; recording: boolean }[]>;
}

/** The block state of the QEMU process listening on `qmpSocket`, with the bitmaps of the disk nodes `disks`. */
export async function blockState(qmpSocket: string, disks: readonly string[]): Promise<BlockState> {
  const qmp = await QmpClient.connect(qmpSocket);
  try {
    const nodes = nodesSchema.parse(await qmp.execute('query-named-block-nodes', { flat: true }));
    const bitmaps: BlockState['bitmaps'] = {};
    for (const disk of disks) {
      bitmaps[disk] = ((await bitmapsOf(qmp, disk)) ?? []).map((b) => ({ name: b.name, recording: b.recording }));
    }
    return {
      nodes: nodes.map((n) => n['node-name']).filter((name) => !name.startsWith('#')),
      exports: exportsSchema.parse(await qmp.execute('query-block-exports')).map((e) => e.id),
      jobs: jobsSchema.parse(await qmp.execute('query-block-jobs')).map((j) => j.device),
      bitmaps,
    };
  } finally {
    await qmp.close();
  }
}

/**
 * What the host's own qemu-ga must never do in a test: freeze this machine's file systems (both freeze commands), or
 * shut down, suspend or change the host.
 */
const HOST_AGENT_BLOCKED_RPCS = [
  'guest-fsfreeze-freeze',
  'guest-fsfreeze-freeze-list',
  'guest-fstrim',
  'guest-shutdown',
  'guest-suspend-disk',
  'guest-suspend-ram',
  'guest-suspend-hybrid',
  'guest-set-time',
  'guest-set-vcpus',
  'guest-set-memory-blocks',
  'guest-set-user-password',
  'guest-exec',
  'guest-file-open',
  'guest-ssh-add-authorized-keys',
  'guest-ssh-remove-authorized-keys',
];

/** A qemu-ga running on this host (not in a guest), for the protocol and freeze-guard tests. */
export interface HostAgent {
  socketPath: string;
  /** Its verbose log: every command it read. */
  logPath: string;
  process: ChildProcess;
  exited: Promise<void>;
  /** SIGTERM (after a SIGCONT, should a test have stopped it) and waits for the exit; idempotent. */
  stop(): Promise<void>;
}

/**
 * Starts qemu-ga on this host listening on `<dir>/qga.sock`, with its pid file, state and verbose log in `dir`, and
 * HOST_AGENT_BLOCKED_RPCS blocked; resolves once it listens, and only after checking that it refuses to freeze.
 */
export async function startHostAgent(dir: string): Promise<HostAgent> {
  const socketPath = path.join(dir, 'qga.sock');
  const logPath = path.join(dir, 'qga.log');
  const child = spawn(
    'qemu-ga',
    ['--method', 'unix-listen', '--path', socketPath, '--pidfile', path.join(dir, 'qga.pid')].concat([
      '--statedir',
      dir,
      '--logfile',
      logPath,
      '--verbose',
      '--block-rpcs',
      HOST_AGENT_BLOCKED_RPCS.join(','),
    ]),
    { stdio: 'ignore' },
  );
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let alive = true;
  void exited.then(() => (alive = false));
  // Ready once its socket accepts a connection (the probe disconnects at once; the agent then listens again).
  while (!(await socketAccepts(socketPath))) {
    if (!alive) throw new Error(`qemu-ga exited before listening; see ${logPath}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    // A test may have left it stopped (SIGSTOP): it acts on the SIGTERM once continued.
    child.kill('SIGCONT');
    await exited;
  };
  const agent = await GuestAgentClient.connect(socketPath);
  try {
    const freeze = (await agent.info()).commands.find((c) => c.name === 'guest-fsfreeze-freeze');
    if (freeze?.enabled !== false) throw new Error('qemu-ga would freeze this host: --block-rpcs did not take effect');
  } catch (error) {
    await stop();
    throw error;
  } finally {
    await agent.close();
  }
  return { socketPath, logPath, process: child, exited, stop };
}
