import { SnapshotError } from './errors';
import type { Account, Vm } from './model';
import type { ValidCreateSnapshotRequest } from './requests';

/**
 * The request rules of the product page that need the catalog's facts: the account exists, the VM exists, belongs to
 * the account, is ACTIVE and lives in the region the snapshot is made in. Pure, so the client (fast feedback) and the
 * validation activity (authoritative) apply exactly the same checks. Returns the VM.
 */
export function checkSnapshotRequest(
  request: ValidCreateSnapshotRequest,
  facts: { account: Account | undefined; vm: Vm | undefined },
): Vm {
  if (!facts.account) {
    throw new SnapshotError('AccountNotFound', `Account ${request.accountId} does not exist.`);
  }
  const vm = facts.vm;
  if (!vm || vm.accountId !== request.accountId) {
    throw new SnapshotError('VmNotFound', `VM ${request.vmId} does not exist in account ${request.accountId}.`);
  }
  if (vm.region !== request.region) {
    throw new SnapshotError(
      'RegionMismatch',
      `VM ${vm.name} is in ${vm.region}, not ${request.region}; create the snapshot in ${vm.region}.`,
    );
  }
  if (vm.status !== 'ACTIVE') {
    throw new SnapshotError(
      'VmNotActive',
      `VM ${vm.name} is ${vm.status}; only ACTIVE VMs can be snapshotted. Start it or wait until it is ACTIVE.`,
    );
  }
  return vm;
}

/** How a VM appears in the eligible-VM dropdown: `my-vm - H100-SXM5-80GB (CANADA-1)`. */
export function formatVmChoice(vm: Pick<Vm, 'name' | 'flavor' | 'region'>): string {
  return `${vm.name} - ${vm.flavor} (${vm.region})`;
}
