import {
  ActivityCancellationType,
  ApplicationFailure,
  CancellationScope,
  log,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  upsertSearchAttributes,
} from '@temporalio/workflow';
import type { Activities } from '../activities';
import { PERMANENT_ERROR_TYPES } from '../domain/errors';
import type { Region, SnapshotProgress, SnapshotRecord, SnapshotStage, StageProgress } from '../domain/model';
import type { SnapshotWorkflowInput } from '../domain/requests';
import { SnapshotStatus as SnapshotStatusKey } from '../domain/search-attributes';
import { snapshotProgressQuery, stageProgressSignal } from './messages';
import { CATALOG_ACTIVITY, dataActivities, typedFailure } from './profiles';

const nonRetryableErrorTypes = [...PERMANENT_ERROR_TYPES];

// Validation only reads and writes the catalog: it is quick, and a permanent rule violation must end the run at once.
const checks = proxyActivities<Activities>(CATALOG_ACTIVITY);

// Initiation freezes the guest and opens point-in-time views (copy-before-write or blockdev snapshots: instant
// whatever the disk size); the freeze may wait up to 30 s for a guest write in progress. It heartbeats every second
// (FREEZE_RENEW_MS), so a dead worker is noticed after 5 s and the attempt retried, while the guest it froze thaws by
// itself when the freeze lease (5 s) runs out. Few attempts: each one freezes the guest again.
const initiation = proxyActivities<Activities>({
  startToCloseTimeout: '5 minutes',
  heartbeatTimeout: '5 seconds',
  // On cancellation, compensations must not run while the activity still works (it would recreate what they remove).
  cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
  retry: { initialInterval: '2s', maximumAttempts: 3, nonRetryableErrorTypes },
});

// Capture, compression and verification scale with disk size: on the data task queue, within the memory budget.
const dataStages = dataActivities();

// Compensations must eventually succeed: many attempts, all idempotent.
const compensations = proxyActivities<Activities>({
  startToCloseTimeout: '5 minutes',
  retry: { initialInterval: '1s', maximumInterval: '30 seconds', maximumAttempts: 50 },
});

const STAGE_SUMMARIES: Record<SnapshotStage, string> = {
  VALIDATING: 'Validation: check the rules, reserve the name',
  INITIATING: 'Initiation: record config, freeze, open point-in-time views, thaw',
  CAPTURING: 'Data capture: read and hash every chunk',
  COMPRESSING: 'Compression: compress and store new chunks, write the manifest',
  VERIFYING: 'Verification: read back and re-hash every chunk',
};

export interface SnapshotWorkflowResult {
  snapshotId: string;
  status: 'SUCCESS';
  logicalBytes: number;
  storedBytes: number;
  addedBytes: number;
  /** Bytes the capture stage read in its last attempt; less than logicalBytes when it resumed from a checkpoint. */
  captureBytesRead: number;
}

/**
 * One snapshot: validation → initiation → data capture → compression → verification, each an activity with its own
 * timeouts and retries. Compensations are pushed as stages succeed and run in reverse, non-cancellable, on any failure
 * or cancellation; the workflow then fails with the typed reason.
 */
export async function snapshotWorkflow(input: SnapshotWorkflowInput): Promise<SnapshotWorkflowResult> {
  const { snapshotId, request } = input;
  let status: SnapshotStage | 'SUCCESS' | 'FAILED' = 'VALIDATING';
  let stage: StageProgress = { stage: 'VALIDATING', bytesDone: 0, bytesTotal: 0, throughput: 0 };
  let failure: { type: string; reason: string } | null = null;

  // The Web UI shows the current details: the stage, and its progress as the activity reports it.
  const showDetails = (): void => {
    const figures =
      stage.bytesTotal > 0
        ? ` ${Math.floor((stage.bytesDone / stage.bytesTotal) * 100)}% (${mib(stage.bytesDone)} of ` +
          `${mib(stage.bytesTotal)} MiB, ${mib(stage.throughput)} MiB/s)`
        : '';
    setCurrentDetails(
      `**${status}**${figures} — snapshot \`${request.name}\` of VM \`${request.vmId}\` (${snapshotId})`,
    );
  };
  setHandler(stageProgressSignal, (progress) => {
    if (progress.stage !== status) return;
    stage = progress;
    showDetails();
  });
  setHandler(snapshotProgressQuery, (): SnapshotProgress => {
    const left = stage.bytesTotal - stage.bytesDone;
    return {
      snapshotId,
      status,
      bytesDone: stage.bytesDone,
      bytesTotal: stage.bytesTotal,
      throughput: stage.throughput,
      etaSeconds: stage.throughput > 0 ? Math.ceil(left / stage.throughput) : null,
      failureType: failure?.type ?? null,
      failureReason: failure?.reason ?? null,
    };
  });

  const enter = (next: typeof status): void => {
    status = next;
    // A terminal state keeps the last stage's figures; a new stage starts from zero until its activity reports.
    if (next !== 'SUCCESS' && next !== 'FAILED') stage = { stage: next, bytesDone: 0, bytesTotal: 0, throughput: 0 };
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
  let verified: { region: Region; record: SnapshotRecord; captureBytesRead: number };
  try {
    const vm = await run('VALIDATING', checks.validateSnapshot, input);
    undo.unshift(() => compensations.thawVm(snapshotId));
    undo.unshift(() => compensations.releaseViews(snapshotId));
    const disks = await run('INITIATING', initiation.initiateSnapshot, snapshotId);
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
    verified = { region: vm.region, record, captureBytesRead: captured.bytesRead };
  } catch (error) {
    failure = typedFailure(error);
    const reason = failure;
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
    Promise.all([compensations.releaseViews(snapshotId), compensations.dropStaging(snapshotId, verified.region)]),
  );
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

function mib(bytes: number): string {
  return (bytes / 2 ** 20).toFixed(1);
}
