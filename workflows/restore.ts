import {
  ActivityCancellationType,
  CancellationScope,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  uuid4,
} from '@temporalio/workflow';
import type { Activities } from '../activities';
import { PERMANENT_ERROR_TYPES } from '../domain/errors';
import type { StageProgress } from '../domain/model';
import type { RestoreDiskRequest, RestoreVmRequest } from '../domain/requests';
import { restoreProgressQuery, stageProgressSignal } from './messages';

// Restores scale with disk size and heartbeat like the data stages; a permanent error (not SUCCESS, unknown disk,
// corrupt chunk) ends the restore at once.
const { restoreSnapshotDisk } = proxyActivities<Activities>({
  startToCloseTimeout: '12 hours',
  heartbeatTimeout: '30 seconds',
  retry: {
    initialInterval: '1s',
    backoffCoefficient: 2,
    maximumInterval: '1 minute',
    maximumAttempts: 10,
    nonRetryableErrorTypes: [...PERMANENT_ERROR_TYPES],
  },
});

/** Restores one disk of a snapshot to a raw image file, with live progress. */
export async function restoreDiskWorkflow(request: RestoreDiskRequest): Promise<{ bytesRestored: number }> {
  let progress: StageProgress = { stage: 'RESTORING', bytesDone: 0, bytesTotal: 0, throughput: 0 };
  let done = false;
  setHandler(stageProgressSignal, (update) => {
    progress = update;
  });
  setHandler(restoreProgressQuery, () => ({
    ...progress,
    done,
    etaSeconds:
      progress.throughput > 0 ? Math.ceil((progress.bytesTotal - progress.bytesDone) / progress.throughput) : null,
  }));
  setCurrentDetails(`Restoring disk \`${request.diskName}\` of ${request.snapshotId} to \`${request.targetPath}\``);
  const result = await restoreSnapshotDisk(request);
  done = true;
  return result;
}

const restoreCatalog = proxyActivities<Activities>({
  startToCloseTimeout: '1 minute',
  retry: { initialInterval: '1s', maximumAttempts: 10, nonRetryableErrorTypes: [...PERMANENT_ERROR_TYPES] },
});

const { restoreVmDisk } = proxyActivities<Activities>({
  startToCloseTimeout: '12 hours',
  heartbeatTimeout: '30 seconds',
  // Cleanup must not start while a disk is still being written.
  cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
  retry: {
    initialInterval: '1s',
    backoffCoefficient: 2,
    maximumInterval: '1 minute',
    maximumAttempts: 10,
    nonRetryableErrorTypes: [...PERMANENT_ERROR_TYPES],
  },
});

/**
 * Restores a snapshot (or an image) to a new VM in the same region: the VM is registered in BUILD state with the
 * captured configuration, every disk is restored (hash-verified, zero chunks as holes), then it becomes ACTIVE. On
 * failure or cancellation the half-restored VM and its disks are removed.
 */
export async function restoreVmWorkflow(request: RestoreVmRequest): Promise<{ vmId: string; bytesRestored: number }> {
  let progress: StageProgress = { stage: 'RESTORING', bytesDone: 0, bytesTotal: 0, throughput: 0 };
  let finishedBytes = 0;
  let done = false;
  setHandler(stageProgressSignal, (update) => {
    progress = { ...update, bytesDone: finishedBytes + update.bytesDone, bytesTotal: progress.bytesTotal };
  });
  setHandler(restoreProgressQuery, () => ({
    ...progress,
    done,
    etaSeconds:
      progress.throughput > 0 ? Math.ceil((progress.bytesTotal - progress.bytesDone) / progress.throughput) : null,
  }));
  const vmId = `vm-${uuid4().slice(0, 8)}`;
  setCurrentDetails(`Restoring VM \`${request.vmName}\` (${vmId}) from ${JSON.stringify(request.source)}`);
  const created = await restoreCatalog.createRestoredVm({ request, vmId });
  progress = { ...progress, bytesTotal: created.disks.reduce((sum, disk) => sum + disk.sizeBytes, 0) };
  try {
    for (const disk of created.disks) {
      await restoreVmDisk({ source: created.source, diskName: disk.name, targetPath: disk.path });
      finishedBytes += disk.sizeBytes;
    }
    await restoreCatalog.activateRestoredVm(vmId);
  } catch (error) {
    await CancellationScope.nonCancellable(() => restoreCatalog.discardRestoredVm(vmId));
    throw error;
  }
  done = true;
  progress = { ...progress, bytesDone: progress.bytesTotal };
  return { vmId, bytesRestored: finishedBytes };
}
