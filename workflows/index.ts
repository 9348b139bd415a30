/** Every workflow the worker runs; the worker bundles this module. */
export { snapshotWorkflow } from './snapshot';
export type { SnapshotWorkflowResult } from './snapshot';
export { restoreDiskWorkflow, restoreVmWorkflow } from './restore';
export { scheduledSnapshotWorkflow } from './scheduled-snapshot';
export { createImageWorkflow, deleteImageWorkflow, deleteSnapshotWorkflow } from './lifecycle';
export { garbageCollectionWorkflow, reverifyWorkflow } from './maintenance';
export { meteringWorkflow } from './metering';
