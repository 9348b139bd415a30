import { createHash } from 'node:crypto';
import { Context } from '@temporalio/activity';
import { NO_ACTIVE_VMS, requestFingerprint } from '../domain/acceptance';
import { SnapshotError } from '../domain/errors';
import type { HostPlacement, Region } from '../domain/model';
import type { SnapshotWorkflowInput } from '../domain/requests';
import { CreateSnapshotRequestSchema } from '../domain/requests';
import { checkAccount, checkSnapshotRequest } from '../domain/rules';
import type { ActivityDeps } from './deps';
import { placementOn } from './deps';
import { withFailureTypes } from './failures';

export interface ValidateResult {
  /**
   * The snapshot the request stands for: the input's own id once reserved, or the live snapshot an earlier request
   * with the same idempotency key and fields made (the workflow then makes nothing).
   */
  snapshotId: string;
  /** The workflow that makes (or made) that snapshot. */
  workflowId: string;
  vmId: string;
  vmName: string;
  region: Region;
  logicalBytes: number;
  /** Where the snapshot's host-pinned steps and data stages run: the VM's host. */
  host: HostPlacement;
}

/**
 * Stage 1, validation: the authoritative check of every rule, and the reservation of the name, the VM's in-flight slot,
 * the credit hold and the idempotency key in one atomic step. `requestedAt` is when the request arrived (its
 * workflow's start), so a snapshot in flight then refuses it even if validation runs after that one ended.
 * Idempotent: a retry finds its own reservation.
 */
export function createValidateActivity(deps: ActivityDeps) {
  return async function validateSnapshot(input: SnapshotWorkflowInput, requestedAt: string): Promise<ValidateResult> {
    return withFailureTypes(async () => {
      const parsed = CreateSnapshotRequestSchema.safeParse(input.request);
      if (!parsed.success) throw new SnapshotError('InvalidRequest', parsed.error.message);
      const request = parsed.data;
      const existing = deps.catalog.getSnapshot(input.snapshotId);
      if (existing?.status === 'FAILED') {
        throw new SnapshotError(
          'InvalidRequest',
          `Snapshot ${input.snapshotId} already failed: ${existing.failureReason}`,
        );
      }
      const account = deps.catalog.getAccount(request.accountId);
      checkAccount(request.accountId, account);
      if (
        deps.catalog.listVms({ accountId: request.accountId, region: request.region, status: 'ACTIVE' }).length === 0
      ) {
        throw new SnapshotError('NoActiveVms', `${NO_ACTIVE_VMS} in ${request.region}.`);
      }
      const vm = checkSnapshotRequest(request, { account, vm: deps.catalog.getVm(request.vmId) });
      const reserved =
        existing ??
        deps.catalog.reserveSnapshot({
          id: input.snapshotId,
          accountId: request.accountId,
          vmId: vm.id,
          vmName: vm.name,
          region: vm.region,
          name: request.name,
          description: request.description,
          createAsImage: request.createAsImage,
          idempotencyKey: request.idempotencyKey ?? null,
          requestDigest: request.idempotencyKey
            ? createHash('sha256').update(requestFingerprint(request)).digest('hex')
            : null,
          requestedAt,
          policyId: request.policyId ?? null,
          workflowId: Context.current().info.workflowExecution?.workflowId ?? input.snapshotId,
        });
      return {
        snapshotId: reserved.id,
        workflowId: reserved.workflowId,
        vmId: vm.id,
        vmName: vm.name,
        region: vm.region,
        logicalBytes: vm.disks.reduce((sum, disk) => sum + disk.sizeBytes, 0),
        host: placementOn(deps, vm.hostId),
      };
    });
  };
}
