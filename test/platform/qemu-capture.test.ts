import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { WorkflowFailedError } from '@temporalio/client';
import { DEFAULT_CHUNK_SIZE } from '../../dataplane';
import type { Vm } from '../../domain/model';
import type { NbdClient } from '../../platform/qemu/nbd';
import { exportWritable } from '../../platform/qemu/nbd-writer';
import { CheckpointUnusable } from '../../platform/qemu/bitmaps';
import { QemuHypervisor } from '../../platform/qemu/qemu-hypervisor';
import { checkpointBitmap, QEMU_VM_FILES, qemuVmDir } from '../../platform/qemu/host-layout';
import { startStorageDaemon, type StorageDaemon } from '../../platform/qemu/storage-daemon';
import type { SnapshotWorkflowResult } from '../../workflows/snapshot';
import { createSnapshotEnv, fileHash } from '../helpers/snapshot-env';
import type { RunningWorker, SnapshotEnv } from '../helpers/snapshot-env';
import { onlyActivity } from '../helpers/history';
import { blockState, qemuTestVm } from '../helpers/qemu';

/**
 * Capture with the QEMU driver reads only what it must, through the real workflow against qemu-storage-daemon: a
 * full snapshot reads the chunks the view's `base:allocation` reports as data, an incremental only the chunks the
 * parent's dirty bitmap marks, and a chain of incrementals restores byte-identically.
 */

const exec = promisify(execFile);
const MiB = 2 ** 20;
const CHUNK = DEFAULT_CHUNK_SIZE;
const DISK_BYTES = 32 * MiB;
const VM_ID = 'vm-capture-01';
/** The writable export of the disk node, on the process's NBD server: how the test plays the guest. */
const WRITABLE_EXPORT = 'root-rw';

let hostDir: string;
let daemon: StorageDaemon | undefined;
let env: SnapshotEnv;
let disk: NbdClient | undefined;
/** A test's worker (each test's driver has a host folder of its own). */
let worker: RunningWorker | undefined;

beforeEach(async () => {
  // A catalog per test: each test's VM starts with no snapshots.
  env = await createSnapshotEnv();
  hostDir = await fs.mkdtemp(path.join(os.tmpdir(), 'snap-qemu-capture-'));
  const dir = qemuVmDir(hostDir, VM_ID);
  await fs.mkdir(dir, { recursive: true });
  await exec('qemu-img', ['create', '-q', '-f', 'qcow2', path.join(dir, 'root.qcow2'), String(DISK_BYTES)]);
  await startDisk();
});

/** Starts the VM's QEMU process on its disk image, and the writable export the test writes through. */
async function startDisk(): Promise<void> {
  const dir = qemuVmDir(hostDir, VM_ID);
  daemon = await startStorageDaemon({ dir, disks: [{ nodeName: 'root', path: path.join(dir, 'root.qcow2') }] });
  // The NBD server runs on the socket the driver exports its views on (one server per process).
  disk = await exportWritable(daemon.qmpSocket, {
    socketPath: path.join(dir, QEMU_VM_FILES.nbd),
    nodeName: 'root',
    exportName: WRITABLE_EXPORT,
  });
}

/** Ends the VM's QEMU process: cleanly (its bitmaps saved into the image) or by SIGKILL. */
async function stopDisk(how: 'clean' | 'SIGKILL'): Promise<void> {
  await disk!.disconnect();
  disk = undefined;
  if (how === 'SIGKILL') {
    process.kill(daemon!.pid, 'SIGKILL');
    await daemon!.exited;
  } else {
    await daemon!.stop();
  }
  daemon = undefined;
}

afterEach(async () => {
  await worker?.stop();
  worker = undefined;
  await disk?.disconnect();
  disk = undefined;
  await daemon?.stop();
  daemon = undefined;
  await fs.rm(hostDir, { recursive: true, force: true });
  await env.close();
});

/**
 * The QEMU driver for a process without a guest: qemu-storage-daemon has no guest agent, so there is nothing to
 * freeze (the freeze path is tested with a booted guest in qemu-hypervisor.test.ts); everything else is the driver's.
 */
class GuestlessQemuHypervisor extends QemuHypervisor {
  override async freeze(): Promise<void> {}
  override async renewFreeze(): Promise<void> {}
  override async thaw(): Promise<void> {}
}

function vmRecord(): Vm {
  return qemuTestVm(VM_ID, [{ name: 'root', path: path.join(qemuVmDir(hostDir, VM_ID), 'root.qcow2') }], DISK_BYTES);
}

/** Writes random bytes at each offset (through the writable export); returns the chunks the writes touch. */
async function writeRandom(writes: { offset: number; length: number }[]): Promise<Set<number>> {
  const touched = new Set<number>();
  for (const { offset, length } of writes) {
    for (let at = offset; at < offset + length; at += MiB) {
      await disk!.write(at, randomBytes(Math.min(MiB, offset + length - at)));
    }
    for (let c = Math.floor(offset / CHUNK); c * CHUNK < offset + length; c++) touched.add(c);
  }
  await disk!.flush();
  return touched;
}

/** SHA-256 of the disk as it is now, read through the writable export. */
async function diskHash(): Promise<string> {
  const hash = createHash('sha256');
  for (let at = 0; at < DISK_BYTES; at += MiB) hash.update(await disk!.read(at, MiB));
  return hash.digest('hex');
}

async function snapshot(vm: Vm, name: string): Promise<SnapshotWorkflowResult & { status: 'SUCCESS' }> {
  const started = await env.snapshots.createSnapshot({
    accountId: vm.accountId,
    vmId: vm.id,
    region: vm.region,
    name,
    createAsImage: false,
  });
  const result = (await env.client.workflow.getHandle(started.workflowId).result()) as SnapshotWorkflowResult;
  if (result.status !== 'SUCCESS') throw new Error(`snapshot ${name} ended ${result.status}`);
  return result;
}

async function restoredHash(vm: Vm, snapshotId: string): Promise<string> {
  const target = path.join(hostDir, `restored-${snapshotId}.raw`);
  await env.snapshots.restoreDisk({ accountId: vm.accountId, snapshotId, diskName: 'root', targetPath: target });
  return fileHash(target);
}

test('a full snapshot reads only the data; incrementals read exactly the chunks written since; the chain restores', async () => {
  const vm = vmRecord();
  env.platform.catalog.putVm(vm);
  worker = await env.startWorker({ hypervisor: new GuestlessQemuHypervisor(hostDir) });
  // A third of the disk holds data, in two regions; the rest was never written (unallocated qcow2 clusters).
  const data = await writeRandom([
    { offset: 0, length: 8 * MiB },
    { offset: 20 * MiB, length: 3 * MiB },
  ]);
  const full = await snapshot(vm, 'capture-full');
  expect(full.captureBytesRead).toBe(data.size * CHUNK);
  const expected = [{ id: full.snapshotId, hash: await diskHash() }];

  // Three incrementals, each after 12 scattered 4 KiB writes (into data and into holes; some share a chunk).
  for (let round = 1; round <= 3; round++) {
    const writes = Array.from({ length: 12 }, (_, i) => ({
      offset: ((i * 797 + round * 131) % (DISK_BYTES / 4096)) * 4096,
      length: 4096,
    }));
    const touched = await writeRandom(writes);
    const incremental = await snapshot(vm, `capture-incremental-${round}`);
    expect(env.platform.catalog.getSnapshot(incremental.snapshotId)?.parentSnapshotId).toBe(expected.at(-1)!.id);
    expect(incremental.captureBytesRead).toBe(touched.size * CHUNK);
    expected.push({ id: incremental.snapshotId, hash: await diskHash() });
  }

  for (const { id, hash } of expected) expect(await restoredHash(vm, id)).toBe(hash);
}, 300_000);

test('after QEMU is killed the next snapshot is read whole, records why, and restores; the one after is incremental again', async () => {
  const vm = vmRecord();
  env.platform.catalog.putVm(vm);
  worker = await env.startWorker({ hypervisor: new GuestlessQemuHypervisor(hostDir) });
  const data = await writeRandom([{ offset: 0, length: 6 * MiB }]);
  const full = await snapshot(vm, 'killed-full');
  expect(env.platform.catalog.getSnapshot(full.snapshotId)?.fullReads).toEqual([]);

  // The checkpoint bitmap is saved into the image by a clean exit and loaded by the next process, which is killed.
  await stopDisk('clean');
  await startDisk();
  await stopDisk('SIGKILL');
  await startDisk();
  const written = await writeRandom([{ offset: 16 * MiB, length: 4096 }]);
  const afterKill = await snapshot(vm, 'killed-after');
  const record = env.platform.catalog.getSnapshot(afterKill.snapshotId)!;
  expect(record.parentSnapshotId).toBe(full.snapshotId);
  expect(record.fullReads).toEqual([
    { disk: 'root', reason: CheckpointUnusable.inconsistent(checkpointBitmap(full.snapshotId)) },
  ]);
  // Every data chunk was read (not only the one written), and the snapshot holds the disk as it is.
  expect(afterKill.captureBytesRead).toBe((data.size + written.size) * CHUNK);
  expect(await restoredHash(vm, afterKill.snapshotId)).toBe(await diskHash());

  // Its bitmap is a checkpoint again: the next snapshot reads only what changed since.
  const touched = await writeRandom([{ offset: 2 * MiB, length: 4096 }]);
  const next = await snapshot(vm, 'killed-next');
  expect(env.platform.catalog.getSnapshot(next.snapshotId)?.fullReads).toEqual([]);
  expect(next.captureBytesRead).toBe(touched.size * CHUNK);
  expect(await restoredHash(vm, next.snapshotId)).toBe(await diskHash());
}, 300_000);

/** The attempt at which the workflow's one run of `activityType` last started (1: it was not retried). */
async function activityAttempt(workflowId: string, activityType: string): Promise<number | null | undefined> {
  const history = await env.client.workflow.getHandle(workflowId).fetchHistory();
  return onlyActivity(history, activityType).started.attempt;
}

test('temporary space: too little fails at once; running low cancels the snapshot, never a guest write; a small folder suffices for a quiet guest', async () => {
  const vm = vmRecord();
  env.platform.catalog.putVm(vm);
  // Capture reads at 8 MiB/s, so the guest writes while the views are open.
  worker = await env.startWorker({
    hypervisor: new GuestlessQemuHypervisor(hostDir, { tempMinFreeMiB: 8 }),
    captureMaxBytesPerSecond: 8 * MiB,
  });
  await writeRandom([{ offset: 0, length: DISK_BYTES }]);
  const before = await diskHash();
  // The VM's temporary folder holds 24 MiB, less than its 32 MiB disk.
  const tempDir = path.join(qemuVmDir(hostDir, VM_ID), QEMU_VM_FILES.tempDir);
  await fs.mkdir(tempDir);
  await exec('mount', ['-t', 'tmpfs', '-o', `size=${24 * MiB}`, 'tmpfs', tempDir]);
  const start = (name: string) =>
    env.snapshots.createSnapshot({ accountId: vm.accountId, vmId: vm.id, region: vm.region, name });
  const failed = async (workflowId: string) =>
    expect(env.client.workflow.getHandle(workflowId).result()).rejects.toBeInstanceOf(WorkflowFailedError);
  const nothingLeft = async () => {
    expect(await blockState(daemon!.qmpSocket, ['root'])).toEqual({
      nodes: ['root'],
      exports: [WRITABLE_EXPORT],
      jobs: [],
      bitmaps: { root: [] },
    });
    expect(await fs.readdir(tempDir)).toEqual([]);
  };
  try {
    // 1. Less than the 8 MiB kept free: refused at initiation, nothing made, not retried.
    const filler = path.join(tempDir, 'filler');
    await fs.writeFile(filler, Buffer.alloc(20 * MiB));
    const refused = await start('no-room');
    await failed(refused.workflowId);
    await fs.rm(filler);
    const refusal = env.platform.catalog.getSnapshot(refused.snapshotId)!;
    expect(refusal).toMatchObject({ status: 'FAILED', failureType: 'SnapshotSpaceExhausted' });
    expect(refusal.failureReason).toContain('a snapshot needs at least 8 MiB there');
    expect(await activityAttempt(refused.workflowId, 'initiateSnapshot')).toBe(1);
    await nothingLeft();
    expect(await diskHash()).toBe(before);

    // 2. The guest overwrites the whole disk while capture reads: 32 MiB of old bytes cannot fit in 24 MiB, so the
    // views are dropped before the folder is down to its last 8 MiB. Every guest write succeeds (paced at 40 MiB/s,
    // 4 MiB per check of the space: the kept 8 MiB cover it).
    const cancelled = await start('overwritten');
    while (env.platform.catalog.getSnapshot(cancelled.snapshotId)?.status !== 'CAPTURING') {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const written = randomBytes(DISK_BYTES);
    for (let at = 0; at < DISK_BYTES; at += MiB) {
      await disk!.write(at, written.subarray(at, at + MiB));
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    await disk!.flush();
    await failed(cancelled.workflowId);
    const record = env.platform.catalog.getSnapshot(cancelled.snapshotId)!;
    expect(record).toMatchObject({ status: 'FAILED', failureType: 'SnapshotSpaceExhausted' });
    expect(record.failureReason).toContain(`The free space in ${tempDir}`);
    expect(record.failureReason).toContain('the snapshot was cancelled and its views dropped');
    expect(await activityAttempt(cancelled.workflowId, 'captureSnapshot')).toBe(1);
    await nothingLeft();
    expect(await diskHash()).toBe(createHash('sha256').update(written).digest('hex'));

    // 3. A guest that writes little needs little: the same 24 MiB folder takes a snapshot of the 32 MiB disk.
    const quiet = await snapshot(vm, 'quiet');
    expect(await restoredHash(vm, quiet.snapshotId)).toBe(createHash('sha256').update(written).digest('hex'));
    expect(await fs.readdir(tempDir)).toEqual([]);
  } finally {
    // Lazily: a failed test may leave QEMU holding a file there.
    await exec('umount', ['--lazy', tempDir]);
  }
}, 300_000);

test('viewRanges: data where the disk is allocated; changed: the clusters written since a usable parent bitmap', async () => {
  const vm = vmRecord();
  const hypervisor = new QemuHypervisor(hostDir);
  const CLUSTER = 64 * 1024; // qcow2's default cluster, the granularity of its allocation and of the dirty bitmap
  await writeRandom([
    { offset: 0, length: 2 * MiB },
    { offset: 9 * MiB + 100, length: 10 },
  ]);
  const [first] = await hypervisor.openViews(vm, 'snap-a', { parentViewId: null });
  expect(await hypervisor.viewRanges(first!)).toEqual({
    data: [
      { offset: 0, length: 2 * MiB },
      { offset: 9 * MiB, length: CLUSTER },
    ],
    changed: null,
    readWholeReason: CheckpointUnusable.noParentBitmap,
  });
  await hypervisor.releaseViews('snap-a', 'kept');

  await writeRandom([
    { offset: 5 * MiB + 4096, length: 4096 },
    { offset: MiB, length: 4096 },
  ]);
  const [second] = await hypervisor.openViews(vm, 'snap-b', { parentViewId: 'snap-a' });
  // A write after the views opened is the next snapshot's change, not this one's. Into a hole, it makes the view's
  // base:allocation report data there (copy-before-write preserved the hole's zeros): conservative, never less.
  await writeRandom([{ offset: 30 * MiB, length: 4096 }]);
  expect(await hypervisor.viewRanges(second!)).toEqual({
    data: [
      { offset: 0, length: 2 * MiB },
      { offset: 5 * MiB, length: CLUSTER },
      { offset: 9 * MiB, length: CLUSTER },
      { offset: 30 * MiB, length: CLUSTER },
    ],
    changed: {
      sinceSnapshotId: 'snap-a',
      ranges: [
        { offset: MiB, length: CLUSTER },
        { offset: 5 * MiB, length: CLUSTER },
      ],
    },
    readWholeReason: null,
  });
  const reader = await hypervisor.readView(second!);
  const preserved = Buffer.alloc(CLUSTER, 1);
  await reader.read(preserved, 30 * MiB);
  await reader.close();
  expect(preserved.equals(Buffer.alloc(CLUSTER))).toBe(true);
  await hypervisor.releaseViews('snap-b', 'discarded');

  // A parent whose bitmap the disk does not have: the capture is full, and says why.
  const [third] = await hypervisor.openViews(vm, 'snap-c', { parentViewId: 'snap-unknown' });
  expect(await hypervisor.viewRanges(third!)).toMatchObject({
    changed: null,
    readWholeReason: CheckpointUnusable.missing(checkpointBitmap('snap-unknown')),
  });
  await hypervisor.releaseViews('snap-c', 'discarded');
}, 120_000);
