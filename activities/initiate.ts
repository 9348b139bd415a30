import { SnapshotError } from '../domain/errors';
import type { DiskView } from '../platform/ports';
import type { ActivityDeps } from './deps';
import { withFailureTypes } from './failures';

/**
 * Stage 2, initiation: records the VM configuration and the incremental parent, freezes the guest for as short as
 * possible, opens point-in-time views of every disk, and thaws — the thaw runs here in `finally` and again as a
 * workflow compensation, so a VM is never left frozen.
 */
export function createInitiateActivity(deps: ActivityDeps) {
  return async function initiateSnapshot(snapshotId: string): Promise<DiskView[]> {
    return withFailureTypes(async () => {
      const snapshot = deps.catalog.updateSnapshot(snapshotId, { status: 'INITIATING' });
      const vm = deps.catalog.getVm(snapshot.vmId);
      if (!vm) throw new SnapshotError('VmNotFound', `VM ${snapshot.vmId} disappeared while being snapshotted.`);
      const parent = deps.catalog.latestSuccessfulSnapshot(vm.id);
      deps.catalog.updateSnapshot(snapshotId, { vmConfig: vm.config, parentSnapshotId: parent?.id ?? null });
      await deps.hypervisor.freeze(vm);
      try {
        return await deps.hypervisor.openViews(vm, snapshotId);
      } finally {
        await deps.hypervisor.thaw(vm);
      }
    });
  };
}
