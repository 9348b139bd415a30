import { ChunkCorruptError, manifestStats, verifyManifest } from '../dataplane';
import type { Repository } from '../dataplane';
import { imageIdOfSnapshot } from '../domain/ids';
import type { Region, SnapshotRecord } from '../domain/model';
import type { ActivityDeps } from './deps';
import { withFailureTypes } from './failures';
import { imageOf } from './lifecycle';
import { StageReporter } from './progress';

export interface VerifyInput {
  snapshotId: string;
  region: Region;
  addedBytes: number;
}

export interface VerifyCheckpoint {
  index: number;
}

/**
 * Stage 5, verification: reads back every chunk the manifest references, decompresses it (zstd frame checksum) and
 * re-hashes it. Only when all pass is the snapshot marked SUCCESS, with its sizes (and registered as a boot image if
 * it was made with "Create as Image"); a missing or corrupt chunk fails the activity non-retryably and the snapshot
 * becomes FAILED. A corrupt chunk is quarantined, so the next snapshot stores its content again.
 */
export function createVerifyActivity(deps: ActivityDeps) {
  return async function verifySnapshot(input: VerifyInput): Promise<SnapshotRecord> {
    return withFailureTypes(async () => {
      const snapshot = deps.catalog.updateSnapshot(input.snapshotId, { status: 'VERIFYING' });
      const repository = deps.repositoryFor(input.region);
      const manifest = await repository.readManifest(input.snapshotId, snapshot.manifestDigest);
      const stats = await manifestStats(manifest, repository);
      const from = StageReporter.checkpoint<VerifyCheckpoint>() ?? { index: 0 };
      const reporter = new StageReporter<VerifyCheckpoint>('VERIFYING', stats.distinctRawBytes);
      await quarantineCorrupt(
        repository,
        verifyManifest({
          manifest,
          repository,
          pool: deps.pool,
          fromIndex: from.index,
          signal: reporter.signal,
          onProgress: ({ index, bytesDone }) => reporter.update(bytesDone, { index }),
        }),
      );
      reporter.update(stats.distinctRawBytes, { index: stats.distinctChunks });
      const record = deps.catalog.updateSnapshot(input.snapshotId, {
        status: 'SUCCESS',
        logicalBytes: stats.logicalBytes,
        storedBytes: stats.storedBytes,
        addedBytes: input.addedBytes,
        compressionRatio: stats.compressionRatio,
        dedupRatio: stats.dedupRatio,
        completedAt: new Date().toISOString(),
        verifiedAt: new Date().toISOString(),
      });
      // "Create as Image": listed among the boot sources as soon as the snapshot is SUCCESS (idempotent on retry).
      if (record.createAsImage) deps.catalog.putImage(imageOf(record, imageIdOfSnapshot(record.id), record.name));
      return record;
    });
  };
}

/**
 * Awaits a verification; a chunk it found corrupt is quarantined in the repository before the error goes on, so no
 * later snapshot deduplicates against that copy (healing: the next capture of the content stores it again).
 */
export async function quarantineCorrupt<T>(repository: Repository, verification: Promise<T>): Promise<T> {
  try {
    return await verification;
  } catch (error) {
    if (error instanceof ChunkCorruptError) await repository.quarantineChunk(error.chunkId);
    throw error;
  }
}
