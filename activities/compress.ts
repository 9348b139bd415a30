import { storeChunks, withDiskReader } from '../dataplane';
import type { Manifest } from '../dataplane';
import { SnapshotError } from '../domain/errors';
import type { Region } from '../domain/model';
import type { DiskView } from '../platform/ports';
import { bytesBefore } from './capture';
import type { ActivityDeps } from './deps';
import { withFailureTypes } from './failures';
import { StageReporter } from './progress';

/**
 * The staging journal in which compression records every chunk it may store (see storeChunks' beforeWrite), so that
 * verification knows which chunks this snapshot stored and must read back. Next to the capture journals, which are
 * named after the disks: no disk may have this name.
 */
export const STORED_CHUNKS_JOURNAL = 'stored-chunks';

export interface CompressInput {
  snapshotId: string;
  region: Region;
  disks: DiskView[];
  chunkSize: number;
}

export interface CompressCheckpoint {
  disk: number;
  index: number;
}

export interface CompressResult {
  chunksWritten: number;
  /** Compressed bytes this snapshot added to the region's repository. */
  addedBytes: number;
}

/**
 * Stage 4, compression: compresses every chunk the region's repository does not hold yet (dedup across all snapshots
 * of the region, so an incremental snapshot stores only what changed) and commits it atomically, then writes the
 * snapshot's manifest. Content addressing makes a retry safe; the checkpoint saves re-reading what was done. The ids
 * of the chunks it stores are journaled (STORED_CHUNKS_JOURNAL) before they are written, across every attempt.
 */
export function createCompressActivity(deps: ActivityDeps) {
  return async function compressSnapshot(input: CompressInput): Promise<CompressResult> {
    return withFailureTypes(async () => {
      const snapshot = deps.catalog.updateSnapshot(input.snapshotId, { status: 'COMPRESSING' });
      const vmConfig = snapshot.vmConfig;
      if (!vmConfig) throw new SnapshotError('InvalidRequest', `Snapshot ${snapshot.id} has no VM configuration`);
      if (input.disks.some((disk) => disk.name === STORED_CHUNKS_JOURNAL)) {
        throw new SnapshotError('InvalidRequest', `A disk may not be named ${STORED_CHUNKS_JOURNAL} (a reserved name)`);
      }
      const repository = deps.repositoryFor(input.region);
      // Created (empty) at once: its presence tells verification that this compression recorded what it stored.
      await repository.appendJournal(input.snapshotId, STORED_CHUNKS_JOURNAL, []);
      const bytesTotal = bytesBefore(input.disks, input.disks.length);
      const from = StageReporter.checkpoint<CompressCheckpoint>() ?? { disk: 0, index: 0 };
      const startBytes = bytesBefore(input.disks, from.disk) + from.index * input.chunkSize;
      const reporter = new StageReporter<CompressCheckpoint>('COMPRESSING', bytesTotal, startBytes);
      const result: CompressResult = { chunksWritten: 0, addedBytes: 0 };
      const disks: Manifest['disks'] = [];

      for (const [d, disk] of input.disks.entries()) {
        const refs = await repository.readJournal(input.snapshotId, disk.name);
        const expected = Math.ceil(disk.sizeBytes / input.chunkSize);
        if (refs.length !== expected) {
          throw new Error(`capture journal of disk ${disk.name} has ${refs.length} of ${expected} chunks`);
        }
        disks.push({ name: disk.name, sizeBytes: disk.sizeBytes, chunkSize: input.chunkSize, chunks: refs });
        if (d < from.disk) continue;
        const stored = await withDiskReader(deps.hypervisor.readView(disk), (reader) =>
          storeChunks({
            disk: reader,
            chunkSize: input.chunkSize,
            sizeBytes: disk.sizeBytes,
            refs,
            repository,
            pool: deps.pool,
            fromIndex: d === from.disk ? from.index : 0,
            signal: reporter.signal,
            beforeWrite: (ids) => repository.appendJournal(input.snapshotId, STORED_CHUNKS_JOURNAL, ids),
            onProgress: ({ index }) =>
              reporter.update(bytesBefore(input.disks, d) + Math.min(index * input.chunkSize, disk.sizeBytes), {
                disk: d,
                index,
              }),
          }),
        );
        result.chunksWritten += stored.chunksWritten;
        result.addedBytes += stored.storedBytesWritten;
      }

      const manifestDigest = await repository.writeManifest({
        version: 1,
        snapshotId: snapshot.id,
        accountId: snapshot.accountId,
        vmId: snapshot.vmId,
        region: snapshot.region,
        parentSnapshotId: snapshot.parentSnapshotId,
        createdAt: snapshot.createdAt,
        vmConfig,
        disks,
      });
      deps.catalog.updateSnapshot(snapshot.id, { manifestDigest });
      reporter.update(bytesTotal, { disk: input.disks.length, index: 0 });
      return result;
    });
  };
}
