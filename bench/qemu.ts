/**
 * The QEMU driver section: snapshots through the real workflow with the QEMU hypervisor driver, each VM's qcow2 disk
 * served by its own qemu-storage-daemon (QEMU's block layer and QMP, without a guest), the guest's writes made through
 * a writable NBD export of the disk node (as test/platform/qemu-capture.test.ts does).
 */
import { randomBytes, randomInt } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { DEFAULT_CHUNK_SIZE } from '../dataplane';
import { GuestFreezeError } from '../domain/errors';
import type { Region, Vm } from '../domain/model';
import type { NbdClient } from '../platform/qemu/nbd';
import { QemuHypervisor } from '../platform/qemu/qemu-hypervisor';
import { QEMU_VM_FILES, qemuVmDir } from '../platform/qemu/host-layout';
import { exportWritable } from '../platform/qemu/nbd-writer';
import { startStorageDaemon } from '../platform/qemu/storage-daemon';
import type { SnapshotWorkflowResult } from '../workflows/snapshot';
import { BLOCK_BYTES, IMAGE_BYTES, buildSparseDisk } from './images';
import { ResticRepository } from './restic';
import { ACCOUNT, activitySpans, benchVm, copySlice, startBenchService } from './service';
import { GiB, MiB, run, settleWrites, timed, warmPageCache, which } from './util';

/** The sparse disk: this size, holding the 1 GiB image's data spread over it (see sparseOffset). */
export const QEMU_SPARSE_DISK_BYTES = 20 * GiB;
/** Share of the image's data rewritten before each incremental. */
export const CHANGED_PERCENTS = [1, 5] as const;
/**
 * How the rewritten data lies: in distinct 4 KiB blocks at random positions (the case, where a few blocks
 * touch many chunks), or in distinct 1 MiB runs at random positions (as files are mostly written).
 */
export const WRITE_PATTERNS = { scattered: BLOCK_BYTES, clustered: MiB } as const;
export type WritePattern = keyof typeof WRITE_PATTERNS;
/** The image is cut into pieces this large, piece i placed at i × SPARSE_PIECE_STRIDE on the sparse disk. */
const SPARSE_PIECE_BYTES = 256 * MiB;
const SPARSE_PIECE_STRIDE = 5 * GiB;
/**
 * The warm-up disk: a 64 MiB slice of the image, so the warm-up snapshot compresses and verifies data like the timed
 * ones (random bytes left the compression path cold: the first timed full snapshot then took 1.5× as long); in a
 * region of its own, it shares no repository with them.
 */
const WARM_UP_DISK_BYTES = 64 * MiB;
const TASK_QUEUE = 'bench-qemu';
const WRITABLE_EXPORT = 'root-rw';
/** Guest writes in flight on the writable export. */
const WRITES_IN_FLIGHT = 64;

/** One snapshot through the workflow: seconds from the create request to the SUCCESS result, and what it read. */
export interface QemuSnapshotRun {
  seconds: number;
  /** captureBytesRead of the workflow result. */
  bytesRead: number;
  addedBytes: number;
  consistency: string;
  /** Each activity's seconds, in order (see activitySpans). */
  activities: { name: string; seconds: number }[];
}

export interface QemuIncrementalRun extends QemuSnapshotRun {
  percent: number;
  pattern: WritePattern;
  blocksWritten: number;
  /** Chunks the writes touched, times the chunk size: what an incremental has to read. */
  changedChunkBytes: number;
}

export interface QemuDiskResult {
  sizeBytes: number;
  full: QemuSnapshotRun;
  incrementals: QemuIncrementalRun[];
}

export interface QemuResult {
  image: QemuDiskResult;
  sparse: QemuDiskResult;
  /** `restic backup` of the raw 1 GiB image, into a fresh repository. */
  restic?: { seconds: number };
}

/**
 * The QEMU driver for a process without a guest: qemu-storage-daemon runs none, so no agent answers a freeze and the
 * workflow takes the crash-consistent path it takes for any VM without an agent (without starting the host's freeze
 * guard, a process that would outlive the benchmark).
 */
class GuestlessQemuHypervisor extends QemuHypervisor {
  override freeze(vm: Vm): Promise<void> {
    return Promise.reject(new GuestFreezeError(vm.id, 'qemu-storage-daemon runs no guest'));
  }
}

/** Where the byte at `imageOffset` of the image lies on the sparse disk (pieces are chunk- and cluster-aligned). */
function sparseOffset(imageOffset: number): number {
  const piece = Math.floor(imageOffset / SPARSE_PIECE_BYTES);
  return piece * SPARSE_PIECE_STRIDE + (imageOffset % SPARSE_PIECE_BYTES);
}

/** A VM of the benchmark whose one disk is a qcow2 node `root` of its own qemu-storage-daemon. */
interface QemuVm {
  vm: Vm;
  /** Places an image offset on this disk. */
  place: (imageOffset: number) => number;
  /** A connection to the writable export of the disk node: the guest's writes. */
  disk: NbdClient;
}

/**
 * Full snapshots of the 1 GiB qcow2 disk (vs `restic backup` of the raw image) and of the 20 GiB sparse one holding
 * the same data, then on each an incremental after CHANGED_PERCENTS of the image's blocks were rewritten. Every
 * process and file it makes is gone when it returns or throws.
 */
export async function benchQemu(options: {
  workDir: string;
  image: string;
  restic?: string;
  log: (message: string) => void;
}): Promise<QemuResult> {
  const { image, log } = options;
  for (const tool of ['qemu-img', 'qemu-storage-daemon']) {
    if (!(await which(tool))) {
      throw new Error(`${tool} is missing: run scripts/setup.sh (or apt-get install qemu-utils qemu-system-x86)`);
    }
  }
  const dir = path.join(options.workDir, 'qemu');
  const hostDir = path.join(dir, 'host');
  const cleanups: (() => Promise<unknown>)[] = [async () => fs.rm(dir, { recursive: true, force: true })];
  try {
    await fs.mkdir(hostDir, { recursive: true });
    log('  building the qcow2 disks (1 GiB, 20 GiB sparse, 64 MiB warm-up)');
    const qcow2 = async (vmId: string, fill: (raw: string) => Promise<unknown>): Promise<string> => {
      const vmDir = qemuVmDir(hostDir, vmId);
      await fs.mkdir(vmDir, { recursive: true });
      const raw = path.join(dir, `${vmId}.raw`);
      await fill(raw);
      const file = path.join(vmDir, 'root.qcow2');
      // qemu-img leaves clusters that read as zeros unallocated: the qcow2 holds only the data.
      await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', raw, file]);
      await fs.rm(raw);
      return file;
    };
    const images = {
      image: await qcow2('vm-qemu-1g', (raw) => run('cp', ['--sparse=always', image, raw])),
      sparse: await qcow2('vm-qemu-20g', (raw) =>
        buildSparseDisk(raw, image, QEMU_SPARSE_DISK_BYTES, (offset) => [sparseOffset(offset)]),
      ),
      warmUp: await qcow2('vm-qemu-warm-up', (raw) => copySlice(image, raw, WARM_UP_DISK_BYTES)),
    };

    const startVm = async (id: string, region: Region, sizeBytes: number, file: string, place = (o: number) => o) => {
      const vmDir = qemuVmDir(hostDir, id);
      const daemon = await startStorageDaemon({ dir: vmDir, disks: [{ nodeName: 'root', path: file }] });
      cleanups.push(() => daemon.stop());
      // The NBD server on the socket the driver exports its views on (one server per process), with the writable
      // export the guest's writes go through.
      const nbdSocket = path.join(vmDir, QEMU_VM_FILES.nbd);
      const disk = await exportWritable(daemon.qmpSocket, {
        socketPath: nbdSocket,
        nodeName: 'root',
        exportName: WRITABLE_EXPORT,
      });
      cleanups.push(() => disk.disconnect());
      return { vm: benchVm(id, region, { path: file, sizeBytes }, { vcpus: 1 }), place, disk };
    };

    const { platform, client, snapshots, close } = await startBenchService({
      dataDir: path.join(dir, 'platform'),
      taskQueue: TASK_QUEUE,
      hypervisor: new GuestlessQemuHypervisor(hostDir),
      log: (message) => log(`  ${message}`),
    });
    cleanups.push(close);
    // Each VM in its own region, so each full snapshot goes into a fresh repository (the two big disks share data).
    const vms = {
      image: await startVm('vm-qemu-1g', 'CANADA-1', IMAGE_BYTES, images.image),
      sparse: await startVm('vm-qemu-20g', 'NORWAY-1', QEMU_SPARSE_DISK_BYTES, images.sparse, sparseOffset),
      warmUp: await startVm('vm-qemu-warm-up', 'US-1', WARM_UP_DISK_BYTES, images.warmUp),
    };
    for (const { vm } of Object.values(vms)) platform.catalog.putVm(vm);

    const snapshot = async (vm: Vm, name: string): Promise<QemuSnapshotRun> => {
      await settleWrites();
      const { seconds, value } = await timed(async () => {
        const started = await snapshots.createSnapshot({
          accountId: ACCOUNT.id,
          vmId: vm.id,
          region: vm.region,
          name,
          requestedBy: 'bench',
        });
        const handle = client.workflow.getHandle(started.workflowId);
        return { workflowId: started.workflowId, result: (await handle.result()) as SnapshotWorkflowResult };
      });
      const { workflowId, result } = value;
      if (result.status !== 'SUCCESS') throw new Error(`snapshot ${name} ended ${result.status}`);
      const record = platform.catalog.getSnapshot(result.snapshotId);
      return {
        seconds,
        bytesRead: result.captureBytesRead,
        addedBytes: result.addedBytes,
        consistency: record?.consistency?.kind ?? 'unknown',
        activities: await activitySpans(client, workflowId),
      };
    };

    log('  warm-up snapshot (64 MiB)');
    await snapshot(vms.warmUp.vm, 'qemu-warm-up');
    for (const file of [images.image, images.sparse]) await warmPageCache(file);

    log('  full snapshot of the 1 GiB disk');
    const imageFull = await snapshot(vms.image.vm, 'qemu-full-1g');
    let restic: QemuResult['restic'];
    if (options.restic) {
      log('  restic backup of the raw image (fresh repository)');
      await settleWrites();
      const repository = await ResticRepository.init(options.restic, path.join(dir, 'restic-repo'));
      restic = { seconds: (await repository.backup(image)).seconds };
    }
    log('  full snapshot of the 20 GiB sparse disk');
    const sparseFull = await snapshot(vms.sparse.vm, 'qemu-full-20g');

    const incrementals = async (target: QemuVm, label: string): Promise<QemuIncrementalRun[]> => {
      const runs: QemuIncrementalRun[] = [];
      for (const pattern of Object.keys(WRITE_PATTERNS) as WritePattern[]) {
        for (const percent of CHANGED_PERCENTS) {
          log(`  ${label}: ${percent} % of the data rewritten (${pattern}), incremental snapshot`);
          const written = await writeRandomBlocks(target, percent, WRITE_PATTERNS[pattern]);
          const run = await snapshot(target.vm, `qemu-incremental-${label}-${pattern}-${percent}`);
          runs.push({ ...run, percent, pattern, ...written });
        }
      }
      return runs;
    };
    return {
      image: { sizeBytes: IMAGE_BYTES, full: imageFull, incrementals: await incrementals(vms.image, '1g') },
      sparse: {
        sizeBytes: QEMU_SPARSE_DISK_BYTES,
        full: sparseFull,
        incrementals: await incrementals(vms.sparse, '20g'),
      },
      restic,
    };
  } finally {
    for (const cleanup of cleanups.reverse()) await cleanup();
  }
}

/**
 * Rewrites `percent` % of the image in blocks of `blockBytes`, distinct, aligned and at random positions, with random
 * bytes, through the VM's writable export (placed on its disk), then flushes. Returns how many and the bytes of the
 * chunks they touch.
 */
async function writeRandomBlocks(
  target: QemuVm,
  percent: number,
  blockBytes: number,
): Promise<{ blocksWritten: number; changedChunkBytes: number }> {
  const imageBlocks = IMAGE_BYTES / blockBytes;
  const blocks = new Set<number>();
  while (blocks.size < Math.round((imageBlocks * percent) / 100)) blocks.add(randomInt(imageBlocks));
  const offsets = [...blocks].map((block) => target.place(block * blockBytes));
  for (let i = 0; i < offsets.length; i += WRITES_IN_FLIGHT) {
    const batch = offsets.slice(i, i + WRITES_IN_FLIGHT);
    await Promise.all(batch.map((offset) => target.disk.write(offset, randomBytes(blockBytes))));
  }
  await target.disk.flush();
  const chunks = new Set<number>();
  for (const offset of offsets) {
    const last = Math.floor((offset + blockBytes - 1) / DEFAULT_CHUNK_SIZE);
    for (let chunk = Math.floor(offset / DEFAULT_CHUNK_SIZE); chunk <= last; chunk++) chunks.add(chunk);
  }
  return { blocksWritten: offsets.length, changedChunkBytes: chunks.size * DEFAULT_CHUNK_SIZE };
}
