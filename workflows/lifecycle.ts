import { getExternalWorkflowHandle, proxyActivities, setCurrentDetails } from '@temporalio/workflow';
import type { Activities } from '../activities';
import type { ImageRecord } from '../domain/model';
import { isInFlight } from '../domain/model';
import { CATALOG_ACTIVITY } from './profiles';

const catalog = proxyActivities<Activities>(CATALOG_ACTIVITY);

// A cancelled snapshot runs its compensations before it settles: poll for up to about half an hour.
const { awaitSnapshotSettled } = proxyActivities<Activities>({
  startToCloseTimeout: '10 seconds',
  retry: { initialInterval: '1s', backoffCoefficient: 1.5, maximumInterval: '30 seconds', maximumAttempts: 80 },
});

/** Workflow id of a snapshot's deletion: a repeated request joins (or repeats) the same deletion. */
export function deletionWorkflowId(snapshotId: string): string {
  return `delete-snapshot/${snapshotId}`;
}

/**
 * Deletes a snapshot, whatever its state: one in flight is cancelled first (its compensations clean up what it
 * stored) and deleted once it has settled. The catalog marks it DELETED at once; its manifest goes unless an image
 * uses it; garbage collection frees its chunks. Idempotent.
 */
export async function deleteSnapshotWorkflow(input: {
  accountId: string;
  snapshotId: string;
  reason: string;
}): Promise<void> {
  const target = await catalog.findDeletionTarget(input);
  setCurrentDetails(`Deleting snapshot \`${input.snapshotId}\` (${target.status}): ${input.reason}`);
  if (isInFlight(target.status)) {
    await getExternalWorkflowHandle(target.workflowId)
      .cancel()
      .catch(() => undefined); // already ended: nothing to cancel
    await awaitSnapshotSettled(input.snapshotId);
  }
  await catalog.deleteSnapshotData({ snapshotId: input.snapshotId, reason: input.reason });
}

/** Registers a SUCCESS snapshot as a boot image ("Create as Image", or a later conversion). */
export async function createImageWorkflow(input: {
  accountId: string;
  snapshotId: string;
  imageId: string;
  name: string;
}): Promise<ImageRecord> {
  return catalog.createImage(input);
}

/** Deletes an image; its data goes when its snapshot is deleted too. Idempotent. */
export async function deleteImageWorkflow(input: { accountId: string; imageId: string }): Promise<void> {
  await catalog.deleteImage(input);
}
