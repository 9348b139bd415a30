import type { DiskWriter } from '../../dataplane';
import type { Disk, Vm, VmLoad } from '../../domain/model';
import type { AtPointInTime, ViewOutcome } from '../ports';

/**
 * How one disk's view is planned before anything is made: its block node, the parent's checkpoint bitmap when it is
 * usable (the view is then incremental against it), or why not (the disk is read whole).
 */
export interface PlannedDiskView {
  name: string;
  nodeName: string;
  parentBitmap: string | null;
  fullReason: string | null;
}

/** A VM's views as planned: what teardown needs to find and undo, whatever point an opening got to. */
export interface ViewPlan {
  vmId: string;
  viewId: string;
  /** The checkpoint the views create: after a kept snapshot, what the next incremental counts writes from. */
  newBitmap: string;
  disks: PlannedDiskView[];
}

/** An open view of one disk: exported read-only over NBD. */
export interface ExportedDiskView {
  name: string;
  exportName: string;
  sizeBytes: number;
}

/**
 * The control side of the QEMU driver: what differs between a QEMU process the driver drives itself over QMP
 * (QmpControl, qmp-control.ts) and one that libvirt manages, which owns the QMP monitor (a libvirt control, next:
 * `virDomainFSFreeze`/`Thaw` for the agent, checkpoints and `virDomainBackupBegin` in pull mode for the views,
 * `virDomainBackupGetXMLDesc`/`virDomainAbortJob` and checkpoint deletion for the teardown, domain stats for the
 * load, a domain defined from the captured configuration for restores). The data side — the view records, reading the
 * views over NBD with their `base:allocation` and dirty-bitmap contexts, the choice of what capture reads — is
 * QemuHypervisor's, and shared.
 */
export interface QemuControl {
  /** Freezes the guest's file systems under a lease; a guest that cannot be frozen is a GuestFreezeError. */
  freeze(vm: Vm, lease: { leaseMs: number }): Promise<void>;
  renewFreeze(vm: Vm, lease: { leaseMs: number }): Promise<void>;
  thaw(vm: Vm): Promise<void>;
  /**
   * Plans the views of snapshot `viewId`: for each disk, whether the parent's checkpoint can be used. Makes nothing
   * (a checkpoint that can never be used again, such as an inconsistent one, may be removed).
   */
  planViews(vm: Vm, viewId: string, parentViewId: string | null): Promise<ViewPlan>;
  /**
   * Opens the planned views at one point in time for all disks, exported over NBD on `nbdSocket(vmId)`; only the step
   * that fixes that moment runs through `atPointInTime` (the freeze), everything else before or after it.
   */
  openViews(plan: ViewPlan, atPointInTime?: AtPointInTime): Promise<ExportedDiskView[]>;
  /**
   * Tears down whatever of the plan's views exists and settles the checkpoints as `outcome` says: kept, the new one
   * replaces the parent's; discarded, the parent's takes in the writes since. Idempotent; a VM whose process is gone
   * only has its leftovers on the host removed.
   */
  closeViews(plan: ViewPlan, outcome: ViewOutcome): Promise<void>;
  /**
   * Tears down whatever of the plan's views exists (readers are disconnected, the guest's writes are no longer
   * copied) and leaves the checkpoints for closeViews to settle. Idempotent.
   */
  dropViews(plan: ViewPlan): Promise<void>;
  /** Where the VM's views keep their temporary images (they grow as the guest overwrites what a view needs). */
  tempDir(vmId: string): string;
  /** The unix socket on which the VM's views are exported. */
  nbdSocket(vmId: string): string;
  readLoad(vm: Vm): Promise<VmLoad>;
  createDisks(vmId: string, disks: { name: string; sizeBytes: number }[]): Promise<Disk[]>;
  writeDisk(vm: Vm, diskName: string): Promise<DiskWriter>;
  startVm(vm: Vm): Promise<void>;
  removeVm(vmId: string): Promise<void>;
  /** Stops the host's freeze machinery that outlives workers (the freeze guard), for the demo's end and tests. */
  stopFreezeGuard(): Promise<void>;
}
