import os from 'node:os';
import type { Duration } from '@temporalio/common';
import type { NativeConnection } from '@temporalio/worker';
import { Worker } from '@temporalio/worker';
import type { State } from '@temporalio/worker';
import { createActivities } from '../activities';
import { ChunkPool, dataActivityWorkingSet, workingMemory } from '../dataplane';
import { DEFAULT_HOST_ID } from '../domain/model';
import type { Platform } from '../platform/ports';
import { WORKFLOW_BUNDLE_OPTIONS } from './bundle';
import { WorkerMetrics } from './metrics';
import { DATA_ACTIVITY_TYPES, HOST_ACTIVITY_TYPES, dataTaskQueue, hostTaskQueue } from '../workflows/profiles';

const MiB = 1024 * 1024;
/**
 * Data activities the default budget has room for. Two, so that one's disk and repository I/O overlaps the other's
 * computing on the pool: in the benchmark's measurement (e), 10 snapshots at once finished about 5 % sooner than
 * with one, for about 60 MiB more peak RSS (1.36x of one snapshot against 1.23x).
 */
const DEFAULT_DATA_ACTIVITIES = 2;

/**
 * How long a host-pinned step waits for a worker of its host to start it before it fails with `HostUnavailable`.
 * A live worker polls its host queue all the time and that queue has no budget to wait for, so it starts a step within
 * a second; two minutes also cover a worker's restart (a deployment) without failing the snapshots it had in flight.
 */
export const DEFAULT_HOST_START_TIMEOUT_MS = 2 * 60_000;

export interface SnapshotWorkerOptions {
  connection: NativeConnection;
  namespace: string;
  taskQueue: string;
  /** The host this worker runs on (SNAP_HOST_ID; DEFAULT_HOST_ID by default): it runs the steps of this host's VMs. */
  hostId?: string;
  /** DEFAULT_HOST_START_TIMEOUT_MS by default; tests shorten it. */
  hostStartTimeoutMs?: number;
  platform: Platform;
  captureMaxBytesPerSecond?: number;
  /** A pre-built workflow bundle (tests build one per run); by default the workflows are bundled at start. */
  workflowBundle?: { codePath: string };
  /** How long running activities may finish on shutdown before they are cancelled (their checkpoints survive). */
  shutdownGraceTime?: Duration;
  /**
   * The data stages' memory budget (SNAP_DATA_MEMORY_MIB); by default, room for DEFAULT_DATA_ACTIVITIES. It is the
   * process's (the working memory is one per process): run one snapshot worker per process.
   */
  dataMemoryMiB?: number;
}

/**
 * The data stages' memory budget and what it allows: `budgetBytes` of working memory for the data activities, of
 * which one needs `workingSetBytes` (dataActivityWorkingSet), so `maxDataActivities` = budget / working set run at
 * once. A budget below one working set is refused: the worker could not keep it.
 */
export function dataMemoryPlan(
  poolThreads: number,
  budgetMiB?: number,
): { budgetBytes: number; workingSetBytes: number; maxDataActivities: number } {
  const workingSetBytes = dataActivityWorkingSet(poolThreads);
  const budgetBytes = budgetMiB !== undefined ? budgetMiB * MiB : DEFAULT_DATA_ACTIVITIES * workingSetBytes;
  const maxDataActivities = Math.floor(budgetBytes / workingSetBytes);
  if (maxDataActivities < 1) {
    throw new Error(
      `SNAP_DATA_MEMORY_MIB=${budgetMiB} is below the working memory of one data activity with ${poolThreads} pool ` +
        `threads: set it to at least ${Math.ceil(workingSetBytes / MiB)}`,
    );
  }
  return { budgetBytes, workingSetBytes, maxDataActivities };
}

/**
 * The three Temporal workers of a snapshot worker process, run and shut down together: `main` runs the workflows and
 * the catalog steps on the task queue every worker shares; `host` runs the short steps that must run on this host
 * (HOST_ACTIVITY_TYPES) on the host's task queue; `data` runs the data activities (DATA_ACTIVITY_TYPES) on the host's
 * data task queue, at most `maxDataActivities` at once, so that waiting data stages stay queued on the server
 * (Scheduled, in the Web UI) instead of holding memory.
 */
export class SnapshotWorker {
  constructor(
    readonly main: Worker,
    readonly host: Worker,
    readonly data: Worker,
    readonly memory: ReturnType<typeof dataMemoryPlan>,
  ) {}

  private get workers(): Worker[] {
    return [this.main, this.host, this.data];
  }

  /** RUNNING while all run; otherwise the state of the first that does not. */
  getState(): State {
    return this.workers.find((worker) => worker.getState() !== 'RUNNING')?.getState() ?? 'RUNNING';
  }

  /** Runs all until shutdown() or until one fails (then the others are shut down too). */
  run(): Promise<void> {
    return this.together((worker) => worker.run()).then(() => undefined);
  }

  /** Runs all until `until` settles (resolves with its value), shutdown() is called or one fails. */
  async runUntil<T>(until: Promise<T>): Promise<T> {
    return (await this.together((worker) => worker.runUntil(until)))[0]!;
  }

  /** Starts a graceful shutdown of all (running activities get the shutdown grace time). */
  shutdown(): void {
    for (const worker of this.workers) if (worker.getState() === 'RUNNING') worker.shutdown();
  }

  /** Runs `run` on all; when one fails the others are shut down, and the failure is rethrown once all ended. */
  private async together<T>(run: (worker: Worker) => Promise<T>): Promise<T[]> {
    const results = await Promise.allSettled(
      this.workers.map((worker) =>
        run(worker).catch((error: unknown) => {
          this.shutdown();
          throw error;
        }),
      ),
    );
    const failure = results.find((result) => result.status === 'rejected');
    if (failure) throw failure.reason;
    return results.map((result) => (result as PromiseFulfilledResult<T>).value);
  }
}

/**
 * A snapshot worker of one host: runs the snapshot, restore and maintenance workflows and their activities against
 * the given platform (whose hypervisor is this host's), the data activities within the data stages' memory budget
 * (see SnapshotWorker).
 */
export async function createSnapshotWorker(
  options: SnapshotWorkerOptions,
): Promise<{ worker: SnapshotWorker; pool: ChunkPool }> {
  const hostId = options.hostId ?? DEFAULT_HOST_ID;
  const pool = new ChunkPool();
  const metrics = new WorkerMetrics(options.taskQueue);
  const activities = createActivities({
    catalog: options.platform.catalog,
    hypervisor: metrics.timeFreezes(options.platform.hypervisor),
    repositoryFor: (region) => options.platform.repositoryFor(region),
    pool,
    captureMaxBytesPerSecond: options.captureMaxBytesPerSecond ?? 0,
    hostId,
    hostStartTimeoutMs: options.hostStartTimeoutMs ?? DEFAULT_HOST_START_TIMEOUT_MS,
  });
  try {
    const memory = dataMemoryPlan(pool.threads, options.dataMemoryMiB);
    workingMemory.setBudget(memory.budgetBytes);
    const hostTypes = new Set<string>(HOST_ACTIVITY_TYPES);
    const dataTypes = new Set<string>(DATA_ACTIVITY_TYPES);
    const queueOf = (type: string) => (hostTypes.has(type) ? 'host' : dataTypes.has(type) ? 'data' : 'main');
    const pick = (queue: 'main' | 'host' | 'data') =>
      Object.fromEntries(Object.entries(activities).filter(([type]) => queueOf(type) === queue));
    const interceptors = { activity: [metrics.activityInterceptor] };
    const common = {
      interceptors,
      connection: options.connection,
      namespace: options.namespace,
      shutdownGraceTime: options.shutdownGraceTime ?? '5 seconds',
      // The host is in the identity that the history records on every started activity: where each step ran.
      identity: `${process.pid}@${os.hostname()} host ${hostId}`,
      // Send heartbeats (and so resume checkpoints) to the server at least every second, not every 8 s (80 % of the
      // heartbeat timeout): a retry after a crash then re-reads at most about a second of work.
      maxHeartbeatThrottleInterval: '1 second',
    } as const;
    const main = await Worker.create({
      ...common,
      taskQueue: options.taskQueue,
      activities: pick('main'),
      ...(options.workflowBundle
        ? { workflowBundle: options.workflowBundle }
        : {
            workflowsPath: WORKFLOW_BUNDLE_OPTIONS.workflowsPath,
            bundlerOptions: { preloadModules: WORKFLOW_BUNDLE_OPTIONS.preloadModules },
          }),
    });
    const host = await Worker.create({
      ...common,
      taskQueue: hostTaskQueue(options.taskQueue, hostId),
      activities: pick('host'),
    });
    const data = await Worker.create({
      ...common,
      taskQueue: dataTaskQueue(options.taskQueue, hostId),
      activities: pick('data'),
      maxConcurrentActivityTaskExecutions: memory.maxDataActivities,
    });
    return { worker: new SnapshotWorker(main, host, data, memory), pool };
  } catch (error) {
    await pool.destroy();
    throw error;
  }
}
