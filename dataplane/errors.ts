/** Typed data-plane errors; `type` is stable and matches the service's error types. */
export class ChunkCorruptError extends Error {
  readonly type = 'ChunkCorrupt';
  constructor(
    readonly chunkId: string,
    readonly reason: string,
  ) {
    super(`Stored chunk ${chunkId} is corrupt (${reason}); the snapshots that reference it cannot be trusted.`);
  }
}

export class ChunkMissingError extends Error {
  readonly type = 'ChunkMissing';
  constructor(readonly chunkId: string) {
    super(`Stored chunk ${chunkId} is missing from the repository.`);
  }
}

export class ManifestMissingError extends Error {
  readonly type = 'ManifestMissing';
  constructor(readonly snapshotId: string) {
    super(`Snapshot ${snapshotId} has no manifest in the repository.`);
  }
}

export class DiskChangedError extends Error {
  readonly type = 'DiskChanged';
  constructor(
    readonly offset: number,
    readonly expectedId: string,
  ) {
    super(
      `The point-in-time view changed at offset ${offset} after capture (expected chunk ${expectedId}); take the snapshot again.`,
    );
  }
}

export type DataPlaneErrorType = (
  ChunkCorruptError | ChunkMissingError | ManifestMissingError | DiskChangedError
)['type'];
