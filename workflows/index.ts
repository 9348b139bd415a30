/** Every workflow the worker runs; the worker bundles this module. */
export { snapshotWorkflow } from './snapshot';
export type { SnapshotWorkflowResult } from './snapshot';
export { restoreDiskWorkflow } from './restore';
export { scheduledSnapshotWorkflow } from './scheduled-snapshot';
