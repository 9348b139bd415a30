import { Context } from '@temporalio/activity';
import { GuestFreezeError, SnapshotError } from '../domain/errors';
import { DEFAULT_QUIESCE } from '../domain/model';
import type { Consistency, Quiesce, Vm } from '../domain/model';
import type { AtPointInTime, DiskView, Hypervisor } from '../platform/ports';
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
 * Stage 2, initiation: records the VM configuration and the incremental parent, and opens point-in-time views of every
 * disk with the guest frozen for as short as possible: the driver prepares the views, the guest is frozen only for
 * the step that fixes their moment (`atPointInTime`), then thawed, then the views are exported. The freeze is a lease
 * (FREEZE_LEASE_MS) that this activity renews every FREEZE_RENEW_MS while the guest is frozen; it heartbeats as often
 * throughout: if its worker dies, the guest thaws by itself when the lease runs out and the workflow notices through
 * the short heartbeat timeout and retries. The thaw runs here in `finally` and again as a workflow compensation. How
 * long the guest was frozen is recorded with the consistency.
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
      const quiesce = options.quiesce ?? DEFAULT_QUIESCE;
      let consistency: Consistency | undefined;
      const atPointInTime: AtPointInTime = async (step) => {
        const frozen = await whileFrozen(deps.hypervisor, vm, quiesce, step);
        consistency = frozen.consistency;
        return frozen.result;
      };
      const views = await withHeartbeats(() =>
        deps.hypervisor.openViews(vm, snapshotId, { parentViewId: parent?.id ?? null, atPointInTime }),
      );
      if (!consistency) throw new Error(`The hypervisor opened the views of ${snapshotId} without a point in time.`);
      deps.catalog.updateSnapshot(snapshotId, { consistency });
      return views;
    });
  };
}

/** Runs `work`, heartbeating at once and every FREEZE_RENEW_MS until it ends (a freeze may wait for a guest write). */
async function withHeartbeats<T>(work: () => Promise<T>): Promise<T> {
  const context = Context.current();
  context.heartbeat();
  const timer = setInterval(() => context.heartbeat(), FREEZE_RENEW_MS);
  try {
    return await work();
  } finally {
    clearInterval(timer);
  }
}

/**
 * Freezes the VM under a lease, runs `work`, and thaws (always), renewing the lease while `work` runs; a last renewal
 * after it proves the guest stayed frozen throughout (a renewal fails once a lease has expired), else the attempt
 * fails and is retried. `frozenMs` runs from the freeze request to the thaw's answer. When the guest cannot be frozen,
 * `work` runs unfrozen if `quiesce` allows it; either way this does not thaw then (the hypervisor thaws a freeze that
 * may have taken effect late by itself, and a thaw would wait on the same absent or silent agent).
 */
async function whileFrozen<T>(
  hypervisor: Hypervisor,
  vm: Vm,
  quiesce: Quiesce,
  work: () => Promise<T>,
): Promise<{ result: T; consistency: Consistency }> {
  const lease = { leaseMs: FREEZE_LEASE_MS };
  let frozen = false;
  let thawed = false;
  let renewal: Promise<void> = Promise.resolve();
  const timer = setInterval(() => {
    // A failed renewal (the lease expired) needs no report here: the last renewal below fails the same way.
    if (frozen) renewal = renewal.then(() => hypervisor.renewFreeze(vm, lease)).catch(() => undefined);
  }, FREEZE_RENEW_MS);
  let unfrozen: GuestFreezeError | undefined;
  const freezeStarted = performance.now();
  try {
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
    clearInterval(timer);
    await renewal;
    await hypervisor.renewFreeze(vm, lease);
    await hypervisor.thaw(vm);
    thawed = true;
    const frozenMs = Math.round(performance.now() - freezeStarted);
    return { result, consistency: { kind: 'application-consistent', frozenMs } };
  } finally {
    clearInterval(timer);
    await renewal;
    if (!unfrozen && !thawed) await hypervisor.thaw(vm);
  }
}
