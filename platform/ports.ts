import type { DiskReader, DiskWriter, Range, Repository } from '../dataplane';
import type {
  Account,
  Disk,
  HourlyCharge,
  ImageRecord,
  Region,
  SnapshotRecord,
  SnapshotStatus,
  Vm,
  VmLoad,
  VmStatus,
} from '../domain/model';

/** A snapshot row as first reserved by validation: name and VM slot are taken atomically. */
export type NewSnapshot = Pick<
  SnapshotRecord,
  | 'id'
  | 'accountId'
  | 'vmId'
  | 'vmName'
  | 'region'
  | 'name'
  | 'description'
  | 'createAsImage'
  | 'workflowId'
  | 'idempotencyKey'
  | 'policyId'
> & {
  /** SHA-256 of the request's fingerprint (domain/acceptance.ts), stored with its idempotency key; null without a key. */
  requestDigest: string | null;
  /** When the request arrived (its workflow's start): a snapshot of the VM in flight then refuses it too. */
  requestedAt: string;
};

export type SnapshotPatch = Partial<
  Pick<
    SnapshotRecord,
    | 'status'
    | 'parentSnapshotId'
    | 'vmConfig'
    | 'consistency'
    | 'fullReads'
    | 'failureType'
    | 'failureReason'
    | 'logicalBytes'
    | 'storedBytes'
    | 'addedBytes'
    | 'compressionRatio'
    | 'dedupRatio'
    | 'completedAt'
    | 'verifiedAt'
    | 'manifestDigest'
  >
>;

/**
 * The catalog: accounts, VMs and snapshot records. The embedded default is SQLite; a provider plugs in its own
 * database behind the same interface.
 */
export interface Catalog {
  getAccount(id: string): Account | undefined;
  listAccounts(): Account[];
  putAccount(account: Account): void;
  /**
   * Records an account's charge for one hour and debits its balance, in one transaction. Exactly once: returns false,
   * changing nothing, when that account and hour were already charged.
   */
  recordHourlyCharge(charge: HourlyCharge): boolean;
  /** The account's charges from `from` (inclusive) on, oldest first. */
  listCharges(accountId: string, from?: Date): HourlyCharge[];
  getVm(id: string): Vm | undefined;
  listVms(filter: { accountId?: string; region?: Region; status?: VmStatus }): Vm[];
  putVm(vm: Vm): void;
  deleteVm(id: string): void;
  /**
   * Inserts a snapshot in VALIDATING state and takes its credit hold, atomically. With an idempotency key, the live
   * snapshot already made with that key is returned instead (another id) when its request digest is the same, and
   * `IdempotencyKeyReused` thrown when it is not. Otherwise fails with `SnapshotNameTaken` if the account already has a
   * live snapshot with that name (any region, case-insensitive), `SnapshotInProgress` if the VM has one in flight now
   * or had one in flight at `requestedAt`, and `InsufficientCredits` if the available balance does not cover the hold.
   * Idempotent for the same id.
   */
  reserveSnapshot(snapshot: NewSnapshot): SnapshotRecord;
  /** Sum of the credit holds of the account's snapshots in flight. */
  heldCredits(accountId: string): number;
  getSnapshot(id: string): SnapshotRecord | undefined;
  findSnapshotByName(accountId: string, name: string): SnapshotRecord | undefined;
  listSnapshots(filter: {
    accountId?: string;
    region?: Region;
    vmId?: string;
    status?: SnapshotStatus;
    policyId?: string;
    /** DELETED snapshots are left out unless asked for (or `status: 'DELETED'` is given). */
    includeDeleted?: boolean;
  }): SnapshotRecord[];
  updateSnapshot(id: string, patch: SnapshotPatch): SnapshotRecord;
  /**
   * Marks a snapshot DELETED (gone from listings and billing; its name is free again) and releases a credit hold it
   * still had. Idempotent: a DELETED snapshot is returned as it is.
   */
  markSnapshotDeleted(id: string, reason: string): SnapshotRecord;
  /** Registers an image (idempotent for the same id). */
  putImage(image: ImageRecord): ImageRecord;
  getImage(id: string): ImageRecord | undefined;
  listImages(filter: { accountId?: string; region?: Region; snapshotId?: string }): ImageRecord[];
  deleteImage(id: string): void;
  /** The VM's most recent SUCCESS snapshot: the parent an incremental capture is measured against. */
  latestSuccessfulSnapshot(vmId: string): SnapshotRecord | undefined;
  /** Registers an API key of the account by its SHA-256 hash (hex); the key itself is never stored. Idempotent. */
  putApiKey(accountId: string, keyHash: string): void;
  /** The account an API key (given by its SHA-256 hash) belongs to, if any. */
  accountForApiKey(keyHash: string): string | undefined;
  close(): void;
}

/** What a snapshot worker runs against: the catalog, the host's hypervisor driver and the regions' repositories. */
export interface Platform {
  catalog: Catalog;
  hypervisor: Hypervisor;
  repositoryFor: (region: Region) => Repository;
}

/** A point-in-time, read-only view of one disk, valid until released; read through `Hypervisor.readView`. */
export interface DiskView {
  /** The views it belongs to (one per snapshot), as given to `openViews`. */
  viewId: string;
  /** The disk's name in the VM. */
  name: string;
  sizeBytes: number;
}

/**
 * Where an open view's bytes can be told without reading them, for capture to read only what it must. Both lists may
 * say more than the truth (a driver that cannot tell reports the whole disk), never less.
 */
export interface ViewRanges {
  /** Where the view may hold non-zero bytes; everything else reads as zeros. */
  data: Range[];
  /**
   * The ranges written since the views of snapshot `sinceSnapshotId` (the parent given to `openViews`) opened:
   * everything else holds what that snapshot captured. Null when unknown (no write tracking, or none that can be
   * trusted for this disk): every data range is to be read.
   */
  changed: { sinceSnapshotId: string; ranges: Range[] } | null;
  /**
   * Why `changed` is null, in words a user can act on (`bitmap … is inconsistent after an unclean QEMU exit`): an
   * incremental snapshot records it as the disk's FullRead. Null when `changed` is given.
   */
  readWholeReason: string | null;
}

/**
 * How a snapshot that had views ended, for their release: `kept` (SUCCESS: what changed since it is what the next
 * incremental reads) or `discarded` (failed or cancelled: the next incremental is measured against its parent again).
 */
export type ViewOutcome = 'kept' | 'discarded';

/** Runs the step of `openViews` that fixes the views' moment, with the guest quiesced around it (see openViews). */
export type AtPointInTime = <T>(step: () => Promise<T>) => Promise<T>;

/**
 * The hypervisor driver: quiesce the guest and expose a consistent point-in-time view of its disks while the VM keeps
 * running. The embedded default works on local raw images (copy-before-write views); a QEMU/KVM driver would use
 * blockdev snapshots exported over NBD.
 */
export interface Hypervisor {
  /**
   * Flush and freeze the guest's file systems (guest-agent fsfreeze) under a lease: the guest is thawed at the latest
   * `leaseMs` after the freeze or its last `renewFreeze`, even if the caller's process dies and nobody calls `thaw`.
   * Freezing a VM that is already frozen restarts its lease (a retried initiation freezes again). How each driver
   * keeps the promise:
   * - embedded (LocalHypervisor): the lock file that stands for fsfreeze records the lease's deadline, and the guest's
   *   write path treats a freeze past its deadline as thawed (breaks it);
   * - QEMU/KVM (qemu-guest-agent has no auto-thaw): a per-host guard, a small daemon on each hypervisor host that the
   *   driver asks to hold the lease (over a local socket) before it sends guest-fsfreeze-freeze; renewals go to the
   *   guard, and when a deadline passes unrenewed the guard itself sends guest-fsfreeze-thaw over the VM's agent
   *   socket. It records its leases in a file and, when it restarts, thaws every VM it finds there (thaw is
   *   idempotent), so neither a dead worker nor a dead guard leaves a guest frozen.
   *
   * A guest that cannot be frozen (no agent, a silent one, a refusal) fails with `GuestFreezeError`, whose `reason` a
   * crash-consistent snapshot records; the driver then owns any thaw a late freeze needs. Other failures (the driver's
   * own) are other errors, retried.
   */
  freeze(vm: Vm, lease: { leaseMs: number }): Promise<void>;
  /**
   * Extend the freeze's lease to `leaseMs` from now. Fails if the VM is no longer frozen (thawed, or the lease expired),
   * so a renewal that succeeds proves the guest stayed frozen since `freeze`.
   */
  renewFreeze(vm: Vm, lease: { leaseMs: number }): Promise<void>;
  /** Undo freeze (end the lease). Idempotent, always safe to call. */
  thaw(vm: Vm): Promise<void>;
  /**
   * Open (or reopen after a retry) the point-in-time views of the VM's disks under `viewId`: they show the disks as
   * they were at one moment, whatever the guest writes afterwards. The driver runs the one step that fixes that moment
   * through `options.atPointInTime` (exactly once), which the caller wraps in the freeze (freeze, step, thaw), and
   * does everything else before or after it, so the guest is frozen only for that step. Without `atPointInTime` the
   * step just runs: the caller has frozen the guest around the whole call.
   */
  openViews(
    vm: Vm,
    viewId: string,
    options: { parentViewId: string | null; atPointInTime?: AtPointInTime },
  ): Promise<DiskView[]>;
  /** A reader of an open view (capture and compression read through one each); the caller closes it. */
  readView(view: DiskView): Promise<DiskReader>;
  /** What capture can know of an open view without reading it (see ViewRanges). */
  viewRanges(view: DiskView): Promise<ViewRanges>;
  /** Release the views; idempotent. `outcome` says whether the snapshot they were opened for is kept. */
  releaseViews(viewId: string, outcome: ViewOutcome): Promise<void>;
  /** The VM's current CPU and disk I/O utilisation, which scheduled snapshots wait on to drop. */
  readLoad(vm: Vm): Promise<VmLoad>;
  /**
   * Creates the disks of a new VM (restored from a snapshot or an image), empty: each reads as zeros until written.
   * Returns them, for the VM's record. Idempotent: disks an earlier attempt made are made anew.
   */
  createDisks(vmId: string, disks: { name: string; sizeBytes: number }[]): Promise<Disk[]>;
  /** A writer of one disk of a new VM that is not running yet (what a restore writes through); the caller closes it. */
  writeDisk(vm: Vm, diskName: string): Promise<DiskWriter>;
  /**
   * Starts a new VM whose disks are written, with its configuration (`vm.config`: what the snapshot captured).
   * Resolves once the VM runs (its guest then boots). Idempotent: a VM that runs already is left as it is.
   */
  startVm(vm: Vm): Promise<void>;
  /** Stops a new VM if it runs and removes its disks (a half-restored VM that is discarded). Idempotent. */
  removeVm(vmId: string): Promise<void>;
}
