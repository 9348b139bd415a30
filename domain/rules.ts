import { SnapshotError } from './errors';
import { MIN_COVERED_HOURS, RATE_PER_TB_HOUR, creditHoldMicros, estimatedStoredBytes, formatMoney } from './billing';
import type { Account, Disk, SnapshotRecord, Vm } from './model';
import { missingAccountFields } from './model';
import type { ValidCreateSnapshotRequest } from './requests';

/**
 * The request rules of the product page that need the catalog's facts: the account exists, the VM exists, belongs to
 * the account, is ACTIVE and lives in the region the snapshot is made in. Pure; the validation activity applies it
 * with the catalog's facts. Returns the VM.
 */
export function checkSnapshotRequest(
  request: ValidCreateSnapshotRequest,
  facts: { account: Account | undefined; vm: Vm | undefined },
): Vm {
  checkAccount(request.accountId, facts.account);
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

/** The credit hold a snapshot of `vm` takes: its estimated stored size priced for MIN_COVERED_HOURS. */
export function creditHoldFor(account: Account, vm: Vm): { storedBytes: number; hold: number } {
  const storedBytes = estimatedStoredBytes(vm.disks.map((d) => d.sizeBytes));
  return { storedBytes, hold: creditHoldMicros(storedBytes, account.currency) };
}

/** The account exists and its profile and billing information are complete. */
export function checkAccount(accountId: string, account: Account | undefined): asserts account is Account {
  if (!account) {
    throw new SnapshotError('AccountNotFound', `Account ${accountId} does not exist.`);
  }
  const missing = missingAccountFields(account);
  if (missing.length > 0) {
    throw new SnapshotError(
      'ProfileIncomplete',
      `Complete your account profile before creating snapshots; missing: ${missing.join(', ')}.`,
    );
  }
}

/**
 * "Sufficient credits": the available balance (balance minus holds of snapshots in flight) covers the credit hold of
 * this snapshot. Returns the hold to reserve.
 */
export function checkCredits(account: Account, vm: Vm, heldMicros: number): number {
  const { storedBytes, hold } = creditHoldFor(account, vm);
  const available = account.creditMicros - heldMicros;
  if (available < hold) {
    const money = (micros: number) => formatMoney(micros, account.currency);
    throw new SnapshotError(
      'InsufficientCredits',
      `Insufficient credits: available ${money(available)} (balance ${money(account.creditMicros)}, ` +
        `${money(heldMicros)} held by snapshots in progress) is less than the ${money(hold)} needed to store ` +
        `an estimated ${(storedBytes / 1e9).toFixed(2)} GB for ${MIN_COVERED_HOURS} hours at ` +
        `${account.currency} ${RATE_PER_TB_HOUR[account.currency]} per TB per hour. Add credits and try again.`,
    );
  }
  return hold;
}

/** How a VM appears in the eligible-VM dropdown: `my-vm - H100-SXM5-80GB (CANADA-1)`. */
export function formatVmChoice(vm: Pick<Vm, 'name' | 'flavor' | 'region'>): string {
  return `${vm.name} - ${vm.flavor} (${vm.region})`;
}

/** The account's snapshot, or `SnapshotNotFound`: another account's snapshot is never revealed, not even that it exists. */
export function checkOwnSnapshot(
  snapshot: SnapshotRecord | undefined,
  accountId: string,
  snapshotId: string,
): SnapshotRecord {
  if (!snapshot || snapshot.accountId !== accountId) {
    throw new SnapshotError('SnapshotNotFound', `Snapshot ${snapshotId} does not exist in account ${accountId}.`);
  }
  return snapshot;
}

/** The VM's disk named `diskName`; `DiskNotFound`, naming the disks it has, when there is none. */
export function vmDisk(vm: Pick<Vm, 'name' | 'disks'>, diskName: string): Disk {
  return namedDisk(vm.disks, diskName, `VM ${vm.name}`);
}

/** The disk named `diskName` of `owner` (a VM, a snapshot); `DiskNotFound`, naming the disks it has, when none. */
export function namedDisk<D extends { name: string }>(disks: readonly D[], diskName: string, owner: string): D {
  const disk = disks.find((d) => d.name === diskName);
  if (!disk) {
    const names = disks.map((d) => d.name).join(', ');
    throw new SnapshotError('DiskNotFound', `${owner} has no disk "${diskName}" (it has: ${names}).`);
  }
  return disk;
}
