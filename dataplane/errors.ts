/** A stored chunk does not decompress (zstd format or checksum error) or does not hash to its id. */
export class ChunkCorruptError extends Error {
  readonly type = 'ChunkCorrupt';
  constructor(
    readonly chunkId: string,
    readonly reason: string,
  ) {
    super(`Stored chunk ${chunkId} is corrupt (${reason}); the snapshots that reference it cannot be trusted.`);
  }
}

/** A chunk a manifest or caller refers to is not in the repository. */
export class ChunkMissingError extends Error {
  readonly type = 'ChunkMissing';
  constructor(readonly chunkId: string) {
    super(
      `Stored chunk ${chunkId} is missing from the repository; the snapshots that reference it cannot be restored.`,
    );
  }
}

/** A snapshot has no manifest in the repository (never committed, or deleted). */
export class ManifestMissingError extends Error {
  readonly type = 'ManifestMissing';
  constructor(readonly snapshotId: string) {
    super(`Snapshot ${snapshotId} has no manifest in the repository.`);
  }
}

/**
 * A snapshot's stored manifest cannot be trusted: it is not a valid manifest (truncated, unparseable, wrong shape) or
 * its bytes no longer hash to the digest recorded in the catalog when it was written. Permanent: reading it again
 * gives the same bytes.
 */
export class ManifestCorruptError extends Error {
  readonly type = 'ManifestCorrupt';
  constructor(
    readonly snapshotId: string,
    readonly reason: string,
  ) {
    super(
      `The stored manifest of snapshot ${snapshotId} is corrupt (${reason}); the snapshot cannot be trusted or restored.`,
    );
  }
}

/**
 * A repository write found its file system full (ENOSPC) or the quota used up (EDQUOT). Permanent for the operation:
 * retrying cannot succeed until someone frees space.
 */
export class StorageFullError extends Error {
  readonly type = 'StorageFull';
  constructor(
    /** The repository's location (the local adapter: its directory). */
    readonly where: string,
    /** Bytes the failed write needed. */
    readonly bytesNeeded: number,
  ) {
    super(
      `The repository at ${where} is out of space: a write of ${bytesNeeded} bytes did not fit. Free space there ` +
        '(delete snapshots, then run garbage collection) or enlarge it, then take the snapshot again.',
    );
  }
}

/** Bytes read for storage no longer hash to the id recorded at capture: the point-in-time view changed. */
export class DiskChangedError extends Error {
  readonly type = 'DiskChanged';
  constructor(
    readonly expectedId: string,
    /** Byte offset of the chunk in its disk, when the caller knows it. */
    readonly offset?: number,
  ) {
    const where = offset === undefined ? '' : ` at offset ${offset}`;
    super(
      `The point-in-time view changed${where} after capture (expected chunk ${expectedId}); take the snapshot again.`,
    );
  }
}

/** The stable `type` strings of the data-plane errors. */
export type DataPlaneErrorType = (
  | ChunkCorruptError
  | ChunkMissingError
  | ManifestMissingError
  | ManifestCorruptError
  | StorageFullError
  | DiskChangedError
)['type'];
