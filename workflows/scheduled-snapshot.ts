import {
  ParentClosePolicy,
  WorkflowIdReusePolicy,
  executeChild,
  log,
  proxyActivities,
  setCurrentDetails,
  setHandler,
  sleep,
  upsertMemo,
  uuid4,
} from '@temporalio/workflow';
import type { Activities } from '../activities';
import type { TargetVm } from '../activities/scheduling';
import { snapshotIdFrom } from '../domain/ids';
import type { VmLoad } from '../domain/model';
import { formatLoad, isQuiet, policyScheduleId, runDeadline } from '../domain/policies';
import type { SnapshotPolicy } from '../domain/policies';
import { formatWindow } from '../domain/windows';
import { deleteSnapshotWorkflow, deletionWorkflowId } from './lifecycle';
import { scheduledRunQuery } from './messages';
import { CATALOG_ACTIVITY, hostActivities, scheduledStartTime, typedFailure } from './profiles';
import type { ScheduledRunState, VmRunOutcome } from './messages';
import type { snapshotWorkflow } from './snapshot';
import { snapshotStartOptions } from './start-options';

const catalog = proxyActivities<Activities>(CATALOG_ACTIVITY);

/**
 * One run of a snapshot policy, started by the policy's Temporal Schedule: for each of its VMs, wait (with durable
 * timers) until the VM's load is under the threshold or the window closes, take the snapshot as a child workflow
 * named from the policy's template, then apply retention (expired snapshots are deleted like a user deletion). Every decision is recorded in the history (timer and
 * activity summaries, memo updates), in the run's current details and in its result.
 */
export async function scheduledSnapshotWorkflow(input: SnapshotPolicy): Promise<ScheduledRunState> {
  const startedAt = new Date(Date.now());
  // The activity validates the policy (InvalidPolicy fails the run) and resolves its VMs.
  const targets = await catalog.resolvePolicyTargets(input);
  const { policy } = targets;
  const policyId = policyScheduleId(policy.accountId, policy.name);
  const scheduledAt = scheduledStartTime();
  const state: ScheduledRunState = { policy: policyId, scheduledAt: scheduledAt.toISOString(), vms: [], decisions: [] };
  setHandler(scheduledRunQuery, () => state);

  const decide = (text: string): void => {
    const line = `${new Date(Date.now()).toISOString()} ${text}`;
    state.decisions.push(line);
    log.info(text, { policy: policyId });
    upsertMemo({ decisions: state.decisions });
    setCurrentDetails(`**Policy** ${policyId}\n\n${state.decisions.map((d) => `- ${d}`).join('\n')}`);
  };

  const deadline = runDeadline(policy.window, startedAt);
  decide(
    deadline.insideWindow
      ? `inside the window ${formatWindow(policy.window)}; may wait for low load until ${deadline.closesAt.toISOString()}`
      : `started outside the window ${formatWindow(policy.window)} (trigger, backfill or late start); ` +
          `treating it as open until ${deadline.closesAt.toISOString()}`,
  );

  for (const { vmId, reason } of targets.skipped) {
    state.vms.push({ vmId, vmName: vmId, outcome: 'skipped', reason, waitedSeconds: 0, expired: [] });
    decide(`skipped ${vmId}: ${reason}`);
  }
  if (targets.vms.length === 0) decide('no VM to snapshot');

  const runVm = async (vm: TargetVm): Promise<VmRunOutcome> => {
    const waitStarted = Date.now();
    const waited = () => Math.round((Date.now() - waitStarted) / 1000);
    // The load counters are the hypervisor's, on the VM's host.
    const onHost = hostActivities(vm.host, CATALOG_ACTIVITY);
    const readLoad = () => onHost.readVmLoad.executeWithOptions({ summary: `Read the load of ${vm.name}` }, [vm.id]);
    // Reads the load until it is under the threshold or the window closes.
    const waitForQuiet = async (): Promise<VmLoad> => {
      let load = await readLoad();
      if (!isQuiet(load, policy.loadThreshold)) {
        decide(`${vm.name} is busy (${formatLoad(load)}); waiting for it to drop under ${thresholdText(policy)}`);
      }
      while (!isQuiet(load, policy.loadThreshold) && Date.now() < deadline.closesAt.getTime()) {
        const wait = Math.min(policy.loadCheckSeconds * 1000, deadline.closesAt.getTime() - Date.now());
        await sleep(wait, { summary: `${vm.name} busy (${formatLoad(load)}): check again` });
        load = await readLoad();
      }
      return load;
    };
    let load: VmLoad;
    try {
      load = await waitForQuiet();
    } catch (error) {
      // A VM whose load cannot be read (its host is down: HostUnavailable) fails alone; the other VMs still run.
      const { type, reason: why } = typedFailure(error);
      const reason = `${type}: ${why}`;
      decide(`${vm.name} failed: its load could not be read: ${reason}`);
      return { vmId: vm.id, vmName: vm.name, outcome: 'failed', reason, waitedSeconds: waited(), expired: [] };
    }
    if (!isQuiet(load, policy.loadThreshold)) {
      const why = `the window closed after waiting ${minutes(waited())} while ${vm.name} stayed busy (${formatLoad(load)})`;
      if (policy.onWindowClose === 'skip') {
        decide(`skipped ${vm.name}: ${why}`);
        return { vmId: vm.id, vmName: vm.name, outcome: 'skipped', reason: why, waitedSeconds: waited(), expired: [] };
      }
      decide(`${why}; taking the snapshot anyway, as the policy says`);
    } else if (waited() > 0) {
      decide(`${vm.name} quiet (${formatLoad(load)}) after waiting ${minutes(waited())}`);
    }

    const name = await catalog.nameScheduledSnapshot({ policy, vm, scheduledAt: scheduledAt.toISOString() });
    const snapshotId = snapshotIdFrom(uuid4());
    decide(`starting snapshot "${name}" of ${vm.name}`);
    const request = {
      accountId: policy.accountId,
      vmId: vm.id,
      region: vm.region,
      name,
      description: policy.description || `Scheduled by policy ${policy.name}`,
      createAsImage: policy.createAsImage,
      quiesce: policy.quiesce,
      requestedBy: `policy ${policy.name}`,
      policyId,
    };
    try {
      await executeChild<typeof snapshotWorkflow>('snapshotWorkflow', {
        ...snapshotStartOptions({ snapshotId, request }, vm),
        workflowIdReusePolicy: WorkflowIdReusePolicy.ALLOW_DUPLICATE,
        // Cancelling the run cancels its snapshot, whose compensations then clean up.
        parentClosePolicy: ParentClosePolicy.REQUEST_CANCEL,
      });
    } catch (error) {
      const { type, reason: why } = typedFailure(error);
      const reason = `${type}: ${why}`;
      decide(`snapshot "${name}" of ${vm.name} failed: ${reason}`);
      return {
        vmId: vm.id,
        vmName: vm.name,
        outcome: 'failed',
        snapshotName: name,
        snapshotId,
        reason,
        waitedSeconds: waited(),
        expired: [],
      };
    }
    decide(`snapshot "${name}" of ${vm.name} succeeded`);
    const retention = await catalog.selectExpiredSnapshots.executeWithOptions(
      { summary: `Apply retention to ${vm.name}` },
      [{ policy, vmId: vm.id }],
    );
    decide(
      retention.expired.length === 0
        ? `retention kept all ${retention.kept.length} snapshots of ${vm.name}`
        : `retention kept ${retention.kept.length} snapshots of ${vm.name} and deletes ${retention.expired.map((s) => `"${s.name}"`).join(', ')}`,
    );
    // Expired snapshots are deleted exactly as a user deletion would (same workflow, same id, so never twice).
    for (const expired of retention.expired) {
      await executeChild(deleteSnapshotWorkflow, {
        workflowId: deletionWorkflowId(expired.id),
        args: [{ accountId: policy.accountId, snapshotId: expired.id, reason: `retention of policy ${policyId}` }],
        parentClosePolicy: ParentClosePolicy.ABANDON,
        workflowIdReusePolicy: WorkflowIdReusePolicy.ALLOW_DUPLICATE,
      });
    }
    return {
      vmId: vm.id,
      vmName: vm.name,
      outcome: 'snapshot',
      snapshotName: name,
      snapshotId,
      waitedSeconds: waited(),
      expired: retention.expired.map((s) => s.name),
    };
  };

  // VMs wait for their own quiet moment independently.
  state.vms.push(...(await Promise.all(targets.vms.map(runVm))));
  return state;
}

function thresholdText(policy: SnapshotPolicy): string {
  return `CPU ${policy.loadThreshold.cpuPercent}% and disk I/O ${policy.loadThreshold.diskIoPercent}%`;
}

function minutes(seconds: number): string {
  return seconds < 120 ? `${seconds} s` : `${Math.round(seconds / 60)} min`;
}
