import { CancellationScope, proxyActivities, setCurrentDetails, setHandler, uuid4 } from '@temporalio/workflow';
import type { Activities } from '../activities';
import type { StageProgress } from '../domain/model';
import type { RestoreDiskRequest, RestoreVmRequest } from '../domain/requests';
import { restoreProgressQuery, stageProgressSignal } from './messages';
import { CATALOG_ACTIVITY, dataActivities } from './profiles';

// Restores scale with disk size and heartbeat like the data stages; a permanent error (not SUCCESS, unknown disk,
// corrupt chunk) ends the restore at once, and cleanup never starts while a disk is still being written. On the data
// task queue, within the memory budget.
const restores = dataActivities();
const restoreCatalog = proxyActivities<Activities>(CATALOG_ACTIVITY);

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
  const result = await restores.restoreSnapshotDisk(request);
  done = true;
  return result;
}

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
      await restores.restoreVmDisk({ source: created.source, diskName: disk.name, targetPath: disk.path });
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
