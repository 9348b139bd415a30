import {
  CancellationScope,
  proxyActivities,
  proxyLocalActivities,
  setCurrentDetails,
  setHandler,
  uuid4,
} from '@temporalio/workflow';
import type { Activities } from '../activities';
import { restoredVmIdFrom } from '../domain/ids';
import type { RestoreDiskRequest, RestoreVmRequest } from '../domain/requests';
import { restoreStateQuery } from './messages';
import { CATALOG_ACTIVITY, dataActivities, hostActivities } from './profiles';

// Restores scale with disk size and heartbeat like the data stages (their default options, dataActivities); a
// permanent error (not SUCCESS, unknown disk, corrupt chunk) ends the restore at once, and cleanup never starts while a
// disk is still being written. On a host's data task queue, within its memory budget.
const restoreCatalog = proxyActivities<Activities>(CATALOG_ACTIVITY);
const { workerHost } = proxyLocalActivities<Activities>(CATALOG_ACTIVITY);

/** Restores one disk of a snapshot to a raw image file; its progress is in the activity's heartbeat details. */
export async function restoreDiskWorkflow(request: RestoreDiskRequest): Promise<{ bytesRestored: number }> {
  setCurrentDetails(`Restoring disk \`${request.diskName}\` of ${request.snapshotId} to \`${request.targetPath}\``);
  // A file belongs to no VM: it is written on the host of the worker that runs this workflow.
  return dataActivities(await workerHost()).restoreSnapshotDisk(request);
}

/**
 * Restores a snapshot (or an image) to a new VM in the same region: the VM is registered in BUILD state with the
 * captured configuration and empty disks, every disk is restored (hash-verified, zero chunks never written), the VM is
 * started, then it becomes ACTIVE. On failure or cancellation the half-restored VM and its disks are removed.
 */
export async function restoreVmWorkflow(request: RestoreVmRequest): Promise<{ vmId: string; bytesRestored: number }> {
  // The disk being restored reports its bytes in its heartbeat details; the workflow knows the disks before it.
  const state = { finishedBytes: 0, bytesTotal: 0, done: false };
  setHandler(restoreStateQuery, () => state);
  const vmId = restoredVmIdFrom(uuid4());
  setCurrentDetails(`Restoring VM \`${request.vmName}\` (${vmId}) from ${JSON.stringify(request.source)}`);
  const placed = await restoreCatalog.placeRestoredVm(request);
  // The new VM's disks are created and written, the VM started, and removed on failure, on its host.
  const restores = dataActivities(placed.host);
  const onHost = hostActivities(placed.host, CATALOG_ACTIVITY);
  try {
    const disks = await onHost.createRestoredVm({ request, vmId, source: placed.source });
    state.bytesTotal = disks.reduce((sum, disk) => sum + disk.sizeBytes, 0);
    for (const disk of disks) {
      await restores.restoreVmDisk({ source: placed.source, vmId, diskName: disk.name });
      state.finishedBytes += disk.sizeBytes;
    }
    await onHost.startRestoredVm(vmId);
    await restoreCatalog.activateRestoredVm(vmId);
  } catch (error) {
    await CancellationScope.nonCancellable(() => onHost.discardRestoredVm(vmId));
    throw error;
  }
  state.done = true;
  return { vmId, bytesRestored: state.finishedBytes };
}
