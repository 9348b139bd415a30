import fs from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import type { DiskReader, DiskWriter, Range } from '../../dataplane';
import { SnapshotError } from '../../domain/errors';
import type { Disk, Vm, VmLoad } from '../../domain/model';
import type { AtPointInTime, DiskView, Hypervisor, ViewOutcome, ViewRanges } from '../ports';
import { CheckpointUnusable } from './bitmaps';
import type { QemuControl, ViewPlan } from './control';
import { BASE_ALLOCATION, dirtyBitmapContext, NBD_STATE_DIRTY, NBD_STATE_HOLE, NBD_STATE_ZERO } from './nbd';
import type { NbdExtent } from './nbd';
import { NbdDiskReader } from './nbd-reader';
import { QmpControl } from './qmp-control';

/** What an open view set records, so readers and the release (from any worker of the host) find its pieces. */
const ViewRecordSchema = z.object({
  vmId: z.string(),
  /** The parent snapshot given to openViews: what a usable parent bitmap counts the writes since. */
  parentViewId: z.string().nullable(),
  newBitmap: z.string(),
  disks: z.array(
    z.object({
      name: z.string(),
      nodeName: z.string(),
      parentBitmap: z.string().nullable(),
      /** Why this disk is read whole; null when it is incremental against the parent's bitmap. */
      fullReason: z.string().nullable(),
      exportName: z.string().nullable(),
      sizeBytes: z.number().int().nonnegative().nullable(),
    }),
  ),
});
type ViewRecord = z.infer<typeof ViewRecordSchema>;

const MiB = 2 ** 20;
/** Free space kept where the views' temporary images grow, unless the driver is told otherwise. */
const DEFAULT_TEMP_MIN_FREE_MIB = 1024;
/**
 * How often the free space under open views is checked: a guest would have to overwrite more than the kept free
 * space within one interval (10 GiB/s with the default) to outrun the watch.
 */
const TEMP_WATCH_INTERVAL_MS = 100;

/**
 * Hypervisor driver for VMs run by QEMU on this host (`qemu-system-x86_64`, or `qemu-storage-daemon` where no guest
 * is needed: the same block layer). Its control side — freezing, opening and closing the views, load, new VMs — is a
 * QemuControl: the direct-QMP one (QmpControl, the default), or a libvirt one on hosts where libvirt owns the VMs.
 * Its data side is shared by both: each view set is recorded in `<hostDir>/views/<snapshot>.json` before anything is
 * made (so a release after a crash at any point finds what to undo), and the views are read over NBD, with
 * `base:allocation` telling the data and the parent's checkpoint bitmap (`qemu:dirty-bitmap:…`) what changed.
 *
 * Temporary space: a view's temporary images grow with what the guest overwrites while it is open, and QEMU 7.2 fails
 * the guest's write when they cannot (see fleecing.ts). So a view set opens only where at least `tempMinFreeMiB`
 * MiB are free, and while views are open on the host the driver checks that space every 100 ms (in every worker process
 * that opened or reads views). Below it, the view set is dropped at once — the guest's writes go straight to its disks
 * again — and its snapshot fails `SnapshotSpaceExhausted` (not retried): a snapshot is cancelled, never a guest write.
 */
export class QemuHypervisor implements Hypervisor {
  private readonly control: QemuControl;
  private readonly tempMinFreeBytes: number;
  /** The next check of the temporary space while views are open; undefined when none is due. */
  private tempWatch: NodeJS.Timeout | undefined;
  /** The view sets this process has dropped for lack of temporary space (until their records go). */
  private readonly droppedViews = new Set<string>();

  constructor(
    private readonly hostDir: string,
    options: { accel?: 'kvm' | 'tcg'; control?: QemuControl; tempMinFreeMiB?: number } = {},
  ) {
    this.control = options.control ?? new QmpControl(hostDir, { accel: options.accel });
    this.tempMinFreeBytes = (options.tempMinFreeMiB ?? DEFAULT_TEMP_MIN_FREE_MIB) * MiB;
  }

  freeze(vm: Vm, lease: { leaseMs: number }): Promise<void> {
    return this.control.freeze(vm, lease);
  }

  renewFreeze(vm: Vm, lease: { leaseMs: number }): Promise<void> {
    return this.control.renewFreeze(vm, lease);
  }

  thaw(vm: Vm): Promise<void> {
    return this.control.thaw(vm);
  }

  /**
   * Stops this host's freeze guard, which outlives the workers by design (it thaws what it holds first): for a host
   * taken out of service, the end of the demo and tests. The next freeze starts it again.
   */
  stopFreezeGuard(): Promise<void> {
    return this.control.stopFreezeGuard();
  }

  /** Planning and the view record come before the freeze; the control runs only its transaction through it. */
  async openViews(
    vm: Vm,
    viewId: string,
    options: { parentViewId: string | null; atPointInTime?: AtPointInTime },
  ): Promise<DiskView[]> {
    // An earlier attempt's views and bitmaps are settled first, so the parent's bitmap is inspected as it was.
    const earlier = await this.viewRecord(viewId);
    if (earlier) await this.control.closeViews(planOf(viewId, earlier), 'discarded');
    await fs.rm(this.droppedFile(viewId), { force: true });
    this.droppedViews.delete(viewId);
    const free = await this.tempFreeBytes(vm.id);
    if (free < this.tempMinFreeBytes) {
      throw new SnapshotError(
        'SnapshotSpaceExhausted',
        `VM ${vm.name}'s host has ${mib(free)} MiB free in ${this.control.tempDir(vm.id)}, where the point-in-time ` +
          `views keep what the guest overwrites while they are open; a snapshot needs at least ` +
          `${mib(this.tempMinFreeBytes)} MiB there. Nothing was made: free space on the host, then try again.`,
      );
    }
    const plan = await this.control.planViews(vm, viewId, options.parentViewId);
    const record: ViewRecord = {
      vmId: plan.vmId,
      newBitmap: plan.newBitmap,
      parentViewId: options.parentViewId,
      disks: plan.disks.map((disk) => ({ ...disk, exportName: null, sizeBytes: null })),
    };
    // Recorded before anything is made, so a release after a crash at any point finds what to undo.
    await this.writeViewRecord(viewId, record);
    this.watchTempSpace();
    const views = await this.control.openViews(plan, options.atPointInTime);
    for (const view of views) {
      const disk = record.disks.find((d) => d.name === view.name)!;
      disk.exportName = view.exportName;
      disk.sizeBytes = view.sizeBytes;
    }
    await this.writeViewRecord(viewId, record);
    return views.map((view) => ({ viewId, name: view.name, sizeBytes: view.sizeBytes }));
  }

  /** A view that was dropped for lack of temporary space fails to read with SnapshotSpaceExhausted. */
  async readView(view: DiskView): Promise<DiskReader> {
    const { record, disk } = await this.openDisk(view);
    const reader = await NbdDiskReader.open({
      socketPath: this.control.nbdSocket(record.vmId),
      exportName: disk.exportName,
    }).catch((error: unknown) => this.failDropped(view.viewId, error));
    return {
      read: (buffer, position) =>
        reader.read(buffer, position).catch((error: unknown) => this.failDropped(view.viewId, error)),
      close: () => reader.close(),
    };
  }

  /**
   * From the view's NBD export: data is every extent that `base:allocation` does not call a hole that reads as zeros
   * (on a snapshot-access view its holes are a subset of the real ones: conservative); changed is what the parent's
   * checkpoint bitmap marks dirty (`qemu:dirty-bitmap:<parent's bitmap>`), when that bitmap was usable for this disk.
   */
  async viewRanges(view: DiskView): Promise<ViewRanges> {
    const { record, disk } = await this.openDisk(view);
    return this.rangesOf(record, disk).catch((error: unknown) => this.failDropped(view.viewId, error));
  }

  private async rangesOf(record: ViewRecord, disk: OpenDisk): Promise<ViewRanges> {
    const parent = disk.parentBitmap === null ? null : dirtyBitmapContext(disk.parentBitmap);
    const reader = await NbdDiskReader.open({
      socketPath: this.control.nbdSocket(record.vmId),
      exportName: disk.exportName,
      connections: 1,
      metaContexts: parent === null ? [BASE_ALLOCATION] : [BASE_ALLOCATION, parent],
    });
    try {
      const holes = NBD_STATE_HOLE | NBD_STATE_ZERO;
      const allocation = await reader.blockStatus(BASE_ALLOCATION, 0, reader.size);
      const data = rangesWhere(allocation, (flags) => (flags & holes) !== holes);
      if (parent === null || record.parentViewId === null) {
        return { data, changed: null, readWholeReason: disk.fullReason ?? CheckpointUnusable.noParentBitmap };
      }
      const dirty = await reader.blockStatus(parent, 0, reader.size);
      const ranges = rangesWhere(dirty, (flags) => (flags & NBD_STATE_DIRTY) !== 0);
      return { data, changed: { sinceSnapshotId: record.parentViewId, ranges }, readWholeReason: null };
    } finally {
      await reader.close();
    }
  }

  async releaseViews(viewId: string, outcome: ViewOutcome): Promise<void> {
    const record = await this.viewRecord(viewId);
    if (!record) return;
    await this.control.closeViews(planOf(viewId, record), outcome);
    await fs.rm(this.viewRecordFile(viewId), { force: true });
    await fs.rm(this.droppedFile(viewId), { force: true });
  }

  readLoad(vm: Vm): Promise<VmLoad> {
    return this.control.readLoad(vm);
  }

  createDisks(vmId: string, disks: { name: string; sizeBytes: number }[]): Promise<Disk[]> {
    return this.control.createDisks(vmId, disks);
  }

  writeDisk(vm: Vm, diskName: string): Promise<DiskWriter> {
    return this.control.writeDisk(vm, diskName);
  }

  startVm(vm: Vm): Promise<void> {
    return this.control.startVm(vm);
  }

  removeVm(vmId: string): Promise<void> {
    return this.control.removeVm(vmId);
  }

  /**
   * Checks the temporary space of every open view set on the host now and then, from now until none is open. A check
   * that fails (a QEMU process gone meanwhile, say) is reported and the watch goes on.
   */
  private watchTempSpace(): void {
    if (this.tempWatch) return;
    const check = async (): Promise<void> => {
      const open = await this.checkTempSpace().catch((error: unknown) => {
        console.warn(`QEMU driver: checking the views' temporary space failed: ${String(error)}`);
        return true;
      });
      this.tempWatch = open ? setTimeout(() => void check(), TEMP_WATCH_INTERVAL_MS).unref() : undefined;
    };
    this.tempWatch = setTimeout(() => void check(), TEMP_WATCH_INTERVAL_MS).unref();
  }

  /**
   * Drops every open view set whose temporary space has fallen below the minimum, recording why first (so that a read
   * which fails as the views go knows the reason); a view set recorded as dropped is dropped (again) until that has
   * succeeded in this process. Whether any view set is still to watch on the host (open, opening, or not yet dropped).
   */
  private async checkTempSpace(): Promise<boolean> {
    const files = await fs.readdir(this.viewsDir()).catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return [];
      throw error;
    });
    const viewIds = files.filter((file) => file.endsWith('.json')).map((file) => file.slice(0, -'.json'.length));
    for (const viewId of this.droppedViews) if (!viewIds.includes(viewId)) this.droppedViews.delete(viewId);
    let watching = false;
    for (const viewId of viewIds) {
      if (this.droppedViews.has(viewId)) continue;
      const record = await this.viewRecord(viewId);
      if (!record) continue;
      watching = true;
      if ((await this.droppedReason(viewId)) === undefined) {
        // A view set still opening is checked once it is exported (its opening made sure of the space).
        if (record.disks.some((disk) => disk.exportName === null)) continue;
        const free = await this.tempFreeBytes(record.vmId);
        if (free >= this.tempMinFreeBytes) continue;
        await fs.writeFile(
          this.droppedFile(viewId),
          `The free space in ${this.control.tempDir(record.vmId)}, where the point-in-time views of VM ` +
            `${record.vmId} keep what the guest overwrites while they are open, fell to ${mib(free)} MiB (the driver ` +
            `keeps at least ${mib(this.tempMinFreeBytes)} MiB): the snapshot was cancelled and its views dropped ` +
            "before the guest's writes could fail. Free space on the host (or take fewer snapshots there at once), " +
            'then try again.',
        );
      }
      await this.control.dropViews(planOf(viewId, record));
      this.droppedViews.add(viewId);
      // Released meanwhile: its record and the reason go together.
      if (!(await this.viewRecord(viewId))) await fs.rm(this.droppedFile(viewId), { force: true });
    }
    return watching;
  }

  /** Free bytes where the VM's views keep their temporary images (the folder, or the nearest one that exists). */
  private async tempFreeBytes(vmId: string): Promise<number> {
    let dir = this.control.tempDir(vmId);
    for (;;) {
      const stats = await fs.statfs(dir).catch((error: NodeJS.ErrnoException) => {
        if (error.code === 'ENOENT' && path.dirname(dir) !== dir) return undefined;
        throw error;
      });
      if (stats) return stats.bavail * stats.bsize;
      dir = path.dirname(dir);
    }
  }

  /** Fails with SnapshotSpaceExhausted when the view set was dropped for lack of temporary space. */
  private async rejectIfDropped(viewId: string): Promise<void> {
    const reason = await this.droppedReason(viewId);
    if (reason !== undefined) throw new SnapshotError('SnapshotSpaceExhausted', reason);
  }

  /** Rethrows `error`, or SnapshotSpaceExhausted when the view set was dropped (a read fails as its views go). */
  private async failDropped(viewId: string, error: unknown): Promise<never> {
    await this.rejectIfDropped(viewId);
    throw error;
  }

  private droppedFile(viewId: string): string {
    return path.join(this.viewsDir(), `${viewId}.dropped`);
  }

  /** Why the view set was dropped (its record's companion file), or undefined if it was not. */
  private async droppedReason(viewId: string): Promise<string | undefined> {
    return fs.readFile(this.droppedFile(viewId), 'utf8').catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return undefined;
      throw error;
    });
  }

  /** The record of an open view and its disk, exported. */
  private async openDisk(view: DiskView): Promise<{ record: ViewRecord; disk: OpenDisk }> {
    this.watchTempSpace();
    await this.rejectIfDropped(view.viewId);
    const record = await this.viewRecord(view.viewId);
    const disk = record?.disks.find((d) => d.name === view.name);
    if (!record || !disk?.exportName) throw new Error(`View ${view.viewId} of disk ${view.name} is not open.`);
    return { record, disk: { ...disk, exportName: disk.exportName } };
  }

  /** The records of the host's open view sets, `<viewId>.json`, each with `<viewId>.dropped` once it was dropped. */
  private viewsDir(): string {
    return path.join(this.hostDir, 'views');
  }

  private viewRecordFile(viewId: string): string {
    return path.join(this.viewsDir(), `${viewId}.json`);
  }

  private async viewRecord(viewId: string): Promise<ViewRecord | undefined> {
    const text = await fs.readFile(this.viewRecordFile(viewId), 'utf8').catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return undefined;
      throw error;
    });
    return text === undefined ? undefined : ViewRecordSchema.parse(JSON.parse(text));
  }

  private async writeViewRecord(viewId: string, record: ViewRecord): Promise<void> {
    const file = this.viewRecordFile(viewId);
    await fs.mkdir(path.dirname(file), { recursive: true });
    await fs.writeFile(`${file}.tmp`, JSON.stringify(record));
    await fs.rename(`${file}.tmp`, file);
  }
}

/** A disk of an open view, with its export. */
type OpenDisk = ViewRecord['disks'][number] & { exportName: string };

/** The plan a view record was made from, for the control to close what exists of it. */
function planOf(viewId: string, record: ViewRecord): ViewPlan {
  return { vmId: record.vmId, viewId, newBitmap: record.newBitmap, disks: record.disks };
}

function mib(bytes: number): number {
  return Math.floor(bytes / MiB);
}

/** The extents whose flags `keep` accepts, as ranges. */
function rangesWhere(extents: NbdExtent[], keep: (flags: number) => boolean): Range[] {
  return extents.filter((extent) => keep(extent.flags)).map(({ offset, length }) => ({ offset, length }));
}
