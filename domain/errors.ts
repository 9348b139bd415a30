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

export function isSnapshotErrorType(value: unknown): value is SnapshotErrorType {
  return typeof value === 'string' && value in SnapshotErrorType;
}
