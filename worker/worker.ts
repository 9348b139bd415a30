import type { Duration } from '@temporalio/common';
import type { NativeConnection } from '@temporalio/worker';
import { Worker } from '@temporalio/worker';
import { createActivities } from '../activities';
import { ChunkPool } from '../dataplane';
import type { EmbeddedPlatform } from '../platform/local';

export interface SnapshotWorkerOptions {
  connection: NativeConnection;
  namespace: string;
  taskQueue: string;
  platform: EmbeddedPlatform;
  captureMaxBytesPerSecond?: number;
  /** A pre-built workflow bundle (tests build one per run); by default the workflows are bundled at start. */
  workflowBundle?: { codePath: string };
  /** How long running activities may finish on shutdown before they are cancelled (their checkpoints survive). */
  shutdownGraceTime?: Duration;
}

/** A worker that runs the snapshot and restore workflows and their activities against the given platform. */
export async function createSnapshotWorker(
  options: SnapshotWorkerOptions,
): Promise<{ worker: Worker; pool: ChunkPool }> {
  const pool = new ChunkPool();
  const activities = createActivities({
    catalog: options.platform.catalog,
    hypervisor: options.platform.hypervisor,
    repositoryFor: (region) => options.platform.repositoryFor(region),
    pool,
    captureMaxBytesPerSecond: options.captureMaxBytesPerSecond ?? 0,
  });
  const worker = await Worker.create({
    connection: options.connection,
    namespace: options.namespace,
    taskQueue: options.taskQueue,
    activities,
    ...(options.workflowBundle
      ? { workflowBundle: options.workflowBundle }
      : { workflowsPath: require.resolve('../workflows') }),
    shutdownGraceTime: options.shutdownGraceTime ?? '5 seconds',
    // Send heartbeats (and so resume checkpoints) to the server at least every second, not every 24 s (80 % of the
    // heartbeat timeout): a retry after a crash then re-reads at most about a second of work.
    maxHeartbeatThrottleInterval: '1 second',
  });
  return { worker, pool };
}
