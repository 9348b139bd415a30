import fs from 'node:fs/promises';
import path from 'node:path';
import { z } from 'zod';
import type { DiskReader, DiskWriter, Range } from '../../dataplane';
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

/**
 * Hypervisor driver for VMs run by QEMU on this host (`qemu-system-x86_64`, or `qemu-storage-daemon` where no guest
 * is needed: the same block layer). Its control side — freezing, opening and closing the views, load, new VMs — is a
 * QemuControl: the direct-QMP one (QmpControl, the default), or a libvirt one on hosts where libvirt owns the VMs.
 * Its data side is shared by both: each view set is recorded in `<hostDir>/views/<snapshot>.json` before anything is
 * made (so a release after a crash at any point finds what to undo), and the views are read over NBD, with
 * `base:allocation` telling the data and the parent's checkpoint bitmap (`qemu:dirty-bitmap:…`) what changed.
 */
export class QemuHypervisor implements Hypervisor {
  private readonly control: QemuControl;

  constructor(
    private readonly hostDir: string,
    options: { accel?: 'kvm' | 'tcg'; control?: QemuControl } = {},
  ) {
    this.control = options.control ?? new QmpControl(hostDir, { accel: options.accel });
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
    const plan = await this.control.planViews(vm, viewId, options.parentViewId);
    const record: ViewRecord = {
      vmId: plan.vmId,
      newBitmap: plan.newBitmap,
      parentViewId: options.parentViewId,
      disks: plan.disks.map((disk) => ({ ...disk, exportName: null, sizeBytes: null })),
    };
    // Recorded before anything is made, so a release after a crash at any point finds what to undo.
    await this.writeViewRecord(viewId, record);
    const views = await this.control.openViews(plan, options.atPointInTime);
    for (const view of views) {
      const disk = record.disks.find((d) => d.name === view.name)!;
      disk.exportName = view.exportName;
      disk.sizeBytes = view.sizeBytes;
    }
    await this.writeViewRecord(viewId, record);
    return views.map((view) => ({ viewId, name: view.name, sizeBytes: view.sizeBytes }));
  }

  async readView(view: DiskView): Promise<DiskReader> {
    const { record, disk } = await this.openDisk(view);
    return NbdDiskReader.open({ socketPath: this.control.nbdSocket(record.vmId), exportName: disk.exportName });
  }

  /**
   * From the view's NBD export: data is every extent that `base:allocation` does not call a hole that reads as zeros
   * (on a snapshot-access view its holes are a subset of the real ones: conservative); changed is what the parent's
   * checkpoint bitmap marks dirty (`qemu:dirty-bitmap:<parent's bitmap>`), when that bitmap was usable for this disk.
   */
  async viewRanges(view: DiskView): Promise<ViewRanges> {
    const { record, disk } = await this.openDisk(view);
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

  /** The record of an open view and its disk, exported. */
  private async openDisk(view: DiskView): Promise<{ record: ViewRecord; disk: OpenDisk }> {
    const record = await this.viewRecord(view.viewId);
    const disk = record?.disks.find((d) => d.name === view.name);
    if (!record || !disk?.exportName) throw new Error(`View ${view.viewId} of disk ${view.name} is not open.`);
    return { record, disk: { ...disk, exportName: disk.exportName } };
  }

  private viewRecordFile(viewId: string): string {
    return path.join(this.hostDir, 'views', `${viewId}.json`);
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

/** The extents whose flags `keep` accepts, as ranges. */
function rangesWhere(extents: NbdExtent[], keep: (flags: number) => boolean): Range[] {
  return extents.filter((extent) => keep(extent.flags)).map(({ offset, length }) => ({ offset, length }));
}
