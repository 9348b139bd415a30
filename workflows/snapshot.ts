import {
  ActivityCancellationType,
  ApplicationFailure,
  CancellationScope,
  allHandlersFinished,
  condition,
  log,
  proxyActivities,
  proxyLocalActivities,
  setCurrentDetails,
  setHandler,
  upsertSearchAttributes,
  workflowInfo,
} from '@temporalio/workflow';
import type { ActivityOptions } from '@temporalio/common';
import type { Activities } from '../activities';
import { idempotencyKeyReusedMessage, nameTakenMessage, requestFingerprint } from '../domain/acceptance';
import { PERMANENT_ERROR_TYPES } from '../domain/errors';
import { describeCaptureLine, describeConsistencyLine } from '../domain/model';
import type { HostPlacement, Region, SnapshotRecord, SnapshotStage } from '../domain/model';
import type { SnapshotWorkflowInput } from '../domain/requests';
import { SnapshotStatus as SnapshotStatusKey } from '../domain/search-attributes';
import type { Acceptance, AcceptanceRequest } from './messages';
import { JOINED_REFUSED_RUN, acceptedUpdate } from './messages';
import { CATALOG_ACTIVITY, dataActivities, hostActivities, typedFailure } from './profiles';

const nonRetryableErrorTypes = [...PERMANENT_ERROR_TYPES];

// Validation only reads and writes the catalog: it is quick, and a permanent rule violation must end the run at once.
// A local activity: it runs in the worker that runs the workflow task, with no activity task to schedule and poll
// (two server round trips and a workflow task fewer), and in local-activity slots that data stages never hold, so
// create requests are answered quickly however busy the worker is.
const checks = proxyLocalActivities<Activities>(CATALOG_ACTIVITY);

// Initiation freezes the guest and opens point-in-time views (copy-before-write or blockdev snapshots: instant
// whatever the disk size); the freeze may wait up to 30 s for a guest write in progress. It heartbeats every second
// (FREEZE_RENEW_MS), so a dead worker is noticed after 5 s and the attempt retried, while the guest it froze thaws by
// itself when the freeze lease (5 s) runs out. Few attempts: each one freezes the guest again.
// On the VM's host (hostActivities), where the VM and its views are.
const INITIATION: ActivityOptions = {
  startToCloseTimeout: '5 minutes',
  heartbeatTimeout: '5 seconds',
  // On cancellation, compensations must not run while the activity still works (it would recreate what they remove).
  cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
  retry: { initialInterval: '2s', maximumAttempts: 3, nonRetryableErrorTypes },
};

// Compensations must eventually succeed: many attempts, all idempotent. Those on the VM's host (thaw, releasing the
// views) fail with HostUnavailable once the host start timeout passes with the host down, so cleanup never waits for
// a dead host: its freeze lease thaws the guest by itself.
const COMPENSATION: ActivityOptions = {
  startToCloseTimeout: '5 minutes',
  retry: { initialInterval: '1s', maximumInterval: '30 seconds', maximumAttempts: 50 },
};
const compensations = proxyActivities<Activities>(COMPENSATION);

const STAGE_SUMMARIES: Record<SnapshotStage, string> = {
  VALIDATING: 'Validation: check the rules, reserve the name',
  INITIATING: 'Initiation: record config, open point-in-time views (the guest frozen only for their moment)',
  CAPTURING: 'Data capture: read and hash every chunk',
  COMPRESSING: 'Compression: compress and store new chunks, write the manifest',
  VERIFYING: 'Verification: read back and re-hash every chunk',
};

export type SnapshotWorkflowResult =
  | {
      snapshotId: string;
      status: 'SUCCESS';
      logicalBytes: number;
      storedBytes: number;
      addedBytes: number;
      /** Bytes the capture stage read in its last attempt; less than logicalBytes when it resumed from a checkpoint. */
      captureBytesRead: number;
    }
  /** The request repeated an earlier one (same idempotency key and fields): that snapshot answers it. */
  | { snapshotId: string; status: 'DUPLICATE' };

/**
 * One snapshot: validation → initiation → data capture → compression → verification, each an activity with its own
 * timeouts and retries. Compensations are pushed as stages succeed and run in reverse, non-cancellable, on any failure
 * or cancellation; the workflow then fails with the typed reason. Create requests learn the outcome of validation
 * through the `accepted` update; progress is in the running activity's heartbeat details, so the history holds a fixed
 * number of events whatever the disk size.
 */
export async function snapshotWorkflow(input: SnapshotWorkflowInput): Promise<SnapshotWorkflowResult> {
  const { snapshotId, request } = input;
  let status: SnapshotStage | 'SUCCESS' | 'FAILED' = 'VALIDATING';
  // Settled once validation has answered: what every `accepted` update waits for.
  let acceptance: { accepted: Acceptance } | { refused: { type: string; reason: string } } | undefined;

  setHandler(acceptedUpdate, async (caller: AcceptanceRequest): Promise<Acceptance> => {
    // Cancelling the snapshot must not leave a create request without its answer.
    await CancellationScope.nonCancellable(() => condition(() => acceptance !== undefined));
    const answer = acceptance!;
    if (caller.snapshotId !== snapshotId) {
      // A request that joined a run another request started. If that run was refused, the same request has the same
      // answer, and another one must start afresh (the name is not taken). If it was accepted, the joiner is that
      // request only if it repeats it exactly, with its idempotency key.
      const same = requestFingerprint(caller.request) === requestFingerprint(request);
      const key = caller.request.idempotencyKey;
      if ('refused' in answer && !same) {
        throw ApplicationFailure.create({
          type: JOINED_REFUSED_RUN,
          message: 'The request joined a run that validation refused; start it again.',
          nonRetryable: true,
        });
      }
      if ('accepted' in answer && (key === undefined || key !== request.idempotencyKey)) {
        throw ApplicationFailure.create({
          type: 'SnapshotNameTaken',
          message: nameTakenMessage(caller.request.name, answer.accepted.snapshotId),
          nonRetryable: true,
        });
      }
      if ('accepted' in answer && !same) {
        throw ApplicationFailure.create({
          type: 'IdempotencyKeyReused',
          message: idempotencyKeyReusedMessage(key!, answer.accepted.snapshotId),
          nonRetryable: true,
        });
      }
    }
    if ('refused' in answer) {
      // Refused: the request that started the run, or the same request again.
      throw ApplicationFailure.create({
        type: answer.refused.type,
        message: answer.refused.reason,
        nonRetryable: true,
      });
    }
    return answer.accepted;
  });

  // Once verified: what the snapshot's point in time guarantees and how it was captured (runs from before they were
  // recorded have neither).
  let verifiedAs: string | null = null;
  // The Web UI shows the current details (the stage) and the pending activity's heartbeat details (its progress).
  const showDetails = (): void => {
    setCurrentDetails(
      `**${status}** — snapshot \`${request.name}\` of VM \`${request.vmId}\` (${snapshotId})` +
        (verifiedAs ? `, ${verifiedAs}` : ''),
    );
  };

  const enter = (next: typeof status): void => {
    status = next;
    upsertSearchAttributes([{ key: SnapshotStatusKey, value: next }]);
    showDetails();
  };
  const run = <A extends unknown[], R>(
    s: SnapshotStage,
    fn: { executeWithOptions(options: { summary: string }, args: A): Promise<R> },
    ...args: A
  ): Promise<R> => {
    enter(s);
    // The summary shows on the activity in the Web UI; the proxy's profile options still apply (they are merged).
    return fn.executeWithOptions({ summary: STAGE_SUMMARIES[s] }, args);
  };

  const undo: (() => Promise<unknown>)[] = [];
  let verified: { region: Region; host: HostPlacement; record: SnapshotRecord; captureBytesRead: number };
  try {
    // The run's start is when the request arrived: validation compares it with the VM's other snapshots.
    const vm = await run('VALIDATING', checks.validateSnapshot, input, workflowInfo().startTime.toISOString());
    acceptance = {
      accepted: {
        snapshotId: vm.snapshotId,
        workflowId: vm.workflowId,
        ...(vm.snapshotId === snapshotId ? { runId: workflowInfo().runId } : {}),
      },
    };
    if (vm.snapshotId !== snapshotId) {
      // An earlier request with this idempotency key made the snapshot: nothing to make, nothing to compensate.
      await CancellationScope.nonCancellable(() => condition(allHandlersFinished));
      return { snapshotId: vm.snapshotId, status: 'DUPLICATE' };
    }
    // Initiation, capture and compression run on the VM's host (its views exist only there), verification on its
    // data queue too (within the host's memory budget); catalog steps run on the workflow's own task queue.
    const onHost = hostActivities(vm.host, INITIATION);
    const cleanup = hostActivities(vm.host, COMPENSATION);
    const dataStages = dataActivities(vm.host);
    undo.unshift(() => cleanup.thawVm(snapshotId));
    undo.unshift(() => cleanup.releaseViews(snapshotId, 'discarded'));
    // Runs started before `quiesce` existed have none: the activity takes the default then.
    const disks = await run('INITIATING', onHost.initiateSnapshot, snapshotId, { quiesce: request.quiesce });
    undo.unshift(() => compensations.discardSnapshotData(snapshotId, vm.region));
    const captured = await run('CAPTURING', dataStages.captureSnapshot, { snapshotId, region: vm.region, disks });
    const compressed = await run('COMPRESSING', dataStages.compressSnapshot, {
      snapshotId,
      region: vm.region,
      disks,
      chunkSize: captured.chunkSize,
    });
    const record = await run('VERIFYING', dataStages.verifySnapshot, {
      snapshotId,
      region: vm.region,
      addedBytes: compressed.addedBytes,
    });
    verified = { region: vm.region, host: vm.host, record, captureBytesRead: captured.bytesRead };
    verifiedAs =
      [
        describeConsistencyLine(record.consistency ?? null),
        describeCaptureLine({ parentSnapshotId: record.parentSnapshotId, fullReads: record.fullReads ?? null }),
      ]
        .filter((part) => part !== null)
        .join(', ') || null;
  } catch (error) {
    const reason = typedFailure(error);
    acceptance ??= { refused: reason };
    await CancellationScope.nonCancellable(async () => {
      for (const compensate of undo) {
        try {
          await compensate();
        } catch (compensationError) {
          log.error('compensation failed', { snapshotId, error: String(compensationError) });
        }
      }
      await compensations.markSnapshotFailed(snapshotId, reason.type, reason.reason);
    });
    enter('FAILED');
    await CancellationScope.nonCancellable(() => condition(allHandlersFinished));
    throw ApplicationFailure.create({
      type: reason.type,
      message: reason.reason,
      nonRetryable: true,
      cause: error as Error,
    });
  }

  // Verified and marked SUCCESS: nothing below may undo that, so it runs outside the compensated block.
  enter('SUCCESS');
  await CancellationScope.nonCancellable(() =>
    Promise.all([
      // A host that went down since verification keeps its views; the snapshot is SUCCESS all the same.
      hostActivities(verified.host, COMPENSATION)
        .releaseViews(snapshotId, 'kept')
        .catch((error: unknown) => {
          log.warn('views not released', { snapshotId, error: String(error) });
        }),
      compensations.dropStaging(snapshotId, verified.region),
    ]),
  );
  await CancellationScope.nonCancellable(() => condition(allHandlersFinished));
  const { record } = verified;
  return {
    snapshotId,
    status: 'SUCCESS',
    logicalBytes: record.logicalBytes ?? 0,
    storedBytes: record.storedBytes ?? 0,
    addedBytes: record.addedBytes ?? 0,
    captureBytesRead: verified.captureBytesRead,
  };
}
