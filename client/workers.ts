import type { Client } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { SnapshotError } from '../domain/errors';

/**
 * A poller seen this recently counts as a live worker. The server records a poller when its poll arrives, and an
 * idle worker's long poll is held for up to a minute before the worker polls again: 90 s covers one such wait with
 * room for a slow renewal, while a worker that died is reported a minute and a half later at most (the server itself
 * keeps pollers listed for five).
 */
const LIVE_POLLER_MS = 90_000;

const TASK_TYPES = [
  ['workflow', temporal.api.enums.v1.TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW],
  ['activity', temporal.api.enums.v1.TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY],
] as const;

/**
 * The task queues (`name (workflow tasks)`, `name (activity tasks)`) of `taskQueues` that no worker has polled within
 * the last 90 s, as the server's description of each queue's pollers says.
 */
export async function queuesWithoutWorkers(
  client: Client,
  taskQueues: readonly string[],
  now: Date = new Date(),
): Promise<string[]> {
  const checks = taskQueues.flatMap((name) =>
    TASK_TYPES.map(async ([label, taskQueueType]) => {
      const { pollers } = await client.workflowService.describeTaskQueue({
        namespace: client.options.namespace,
        taskQueue: { name, kind: temporal.api.enums.v1.TaskQueueKind.TASK_QUEUE_KIND_NORMAL },
        taskQueueType,
      });
      const live = pollers.some((poller) => {
        const seconds = Number(poller.lastAccessTime?.seconds ?? 0);
        return now.getTime() - seconds * 1000 <= LIVE_POLLER_MS;
      });
      return live ? undefined : `${name} (${label} tasks)`;
    }),
  );
  return (await Promise.all(checks)).filter((queue): queue is string => queue !== undefined);
}

/**
 * How long a queue without pollers is re-checked before the refusal: a worker started a moment ago (as the demo and
 * the tests do) has its first poll on the way. Short enough that the answer still comes within the 2 s promised.
 */
const NEW_WORKER_GRACE_MS = 1_000;
const RECHECK_MS = 100;

/**
 * Refuses (`WorkerUnavailable`, within about a second) when no worker polls one of `taskQueues`: a command that
 * starts a workflow and waits for it would otherwise wait silently until a worker comes.
 */
export async function requireWorkers(client: Client, taskQueues: readonly string[]): Promise<void> {
  const deadline = Date.now() + NEW_WORKER_GRACE_MS;
  let idle = await queuesWithoutWorkers(client, taskQueues);
  while (idle.length > 0 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, RECHECK_MS));
    idle = await queuesWithoutWorkers(client, taskQueues);
  }
  if (idle.length === 0) return;
  throw new SnapshotError(
    'WorkerUnavailable',
    `No worker polls the task queue ${idle.join(', ')} in namespace ${client.options.namespace}: ` +
      'nothing would run. Start one with `npm run worker` (or `npm run demo`), then try again.',
  );
}

/**
 * How long a passed worker check stands: creates under load (50 at once) then share one check instead of each asking
 * the server twice, while a worker that goes away is still noticed within seconds.
 */
const PASSED_CHECK_MS = 5_000;

/**
 * `requireWorkers` for repeated use: concurrent callers share one check, a passed check stands for 5 s, a refusal is
 * not kept (the next caller asks again).
 */
export function workerCheck(client: Client, taskQueues: readonly string[]): () => Promise<void> {
  let passed: { at: number; check: Promise<void> } | undefined;
  return () => {
    if (!passed || Date.now() - passed.at > PASSED_CHECK_MS) {
      const check = requireWorkers(client, taskQueues);
      const entry = { at: Date.now(), check };
      passed = entry;
      check.catch(() => {
        if (passed === entry) passed = undefined;
      });
    }
    return passed.check;
  };
}
