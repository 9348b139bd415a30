import {
  ChunkCorruptError,
  ManifestCorruptError,
  ManifestMissingError,
  distinctChunks,
  manifestStats,
  planVerification,
  verifyManifest,
} from '../dataplane';
import type { Repository } from '../dataplane';
import { imageIdOfSnapshot } from '../domain/ids';
import type { Region, SnapshotRecord } from '../domain/model';
import { STORED_CHUNKS_JOURNAL } from './compress';
import type { ActivityDeps } from './deps';
import { withFailureTypes } from './failures';
import { imageOf } from './lifecycle';
import { StageReporter } from './progress';

export interface VerifyInput {
  snapshotId: string;
  region: Region;
  addedBytes: number;
}

/** The next distinct chunk to verify, in `distinctChunks` order (vouched chunks count too, see verifyManifest). */
export interface VerifyCheckpoint {
  index: number;
}

/**
 * Stage 5, verification: reads back every chunk this snapshot stored, decompresses it (zstd frame checksum) and
 * re-hashes it; for every chunk it reused, checks that it is still stored and not quarantined, and that a verification
 * that passed vouches for it (see reusedFromParent); any other chunk is read back too. Only when all pass is the
 * snapshot marked SUCCESS, with its sizes (and registered as a boot image if it was made with "Create as Image"); a
 * missing or corrupt chunk fails the activity non-retryably and the snapshot becomes FAILED. A corrupt chunk is
 * quarantined, so the next snapshot stores its content again. An incremental's verification thus reads what changed,
 * not the disk; re-verification (maintenance) still reads every chunk at rest.
 */
export function createVerifyActivity(deps: ActivityDeps) {
  return async function verifySnapshot(input: VerifyInput): Promise<SnapshotRecord> {
    return withFailureTypes(async () => {
      const snapshot = deps.catalog.updateSnapshot(input.snapshotId, { status: 'VERIFYING' });
      const repository = deps.repositoryFor(input.region);
      const manifest = await repository.readManifest(input.snapshotId, snapshot.manifestDigest);
      const plan = await planVerification({
        manifest,
        repository,
        reused: await reusedFromParent(deps, repository, snapshot),
      });
      const stats = await manifestStats(manifest, repository);
      const from = StageReporter.checkpoint<VerifyCheckpoint>() ?? { index: 0 };
      const reporter = new StageReporter<VerifyCheckpoint>('VERIFYING', plan.bytesToRead);
      await quarantineCorrupt(
        repository,
        verifyManifest({
          manifest,
          repository,
          pool: deps.pool,
          vouched: plan.vouched,
          fromIndex: from.index,
          signal: reporter.signal,
          onProgress: ({ index, bytesDone }) => reporter.update(bytesDone, { index }),
        }),
      );
      reporter.update(plan.bytesToRead, { index: stats.distinctChunks });
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
 * The chunks of `snapshot` that a passed verification vouches for, so that its own verification checks them instead
 * of reading them (planVerification): the chunks of its parent's manifest that its compression did not store.
 *
 * Why that is sound: the parent is SUCCESS, so its verification passed, and by the same rule every chunk of its
 * manifest was read back and re-hashed then, by it or by an ancestor's verification (or by a re-verification). What
 * contradicts that verification is recorded in the repository, and planVerification checks it: a chunk found corrupt
 * since is quarantined (its copies then all unreadable, or a readable one stored after it: read again), a chunk lost is
 * missing. A chunk this snapshot stored is a copy its parent's verification never read (the parent's was lost, say):
 * compression journals it before writing it, so it is always read. A parent that is not SUCCESS (DAMAGED, deleted
 * meanwhile) vouches for nothing, nor does one whose manifest cannot be read; nor a parent when compression left no
 * journal of what it stored (a run from before that journal): every chunk is read then, as before.
 *
 * Not covered, as with any verification of data at rest: a copy of a lost chunk stored since by another snapshot
 * whose own verification has not passed (yet), and damage nothing has seen; scheduled re-verification reads those.
 */
async function reusedFromParent(
  deps: ActivityDeps,
  repository: Repository,
  snapshot: SnapshotRecord,
): Promise<Set<string>> {
  const parent = snapshot.parentSnapshotId ? deps.catalog.getSnapshot(snapshot.parentSnapshotId) : undefined;
  if (parent?.status !== 'SUCCESS') return new Set();
  if (!(await repository.listJournals(snapshot.id)).includes(STORED_CHUNKS_JOURNAL)) return new Set();
  const parentManifest = await repository.readManifest(parent.id, parent.manifestDigest).catch((error: unknown) => {
    if (error instanceof ManifestMissingError || error instanceof ManifestCorruptError) return undefined;
    throw error;
  });
  if (!parentManifest) return new Set();
  const stored = new Set(await repository.readJournal(snapshot.id, STORED_CHUNKS_JOURNAL));
  return new Set(distinctChunks(parentManifest).filter((id) => !stored.has(id)));
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
