import type { ActivityOptions } from '@temporalio/common';
import { SearchAttributeType, TimeoutType, defineSearchAttributeKey } from '@temporalio/common';
import type { ActivityFunctionWithOptions, ActivityInterfaceFor } from '@temporalio/workflow';
import {
  ActivityCancellationType,
  ActivityFailure,
  ApplicationFailure,
  TimeoutFailure,
  isCancellation,
  proxyActivities,
  workflowInfo,
} from '@temporalio/workflow';
import type { Activities } from '../activities';
import type { SnapshotErrorType } from '../domain/errors';
import { PERMANENT_ERROR_TYPES, hostUnavailableMessage } from '../domain/errors';
import type { HostPlacement } from '../domain/model';

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
 * queue of a host, whose worker runs only as many at once as the budget holds (see worker/worker.ts). A process has
 * one budget, and Temporal keeps it as the slot count of one worker polling one queue: so every data activity runs on
 * a host's data queue, verification included (it reads only the repository and could run anywhere, but a second
 * budgeted queue per process would let the process use twice its budget).
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

/**
 * The short activities that must run on the VM's host, because what they touch exists only there (the hypervisor's
 * VMs, their freeze, their point-in-time views, their load counters, a restored VM's disks): they run on the host's task queue.
 */
export const HOST_ACTIVITY_TYPES = [
  'initiateSnapshot',
  'thawVm',
  'releaseViews',
  'readVmLoad',
  'createRestoredVm',
  'startRestoredVm',
  'discardRestoredVm',
] as const satisfies readonly (keyof Activities)[];

export type HostActivities = Pick<Activities, (typeof HOST_ACTIVITY_TYPES)[number]>;

/**
 * The task queues, in one place: a worker of host `h` on task queue `q` runs the workflows and the catalog steps on
 * `q` (shared by every worker), its host's short steps on `q-host-h` and its host's data stages on `q-host-h-data`.
 */
export function hostTaskQueue(taskQueue: string, hostId: string): string {
  return `${taskQueue}-host-${hostId}`;
}

/** The data task queue of host `hostId` (see hostTaskQueue). */
export function dataTaskQueue(taskQueue: string, hostId: string): string {
  return `${hostTaskQueue(taskQueue, hostId)}-data`;
}

/**
 * How long a data stage may wait on its host's data queue: it waits there for the host's memory budget behind the
 * host's other data stages, which a live host can keep busy for hours, so this bound is as long as one data stage may
 * run (DATA_ACTIVITY's start-to-close timeout), and only a host that stays down that long fails the stage.
 */
const DATA_START_TIMEOUT = '12 hours';

/**
 * The host-pinned activities of the host `placement` names, with `options`, on that host's task queue. A worker of
 * the host that is alive starts a task at once (the host queue has no budget to wait for), so a step not started
 * within `placement.startTimeoutMs` fails with `HostUnavailable` (non-retryable, naming the host) instead of waiting
 * for a host that is gone.
 */
export function hostActivities(
  placement: HostPlacement,
  options: ActivityOptions,
): ActivityInterfaceFor<HostActivities> {
  const timeout = `${placement.startTimeoutMs / 1000} s`;
  return onHost<HostActivities>(placement.hostId, timeout, {
    ...options,
    scheduleToStartTimeout: placement.startTimeoutMs,
    taskQueue: hostTaskQueue(workflowInfo().taskQueue, placement.hostId),
  });
}

/**
 * The data activities with `options`, on the data task queue of the host `placement` names; a stage not started
 * within DATA_START_TIMEOUT fails with `HostUnavailable`.
 */
export function dataActivities(
  placement: HostPlacement,
  options: ActivityOptions = DATA_ACTIVITY,
): ActivityInterfaceFor<DataActivities> {
  return onHost<DataActivities>(placement.hostId, DATA_START_TIMEOUT, {
    ...options,
    scheduleToStartTimeout: DATA_START_TIMEOUT,
    taskQueue: dataTaskQueue(workflowInfo().taskQueue, placement.hostId),
  });
}

/** `proxyActivities(options)`, each call turning a schedule-to-start timeout into `HostUnavailable`. */
function onHost<A extends object>(hostId: string, timeout: string, options: ActivityOptions): ActivityInterfaceFor<A> {
  const proxied = proxyActivities<A>(options);
  const pinned = <T>(type: string, call: () => Promise<T>): Promise<T> =>
    call().catch((error: unknown) => {
      if (
        error instanceof ActivityFailure &&
        error.cause instanceof TimeoutFailure &&
        error.cause.timeoutType === TimeoutType.SCHEDULE_TO_START
      ) {
        throw ApplicationFailure.create({
          type: 'HostUnavailable' satisfies SnapshotErrorType,
          message: hostUnavailableMessage(hostId, type, timeout),
          nonRetryable: true,
          cause: error,
        });
      }
      throw error;
    });
  return new Proxy({} as ActivityInterfaceFor<A>, {
    get: (_, type: string) => {
      const activity = proxied[type as keyof A] as ActivityFunctionWithOptions<
        (...args: unknown[]) => Promise<unknown>
      >;
      const call = (...args: unknown[]) => pinned(type, () => activity(...args));
      call.executeWithOptions = (callOptions: ActivityOptions, args: unknown[]) =>
        pinned(type, () => activity.executeWithOptions(callOptions, args));
      return call;
    },
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
