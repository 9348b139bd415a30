import { Context } from '@temporalio/activity';
import { ManifestCorruptError, ManifestMissingError, ZERO_CHUNK, distinctChunks } from '../dataplane';
import type { Repository } from '../dataplane';
import type { Region } from '../domain/model';
import type { ViewOutcome } from '../platform/ports';
import type { ActivityDeps } from './deps';
import { manifestDigests } from './manifests';

/**
 * Bookkeeping activities: the success path's release of resources, and the compensations that run (in reverse
 * order, non-cancellable) when a snapshot fails or is cancelled. Each is idempotent, because a compensation may run
 * more than once.
 */
export function createCleanupActivities(deps: ActivityDeps) {
  return {
    /** Undo a guest freeze. Safe to call whether or not the VM is frozen. */
    async thawVm(snapshotId: string): Promise<void> {
      const snapshot = deps.catalog.getSnapshot(snapshotId);
      const vm = snapshot && deps.catalog.getVm(snapshot.vmId);
      if (vm) await deps.hypervisor.thaw(vm);
    },

    /** Release the point-in-time views of the VM's disks; `outcome`: whether the snapshot is kept (SUCCESS). */
    async releaseViews(snapshotId: string, outcome: ViewOutcome): Promise<void> {
      await deps.hypervisor.releaseViews(snapshotId, outcome);
    },

    /** After SUCCESS: the capture journals are no longer needed (the manifest holds the chunk lists). */
    async dropStaging(snapshotId: string, region: Region): Promise<void> {
      await deps.repositoryFor(region).dropStaging(snapshotId);
    },

    /**
     * After a failure: remove the snapshot's manifest and journals, and every chunk it listed that no committed
     * manifest and no other in-flight snapshot's journal references, so a failed snapshot leaves no stored bytes. If
     * some manifest cannot be read, no chunk is removed (garbage collection, which then stops and reports it, decides).
     */
    async discardSnapshotData(snapshotId: string, region: Region): Promise<{ chunksDeleted: number }> {
      // A chunk another snapshot reuses (touches) from now on is kept, as garbage collection would keep it.
      const startedAt = new Date();
      const repository = deps.repositoryFor(region);
      await repository.deleteManifest(snapshotId);
      const candidates = new Set(await journalRefs(repository, snapshotId));
      candidates.delete(ZERO_CHUNK);
      if (candidates.size > 0) {
        const digests = manifestDigests(deps, region);
        for (const id of await repository.listManifestIds()) {
          const manifest = await repository.readManifest(id, digests.get(id)).catch((error: unknown) => {
            if (error instanceof ManifestMissingError) return null; // deleted since listed
            if (error instanceof ManifestCorruptError) return undefined;
            throw error;
          });
          if (manifest === undefined) {
            // It may reference any of them: none is provably unreferenced, so garbage collection decides later.
            Context.current().log.warn('unreadable manifest: chunks of the failed snapshot left to GC', { id });
            candidates.clear();
            break;
          }
          if (manifest) for (const ref of distinctChunks(manifest)) candidates.delete(ref);
        }
        for (const id of await repository.listStagingIds()) {
          if (id === snapshotId) continue;
          for (const ref of await journalRefs(repository, id)) candidates.delete(ref);
        }
      }
      const { removed } = await repository.removeChunks(candidates, startedAt);
      await repository.dropStaging(snapshotId);
      Context.current().log.info('discarded snapshot data', { snapshotId, chunksDeleted: removed });
      return { chunksDeleted: removed };
    },

    /** Record the failure and its typed reason; a snapshot that reached SUCCESS is never demoted. */
    async markSnapshotFailed(snapshotId: string, failureType: string, failureReason: string): Promise<void> {
      const snapshot = deps.catalog.getSnapshot(snapshotId);
      if (!snapshot || snapshot.status === 'SUCCESS') return;
      deps.catalog.updateSnapshot(snapshotId, {
        status: 'FAILED',
        failureType,
        failureReason,
        completedAt: new Date().toISOString(),
      });
    },
  };
}

async function journalRefs(repository: Repository, snapshotId: string): Promise<string[]> {
  const refs: string[] = [];
  for (const name of await repository.listJournals(snapshotId))
    refs.push(...(await repository.readJournal(snapshotId, name)));
  return refs;
}
