import { SnapshotError } from '../domain/errors';
import type { ImageRecord, Region, SnapshotRecord, SnapshotStatus } from '../domain/model';
import { isInFlight } from '../domain/model';
import { checkOwnSnapshot } from '../domain/rules';
import type { ActivityDeps } from './deps';
import { withFailureTypes } from './failures';

/** The boot image of a SUCCESS snapshot: its manifest, configuration and flavor. */
export function imageOf(snapshot: SnapshotRecord, imageId: string, name: string): ImageRecord {
  const config = snapshot.vmConfig ?? {};
  return {
    id: imageId,
    accountId: snapshot.accountId,
    region: snapshot.region,
    name,
    snapshotId: snapshot.id,
    flavor: typeof config.flavor === 'string' ? config.flavor : 'unknown',
    vmConfig: config,
    logicalBytes: snapshot.logicalBytes ?? 0,
    createdAt: new Date().toISOString(),
  };
}

export interface DeletionTarget {
  snapshotId: string;
  status: SnapshotStatus;
  workflowId: string;
  region: Region;
}

/**
 * Activities of deletion and images. Deleting a snapshot marks it DELETED in the catalog (gone from listings and
 * billing at once) and removes its manifest unless an image still uses it; its chunks are freed by the region's
 * garbage collection, which keeps every chunk another manifest references, so deletion never breaks another
 * snapshot (every manifest is a complete index, incremental parents included).
 */
export function createLifecycleActivities(deps: ActivityDeps) {
  const ownSnapshot = (accountId: string, snapshotId: string) =>
    checkOwnSnapshot(deps.catalog.getSnapshot(snapshotId), accountId, snapshotId);

  /** Removes a DELETED snapshot's manifest once no image uses it. */
  const dropManifestIfUnused = async (snapshotId: string, region: Region): Promise<void> => {
    const snapshot = deps.catalog.getSnapshot(snapshotId);
    if (snapshot?.status !== 'DELETED') return;
    if (deps.catalog.listImages({ snapshotId }).length > 0) return;
    const repository = deps.repositoryFor(region);
    await repository.deleteManifest(snapshotId);
    await repository.dropStaging(snapshotId);
  };

  return {
    async findDeletionTarget(input: { accountId: string; snapshotId: string }): Promise<DeletionTarget> {
      return withFailureTypes(async () => {
        const snapshot = ownSnapshot(input.accountId, input.snapshotId);
        return {
          snapshotId: snapshot.id,
          status: snapshot.status,
          workflowId: snapshot.workflowId,
          region: snapshot.region,
        };
      });
    },

    /** Succeeds once the snapshot's own workflow has ended (cancelled, failed or succeeded); retried until then. */
    async awaitSnapshotSettled(snapshotId: string): Promise<SnapshotStatus> {
      const status = deps.catalog.getSnapshot(snapshotId)?.status;
      if (status && isInFlight(status)) throw new Error(`snapshot ${snapshotId} is still ${status}`);
      return status ?? 'DELETED';
    },

    async deleteSnapshotData(input: { snapshotId: string; reason: string }): Promise<void> {
      return withFailureTypes(async () => {
        const snapshot = deps.catalog.markSnapshotDeleted(input.snapshotId, input.reason);
        await dropManifestIfUnused(snapshot.id, snapshot.region);
      });
    },

    /** Registers a SUCCESS snapshot as a boot image (idempotent for the same image id). */
    async createImage(input: { accountId: string; snapshotId: string; imageId: string; name: string }) {
      return withFailureTypes(async (): Promise<ImageRecord> => {
        const snapshot = ownSnapshot(input.accountId, input.snapshotId);
        if (snapshot.status !== 'SUCCESS') {
          throw new SnapshotError(
            'SnapshotNotRestorable',
            `Snapshot ${snapshot.name} is ${snapshot.status}; only SUCCESS snapshots can become images.`,
          );
        }
        return deps.catalog.putImage(imageOf(snapshot, input.imageId, input.name));
      });
    },

    /** Deletes an image; the data it kept alive goes when its snapshot is deleted too. Idempotent. */
    async deleteImage(input: { accountId: string; imageId: string }): Promise<void> {
      return withFailureTypes(async () => {
        const image = deps.catalog.getImage(input.imageId);
        if (!image) return;
        if (image.accountId !== input.accountId) {
          throw new SnapshotError(
            'ImageNotFound',
            `Image ${input.imageId} does not exist in account ${input.accountId}.`,
          );
        }
        deps.catalog.deleteImage(image.id);
        await dropManifestIfUnused(image.snapshotId, image.region);
      });
    },
  };
}
