import { Context } from '@temporalio/activity';
import { GuestFreezeError, SnapshotError } from '../domain/errors';
import { DEFAULT_QUIESCE } from '../domain/model';
import type { Consistency, Quiesce, Vm } from '../domain/model';
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
 *
 * A guest that cannot be frozen (`GuestFreezeFailed`: no agent, a silent one, a refusal) fails the snapshot when
 * `quiesce` is `required`; with `best-effort` the views are opened unfrozen (still in one transaction across the
 * disks, so crash-consistent) and the snapshot records why. Other freeze failures are retried as before.
 */
export function createInitiateActivity(deps: ActivityDeps) {
  return async function initiateSnapshot(snapshotId: string, options: { quiesce?: Quiesce } = {}): Promise<DiskView[]> {
    return withFailureTypes(async () => {
      const snapshot = deps.catalog.updateSnapshot(snapshotId, { status: 'INITIATING' });
      const vm = deps.catalog.getVm(snapshot.vmId);
      if (!vm) throw new SnapshotError('VmNotFound', `VM ${snapshot.vmId} disappeared while being snapshotted.`);
      const parent = deps.catalog.latestSuccessfulSnapshot(vm.id);
      deps.catalog.updateSnapshot(snapshotId, { vmConfig: vm.config, parentSnapshotId: parent?.id ?? null });
      const parentViewId = parent?.id ?? null;
      const open = () => deps.hypervisor.openViews(vm, snapshotId, { parentViewId });
      const { result, consistency } = await whileFrozen(deps.hypervisor, vm, options.quiesce ?? DEFAULT_QUIESCE, open);
      deps.catalog.updateSnapshot(snapshotId, { consistency });
      return result;
    });
  };
}

/**
 * Freezes the VM under a lease, runs `work`, and thaws (always). Heartbeats from the start (a freeze may wait for a
 * guest write in progress) and renews the lease while `work` runs; a last renewal after it proves the guest stayed
 * frozen throughout (a renewal fails once a lease has expired), else the attempt fails and is retried. When the guest
 * cannot be frozen, `work` runs unfrozen if `quiesce` allows it; either way this does not thaw then (the hypervisor
 * thaws a freeze that may have taken effect late by itself, and a thaw would wait on the same absent or silent agent).
 */
async function whileFrozen<T>(
  hypervisor: Hypervisor,
  vm: Vm,
  quiesce: Quiesce,
  work: () => Promise<T>,
): Promise<{ result: T; consistency: Consistency }> {
  const context = Context.current();
  const lease = { leaseMs: FREEZE_LEASE_MS };
  let frozen = false;
  let renewal: Promise<void> = Promise.resolve();
  const timer = setInterval(() => {
    context.heartbeat();
    // A failed renewal (the lease expired) needs no report here: the last renewal below fails the same way.
    if (frozen) renewal = renewal.then(() => hypervisor.renewFreeze(vm, lease)).catch(() => undefined);
  }, FREEZE_RENEW_MS);
  let unfrozen: GuestFreezeError | undefined;
  try {
    context.heartbeat();
    try {
      await hypervisor.freeze(vm, lease);
      frozen = true;
    } catch (error) {
      if (!(error instanceof GuestFreezeError)) throw error;
      unfrozen = error;
      if (quiesce === 'required') throw error;
    }
    const result = await work();
    if (unfrozen) return { result, consistency: { kind: 'crash-consistent', reason: unfrozen.reason } };
    await renewal;
    await hypervisor.renewFreeze(vm, lease);
    return { result, consistency: { kind: 'application-consistent' } };
  } finally {
    clearInterval(timer);
    await renewal;
    if (!unfrozen) await hypervisor.thaw(vm);
  }
}
