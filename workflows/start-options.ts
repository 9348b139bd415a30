import type { SearchAttributePair } from '@temporalio/common';
import type { Vm } from '../domain/model';
import type { SnapshotWorkflowInput } from '../domain/requests';
import { snapshotWorkflowId } from '../domain/requests';
import { formatVmChoice } from '../domain/rules';
import { SnapshotAccount, SnapshotName, SnapshotRegion, SnapshotStatus, SnapshotVm } from '../domain/search-attributes';

/** What a snapshot workflow is started with, whoever starts it: the client, or a scheduled run as a child. */
export interface SnapshotStartOptions {
  workflowId: string;
  args: [SnapshotWorkflowInput];
  memo: { snapshotId: string };
  typedSearchAttributes: SearchAttributePair[];
  staticSummary: string;
  staticDetails: string;
}

/**
 * The id, search attributes, summary and details of a snapshot workflow, so every run reads the same in the Web UI.
 */
export function snapshotStartOptions(
  input: SnapshotWorkflowInput,
  vm: Pick<Vm, 'id' | 'name' | 'flavor' | 'region'>,
): SnapshotStartOptions {
  const { snapshotId, request } = input;
  return {
    workflowId: snapshotWorkflowId(request.accountId, request.name),
    args: [input],
    memo: { snapshotId },
    typedSearchAttributes: [
      { key: SnapshotAccount, value: request.accountId },
      { key: SnapshotVm, value: vm.id },
      { key: SnapshotRegion, value: request.region },
      { key: SnapshotName, value: request.name },
      { key: SnapshotStatus, value: 'VALIDATING' },
    ],
    staticSummary: `Snapshot "${request.name}" of ${formatVmChoice(vm)}`,
    staticDetails: [
      `**VM**: ${vm.name} (\`${vm.id}\`), ${vm.flavor}, ${vm.region}`,
      `**Snapshot**: ${request.name} (\`${snapshotId}\`)`,
      `**Account**: ${request.accountId}, requested by ${request.requestedBy}`,
      `**Create as image**: ${request.createAsImage ? 'yes' : 'no'}`,
      request.quiesce === 'required'
        ? '**Quiesce**: required (fails if the guest cannot be frozen)'
        : '**Quiesce**: best-effort (crash-consistent if the guest cannot be frozen)',
      request.policyId ? `**Policy**: ${request.policyId}` : '',
      request.description ? `**Description**: ${request.description}` : '',
    ]
      .filter(Boolean)
      .join('\n\n'),
  };
}
