import os from 'node:os';
import path from 'node:path';
import type { Client } from '@temporalio/client';
import { tsToMs } from '@temporalio/common/lib/time';
import { dataActivityWorkingSet, workingMemory } from '../dataplane';
import { DEFAULT_HOST_ID } from '../domain/model';
import type { Vm } from '../domain/model';
import { dataMemoryPlan } from '../worker/worker';
import { DATA_ACTIVITY_TYPES, dataTaskQueue } from '../workflows/profiles';
import { createSnapshotEnv, fileHash, takeSnapshot, waitFor } from './helpers/snapshot-env';
import type { SnapshotEnv } from './helpers/snapshot-env';

const MiB = 1024 * 1024;
/** The data activities the test's budget has room for. */
const LIMIT = 2;

let env: SnapshotEnv;

beforeAll(async () => {
  env = await createSnapshotEnv();
  const { catalog } = env.platform;
  catalog.putAccount({ ...catalog.getAccount('fjord')!, creditMicros: 1_000_000_000 });
});

afterAll(async () => {
  await env.close();
});

/** A data activity as the server recorded it: its type, queue and run (start to completion, server time). */
interface DataRun {
  type: string;
  taskQueue: string;
  startedAt: number;
  endedAt: number;
}

/** Every data activity of the workflow's history that ran to an end (completed, failed, timed out or cancelled). */
async function dataRuns(client: Client, workflowId: string): Promise<DataRun[]> {
  const { events } = await client.workflow.getHandle(workflowId).fetchHistory();
  const scheduled = new Map<string, { type: string; taskQueue: string }>();
  const started = new Map<string, number>();
  const runs: DataRun[] = [];
  for (const event of events ?? []) {
    const at = tsToMs(event.eventTime);
    const s = event.activityTaskScheduledEventAttributes;
    if (s) scheduled.set(String(event.eventId), { type: s.activityType!.name!, taskQueue: s.taskQueue!.name! });
    const st = event.activityTaskStartedEventAttributes;
    if (st) started.set(String(st.scheduledEventId), at);
    const end =
      event.activityTaskCompletedEventAttributes ??
      event.activityTaskFailedEventAttributes ??
      event.activityTaskTimedOutEventAttributes ??
      event.activityTaskCanceledEventAttributes;
    if (end) {
      const id = String(end.scheduledEventId);
      const activity = scheduled.get(id)!;
      if ((DATA_ACTIVITY_TYPES as readonly string[]).includes(activity.type)) {
        runs.push({ ...activity, startedAt: started.get(id)!, endedAt: at });
      }
    }
  }
  return runs;
}

/** The most runs that were running at one time (a run ending when another starts does not overlap it). */
function maxOverlap(runs: DataRun[]): number {
  const edges = runs.flatMap((r) => [
    { at: r.startedAt, delta: 1 },
    { at: r.endedAt, delta: -1 },
  ]);
  edges.sort((a, b) => a.at - b.at || a.delta - b.delta);
  let running = 0;
  let most = 0;
  for (const edge of edges) most = Math.max(most, (running += edge.delta));
  return most;
}

describe('one memory budget for the data stages', () => {
  test('the budget sets the data activities at once, and a budget below one working set is refused', () => {
    const workingSet = dataActivityWorkingSet(2);
    expect(dataMemoryPlan(2)).toEqual({
      budgetBytes: 2 * workingSet,
      workingSetBytes: workingSet,
      maxDataActivities: 2,
    });
    expect(dataMemoryPlan(2, 1000).maxDataActivities).toBe(Math.floor((1000 * MiB) / workingSet));
    expect(() => dataMemoryPlan(2, 100)).toThrow(
      `SNAP_DATA_MEMORY_MIB=100 is below the working memory of one data activity with 2 pool threads: set it to at ` +
        `least ${Math.ceil(workingSet / MiB)}`,
    );
  });

  test(`concurrent snapshots and restores run at most ${LIMIT} data activities at once, within the budget`, async () => {
    // Room for LIMIT data activities and half of another one.
    const budgetMiB = Math.floor(((LIMIT + 0.5) * dataActivityWorkingSet(os.availableParallelism())) / MiB);
    const worker = await env.startWorker({ dataMemoryMiB: budgetMiB });
    expect(worker.worker.memory.maxDataActivities).toBe(LIMIT);
    expect(workingMemory.stats().budgetBytes).toBe(budgetMiB * MiB);

    // Four snapshots at once (of four ACTIVE VMs), each with three data stages.
    const vms = ['vm-trainer-01', 'vm-trainer-02', 'vm-infer-01', 'vm-fjord-01'].map((id) =>
      env.platform.catalog.getVm(id)!,
    );
    const records = await Promise.all(vms.map((vm) => takeSnapshot(env, vm, `budget-${vm.name}`)));
    expect(records.map((r) => r.status)).toEqual(vms.map(() => 'SUCCESS'));

    // Every disk of every snapshot restored at once: byte-identical to its source (no guest wrote meanwhile).
    const restores = vms.flatMap((vm: Vm, i) =>
      vm.disks.map(async (disk) => {
        const target = path.join(env.platform.dataDir, `restored-${vm.id}-${disk.name}.raw`);
        await env.snapshots.restoreDisk({
          accountId: vm.accountId,
          snapshotId: records[i]!.id,
          diskName: disk.name,
          targetPath: target,
        });
        return [await fileHash(target), await fileHash(disk.path)];
      }),
    );
    for (const [restored, source] of await Promise.all(restores)) expect(restored).toBe(source);

    // From the server's histories: every data activity ran on the data task queue, never more than LIMIT at once.
    const disks = vms.reduce((sum, vm) => sum + vm.disks.length, 0);
    const query = `TaskQueue = "${env.taskQueue}"`;
    const workflowIds = await waitFor(async () => {
      const ids: string[] = [];
      for await (const execution of env.client.workflow.list({ query })) ids.push(execution.workflowId);
      return ids.length === vms.length + disks ? ids : undefined; // the snapshots and their disks' restores
    });
    const runs = (await Promise.all(workflowIds.map((id) => dataRuns(env.client, id)))).flat();
    expect(runs).toHaveLength(vms.length * 3 + disks);
    expect(new Set(runs.map((r) => r.taskQueue))).toEqual(new Set([dataTaskQueue(env.taskQueue, DEFAULT_HOST_ID)]));
    expect(maxOverlap(runs)).toBe(LIMIT);

    // The working memory held (in use and free) never passed the budget.
    const stats = workingMemory.stats();
    expect(stats.highWaterBytes).toBeGreaterThan(0);
    expect(stats.highWaterBytes).toBeLessThanOrEqual(budgetMiB * MiB);
    await worker.stop();
  });
});
