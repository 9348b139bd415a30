import { restoreDisk, restoreDiskFile, withDiskWriter } from '../dataplane';
import type { DiskWriter } from '../dataplane';
import { SnapshotError } from '../domain/errors';
import type { Disk, HostPlacement, Region, SnapshotRecord, Vm } from '../domain/model';
import type { RestoreDiskRequest, RestoreVmRequest } from '../domain/requests';
import { RestoreDiskRequestSchema, RestoreVmRequestSchema } from '../domain/requests';
import { checkOwnSnapshot, namedDisk } from '../domain/rules';
import type { ActivityDeps } from './deps';
import { placementOn } from './deps';
import { withFailureTypes } from './failures';
import { readSnapshotManifest } from './manifests';
import { StageReporter } from './progress';

/** What a new VM is restored from: a snapshot's manifest in its region. */
export interface RestoreSource {
  manifestId: string;
  region: Region;
}

/** Where a new VM is restored from, and the host it goes on (its disks are created and written there). */
export interface PlacedRestore {
  source: RestoreSource;
  host: HostPlacement;
}

/**
 * Restores: one disk of a SUCCESS snapshot to a raw image file, or a whole new VM from a snapshot or an image (its
 * disks created and written through the hypervisor driver, then the VM started). Every chunk's hash is verified
 * before it is written and zero chunks are never written; a file appears under its final name only when complete,
 * and a retry writes the disk again.
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

  /** The VM a restore is building (registered by createRestoredVm). */
  const restoringVm = (vmId: string): Vm => {
    const vm = deps.catalog.getVm(vmId);
    if (!vm) throw new Error(`VM ${vmId} is not registered; createRestoredVm registers it first.`);
    return vm;
  };

  /** Restores one disk of the source's manifest, into a file or through a new VM's disk writer. */
  const restoreOneDisk = async (source: RestoreSource, diskName: string, target: string | DiskWriter) => {
    const repository = deps.repositoryFor(source.region);
    const manifest = await readSnapshotManifest(deps, source.region, source.manifestId);
    const disk = namedDisk(manifest.disks, diskName, `Snapshot ${manifest.snapshotId}`);
    const reporter = new StageReporter<null>('RESTORING', disk.sizeBytes);
    const options = {
      manifest,
      diskName: disk.name,
      repository,
      pool: deps.pool,
      signal: reporter.signal,
      onProgress: ({ bytesDone }: { bytesDone: number }) => reporter.update(bytesDone, null),
    };
    if (typeof target === 'string') await restoreDiskFile({ ...options, target });
    else await restoreDisk({ ...options, target });
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
     * Checks a VM restore request and chooses where the new VM goes: the source (a SUCCESS snapshot or an image of
     * the account, in the requested region) and the host, which is the host of the VM the snapshot was taken of (the
     * capacity its owner had there), or, once that VM is gone, the host of the worker that runs this step.
     */
    async placeRestoredVm(input: RestoreVmRequest): Promise<PlacedRestore> {
      return withFailureTypes(async () => {
        const parsed = RestoreVmRequestSchema.safeParse(input);
        if (!parsed.success) throw new SnapshotError('InvalidRequest', parsed.error.message);
        const { accountId, source, region } = parsed.data;
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
        const sourceVmId = deps.catalog.getSnapshot(from.manifestId)?.vmId;
        const hostId = (sourceVmId && deps.catalog.getVm(sourceVmId)?.hostId) ?? deps.hostId;
        return { source: from, host: placementOn(deps, hostId) };
      });
    },

    /**
     * On the new VM's host: allocates its disks and registers it (state BUILD, on this worker's host) with the
     * captured configuration. Idempotent for the same `vmId`, which the workflow chooses.
     */
    async createRestoredVm(input: { request: RestoreVmRequest; vmId: string; source: RestoreSource }): Promise<Disk[]> {
      return withFailureTypes(async () => {
        const { accountId, vmName } = RestoreVmRequestSchema.parse(input.request);
        const existing = deps.catalog.getVm(input.vmId);
        if (existing) return existing.disks;
        if (deps.catalog.listVms({ accountId }).some((vm) => vm.name === vmName)) {
          throw new SnapshotError('InvalidVmName', `Account ${accountId} already has a VM named "${vmName}".`);
        }
        const manifest = await readSnapshotManifest(deps, input.source.region, input.source.manifestId);
        const disks = await deps.hypervisor.createDisks(input.vmId, manifest.disks);
        const config = manifest.vmConfig;
        deps.catalog.putVm({
          id: input.vmId,
          hostId: deps.hostId,
          accountId,
          name: vmName,
          region: input.source.region,
          flavor: typeof config.flavor === 'string' ? config.flavor : 'unknown',
          status: 'BUILD',
          config,
          disks,
          labels: [],
        });
        return disks;
      });
    },

    /** Writes one disk of a new VM (in BUILD state) through the hypervisor; a retry writes the disk again. */
    async restoreVmDisk(input: { source: RestoreSource; vmId: string; diskName: string }) {
      return withFailureTypes(async () => {
        const vm = restoringVm(input.vmId);
        return withDiskWriter(deps.hypervisor.writeDisk(vm, input.diskName), (writer) =>
          restoreOneDisk(input.source, input.diskName, writer),
        );
      });
    },

    /** Starts the new VM once its disks are written, with the configuration the snapshot captured. */
    async startRestoredVm(vmId: string): Promise<void> {
      return withFailureTypes(() => deps.hypervisor.startVm(restoringVm(vmId)));
    },

    async activateRestoredVm(vmId: string): Promise<void> {
      const vm = deps.catalog.getVm(vmId);
      if (vm) deps.catalog.putVm({ ...vm, status: 'ACTIVE' });
    },

    /** Compensation: removes a half-restored VM (stopped if it runs), its disks and its catalog entry. Idempotent. */
    async discardRestoredVm(vmId: string): Promise<void> {
      await deps.hypervisor.removeVm(vmId);
      deps.catalog.deleteVm(vmId);
    },
  };
}
