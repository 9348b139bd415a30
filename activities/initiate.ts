import { Context } from '@temporalio/activity';
import { SnapshotError } from '../domain/errors';
import type { Vm } from '../domain/model';
import type { DiskView, Hypervisor } from '../platform/ports';
import type { ActivityDeps } from './deps';
import { withFailureTypes } from './failures';

/**
 * The freeze lease: a guest whose freezer died is thawed at most this long after the last renewal. 5 s: within the
 * 10 s the guest may stay blocked after a worker's death, with room for four renewals to be late before it expires.
 */
export const FREEZE_LEASE_MS = 5_000;
/** How often initiation renews the freeze lease and heartbeats, while it works (a fifth of the lease). */
export const FREEZE_RENEW_MS = 1_000;

/**
 * Stage 2, initiation: records the VM configuration and the incremental parent, freezes the guest for as short as
 * possible, opens point-in-time views of every disk, and thaws. The freeze is a lease (FREEZE_LEASE_MS) that this
 * activity renews, and heartbeats, every FREEZE_RENEW_MS while it works: if its worker dies, the guest thaws by itself
 * when the lease runs out and the workflow notices through the short heartbeat timeout and retries. The thaw runs here
 * in `finally` and again as a workflow compensation.
 */
export function createInitiateActivity(deps: ActivityDeps) {
  return async function initiateSnapshot(snapshotId: string): Promise<DiskView[]> {
    return withFailureTypes(async () => {
      const snapshot = deps.catalog.updateSnapshot(snapshotId, { status: 'INITIATING' });
      const vm = deps.catalog.getVm(snapshot.vmId);
      if (!vm) throw new SnapshotError('VmNotFound', `VM ${snapshot.vmId} disappeared while being snapshotted.`);
      const parent = deps.catalog.latestSuccessfulSnapshot(vm.id);
      deps.catalog.updateSnapshot(snapshotId, { vmConfig: vm.config, parentSnapshotId: parent?.id ?? null });
      const parentViewId = parent?.id ?? null;
      return whileFrozen(deps.hypervisor, vm, () => deps.hypervisor.openViews(vm, snapshotId, { parentViewId }));
    });
  };
}

/**
 * Freezes the VM under a lease, runs `work`, and thaws (always). Heartbeats from the start (a freeze may wait for a
 * guest write in progress) and renews the lease while `work` runs; a last renewal after it proves the guest stayed
 * frozen throughout (a renewal fails once a lease has expired), else the attempt fails and is retried.
 */
async function whileFrozen<T>(hypervisor: Hypervisor, vm: Vm, work: () => Promise<T>): Promise<T> {
  const context = Context.current();
  const lease = { leaseMs: FREEZE_LEASE_MS };
  let frozen = false;
  let renewal: Promise<void> = Promise.resolve();
  const timer = setInterval(() => {
    context.heartbeat();
    // A failed renewal (the lease expired) needs no report here: the last renewal below fails the same way.
    if (frozen) renewal = renewal.then(() => hypervisor.renewFreeze(vm, lease)).catch(() => undefined);
  }, FREEZE_RENEW_MS);
  try {
    context.heartbeat();
    await hypervisor.freeze(vm, lease);
    frozen = true;
    const result = await work();
    await renewal;
    await hypervisor.renewFreeze(vm, lease);
    return result;
  } finally {
    clearInterval(timer);
    await renewal;
    await hypervisor.thaw(vm);
  }
}
