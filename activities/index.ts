import { createCaptureActivity } from './capture';
import { createCleanupActivities } from './cleanup';
import { createCompressActivity } from './compress';
import type { ActivityDeps } from './deps';
import { createHostActivities } from './hosts';
import { createInitiateActivity } from './initiate';
import { createLifecycleActivities } from './lifecycle';
import { createMaintenanceActivities } from './maintenance';
import { createMeteringActivities } from './metering';
import { createRestoreActivities } from './restore';
import { createSchedulingActivities } from './scheduling';
import { createValidateActivity } from './validate';
import { createVerifyActivity } from './verify';

export type { ActivityDeps } from './deps';

/** All activities, bound to the ports they work through. One module per stage. */
export function createActivities(deps: ActivityDeps) {
  return {
    validateSnapshot: createValidateActivity(deps),
    initiateSnapshot: createInitiateActivity(deps),
    captureSnapshot: createCaptureActivity(deps),
    compressSnapshot: createCompressActivity(deps),
    verifySnapshot: createVerifyActivity(deps),
    ...createCleanupActivities(deps),
    ...createSchedulingActivities(deps),
    ...createRestoreActivities(deps),
    ...createLifecycleActivities(deps),
    ...createMaintenanceActivities(deps),
    ...createMeteringActivities(deps),
    ...createHostActivities(deps),
  };
}

export type Activities = ReturnType<typeof createActivities>;
