import fs from 'node:fs/promises';
import path from 'node:path';
import type { Vm } from '../domain/model';
import { DATA_ACTIVITY_TYPES, HOST_ACTIVITY_TYPES, dataTaskQueue, hostTaskQueue } from '../workflows/profiles';
import { createSnapshotEnv, fileHash, refusal, takeSnapshot } from './helpers/snapshot-env';
import type { SnapshotEnv } from './helpers/snapshot-env';

/** Where one activity of a workflow's history was scheduled and which worker started it. */
interface ActivityRun {
  type: string;
  taskQueue: string;
  identity: string;
}

const PINNED = new Set<string>([...HOST_ACTIVITY_TYPES, ...DATA_ACTIVITY_TYPES]);

let env: SnapshotEnv;

beforeEach(async () => {
  env = await createSnapshotEnv();
});

afterEach(async () => {
  await env.close();
});

/** Every activity task the workflow's history records: its type, its queue as scheduled, the identity that started it. */
async function activityRuns(workflowId: string): Promise<ActivityRun[]> {
  const { events } = await env.client.workflow.getHandle(workflowId).fetchHistory();
  const scheduled = new Map<string, { type: string; taskQueue: string }>();
  const runs: ActivityRun[] = [];
  for (const event of events ?? []) {
    const s = event.activityTaskScheduledEventAttributes;
    if (s) scheduled.set(String(event.eventId), { type: s.activityType!.name!, taskQueue: s.taskQueue!.name! });
    const started = event.activityTaskStartedEventAttributes;
    if (started) runs.push({ ...scheduled.get(String(started.scheduledEventId))!, identity: started.identity! });
  }
  return runs;
}

/** Puts the catalog's VM `vmId` on `hostId` and returns it. */
function placeVm(vmId: string, hostId: string): Vm {
  const vm = { ...env.platform.catalog.getVm(vmId)!, hostId };
  env.platform.catalog.putVm(vm);
  return vm;
}

/** Expects every host-pinned and data activity of `runs` to have been scheduled on `hostId`'s queues and run there. */
function expectRanOn(runs: ActivityRun[], hostId: string): void {
  const pinned = runs.filter((run) => PINNED.has(run.type));
  for (const run of pinned) {
    const queue = (DATA_ACTIVITY_TYPES as readonly string[]).includes(run.type)
      ? dataTaskQueue(env.taskQueue, hostId)
      : hostTaskQueue(env.taskQueue, hostId);
    expect({ type: run.type, taskQueue: run.taskQueue }).toEqual({ type: run.type, taskQueue: queue });
    expect(run.identity).toMatch(new RegExp(` host ${hostId}$`));
  }
  // The rest (catalog steps) ran on the workflow's own queue.
  for (const run of runs.filter((r) => !PINNED.has(r.type))) expect(run.taskQueue).toBe(env.taskQueue);
}

describe('data stages run on the VM’s host', () => {
  test('with two hosts, every snapshot’s host steps and data stages ran on its VM’s host, and a restore on the source VM’s host', async () => {
    await env.startWorker({ hostId: 'east' });
    await env.startWorker({ hostId: 'west' });
    const east = placeVm('vm-trainer-01', 'east');
    const west = placeVm('vm-trainer-02', 'west');

    // Both at once, then an incremental of the west VM.
    const [onEast, onWest] = await Promise.all([
      takeSnapshot(env, east, 'on-east'),
      takeSnapshot(env, west, 'on-west'),
    ]);
    const second = await takeSnapshot(env, west, 'on-west-2');
    expect([onEast.status, onWest.status, second.status]).toEqual(['SUCCESS', 'SUCCESS', 'SUCCESS']);

    for (const [record, hostId] of [
      [onEast, 'east'],
      [onWest, 'west'],
      [second, 'west'],
    ] as const) {
      const runs = await activityRuns(record.workflowId);
      expect(new Set(runs.filter((r) => PINNED.has(r.type)).map((r) => r.type))).toEqual(
        new Set(['initiateSnapshot', 'captureSnapshot', 'compressSnapshot', 'verifySnapshot', 'releaseViews']),
      );
      expectRanOn(runs, hostId);
    }

    // A VM restored from the west VM's snapshot is placed on west; its disks were written there.
    const restored = await env.snapshots.restoreVm({
      accountId: west.accountId,
      source: { snapshotId: onWest.id },
      vmName: 'restored-on-west',
    });
    expect(restored.vm.hostId).toBe('west');
    expect(env.platform.catalog.getVm(restored.vm.id)?.hostId).toBe('west');
    for (const [i, disk] of restored.vm.disks.entries()) {
      expect(await fileHash(disk.path)).toBe(await fileHash(west.disks[i]!.path));
    }
    const restoreRuns = [];
    for await (const execution of env.client.workflow.list({
      query: `TaskQueue = "${env.taskQueue}" AND WorkflowType = "restoreVmWorkflow"`,
    })) {
      restoreRuns.push(...(await activityRuns(execution.workflowId)));
    }
    expect(restoreRuns.filter((r) => r.type === 'restoreVmDisk')).toHaveLength(west.disks.length);
    expectRanOn(restoreRuns, 'west');
  });

  test('a VM whose host has no worker fails with HostUnavailable within the host start timeout and leaves nothing behind', async () => {
    const startTimeoutMs = 2_000;
    await env.startWorker({ hostId: 'east', hostStartTimeoutMs: startTimeoutMs });
    const vm = placeVm('vm-trainer-01', 'gone');
    const account = env.platform.catalog.getAccount(vm.accountId)!;

    const startedAt = Date.now();
    const error = await refusal(takeSnapshot(env, vm, 'on-a-dead-host'));
    // Initiation and the two host compensations each wait the timeout: well under a minute in all.
    expect(Date.now() - startedAt).toBeLessThan(60_000);
    expect(error.type).toBe('HostUnavailable');
    expect(error.message).toContain('host "gone"');
    expect(error.message).toContain('SNAP_HOST_ID=gone');

    const [record] = env.platform.catalog.listSnapshots({ vmId: vm.id, includeDeleted: true });
    expect(record).toMatchObject({ status: 'FAILED', failureType: 'HostUnavailable' });
    // Nothing kept: the name is free again, no credit is held, no stored data, no view, no staging.
    expect(env.platform.catalog.findSnapshotByName(vm.accountId, 'on-a-dead-host')).toBeUndefined();
    expect(env.platform.catalog.heldCredits(vm.accountId)).toBe(0);
    expect(env.platform.catalog.getAccount(vm.accountId)!.creditMicros).toBe(account.creditMicros);
    const repository = env.platform.repositoryFor(vm.region);
    expect(await repository.listManifestIds()).toEqual([]);
    expect(await repository.listStagingIds()).toEqual([]);
    const views = await fs.readdir(path.join(env.platform.dataDir, 'views')).catch(() => []);
    expect(views).toEqual([]);

    // Initiation was scheduled on the dead host's queue, and no host step ever started (only catalog steps did).
    const { events } = await env.client.workflow.getHandle(record!.workflowId).fetchHistory();
    const initiation = (events ?? []).find(
      (e) => e.activityTaskScheduledEventAttributes?.activityType?.name === 'initiateSnapshot',
    );
    expect(initiation?.activityTaskScheduledEventAttributes?.taskQueue?.name).toBe(
      hostTaskQueue(env.taskQueue, 'gone'),
    );
    expect((await activityRuns(record!.workflowId)).filter((r) => PINNED.has(r.type))).toEqual([]);
  });
});
