/**
 * The closed set of error types a caller can see. Each reaches the caller as `type` on an ApplicationFailure (from the
 * workflow) or a SnapshotError (from the client), with a message that says what to do.
 */
export const SnapshotErrorType = {
  InvalidRequest: 'InvalidRequest',
  InvalidSnapshotName: 'InvalidSnapshotName',
  InvalidDescription: 'InvalidDescription',
  AccountNotFound: 'AccountNotFound',
  ProfileIncomplete: 'ProfileIncomplete',
  InsufficientCredits: 'InsufficientCredits',
  VmNotFound: 'VmNotFound',
  VmNotActive: 'VmNotActive',
  RegionMismatch: 'RegionMismatch',
  NoActiveVms: 'NoActiveVms',
  SnapshotNameTaken: 'SnapshotNameTaken',
  IdempotencyKeyReused: 'IdempotencyKeyReused',
  SnapshotInProgress: 'SnapshotInProgress',
  SnapshotNotFound: 'SnapshotNotFound',
  SnapshotNotRestorable: 'SnapshotNotRestorable',
  DiskNotFound: 'DiskNotFound',
  DiskChanged: 'DiskChanged',
  ChunkCorrupt: 'ChunkCorrupt',
  ChunkMissing: 'ChunkMissing',
  ManifestMissing: 'ManifestMissing',
  ManifestCorrupt: 'ManifestCorrupt',
  StorageFull: 'StorageFull',
  Cancelled: 'Cancelled',
  InvalidPolicy: 'InvalidPolicy',
  PolicyNotFound: 'PolicyNotFound',
  PolicyExists: 'PolicyExists',
  ImageNotFound: 'ImageNotFound',
  InvalidVmName: 'InvalidVmName',
  /**
   * The guest could not be frozen (its agent is absent, silent or refused) and the request's `quiesce` is `required`:
   * nothing was captured. Start the guest agent in the VM, or ask for `best-effort` to accept a crash-consistent copy.
   */
  GuestFreezeFailed: 'GuestFreezeFailed',
  /**
   * A VM cannot be started on its host: its configuration does not say how to boot it there (a restore of a VM whose
   * hypervisor needs other settings than the snapshot captured).
   */
  VmNotBootable: 'VmNotBootable',
  /**
   * The VM's host lacks the space a snapshot's point-in-time views need (their temporary images hold what the guest
   * overwrites while the snapshot reads): too little to open them (nothing made), or so little left while they were
   * open that the snapshot was cancelled before a guest write could fail. The VM is untouched either way. Free space
   * on the host, then take the snapshot again.
   */
  SnapshotSpaceExhausted: 'SnapshotSpaceExhausted',
  /**
   * No worker of the VM's host took a step that must run there (the host's views and QEMU processes are nowhere
   * else) within the host start timeout: the host or its worker is down. Start the worker of that host (SNAP_HOST_ID),
   * then take the snapshot again.
   */
  HostUnavailable: 'HostUnavailable',
  /** The client cannot reach the Temporal server (not started, or another address). */
  TemporalUnavailable: 'TemporalUnavailable',
  /** No worker polls a task queue the request needs: it would wait until one starts. */
  WorkerUnavailable: 'WorkerUnavailable',
} as const;

export type SnapshotErrorType = (typeof SnapshotErrorType)[keyof typeof SnapshotErrorType];

/**
 * Permanent failures: retrying the same activity cannot succeed, so activities throw them non-retryable and the
 * workflow fails at once (and compensates).
 */
export const PERMANENT_ERROR_TYPES: readonly SnapshotErrorType[] = [
  'InvalidRequest',
  'InvalidSnapshotName',
  'InvalidDescription',
  'AccountNotFound',
  'ProfileIncomplete',
  'InsufficientCredits',
  'VmNotFound',
  'VmNotActive',
  'RegionMismatch',
  'NoActiveVms',
  'SnapshotNameTaken',
  'IdempotencyKeyReused',
  'SnapshotInProgress',
  'SnapshotNotFound',
  'SnapshotNotRestorable',
  'DiskNotFound',
  'DiskChanged',
  'ChunkCorrupt',
  'ChunkMissing',
  'ManifestMissing',
  'ManifestCorrupt',
  'StorageFull',
  'InvalidPolicy',
  'ImageNotFound',
  'InvalidVmName',
  'GuestFreezeFailed',
  'VmNotBootable',
  'SnapshotSpaceExhausted',
];

/** An error with a stable type; thrown by domain code, the platform adapters and the client library. */
export class SnapshotError extends Error {
  override readonly name = 'SnapshotError';
  constructor(
    readonly type: SnapshotErrorType,
    message: string,
  ) {
    super(message);
  }
}

/**
 * A hypervisor could not freeze the guest's file systems. `reason` is the short cause a snapshot records when it falls
 * back to a crash-consistent copy (`the guest agent did not answer within 10 s`); the message says what to do when the
 * freeze was required.
 */
export class GuestFreezeError extends SnapshotError {
  constructor(
    vmId: string,
    readonly reason: string,
  ) {
    super(
      'GuestFreezeFailed',
      `The guest of VM ${vmId} could not be frozen for an application-consistent snapshot: ${reason}. Make sure ` +
        'qemu-guest-agent runs in the VM (with its virtio-serial channel), or snapshot with quiesce "best-effort" to ' +
        'accept a crash-consistent snapshot.',
    );
  }
}

/**
 * Why a host-pinned step failed with `HostUnavailable`: no worker of `hostId` started `activity` within `timeout`.
 */
export function hostUnavailableMessage(hostId: string, activity: string, timeout: string): string {
  return (
    `No worker of host "${hostId}" started ${activity} within ${timeout}: the host or its worker is down, and this ` +
    `step must run on the VM's host. Start the worker of that host (SNAP_HOST_ID=${hostId}), then try again.`
  );
}

export function isSnapshotErrorType(value: unknown): value is SnapshotErrorType {
  return typeof value === 'string' && value in SnapshotErrorType;
}
