import { Context } from '@temporalio/activity';
import { SnapshotError } from '../domain/errors';
import type { Region } from '../domain/model';
import type { SnapshotWorkflowInput } from '../domain/requests';
import { CreateSnapshotRequestSchema } from '../domain/requests';
import { checkSnapshotRequest } from '../domain/rules';
import type { ActivityDeps } from './deps';
import { withFailureTypes } from './failures';

export interface ValidateResult {
  vmId: string;
  vmName: string;
  region: Region;
  logicalBytes: number;
}

/**
 * Stage 1, validation: re-checks every rule authoritatively (the client checked only for fast feedback) and reserves
 * the name and the VM's in-flight slot in one atomic step. Idempotent: a retry finds its own reservation.
 */
export function createValidateActivity(deps: ActivityDeps) {
  return async function validateSnapshot(input: SnapshotWorkflowInput): Promise<ValidateResult> {
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
      const vm = checkSnapshotRequest(request, {
        account: deps.catalog.getAccount(request.accountId),
        vm: deps.catalog.getVm(request.vmId),
      });
      if (!existing) {
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
          policyId: request.policyId ?? null,
          workflowId: Context.current().info.workflowExecution?.workflowId ?? input.snapshotId,
        });
      }
      return {
        vmId: vm.id,
        vmName: vm.name,
        region: vm.region,
        logicalBytes: vm.disks.reduce((sum, disk) => sum + disk.sizeBytes, 0),
      };
    });
  };
}
