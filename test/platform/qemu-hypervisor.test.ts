import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { z } from 'zod';
import type { Vm } from '../../domain/model';
import { FREEZE_GUARD_FILES, FreezeGuardClient } from '../../platform/qemu/freeze-guard';
import { GuestAgentClient } from '../../platform/qemu/guest-agent';
import { GUEST, writerTicks } from '../../platform/qemu/guest-image';
import { QmpClient } from '../../platform/qemu/qmp';
import { QemuHypervisor } from '../../platform/qemu/qemu-hypervisor';
import { checkpointBitmap, qemuVmDir } from '../../platform/qemu/host-layout';
import { startStorageDaemon, type StorageDaemon } from '../../platform/qemu/storage-daemon';
import { waitForGuestAgent, type QemuVm } from '../../platform/qemu/vm-process';
import { socketAccepts } from '../../platform/qemu/wire';
import type { SnapshotEnv } from '../helpers/snapshot-env';
import { createSnapshotEnv, takeSnapshot } from '../helpers/snapshot-env';
import { blockState, BOOT_TIMEOUT_MS, bootTestGuest, qemuTestVm } from '../helpers/qemu';

/**
 * The QEMU hypervisor driver, first against qemu-storage-daemon (the same block layer and QMP as a VM, no guest),
 * then end to end: a booted TCG guest whose writer keeps writing is snapshotted live by the real workflow (freeze
 * through the host's freeze guard, fleecing, NBD capture), twice, and restored.
 */

const exec = promisify(execFile);
const MiB = 2 ** 20;
const DISK_BYTES = 8 * MiB;
const HELLO = 'written before the snapshot\n';
/** The source VM's size, which its restored VM must get: not the defaults (1 vCPU, 256 MiB). */
const SIZED = { vcpus: 2, memoryMiB: 320 };

let hostDir: string;

beforeEach(async () => {
  hostDir = await fs.mkdtemp(path.join(os.tmpdir(), 'snap-qemu-host-'));
});

afterEach(async () => {
  // The guard outlives the worker by design; the test ends it.
  await new QemuHypervisor(hostDir).stopFreezeGuard();
  await fs.rm(hostDir, { recursive: true, force: true });
});

async function sha256(buffer: Buffer): Promise<string> {
  return createHash('sha256').update(buffer).digest('hex');
}

/** The bitmaps of disk `node` of the QEMU process on `qmpSocket`. */
async function bitmapNames(qmpSocket: string, node: string) {
  return (await blockState(qmpSocket, [node])).bitmaps[node];
}

/** Everything of the view sets in the QEMU process: exports, jobs, and the nodes beyond the disks. */
async function leftovers(qmpSocket: string, disks: string[]) {
  const { exports, jobs, nodes } = await blockState(qmpSocket, []);
  return { exports, jobs, nodes: nodes.filter((name) => !disks.includes(name)) };
}

describe('against qemu-storage-daemon', () => {
  let daemon: StorageDaemon | undefined;
  let vm: Vm;

  beforeEach(async () => {
    const dir = qemuVmDir(hostDir, 'vm-daemon-01');
    await fs.mkdir(dir, { recursive: true });
    const disks = ['root', 'data'].map((name) => ({ name, path: path.join(dir, `${name}.qcow2`) }));
    for (const [i, disk] of disks.entries()) {
      await exec('qemu-img', ['create', '-q', '-f', 'qcow2', disk.path, String(DISK_BYTES)]);
      // A pattern per disk, and a hole at the end.
      await exec('qemu-io', ['-f', 'qcow2', '-c', `write -P ${0x30 + i} 0 ${DISK_BYTES / 2}`, disk.path]);
    }
    daemon = await startStorageDaemon({ dir, disks: disks.map((d) => ({ nodeName: d.name, path: d.path })) });
    vm = qemuTestVm('vm-daemon-01', disks, DISK_BYTES);
  });

  afterEach(async () => {
    await daemon?.stop();
    daemon = undefined;
  });

  test('views read the disks; release keeps or discards the checkpoint; nothing of a view is left', async () => {
    const hypervisor = new QemuHypervisor(hostDir);
    const first = await hypervisor.openViews(vm, 'snap-1', { parentViewId: null });
    expect(first.map((v) => [v.name, v.sizeBytes])).toEqual([
      ['root', DISK_BYTES],
      ['data', DISK_BYTES],
    ]);
    for (const [i, view] of first.entries()) {
      const reader = await hypervisor.readView(view);
      const bytes = Buffer.alloc(DISK_BYTES);
      await reader.read(bytes, 0);
      await reader.close();
      const expected = Buffer.concat([Buffer.alloc(DISK_BYTES / 2, 0x30 + i), Buffer.alloc(DISK_BYTES / 2)]);
      expect(await sha256(bytes)).toBe(await sha256(expected));
    }
    await hypervisor.releaseViews('snap-1', 'kept');
    expect(await bitmapNames(daemon!.qmpSocket, 'root')).toEqual([
      { name: checkpointBitmap('snap-1'), recording: true },
    ]);

    // The next snapshot is measured against snap-1's checkpoint; discarding it merges its writes back.
    await hypervisor.openViews(vm, 'snap-2', { parentViewId: 'snap-1' });
    expect(await bitmapNames(daemon!.qmpSocket, 'data')).toEqual(
      expect.arrayContaining([
        { name: checkpointBitmap('snap-1'), recording: false },
        { name: checkpointBitmap('snap-2'), recording: true },
      ]),
    );
    await hypervisor.releaseViews('snap-2', 'discarded');
    await hypervisor.releaseViews('snap-2', 'discarded');
    for (const disk of ['root', 'data']) {
      expect(await bitmapNames(daemon!.qmpSocket, disk)).toEqual([
        { name: checkpointBitmap('snap-1'), recording: true },
      ]);
    }
    expect(await leftovers(daemon!.qmpSocket, ['root', 'data'])).toEqual({ exports: [], jobs: [], nodes: [] });
    expect(await fs.readdir(path.join(qemuVmDir(hostDir, vm.id), 'fleecing'))).toEqual([]);
    expect(await fs.readdir(path.join(hostDir, 'views'))).toEqual([]);

    const load = await hypervisor.readLoad(vm);
    expect(load.diskIoPercent).toBeGreaterThanOrEqual(0);
    expect(load.diskIoPercent).toBeLessThanOrEqual(100);
  });

  test('releasing the views of a QEMU process that died removes what is left on the host', async () => {
    const hypervisor = new QemuHypervisor(hostDir);
    await hypervisor.openViews(vm, 'snap-1', { parentViewId: null });
    expect((await fs.readdir(path.join(qemuVmDir(hostDir, vm.id), 'fleecing'))).length).toBe(2);
    process.kill(daemon!.pid, 'SIGKILL');
    await daemon!.exited;
    await hypervisor.releaseViews('snap-1', 'discarded');
    await expect(fs.access(path.join(qemuVmDir(hostDir, vm.id), 'fleecing'))).rejects.toThrow();
    expect(await fs.readdir(path.join(hostDir, 'views'))).toEqual([]);
  });
});

describe('a booted guest, snapshotted live by the snapshot workflow', () => {
  let env: SnapshotEnv;
  let qemu: QemuVm | undefined;

  beforeAll(async () => {
    env = await createSnapshotEnv();
  });

  afterAll(async () => {
    await env.close();
  });

  afterEach(async () => {
    await qemu?.stop();
    qemu = undefined;
  });

  test('two snapshots while the guest writes, both restore to a clean file system with the data', async () => {
    const dir = qemuVmDir(hostDir, 'vm-guest-01');
    await fs.mkdir(dir, { recursive: true });
    const booted = await bootTestGuest(dir, { sizeBytes: DISK_BYTES, files: { 'hello.txt': HELLO } });
    qemu = booted.qemu;
    const vm = qemuTestVm('vm-guest-01', [{ name: 'root', path: booted.rootDisk }], DISK_BYTES);
    env.platform.catalog.putVm(vm);
    // The host's freeze guard is not running yet: it is started before the freeze, so its start is not frozen time.
    const guardAtFreeze: boolean[] = [];
    const guardSocket = path.join(hostDir, 'freeze-guard', FREEZE_GUARD_FILES.socket);
    const hypervisor = new (class extends QemuHypervisor {
      override async freeze(frozen: Vm, lease: { leaseMs: number }): Promise<void> {
        guardAtFreeze.push(await socketAccepts(guardSocket));
        return super.freeze(frozen, lease);
      }
    })(hostDir);
    // Stopped at the end: the next test starts its own worker (on its own host folder) on the env's task queue.
    const worker = await env.startWorker({ hypervisor });
    try {
      await snapshotLiveTwiceAndRestore(vm, qemu);
    } finally {
      await worker.stop();
    }
    expect(guardAtFreeze).toEqual([true, true]);
  }, 900_000);

  async function snapshotLiveTwiceAndRestore(vm: Vm, qemu: QemuVm): Promise<void> {
    const full = await takeSnapshot(env, vm, 'live-full');
    const incremental = await takeSnapshot(env, vm, 'live-incremental');
    expect([full.status, incremental.status]).toEqual(['SUCCESS', 'SUCCESS']);
    expect(incremental.parentSnapshotId).toBe(full.id);
    // The guest kept writing: the writer printed ticks after the second snapshot.
    const ticks = writerTicks(await fs.readFile(qemu.consoleLog, 'utf8')).length;
    await new Promise((resolve) => setTimeout(resolve, 2_000));
    expect(writerTicks(await fs.readFile(qemu.consoleLog, 'utf8')).length).toBeGreaterThan(ticks);
    // Only the last snapshot's checkpoint is left, and nothing of the views.
    expect(await bitmapNames(qemu.qmpSocket, 'root')).toEqual([
      { name: checkpointBitmap(incremental.id), recording: true },
    ]);
    expect(await leftovers(qemu.qmpSocket, ['root'])).toEqual({ exports: [], jobs: [], nodes: [] });
    expect((await new FreezeGuardClient(path.join(hostDir, 'freeze-guard')).status()).leases).toEqual([]);

    for (const snapshot of [full, incremental]) {
      const target = path.join(hostDir, `${snapshot.name}.raw`);
      await env.snapshots.restoreDisk({
        accountId: 'acme',
        snapshotId: snapshot.id,
        diskName: 'root',
        targetPath: target,
      });
      // Frozen while the views opened: the file system is clean without journal replay, the data is there, and the
      // writer's counter matches its log (it is rewritten by rename after each append).
      await exec('e2fsck', ['-fn', target]);
      const cat = async (file: string) => (await exec('debugfs', ['-R', `cat /${file}`, target])).stdout;
      expect(await cat('hello.txt')).toBe('written before the snapshot\n');
      const log = (await cat(GUEST.writerLogFile)).trim().split('\n').map(Number);
      expect(log.length).toBeGreaterThan(0);
      expect(log).toEqual(log.map((_, i) => log[0]! + i));
      expect([log.at(-1), log.at(-2)]).toContain(Number((await cat(GUEST.writerCounterFile)).trim()));
    }
  }

  test.each([
    ['through a direct kernel boot', 'kernel', 'vm-guest-02', DISK_BYTES],
    // The boot partition (48 MiB) holds syslinux, the kernel and the initramfs, the root partition the rest.
    ['from its restored disk through the BIOS', 'bios', 'vm-guest-03', 96 * MiB],
    ['from its restored disk through UEFI', 'uefi', 'vm-guest-04', 96 * MiB],
  ] as const)(
    'a snapshot restored into a new VM boots %s, with the captured configuration and its files',
    async (_, how, vmId, sizeBytes) => {
      const dir = qemuVmDir(hostDir, vmId);
      await fs.mkdir(dir, { recursive: true });
      const booted = await bootTestGuest(dir, {
        sizeBytes,
        files: { 'hello.txt': HELLO },
        ...SIZED,
        boot: how,
      });
      qemu = booted.qemu;
      // Booted from the disk, the new VM's kernel and initramfs are those the snapshot captured on it.
      const boot =
        how === 'kernel'
          ? { kernel: booted.image.kernel, initrd: booted.image.initrd, append: GUEST.writerAppend }
          : { firmware: how };
      const config = { ...SIZED, boot };
      const vm = { ...qemuTestVm(vmId, [{ name: 'root', path: booted.rootDisk }], sizeBytes), config };
      env.platform.catalog.putVm(vm);
      const hypervisor = new QemuHypervisor(hostDir, { accel: 'tcg' });
      const worker = await env.startWorker({ hypervisor });
      const ticksBefore = writerTicks(await fs.readFile(qemu.consoleLog, 'utf8')).length;
      const snapshot = await takeSnapshot(env, vm, `before-restore-${how}`);
      expect(snapshot.status).toBe('SUCCESS');
      await qemu.stop();

      const { vm: restored } = await env.snapshots.restoreVm({
        accountId: 'acme',
        source: { snapshotId: snapshot.id },
        vmName: `${vmId.slice('vm-'.length)}-restored`,
      });
      const restoredDir = qemuVmDir(hostDir, restored.id);
      try {
        expect(restored).toMatchObject({ status: 'ACTIVE', config });
        expect(restored.disks).toEqual([
          { name: 'root', sizeBytes: sizeBytes, path: path.join(restoredDir, 'root.qcow2') },
        ]);
        // It runs on its own (daemonized, outliving the restore) and boots to a ready agent.
        const pid = Number(await fs.readFile(path.join(restoredDir, 'qemu.pid'), 'utf8'));
        const running = () =>
          fs.access(`/proc/${pid}`).then(
            () => undefined,
            () => 'its process is gone',
          );
        let gone: string | undefined;
        const watch = setInterval(() => void running().then((why) => (gone = why)), 500);
        try {
          await waitForGuestAgent({ dir: restoredDir, timeoutMs: BOOT_TIMEOUT_MS, exited: () => gone });
        } finally {
          clearInterval(watch);
        }
        const agent = await GuestAgentClient.connect(path.join(restoredDir, 'qga.sock'));
        try {
          const read = async (file: string) => (await agent.readFile(`${GUEST.rootMount}/${file}`)).toString('utf8');
          expect(await read('hello.txt')).toBe(HELLO);
          // The writer's log as frozen into the snapshot, then continued by the restored guest: every tick the source
          // printed before the snapshot began is there, in order, without a gap.
          const log = (await read(GUEST.writerLogFile)).trim().split('\n').map(Number);
          expect(log.length).toBeGreaterThanOrEqual(ticksBefore);
          expect(log).toEqual(log.map((_, i) => i + 1));
        } finally {
          await agent.close();
        }
        const qmp = await QmpClient.connect(path.join(restoredDir, 'qmp.sock'));
        try {
          expect(z.array(z.unknown()).parse(await qmp.execute('query-cpus-fast'))).toHaveLength(2);
          const memory = z.object({ 'base-memory': z.number() }).parse(await qmp.execute('query-memory-size-summary'));
          expect(memory['base-memory']).toBe(320 * MiB);
        } finally {
          await qmp.close();
        }
      } finally {
        await hypervisor.removeVm(restored.id);
        await worker.stop();
      }
      await expect(fs.access(restoredDir)).rejects.toThrow();
    },
    900_000,
  );
});
