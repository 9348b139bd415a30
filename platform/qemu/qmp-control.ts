import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { z } from 'zod';
import { pathExists } from '../../dataplane';
import type { DiskWriter } from '../../dataplane';
import { GuestFreezeError, SnapshotError } from '../../domain/errors';
import type { Disk, Vm, VmLoad } from '../../domain/model';
import { vmDisk } from '../../domain/rules';
import type { AtPointInTime, ViewOutcome } from '../ports';
import { abandonCheckpoint, commitCheckpoint, inspectCheckpoint } from './bitmaps';
import type { ExportedDiskView, QemuControl, ViewPlan } from './control';
import { FreezeGuardError, FreezeGuardErrorType, ProtocolUnavailableError, type AgentFailure } from './errors';
import { closeViews, openViews } from './fleecing';
import { ensureFreezeGuard, FreezeGuardClient } from './freeze-guard';
import { checkpointBitmap, qemuDiskNode, qemuVmDir, qemuVmFile, QEMU_VM_FILES } from './host-layout';
import { openQemuDiskWriter } from './nbd-writer';
import { QmpClient } from './qmp';
import { launchQemuVm } from './vm-process';
import { socketAccepts } from './wire';

const exec = promisify(execFile);

/**
 * What a VM's configuration must say for this driver to start it (a restored VM gets its source's): CPUs, memory,
 * and how it boots: from its first disk through the firmware (`{ firmware: 'bios' | 'uefi' }`, as cloud images do),
 * or a direct kernel boot (kernel and initramfs files on the host, and the kernel command line).
 */
const QemuVmConfigSchema = z.object({
  vcpus: z.number().int().min(1).default(1),
  memoryMiB: z.number().int().min(16).default(256),
  boot: z.union([
    z.object({ firmware: z.enum(['bios', 'uefi']) }).strict(),
    z.object({ kernel: z.string().min(1), initrd: z.string().min(1), append: z.string().optional() }).strict(),
  ]),
});

// SIGTERM makes QEMU close its disks cleanly; after this long a VM being removed is killed.
const STOP_TIMEOUT_MS = 20_000;

/** How long the guard waits on the guest agent for a freeze: a silent agent costs a snapshot at most this. */
const FREEZE_TIMEOUT_MS = 10_000;

// How long a readLoad watches the VM's counters: utilisation is their change over this interval.
const LOAD_SAMPLE_MS = 1_000;

const blockstatsSchema = z.array(
  z.object({
    'node-name': z.string().optional(),
    qdev: z.string().optional(),
    stats: z.object({ rd_total_time_ns: z.number(), wr_total_time_ns: z.number() }),
  }),
);

/**
 * The direct-QMP control (see QemuControl): the driver talks to each VM's own QEMU process, which listens in
 * `<hostDir>/vms/<vm>/` (QMP on `qmp.sock`, the guest agent's virtio-serial chardev on `qga.sock`).
 *
 * - freeze/thaw: through the host's freeze guard (`<hostDir>/freeze-guard/`, started on first use), which holds the
 *   lease and thaws by itself when the worker stops renewing it (qemu-ga has no auto-thaw).
 * - views: image fleecing (fleecing.ts): one QMP transaction over all the VM's disks adds this snapshot's checkpoint
 *   bitmap, disables the parent's and starts the copy-before-write jobs; the views are exported read-only over NBD
 *   on `nbd.sock`. A disk whose parent bitmap cannot be trusted (bitmaps.ts) is planned for a full read, with why.
 * - close: the views are torn down; a kept snapshot's bitmap becomes the checkpoint (the parent's is removed), a
 *   discarded one's writes are merged back into the parent's bitmap, so the next incremental misses nothing.
 * - load: CPU from the QEMU process's CPU time (`/proc/<pid>/stat`, pid from `qemu.pid` in the VM's folder when the
 *   launcher wrote one), disk I/O from `query-blockstats` time spent in requests, both over one second.
 * - new VMs (restores): empty qcow2 disks in the VM's folder, written through a qemu-storage-daemon's writable NBD
 *   export, then the VM's own QEMU started daemonized (`accel`: `kvm` by default) with the captured configuration.
 */
export class QmpControl implements QemuControl {
  private readonly guard: FreezeGuardClient;

  constructor(
    private readonly hostDir: string,
    private readonly options: { accel?: 'kvm' | 'tcg' } = {},
  ) {
    this.guard = new FreezeGuardClient(path.join(hostDir, 'freeze-guard'));
  }

  /**
   * A guest whose agent cannot freeze it is a `GuestFreezeError` with the agent's cause (no agent socket: at once; a
   * silent agent: after the guard's 10 s freeze timeout); the guard's own failures keep their FreezeGuardError.
   */
  async freeze(vm: Vm, lease: { leaseMs: number }): Promise<void> {
    const agentSocket = this.file(vm.id, 'agent');
    try {
      await this.guard.freeze({ vmId: vm.id, agentSocket, leaseMs: lease.leaseMs, timeoutMs: FREEZE_TIMEOUT_MS });
    } catch (error) {
      if (!(error instanceof FreezeGuardError) || error.type !== FreezeGuardErrorType.GuestFreezeFailed) throw error;
      throw new GuestFreezeError(vm.id, freezeFailureReason(error.details.agentError, agentSocket));
    }
  }

  async renewFreeze(vm: Vm, lease: { leaseMs: number }): Promise<void> {
    await this.guard.renew(vm.id, lease.leaseMs);
  }

  async thaw(vm: Vm): Promise<void> {
    await this.guard.thaw(vm.id);
  }

  async stopFreezeGuard(): Promise<void> {
    await this.guard.stop();
  }

  async planViews(vm: Vm, viewId: string, parentViewId: string | null): Promise<ViewPlan> {
    return this.withQmp(vm.id, async (qmp) => {
      const expected = parentViewId === null ? null : checkpointBitmap(parentViewId);
      const disks: ViewPlan['disks'] = [];
      for (const disk of vm.disks) {
        const nodeName = qemuDiskNode(disk.name);
        const state = await inspectCheckpoint(qmp, nodeName, expected);
        disks.push({
          name: disk.name,
          nodeName,
          parentBitmap: state.usable ? expected : null,
          fullReason: state.usable ? null : state.reason,
        });
      }
      return { vmId: vm.id, viewId, newBitmap: checkpointBitmap(viewId), disks };
    });
  }

  /**
   * Before anything else, a VM with a guest agent channel gets the host's freeze guard started if it is not running
   * (a second or so, once per host): the freeze around the transaction goes through it, and its start is not time the
   * guest spends frozen.
   */
  async openViews(plan: ViewPlan, atPointInTime?: AtPointInTime): Promise<ExportedDiskView[]> {
    if (await pathExists(this.file(plan.vmId, 'agent'))) await ensureFreezeGuard(this.guard.stateDir);
    const tempDir = this.tempDir(plan.vmId);
    await fs.mkdir(tempDir, { recursive: true });
    return this.withQmp(plan.vmId, async (qmp) => {
      const views = await openViews(qmp, {
        viewId: plan.viewId,
        tempDir,
        nbdSocket: this.nbdSocket(plan.vmId),
        disks: plan.disks,
        newBitmap: plan.newBitmap,
        atPointInTime,
      });
      return views.map(({ name, exportName, sizeBytes }) => ({ name, exportName, sizeBytes }));
    });
  }

  async closeViews(plan: ViewPlan, outcome: ViewOutcome): Promise<void> {
    await this.onViews(plan, async (qmp) => {
      await closeViews(qmp, { viewId: plan.viewId, tempDir: this.tempDir(plan.vmId) });
      if (outcome === 'kept') await commitCheckpoint(qmp, plan.disks);
      else await abandonCheckpoint(qmp, plan.disks, plan.newBitmap);
    });
  }

  async dropViews(plan: ViewPlan): Promise<void> {
    await this.onViews(plan, (qmp) => closeViews(qmp, { viewId: plan.viewId, tempDir: this.tempDir(plan.vmId) }));
  }

  tempDir(vmId: string): string {
    return this.file(vmId, 'tempDir');
  }

  nbdSocket(vmId: string): string {
    return this.file(vmId, 'nbd');
  }

  async readLoad(vm: Vm): Promise<VmLoad> {
    return this.withQmp(vm.id, async (qmp) => {
      const before = { at: performance.now(), cpu: await this.cpuTicks(vm.id), io: await ioNanos(qmp) };
      await new Promise((resolve) => setTimeout(resolve, LOAD_SAMPLE_MS));
      const after = { at: performance.now(), cpu: await this.cpuTicks(vm.id), io: await ioNanos(qmp) };
      const elapsedMs = after.at - before.at;
      // Clock ticks are 10 ms on Linux (USER_HZ 100).
      const cpuMs = before.cpu === undefined || after.cpu === undefined ? 0 : (after.cpu - before.cpu) * 10;
      const ioMs = (after.io - before.io) / 1e6;
      return { cpuPercent: percent(cpuMs, elapsedMs), diskIoPercent: percent(ioMs, elapsedMs) };
    });
  }

  /** A new VM's disks are empty qcow2 images in its folder, `<hostDir>/vms/<vm>/<disk>.qcow2` (made anew on retry). */
  async createDisks(vmId: string, disks: { name: string; sizeBytes: number }[]): Promise<Disk[]> {
    const dir = qemuVmDir(this.hostDir, vmId);
    await fs.mkdir(dir, { recursive: true });
    const created: Disk[] = [];
    for (const disk of disks) {
      const image = path.join(dir, `${qemuDiskNode(disk.name)}.qcow2`);
      await exec('qemu-img', ['create', '-q', '-f', 'qcow2', image, String(disk.sizeBytes)]);
      created.push({ ...disk, path: image });
    }
    return created;
  }

  /** Through a qemu-storage-daemon that exports the disk's image writable over NBD (nbd-writer.ts). */
  async writeDisk(vm: Vm, diskName: string): Promise<DiskWriter> {
    const disk = vmDisk(vm, diskName);
    const dir = path.join(qemuVmDir(this.hostDir, vm.id), `restore-${disk.name}`);
    return openQemuDiskWriter({ dir, nodeName: qemuDiskNode(disk.name), path: disk.path });
  }

  /**
   * Starts the VM's own `qemu-system-x86_64`, daemonized (it outlives the worker, as VMs do), listening in its folder
   * like every VM this driver snapshots, booted as its configuration says (QemuVmConfigSchema). A VM whose QMP socket
   * answers runs already.
   */
  async startVm(vm: Vm): Promise<void> {
    const dir = qemuVmDir(this.hostDir, vm.id);
    if (await socketAccepts(path.join(dir, QEMU_VM_FILES.qmp))) return;
    const parsed = QemuVmConfigSchema.safeParse(vm.config);
    if (!parsed.success) {
      const problem = parsed.error.issues.map((issue) => `${issue.path.join('.') || 'config'}: ${issue.message}`);
      throw new SnapshotError(
        'VmNotBootable',
        `VM ${vm.name} cannot be started by the QEMU driver: its configuration needs ` +
          `{ vcpus, memoryMiB, boot: { firmware: 'bios' | 'uefi' } or { kernel, initrd, append } } (${problem.join('; ')}).`,
      );
    }
    const config = parsed.data;
    await launchQemuVm({
      dir,
      disks: vm.disks.map((disk) => ({ nodeName: qemuDiskNode(disk.name), path: disk.path })),
      boot: config.boot,
      memoryMiB: config.memoryMiB,
      vcpus: config.vcpus,
      accel: this.options.accel,
    });
  }

  /** Quits the VM's QEMU process (SIGKILL if it has not exited after 20 s) and removes its folder with its disks. */
  async removeVm(vmId: string): Promise<void> {
    const dir = qemuVmDir(this.hostDir, vmId);
    const pid = Number(await fs.readFile(path.join(dir, QEMU_VM_FILES.pid), 'utf8').catch(() => ''));
    if (Number.isSafeInteger(pid) && pid > 0 && (await isQemu(pid))) {
      process.kill(pid, 'SIGTERM');
      const deadline = Date.now() + STOP_TIMEOUT_MS;
      while (await isQemu(pid)) {
        if (Date.now() > deadline) process.kill(pid, 'SIGKILL');
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    }
    await fs.rm(dir, { recursive: true, force: true });
  }

  /** Runs `use` on the QMP monitor of the plan's VM; a QEMU process that is gone took its views with it. */
  private async onViews(plan: ViewPlan, use: (qmp: QmpClient) => Promise<void>): Promise<void> {
    await this.withQmp(plan.vmId, use).catch(async (error) => {
      // Its bitmaps are inspected by the next snapshot; only the temporary files are left to remove.
      if (!isGone(error)) throw error;
      await fs.rm(this.tempDir(plan.vmId), { recursive: true, force: true });
    });
  }

  private async withQmp<T>(vmId: string, use: (qmp: QmpClient) => Promise<T>): Promise<T> {
    const qmp = await QmpClient.connect(this.file(vmId, 'qmp'));
    try {
      return await use(qmp);
    } finally {
      await qmp.close();
    }
  }

  /** The QEMU process's user + system CPU time in clock ticks, when its pid is known. */
  private async cpuTicks(vmId: string): Promise<number | undefined> {
    const pid = await fs.readFile(this.file(vmId, 'pid'), 'utf8').catch(() => undefined);
    if (pid === undefined) return undefined;
    const stat = await fs.readFile(`/proc/${pid.trim()}/stat`, 'utf8').catch(() => undefined);
    // Fields after the command name (which may hold spaces, so it is skipped by its closing parenthesis): utime is
    // the 12th and stime the 13th.
    const fields = stat?.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields ? Number(fields[11]) + Number(fields[12]) : undefined;
  }

  private file(vmId: string, which: keyof typeof QEMU_VM_FILES): string {
    return qemuVmFile(this.hostDir, vmId, which);
  }
}

/** Why the agent could not freeze the guest, as a snapshot records it (`crash-consistent: <reason>`). */
function freezeFailureReason(agentError: AgentFailure | undefined, agentSocket: string): string {
  switch (agentError?.type) {
    case 'GuestAgentUnavailable':
      return `the VM has no guest agent channel (nothing listens on ${agentSocket})`;
    case 'GuestAgentTimeout':
      return `the guest agent did not answer within ${FREEZE_TIMEOUT_MS / 1000} s`;
    case 'GuestAgentConnectionClosed':
      return 'the guest agent channel closed during the freeze';
    case 'GuestAgentCommandFailed':
      return `the guest agent refused the freeze (${agentError.message})`;
    default:
      return `the guest agent could not freeze it (${agentError?.message ?? 'no answer'})`;
  }
}

/** Time the VM's disks spent serving requests so far, in nanoseconds (all devices). */
async function ioNanos(qmp: QmpClient): Promise<number> {
  const devices = blockstatsSchema.parse(await qmp.execute('query-blockstats', { 'query-nodes': false }));
  return devices.reduce((sum, device) => sum + device.stats.rd_total_time_ns + device.stats.wr_total_time_ns, 0);
}

function percent(busyMs: number, elapsedMs: number): number {
  return Math.max(0, Math.min(100, Math.round((100 * busyMs) / elapsedMs)));
}

/** Whether `pid` is a running QEMU process (not another process that reused the pid). */
async function isQemu(pid: number): Promise<boolean> {
  const stat = await fs.readFile(`/proc/${pid}/stat`, 'utf8').catch(() => '');
  // A zombie (state Z after the command name) has exited.
  return /qemu/.test(stat.slice(0, stat.lastIndexOf(')') + 1)) && stat[stat.lastIndexOf(')') + 2] !== 'Z';
}

/** The VM's QEMU process does not listen (it exited): nothing at its QMP socket, or nothing accepting there. */
function isGone(error: unknown): boolean {
  return error instanceof ProtocolUnavailableError && ['ENOENT', 'ECONNREFUSED'].includes(error.reason);
}
