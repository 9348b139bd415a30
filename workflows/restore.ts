import { proxyActivities, setCurrentDetails, setHandler } from '@temporalio/workflow';
import type { Activities } from '../activities';
import { PERMANENT_ERROR_TYPES } from '../domain/errors';
import type { StageProgress } from '../domain/model';
import type { RestoreDiskRequest } from '../domain/requests';
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
