import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { defaultPayloadConverter } from '@temporalio/common';
import { MockActivityEnvironment } from '@temporalio/testing';
import { createActivities } from '../activities';
import { ChunkPool, distinctChunks } from '../dataplane';
import type { Vm } from '../domain/model';
import { writeGuestBlocks } from '../platform/local';
import type { LocalHypervisor } from '../platform/local';
import { createSnapshotEnv, fileHash, reserveTestSnapshot, waitFor } from './helpers/snapshot-env';
import type { SnapshotEnv } from './helpers/snapshot-env';
import { DEFAULT_HOST_ID } from '../domain/model';
import { DEFAULT_HOST_START_TIMEOUT_MS } from '../worker/worker';

jest.setTimeout(120_000);

let env: SnapshotEnv;
let vm: Vm;
const children: ChildProcess[] = [];

beforeEach(async () => {
  env = await createSnapshotEnv();
  vm = env.platform.catalog.getVm('vm-trainer-01')!;
});

afterEach(async () => {
  for (const child of children.splice(0)) if (child.exitCode === null) child.kill('SIGKILL');
  await env.close();
});

/** Starts a snapshot worker in a process of its own (test/helpers/worker-process.ts); resolves once it polls. */
async function startWorkerProcess(faults: Record<string, string> = {}): Promise<ChildProcess> {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', path.join(__dirname, 'helpers', 'worker-process.ts'), env.platform.dataDir, env.taskQueue],
    { env: { ...process.env, ...faults }, stdio: ['ignore', 'pipe', 'inherit'] },
  );
  children.push(child);
  await new Promise<void>((resolve, reject) => {
    child.stdout.on('data', (data: Buffer) => {
      if (data.toString().includes('ready')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`worker process exited with ${code} before it was ready`)));
  });
  return child;
}

async function kill(child: ChildProcess): Promise<void> {
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGKILL');
  await exited;
}

test('a worker SIGKILLed while the guest is frozen: guest writes pass again within 10 s, and the snapshot completes on a new worker', async () => {
  const frozenWorker = await startWorkerProcess({ SNAP_TEST_SLOW_OPEN_VIEWS_MS: '600000' });
  const started = await env.snapshots.createSnapshot({
    accountId: vm.accountId,
    vmId: vm.id,
    region: vm.region,
    name: 'killed-while-frozen',
  });
  await waitFor(() => env.platform.hypervisor.isFrozen(vm));
  await kill(frozenWorker);
  const killedAt = Date.now();
  await writeGuestBlocks(env.platform.hypervisor, vm, 'root', [{ offset: 0, data: Buffer.from('after the kill') }]);
  const blockedMs = Date.now() - killedAt;
  console.log(`guest writes blocked for ${blockedMs} ms after the worker was killed while the guest was frozen`);
  // The bound: writable again within 10 s of the worker's death (the freeze lease is 5 s).
  expect(blockedMs).toBeLessThan(10_000);

  await startWorkerProcess();
  const record = await env.snapshots.watchProgress(started);
  expect(record.status).toBe('SUCCESS');
  expect(await env.platform.hypervisor.isFrozen(vm)).toBe(false);
});

test('a failure between freeze and thaw leaves the guest thawed: initiation fails, the VM is not frozen, writes pass', async () => {
  const hypervisor = Object.create(env.platform.hypervisor) as LocalHypervisor;
  hypervisor.openViews = (_vm, _viewId, options) =>
    options!.atPointInTime!(async () => {
      expect(await env.platform.hypervisor.isFrozen(vm)).toBe(true);
      throw new Error('injected: opening the views failed');
    });
  const pool = new ChunkPool();
  try {
    const activities = createActivities({
      catalog: env.platform.catalog,
      hypervisor,
      repositoryFor: env.platform.repositoryFor,
      pool,
      captureMaxBytesPerSecond: 0,
      hostId: DEFAULT_HOST_ID,
      hostStartTimeoutMs: DEFAULT_HOST_START_TIMEOUT_MS,
    });
    reserveTestSnapshot(env.platform.catalog, vm, 'snap-fails-frozen', { name: 'fails-frozen' });
    await expect(new MockActivityEnvironment().run(activities.initiateSnapshot, 'snap-fails-frozen')).rejects.toThrow(
      'injected: opening the views failed',
    );
    // Thawed at once by initiation itself, not by the lease running out nor by a workflow compensation.
    expect(await env.platform.hypervisor.isFrozen(vm)).toBe(false);
    await writeGuestBlocks(env.platform.hypervisor, vm, 'root', [{ offset: 0, data: Buffer.from('after failure') }]);
  } finally {
    await pool.destroy();
  }
});

/** The checkpoint the pending attempt of `activityType` last heartbeated, once there is one. */
async function pendingCheckpoint(
  workflowId: string,
  activityType: string,
): Promise<Record<string, number> | undefined> {
  const description = await env.client.workflow.getHandle(workflowId).describe();
  const pending = description.raw.pendingActivities?.find((a) => a.activityType?.name === activityType);
  const payload = pending?.heartbeatDetails?.payloads?.[0];
  return payload
    ? defaultPayloadConverter.fromPayload<{ checkpoint: Record<string, number> }>(payload).checkpoint
    : undefined;
}

describe.each([
  ['capture', 'captureSnapshot', { SNAP_TEST_CAPTURE_BYTES_PER_SECOND: String(16e6) }],
  ['compression', 'compressSnapshot', { SNAP_TEST_PUT_DELAY_MS: '3000' }],
  ['verification', 'verifySnapshot', { SNAP_TEST_GET_DELAY_MS: '300' }],
])('a %s whose worker is SIGKILLed', (_stage, activityType, faults) => {
  test('resumes on a new worker from its checkpoint after the heartbeat timeout: SUCCESS, byte-identical restore', async () => {
    const expected: Record<string, string> = {};
    for (const disk of vm.disks) expected[disk.name] = await fileHash(disk.path);
    const slow = await startWorkerProcess(faults);
    const started = await env.snapshots.createSnapshot({
      accountId: vm.accountId,
      vmId: vm.id,
      region: vm.region,
      name: `killed-in-${activityType}`,
    });
    // Killed once the stage has a checkpoint past its start: the retry must go on from there, not from zero.
    const checkpoint = await waitFor(async () => {
      const details = await pendingCheckpoint(started.workflowId, activityType);
      return details && Object.values(details).some((n) => n > 0) ? details : undefined;
    });
    await kill(slow);
    const countsFile = path.join(env.platform.dataDir, 'resumed-counts.json');
    await startWorkerProcess({ SNAP_TEST_COUNTS_FILE: countsFile });
    const record = await env.snapshots.watchProgress(started);
    expect(record.status).toBe('SUCCESS');
    // What the new worker re-read before the restores below: less than the whole stage, had it started over.
    const resumed = JSON.parse(await fs.readFile(countsFile, 'utf8').catch(() => '{}')) as {
      viewBytesRead?: number;
      chunksRead?: number;
    };
    const diskBytes = vm.disks.reduce((sum, disk) => sum + disk.sizeBytes, 0);
    const chunks = distinctChunks(await env.platform.repositoryFor(vm.region).readManifest(record.id)).length;
    console.log(
      `${activityType} resumed from ${JSON.stringify(checkpoint)}: the new worker read ${JSON.stringify(resumed)} of ${diskBytes} view bytes and ${chunks} chunks`,
    );
    if (activityType === 'compressSnapshot') expect(resumed.viewBytesRead).toBeLessThan(diskBytes);
    if (activityType === 'verifySnapshot') expect(resumed.chunksRead).toBeLessThan(chunks);
    const result = (await env.client.workflow.getHandle(started.workflowId).result()) as {
      captureBytesRead: number;
      logicalBytes: number;
    };
    if (activityType === 'captureSnapshot') {
      expect(result.captureBytesRead).toBeGreaterThan(0);
      expect(result.captureBytesRead).toBeLessThan(result.logicalBytes);
    }
    const restored: Record<string, string> = {};
    for (const disk of vm.disks) {
      const target = path.join(env.platform.dataDir, `restored-${disk.name}.raw`);
      await env.snapshots.restoreDisk({
        accountId: vm.accountId,
        snapshotId: record.id,
        diskName: disk.name,
        targetPath: target,
      });
      restored[disk.name] = await fileHash(target);
    }
    expect(restored).toEqual(expected);
  });
});
