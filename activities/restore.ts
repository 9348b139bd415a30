import { restoreDisk } from '../dataplane';
import { SnapshotError } from '../domain/errors';
import type { RestoreDiskRequest } from '../domain/requests';
import { RestoreDiskRequestSchema } from '../domain/requests';
import type { ActivityDeps } from './deps';
import { withFailureTypes } from './failures';
import { StageReporter } from './progress';

/**
 * Restores one disk of a SUCCESS snapshot to a raw image file, verifying every chunk's hash as it writes and leaving
 * zero chunks as holes. The file appears under its final name only when complete; a retry starts the disk over.
 */
export function createRestoreActivity(deps: ActivityDeps) {
  return async function restoreSnapshotDisk(input: RestoreDiskRequest): Promise<{ bytesRestored: number }> {
    return withFailureTypes(async () => {
      const parsed = RestoreDiskRequestSchema.safeParse(input);
      if (!parsed.success) throw new SnapshotError('InvalidRequest', parsed.error.message);
      const request = parsed.data;
      const snapshot = deps.catalog.getSnapshot(request.snapshotId);
      if (!snapshot || snapshot.accountId !== request.accountId) {
        throw new SnapshotError('SnapshotNotFound', `Snapshot ${request.snapshotId} does not exist in this account.`);
      }
      if (snapshot.status !== 'SUCCESS') {
        throw new SnapshotError(
          'SnapshotNotRestorable',
          `Snapshot ${snapshot.name} is ${snapshot.status}; only SUCCESS snapshots can be restored.`,
        );
      }
      const repository = deps.repositoryFor(snapshot.region);
      const manifest = await repository.readManifest(snapshot.id);
      const disk = manifest.disks.find((d) => d.name === request.diskName);
      if (!disk) {
        const names = manifest.disks.map((d) => d.name).join(', ');
        throw new SnapshotError(
          'DiskNotFound',
          `Snapshot ${snapshot.name} has no disk "${request.diskName}" (it has: ${names}).`,
        );
      }
      const reporter = new StageReporter<null>(deps.progress, 'RESTORING', disk.sizeBytes);
      await restoreDisk({
        manifest,
        diskName: disk.name,
        repository,
        pool: deps.pool,
        target: request.targetPath,
        signal: reporter.signal,
        onProgress: ({ bytesDone }) => reporter.update(bytesDone, null),
      });
      reporter.update(disk.sizeBytes, null, true);
      return { bytesRestored: disk.sizeBytes };
    });
  };
}
