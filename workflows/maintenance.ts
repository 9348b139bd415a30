import type { ActivityOptions } from '@temporalio/common';
import { proxyActivities, proxyLocalActivities, setCurrentDetails } from '@temporalio/workflow';
import type { Activities } from '../activities';
import type { ReverifyOutcome } from '../activities/maintenance';
import type { GcResult } from '../dataplane';
import type { Region } from '../domain/model';
import { CATALOG_ACTIVITY, dataActivities } from './profiles';

// Both walk a whole repository: long timeouts, heartbeats so a dead worker is noticed, safe to retry from scratch.
// They belong to no VM: on the data task queue of the host of the worker that runs the workflow, within its budget.
const MAINTENANCE: ActivityOptions = {
  startToCloseTimeout: '6 hours',
  heartbeatTimeout: '1 minute',
  retry: { initialInterval: '5s', maximumInterval: '5 minutes', maximumAttempts: 10 },
};

const { listSnapshotsToReverify } = proxyActivities<Activities>({ startToCloseTimeout: '1 minute' });
const { workerHost } = proxyLocalActivities<Activities>(CATALOG_ACTIVITY);

/**
 * Mark-and-sweep garbage collection of one region's repository (run daily by a Schedule per region): frees chunks
 * no manifest, image or in-flight snapshot references and older than the grace period, and reports bytes freed.
 */
export async function garbageCollectionWorkflow(input: { region: Region; graceMinutes: number }): Promise<GcResult> {
  setCurrentDetails(`Garbage collection of ${input.region}, grace period ${input.graceMinutes} min`);
  const maintenance = dataActivities(await workerHost(), MAINTENANCE);
  const result = await maintenance.collectRegionGarbage(input);
  setCurrentDetails(
    `Garbage collection of ${input.region}: ${result.chunksRemoved} chunks removed, ${result.bytesFreed} bytes freed, ` +
      `${result.chunksReferenced} referenced, ${result.chunksKeptByGrace} kept by the grace period`,
  );
  return result;
}

export interface ReverifyReport {
  region: Region;
  checked: number;
  damaged: ReverifyOutcome[];
}

/**
 * Re-verifies the region's SUCCESS snapshots not verified within `olderThanDays` days (run daily by a Schedule per
 * region); any with missing or corrupt chunks are marked DAMAGED with the reason.
 */
export async function reverifyWorkflow(input: { region: Region; olderThanDays: number }): Promise<ReverifyReport> {
  const ids = await listSnapshotsToReverify(input);
  const maintenance = dataActivities(await workerHost(), MAINTENANCE);
  const damaged: ReverifyOutcome[] = [];
  for (const [index, id] of ids.entries()) {
    setCurrentDetails(`Re-verifying ${input.region}: ${index + 1} of ${ids.length}, ${damaged.length} damaged so far`);
    const outcome = await maintenance.reverifySnapshot.executeWithOptions({ summary: `Re-verify ${id}` }, [id]);
    if (outcome.result === 'DAMAGED') damaged.push(outcome);
  }
  setCurrentDetails(
    `Re-verified ${ids.length} snapshots of ${input.region}: ` +
      (damaged.length === 0 ? 'all intact' : `DAMAGED: ${damaged.map((d) => d.name).join(', ')}`),
  );
  return { region: input.region, checked: ids.length, damaged };
}
