import type { HostPlacement } from '../domain/model';
import type { ActivityDeps } from './deps';
import { placementOn } from './deps';

/** Placement of the steps that belong to no VM. */
export function createHostActivities(deps: ActivityDeps) {
  return {
    /**
     * This worker's own host, for a workflow whose data stage belongs to no VM (garbage collection, re-verification,
     * a disk restored to a file): run as a local activity, it names the host of the worker that runs the workflow,
     * which was alive a moment ago, and the history records it, so a replay routes the stage to the same host.
     */
    async workerHost(): Promise<HostPlacement> {
      return placementOn(deps, deps.hostId);
    },
  };
}
