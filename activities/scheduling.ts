import type { HostPlacement, Region, VmLoad, VmStatus } from '../domain/model';
import { renderSnapshotName } from '../domain/naming';
import type { SnapshotPolicy } from '../domain/policies';
import { parsePolicy, policyScheduleId, selectPolicyVms } from '../domain/policies';
import { selectRetained } from '../domain/retention';
import { SnapshotError } from '../domain/errors';
import type { ActivityDeps } from './deps';
import { placementOn } from './deps';
import { withFailureTypes } from './failures';

/** A VM a scheduled run will snapshot: what the child workflow's summary and search attributes need. */
export interface TargetVm {
  id: string;
  name: string;
  flavor: string;
  region: Region;
  /** Where its load is read (and its snapshot's host steps run): the VM's host. */
  host: HostPlacement;
}

export interface PolicyTargets {
  /** The policy as validated, with its defaults. */
  policy: SnapshotPolicy;
  vms: TargetVm[];
  /** VMs the policy names but cannot snapshot now, with why. */
  skipped: { vmId: string; reason: string }[];
}

export interface RetentionOutcome {
  /** Names of the snapshots retention keeps. */
  kept: string[];
  expired: { id: string; name: string }[];
}

/**
 * Activities of scheduled runs: resolve the policy's VMs, read a VM's load, name the next snapshot, select expired ones.
 * All read or write the catalog only, so they are quick and safe to retry.
 */
export function createSchedulingActivities(deps: ActivityDeps) {
  return {
    /**
     * Validates the run's policy (the Schedule's argument: `InvalidPolicy` if it was edited into something invalid)
     * and resolves its VMs. Workflow code validates nothing itself: zod is not used inside the workflow sandbox.
     */
    async resolvePolicyTargets(input: unknown): Promise<PolicyTargets> {
      return withFailureTypes(async () => {
        const policy = parsePolicy(input);
        if (!deps.catalog.getAccount(policy.accountId)) {
          throw new SnapshotError('AccountNotFound', `Account ${policy.accountId} does not exist.`);
        }
        const { vms: candidates, unknownIds } = selectPolicyVms(
          policy.target,
          deps.catalog.listVms({ accountId: policy.accountId }),
        );
        const skipped: PolicyTargets['skipped'] = unknownIds.map((vmId) => ({
          vmId,
          reason: `VM ${vmId} does not exist in account ${policy.accountId}`,
        }));
        const vms: TargetVm[] = [];
        for (const vm of candidates) {
          if (vm.status === 'ACTIVE') {
            vms.push({
              id: vm.id,
              name: vm.name,
              flavor: vm.flavor,
              region: vm.region,
              host: placementOn(deps, vm.hostId),
            });
          } else skipped.push({ vmId: vm.id, reason: notActive(vm.name, vm.status) });
        }
        return { policy, vms, skipped };
      });
    },

    async readVmLoad(vmId: string): Promise<VmLoad> {
      return withFailureTypes(async () => {
        const vm = deps.catalog.getVm(vmId);
        if (!vm) throw new SnapshotError('VmNotFound', `VM ${vmId} does not exist.`);
        return deps.hypervisor.readLoad(vm);
      });
    },

    /** The next snapshot's name from the policy's template; its version counts the policy's snapshots of the VM. */
    async nameScheduledSnapshot(input: { policy: SnapshotPolicy; vm: TargetVm; scheduledAt: string }): Promise<string> {
      const { policy, vm } = input;
      // Deleted and failed ones count too, so a version is never reused.
      const previous = deps.catalog.listSnapshots({
        vmId: vm.id,
        policyId: policyScheduleId(policy.accountId, policy.name),
        includeDeleted: true,
      });
      return renderSnapshotName(policy.nameTemplate, {
        vm: vm.name,
        purpose: policy.purpose,
        at: new Date(input.scheduledAt),
        timeZone: policy.window.timeZone,
        version: previous.length + 1,
      });
    },

    /**
     * Applies the policy's retention to its SUCCESS snapshots of one VM: which it keeps, and which are to be deleted
     * (the workflow deletes them through the same path as a user deletion).
     */
    async selectExpiredSnapshots(input: { policy: SnapshotPolicy; vmId: string }): Promise<RetentionOutcome> {
      const { policy } = input;
      const live = deps.catalog.listSnapshots({
        vmId: input.vmId,
        policyId: policyScheduleId(policy.accountId, policy.name),
        status: 'SUCCESS',
      });
      const { keep, expire } = selectRetained(
        live.map((s) => ({ id: s.id, createdAt: new Date(s.createdAt) })),
        policy.retention,
        policy.window.timeZone,
      );
      const nameOf = new Map(live.map((s) => [s.id, s.name]));
      return {
        kept: keep.map((k) => nameOf.get(k.id)!),
        expired: expire.map((id) => ({ id, name: nameOf.get(id)! })),
      };
    },
  };
}

function notActive(name: string, status: VmStatus): string {
  return `VM ${name} is ${status}; only ACTIVE VMs can be snapshotted`;
}
