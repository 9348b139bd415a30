import type { ActivityOptions } from '@temporalio/common';
import { SearchAttributeType, defineSearchAttributeKey } from '@temporalio/common';
import type { ActivityInterfaceFor } from '@temporalio/workflow';
import {
  ActivityCancellationType,
  ApplicationFailure,
  isCancellation,
  proxyActivities,
  workflowInfo,
} from '@temporalio/workflow';
import type { Activities } from '../activities';
import { PERMANENT_ERROR_TYPES } from '../domain/errors';

const nonRetryableErrorTypes = [...PERMANENT_ERROR_TYPES];

/**
 * Activities that only read and write the catalog: quick, so short timeouts; a permanent rule violation ends the
 * workflow at once instead of being retried.
 */
export const CATALOG_ACTIVITY: ActivityOptions = {
  startToCloseTimeout: '1 minute',
  retry: { initialInterval: '1s', maximumAttempts: 5, nonRetryableErrorTypes },
};

/**
 * Activities whose work scales with disk size (capture, compression, verification, restores): long timeouts, a 10 s
 * heartbeat timeout so a dead worker is noticed quickly and the retry resumes from the last heartbeated checkpoint,
 * and cancellation that waits for the activity to stop (cleanup must not run while it still writes).
 */
export const DATA_ACTIVITY: ActivityOptions = {
  startToCloseTimeout: '12 hours',
  heartbeatTimeout: '10 seconds',
  cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
  retry: {
    initialInterval: '1s',
    backoffCoefficient: 2,
    maximumInterval: '1 minute',
    maximumAttempts: 10,
    nonRetryableErrorTypes,
  },
};

/**
 * The activities whose working memory counts against the worker's data memory budget: they run on the data task
 * queue, whose worker runs only as many at once as the budget holds (see worker/worker.ts); the rest of a worker's
 * activities (catalog, initiation, cleanup) run on the main task queue.
 */
export const DATA_ACTIVITY_TYPES = [
  'captureSnapshot',
  'compressSnapshot',
  'verifySnapshot',
  'restoreSnapshotDisk',
  'restoreVmDisk',
  'collectRegionGarbage',
  'reverifySnapshot',
] as const satisfies readonly (keyof Activities)[];

export type DataActivities = Pick<Activities, (typeof DATA_ACTIVITY_TYPES)[number]>;

/** The task queue of the data activities of workflows on `taskQueue` (served by the same workers). */
export function dataTaskQueue(taskQueue: string): string {
  return `${taskQueue}-data`;
}

/**
 * The data activities with `options`, scheduled on the data task queue of the calling workflow's task queue. Safe to
 * call at module load: the options (which need workflowInfo()) are made when an activity is called, in the workflow.
 */
export function dataActivities(options: ActivityOptions = DATA_ACTIVITY): ActivityInterfaceFor<DataActivities> {
  return new Proxy({} as ActivityInterfaceFor<DataActivities>, {
    get: (_, type) =>
      proxyActivities<DataActivities>({ ...options, taskQueue: dataTaskQueue(workflowInfo().taskQueue) })[
        type as keyof DataActivities
      ],
  });
}

/** Set by Temporal on every workflow a Schedule starts: the time the run stands for (a trigger's or backfill's too). */
const TemporalScheduledStartTime = defineSearchAttributeKey('TemporalScheduledStartTime', SearchAttributeType.DATETIME);

/** The time a Schedule run stands for; a workflow started otherwise stands for its own start. */
export function scheduledStartTime(): Date {
  return workflowInfo().typedSearchAttributes.get(TemporalScheduledStartTime) ?? workflowInfo().startTime;
}

/**
 * The typed reason behind a failed activity or child workflow: the first ApplicationFailure down the cause chain
 * (`ChunkCorrupt`, `InsufficientCredits`, …), or `Cancelled`.
 */
export function typedFailure(error: unknown): { type: string; reason: string } {
  if (isCancellation(error)) return { type: 'Cancelled', reason: 'The snapshot was cancelled.' };
  for (let cause = error; cause instanceof Error; cause = cause.cause) {
    if (cause instanceof ApplicationFailure) return { type: cause.type ?? 'Error', reason: cause.message };
  }
  return { type: 'Error', reason: error instanceof Error ? error.message : String(error) };
}
