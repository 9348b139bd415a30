import { restoreDisk } from '../dataplane';
import { SnapshotError } from '../domain/errors';
import type { Disk, Region, SnapshotRecord } from '../domain/model';
import type { RestoreDiskRequest, RestoreVmRequest } from '../domain/requests';
import { RestoreDiskRequestSchema, RestoreVmRequestSchema } from '../domain/requests';
import { checkOwnSnapshot } from '../domain/rules';
import type { ActivityDeps } from './deps';
import { withFailureTypes } from './failures';
import { readSnapshotManifest } from './manifests';
import { StageReporter } from './progress';

/** What a new VM is restored from: a snapshot's manifest in its region. */
export interface RestoreSource {
  manifestId: string;
  region: Region;
}

export interface RestoredVm {
  vmId: string;
  disks: Disk[];
  source: RestoreSource;
}

/**
 * Restores: one disk of a SUCCESS snapshot to a raw image file, or a whole new VM from a snapshot or an image. Every
 * chunk's hash is verified as it is written and zero chunks stay holes; a file appears under its final name only
 * when complete, and a retry starts the disk over.
 */
export function createRestoreActivities(deps: ActivityDeps) {
  const restorable = (accountId: string, snapshotId: string): SnapshotRecord => {
    const snapshot = checkOwnSnapshot(deps.catalog.getSnapshot(snapshotId), accountId, snapshotId);
    if (snapshot.status === 'DELETED') {
      throw new SnapshotError('SnapshotNotFound', `Snapshot ${snapshotId} was deleted.`);
    }
    if (snapshot.status !== 'SUCCESS') {
      throw new SnapshotError(
        'SnapshotNotRestorable',
        `Snapshot ${snapshot.name} is ${snapshot.status}; only SUCCESS snapshots can be restored.`,
      );
    }
    return snapshot;
  };

  const restoreOneDisk = async (source: RestoreSource, diskName: string, targetPath: string) => {
    const repository = deps.repositoryFor(source.region);
    const manifest = await readSnapshotManifest(deps, source.region, source.manifestId);
    const disk = manifest.disks.find((d) => d.name === diskName);
    if (!disk) {
      const names = manifest.disks.map((d) => d.name).join(', ');
      throw new SnapshotError('DiskNotFound', `The snapshot has no disk "${diskName}" (it has: ${names}).`);
    }
    const reporter = new StageReporter<null>('RESTORING', disk.sizeBytes);
    await restoreDisk({
      manifest,
      diskName: disk.name,
      repository,
      pool: deps.pool,
      target: targetPath,
      signal: reporter.signal,
      onProgress: ({ bytesDone }) => reporter.update(bytesDone, null),
    });
    reporter.update(disk.sizeBytes, null);
    return { bytesRestored: disk.sizeBytes };
  };

  return {
    async restoreSnapshotDisk(input: RestoreDiskRequest): Promise<{ bytesRestored: number }> {
      return withFailureTypes(async () => {
        const parsed = RestoreDiskRequestSchema.safeParse(input);
        if (!parsed.success) throw new SnapshotError('InvalidRequest', parsed.error.message);
        const request = parsed.data;
        const snapshot = restorable(request.accountId, request.snapshotId);
        return restoreOneDisk(
          { manifestId: snapshot.id, region: snapshot.region },
          request.diskName,
          request.targetPath,
        );
      });
    },

    /**
     * Registers the new VM (state BUILD) with the captured configuration and allocates its disks. Idempotent for the
     * same `vmId`, which the workflow chooses.
     */
    async createRestoredVm(input: { request: RestoreVmRequest; vmId: string }): Promise<RestoredVm> {
      return withFailureTypes(async () => {
        const parsed = RestoreVmRequestSchema.safeParse(input.request);
        if (!parsed.success) throw new SnapshotError('InvalidRequest', parsed.error.message);
        const { accountId, source, vmName, region } = parsed.data;
        let from: RestoreSource;
        if ('imageId' in source) {
          const image = deps.catalog.getImage(source.imageId);
          if (!image || image.accountId !== accountId) {
            throw new SnapshotError('ImageNotFound', `Image ${source.imageId} does not exist in account ${accountId}.`);
          }
          from = { manifestId: image.snapshotId, region: image.region };
        } else {
          const snapshot = restorable(accountId, source.snapshotId);
          from = { manifestId: snapshot.id, region: snapshot.region };
        }
        if (region && region !== from.region) {
          throw new SnapshotError(
            'RegionMismatch',
            `The source is stored in ${from.region}; a VM restored from it is created in ${from.region}, not ${region}.`,
          );
        }
        const existing = deps.catalog.getVm(input.vmId);
        if (existing) return { vmId: existing.id, disks: existing.disks, source: from };
        if (deps.catalog.listVms({ accountId }).some((vm) => vm.name === vmName)) {
          throw new SnapshotError('InvalidVmName', `Account ${accountId} already has a VM named "${vmName}".`);
        }
        const manifest = await readSnapshotManifest(deps, from.region, from.manifestId);
        const disks = await deps.hypervisor.diskPaths(input.vmId, manifest.disks);
        const config = manifest.vmConfig;
        deps.catalog.putVm({
          id: input.vmId,
          accountId,
          name: vmName,
          region: from.region,
          flavor: typeof config.flavor === 'string' ? config.flavor : 'unknown',
          status: 'BUILD',
          config,
          disks,
          labels: [],
        });
        return { vmId: input.vmId, disks, source: from };
      });
    },

    async restoreVmDisk(input: { source: RestoreSource; diskName: string; targetPath: string }) {
      return withFailureTypes(() => restoreOneDisk(input.source, input.diskName, input.targetPath));
    },

    async activateRestoredVm(vmId: string): Promise<void> {
      const vm = deps.catalog.getVm(vmId);
      if (vm) deps.catalog.putVm({ ...vm, status: 'ACTIVE' });
    },

    /** Compensation: removes a half-restored VM, its disks and its catalog entry. Idempotent. */
    async discardRestoredVm(vmId: string): Promise<void> {
      await deps.hypervisor.removeDisks(vmId);
      deps.catalog.deleteVm(vmId);
    },
  };
}
