import { Context } from '@temporalio/activity';
import {
  ChunkCorruptError,
  ChunkMissingError,
  ManifestCorruptError,
  ManifestMissingError,
  collectGarbage,
  verifyManifest,
} from '../dataplane';
import type { GcResult } from '../dataplane';
import type { Region } from '../domain/model';
import type { ActivityDeps } from './deps';
import { withFailureTypes } from './failures';
import { manifestDigests } from './manifests';
import { quarantineCorrupt } from './verify';

export interface ReverifyOutcome {
  snapshotId: string;
  name: string;
  /** INTACT, or DAMAGED with the typed reason. */
  result: 'INTACT' | 'DAMAGED';
  failureType: string | null;
  failureReason: string | null;
}

/**
 * Maintenance of a region's repository: mark-and-sweep garbage collection, and re-verification of stored snapshots
 * (the same read-back, decompress and re-hash as a snapshot's own verification stage).
 */
export function createMaintenanceActivities(deps: ActivityDeps) {
  return {
    /**
     * Frees the chunks nothing references any more and that are older than the grace period. A corrupt manifest
     * stops it, non-retryably (ManifestCorrupt naming the snapshot), before anything is deleted.
     */
    async collectRegionGarbage(input: { region: Region; graceMinutes: number }): Promise<GcResult> {
      return withFailureTypes(async () => {
        const context = Context.current();
        const result = await collectGarbage(deps.repositoryFor(input.region), {
          graceMs: input.graceMinutes * 60_000,
          onProgress: (progress) => context.heartbeat(progress),
          manifestDigests: manifestDigests(deps, input.region),
        });
        context.log.info('garbage collected', { region: input.region, ...result });
        return result;
      });
    },

    /**
     * SUCCESS snapshots of the region not verified within `olderThanDays` days (never verified ones first), then every
     * DAMAGED one (each run checks whether it has healed).
     */
    async listSnapshotsToReverify(input: { region: Region; olderThanDays: number }): Promise<string[]> {
      const cutoff = Date.now() - input.olderThanDays * 24 * 60 * 60 * 1000;
      const damaged = deps.catalog.listSnapshots({ region: input.region, status: 'DAMAGED' }).map((s) => s.id);
      return deps.catalog
        .listSnapshots({ region: input.region, status: 'SUCCESS' })
        .filter((s) => s.verifiedAt === null || Date.parse(s.verifiedAt) <= cutoff)
        .sort((a, b) => (a.verifiedAt ?? '').localeCompare(b.verifiedAt ?? ''))
        .map((s) => s.id)
        .concat(damaged);
    },

    /**
     * Reads back every chunk of a SUCCESS or DAMAGED snapshot (a corrupt chunk is quarantined). Intact: its verification time is recorded. Missing or corrupt
     * data (chunks, or the manifest itself): the snapshot becomes DAMAGED with the reason (visible in listings; no longer restorable), never silently.
     */
    async reverifySnapshot(snapshotId: string): Promise<ReverifyOutcome> {
      const context = Context.current();
      const snapshot = deps.catalog.getSnapshot(snapshotId);
      if (!snapshot || (snapshot.status !== 'SUCCESS' && snapshot.status !== 'DAMAGED')) {
        return {
          snapshotId,
          name: snapshot?.name ?? snapshotId,
          result: 'INTACT',
          failureType: null,
          failureReason: null,
        };
      }
      const repository = deps.repositoryFor(snapshot.region);
      try {
        await quarantineCorrupt(
          repository,
          verifyManifest({
            manifest: await repository.readManifest(snapshotId, snapshot.manifestDigest),
            repository,
            pool: deps.pool,
            signal: context.cancellationSignal,
            onProgress: ({ index, total }) => context.heartbeat({ index, total }),
          }),
        );
      } catch (error) {
        if (
          !(error instanceof ChunkCorruptError) &&
          !(error instanceof ChunkMissingError) &&
          !(error instanceof ManifestMissingError) &&
          !(error instanceof ManifestCorruptError)
        ) {
          throw error;
        }
        deps.catalog.updateSnapshot(snapshotId, {
          status: 'DAMAGED',
          failureType: error.type,
          failureReason: `Re-verification found ${error.message}`,
          verifiedAt: new Date().toISOString(),
        });
        return {
          snapshotId,
          name: snapshot.name,
          result: 'DAMAGED',
          failureType: error.type,
          failureReason: error.message,
        };
      }
      // A DAMAGED snapshot whose data is all intact again (its bad chunks stored anew by a later capture) is healed.
      deps.catalog.updateSnapshot(snapshotId, {
        verifiedAt: new Date().toISOString(),
        ...(snapshot.status === 'DAMAGED' && { status: 'SUCCESS', failureType: null, failureReason: null }),
      });
      return { snapshotId, name: snapshot.name, result: 'INTACT', failureType: null, failureReason: null };
    },
  };
}
