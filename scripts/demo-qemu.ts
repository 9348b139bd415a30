import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import type { Client } from '@temporalio/client';
import { NativeConnection } from '@temporalio/worker';
import { SnapshotClient } from '../client/snapshot-client';
import type { SnapshotRecord, Vm } from '../domain/model';
import type { EmbeddedPlatform } from '../platform/local';
import { GuestAgentClient } from '../platform/qemu/guest-agent';
import { createRootDisk, ensureGuestImage, GUEST, writerTicks } from '../platform/qemu/guest-image';
import { QemuHypervisor } from '../platform/qemu/qemu-hypervisor';
import { QEMU_VM_FILES, qemuVmDir } from '../platform/qemu/host-layout';
import { startQemuVm, waitForGuestAgent } from '../platform/qemu/vm-process';
import { createSnapshotWorker } from '../worker/worker';

const exec = promisify(execFile);
const VM_ID = 'vm-guest-01';
/** The demo's QEMU host: the guest's VM is placed there, and the second worker stands for that host. */
const HOST_ID = 'qemu-1';
const DISK_BYTES = 64 * 2 ** 20;
// A TCG guest boots to a ready agent in about 30 s here; a loaded machine takes longer.
const BOOT_TIMEOUT_MS = 300_000;

/** What the real-VM part of the demo shares with the rest of it. */
export interface RealVmDemo {
  platform: EmbeddedPlatform;
  dataDir: string;
  client: Client;
  /** The Temporal server's address: the QEMU host's worker connects to it on a connection of its own. */
  address: string;
  namespace: string;
  /** The demo's task queue, which every worker shares (the QEMU host's worker too). */
  taskQueue: string;
  /** Takes a snapshot, showing its progress and Web UI link (the demo's own). */
  take(snapshots: SnapshotClient, vm: Vm, name: string): Promise<SnapshotRecord>;
}

/**
 * The demo's real VM (needs QEMU, which scripts/setup.sh installs): boots the tiny Debian-kernel guest under QEMU
 * (TCG here; `SNAP_QEMU_ACCEL=kvm` where KVM works) while its writer workload keeps writing, snapshots it live through
 * the QEMU driver (printing how long the guest was frozen), takes an incremental, restores the
 * incremental into a new VM that boots, and reads a file back through the restored guest's agent. The guest runs on
 * its own worker, a second host (`qemu-1`, the driver's folder `<data dir>/qemu`), which runs its host steps and data
 * stages; both VMs are stopped at the end.
 */
export async function demoRealVm(demo: RealVmDemo): Promise<void> {
  if (
    !(await exec('qemu-system-x86_64', ['--version']).then(
      () => true,
      () => false,
    ))
  ) {
    console.log('\nReal VM part skipped: qemu-system-x86_64 is not installed (bash scripts/setup.sh installs it).');
    return;
  }
  console.log('\nA real VM: booting a QEMU guest (the kernel from Debian, a busybox initramfs with qemu-ga)...');
  const accel = process.env.SNAP_QEMU_ACCEL === 'kvm' ? 'kvm' : 'tcg';
  const hostDir = path.join(demo.dataDir, 'qemu');
  const image = await ensureGuestImage('.cache/guest');
  const dir = qemuVmDir(hostDir, VM_ID);
  const rootDisk = path.join(dir, 'root.qcow2');
  await fs.mkdir(dir, { recursive: true });
  // The disk persists between runs, with its checkpoint bitmap: a second run's first snapshot is incremental too.
  if (
    !(await fs.access(rootDisk).then(
      () => true,
      () => false,
    ))
  ) {
    await createRootDisk(rootDisk, { sizeBytes: DISK_BYTES, files: { 'hello.txt': 'written before the snapshot\n' } });
  }
  const config = {
    vcpus: 1,
    memoryMiB: 256,
    boot: { kernel: image.kernel, initrd: image.initrd, append: GUEST.writerAppend },
  };
  const qemu = await startQemuVm({
    dir,
    disks: [{ nodeName: 'root', path: rootDisk }],
    accel,
    ...config,
    ...config.boot,
  });
  const hypervisor = new QemuHypervisor(hostDir, { accel });
  // Another host's worker has a connection of its own (the SDK refuses two workers of one task queue on one).
  const connection = await NativeConnection.connect({ address: demo.address });
  const { worker, pool } = await createSnapshotWorker({
    connection,
    namespace: demo.namespace,
    taskQueue: demo.taskQueue,
    hostId: HOST_ID,
    platform: { ...demo.platform, hypervisor },
  });
  const running = worker.run();
  let restoredId: string | undefined;
  try {
    const bootedAt = performance.now();
    await qemu.waitForAgent(BOOT_TIMEOUT_MS);
    console.log(
      `Booted in ${((performance.now() - bootedAt) / 1000).toFixed(0)} s; its writer appends a tick every 100 ms.`,
    );
    const vm: Vm = {
      id: VM_ID,
      hostId: HOST_ID,
      accountId: 'acme',
      name: 'guest-01',
      region: 'CANADA-1',
      flavor: 'H100-SXM5-80GB',
      status: 'ACTIVE',
      config,
      disks: [{ name: 'root', path: rootDisk, sizeBytes: DISK_BYTES }],
      labels: [],
    };
    demo.platform.catalog.putVm(vm);
    const snapshots = new SnapshotClient({
      client: demo.client,
      catalog: demo.platform.catalog,
      taskQueue: demo.taskQueue,
    });
    const stamp = new Date().toISOString().slice(0, 19).replace(/[:T]/g, '-');
    let last: SnapshotRecord | undefined;
    for (const name of [`guest-01-live-${stamp}-v1`, `guest-01-live-${stamp}-v2`]) {
      // Its details show how long the guest was frozen: for the QMP transaction over its disks only.
      last = await demo.take(snapshots, vm, name);
    }
    const ticks = writerTicks(await fs.readFile(qemu.consoleLog, 'utf8'));
    console.log(`The guest kept writing throughout: tick ${ticks.at(-1)} now.`);

    console.log(`\nRestoring ${last!.name} into a new VM, which boots:`);
    const { vm: restored } = await snapshots.restoreVm({
      accountId: 'acme',
      source: { snapshotId: last!.id },
      vmName: `guest-01-restored-${stamp}`,
    });
    restoredId = restored.id;
    const restoredDir = qemuVmDir(hostDir, restored.id);
    const pid = Number(await fs.readFile(path.join(restoredDir, QEMU_VM_FILES.pid), 'utf8'));
    let gone: string | undefined;
    const watch = setInterval(() => void fs.access(`/proc/${pid}`).catch(() => (gone = 'its process ended')), 500);
    try {
      await waitForGuestAgent({ dir: restoredDir, timeoutMs: BOOT_TIMEOUT_MS, exited: () => gone });
    } finally {
      clearInterval(watch);
    }
    const agent = await GuestAgentClient.connect(path.join(restoredDir, QEMU_VM_FILES.agent));
    try {
      const hello = (await agent.readFile(`${GUEST.rootMount}/hello.txt`)).toString('utf8').trim();
      const log = (await agent.readFile(`${GUEST.rootMount}/${GUEST.writerLogFile}`))
        .toString('utf8')
        .trim()
        .split('\n');
      console.log(`${restored.name} (${restored.id}) booted; its agent reads hello.txt: "${hello}"`);
      console.log(`and the writer's log: ticks ${log[0]}..${log.at(-1)}, continued from the snapshot.`);
    } finally {
      await agent.close();
    }
  } finally {
    if (restoredId) {
      // The demo leaves no VM running: the restored one is removed again (its process, disks and record).
      await hypervisor.removeVm(restoredId);
      demo.platform.catalog.deleteVm(restoredId);
    }
    await qemu.stop();
    // The demo leaves no process behind: the host's freeze guard (long-lived on a real host) is stopped too.
    await hypervisor.stopFreezeGuard();
    // Stopped, it is no longer a VM to snapshot until the next run boots it again.
    const stopped = demo.platform.catalog.getVm(VM_ID);
    if (stopped) demo.platform.catalog.putVm({ ...stopped, status: 'SHUTOFF' });
    worker.shutdown();
    await running;
    await pool.destroy();
    await connection.close();
  }
}
