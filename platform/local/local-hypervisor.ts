import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { z } from 'zod';
import { listDir, openImageFileWriter, pathExists, syncDir } from '../../dataplane';
import type { DiskReader, DiskWriter, Range } from '../../dataplane';
import type { Disk, Vm, VmLoad } from '../../domain/model';
import { VmLoadSchema } from '../../domain/model';
import { vmDisk } from '../../domain/rules';
import type { AtPointInTime, DiskView, Hypervisor, ViewRanges } from '../ports';
import { CowViewReader, createCowFiles, preserveBlocks } from './cow-view';
import { acquireVmLock, isFrozen, releaseVmLock, renewFreezeLease } from './vm-lock';

/** How long a freeze waits for a guest write in progress to finish. */
const FREEZE_TIMEOUT_MS = 30_000;

const run = promisify(execFile);

/** `qemu-img map --output=json` of a raw file: its extents, holes being `zero` without `data`. */
const ImageMapSchema = z.array(
  z.object({
    start: z.number().int().nonnegative(),
    length: z.number().int().nonnegative(),
    data: z.boolean(),
    zero: z.boolean(),
  }),
);

/** Why an embedded incremental reads every data range (its chunks are still deduplicated against the parent's). */
const UNTRACKED_WRITES = 'the embedded driver does not track guest writes';

/** What a view records of its VM, so readers and the guest's write path find the live disks. */
const ViewInfoSchema = z.object({
  vmId: z.string(),
  disks: z.array(z.object({ name: z.string(), path: z.string(), sizeBytes: z.number().int().nonnegative() })),
});

/**
 * Embedded hypervisor driver for VMs whose disks are raw image files on this machine.
 *
 * - freeze/thaw: the embedded guests have no guest agent; a lock file per VM (`locks/<vm>`) stands for fsfreeze. The
 *   guest's write path (`writeGuestBlocks`) takes the same lock for every write, so a freeze waits for a write in
 *   progress and writes wait while the VM is frozen. The file records the freeze lease's deadline, and the write path
 *   treats a freeze past it as thawed: a freezer that died blocks the guest for at most the rest of its lease.
 * - point-in-time views: copy-before-write (see cow-view.ts). Opening a view copies nothing (the freeze lasts
 *   milliseconds whatever the disk's size); while it is open, the guest's write path preserves each block it first
 *   overwrites into `views/<view>/`, and `readView` lays those blocks over the live disk. `vm-views/<vm>/<view>` lists
 *   a VM's open views for the write path. A QEMU/KVM driver would take a blockdev snapshot and export it over NBD.
 * - load: the embedded guests run no workload, so their CPU and disk I/O utilisation is a figure kept in
 *   `load/<vm>.json` that the demo and tests set (`setLoad`, or `npm run snap -- load`); idle when never set. A real
 *   driver would read the hypervisor's counters (libvirt domain stats).
 */
export class LocalHypervisor implements Hypervisor {
  constructor(private readonly root: string) {}

  async freeze(vm: Vm, lease: { leaseMs: number }): Promise<void> {
    await acquireVmLock(this.lockFile(vm.id), 'freeze', FREEZE_TIMEOUT_MS, lease.leaseMs);
  }

  async renewFreeze(vm: Vm, lease: { leaseMs: number }): Promise<void> {
    await renewFreezeLease(this.lockFile(vm.id), lease.leaseMs);
  }

  /** Whether the VM is frozen now: a freeze whose lease has not expired (for the demo and tests). */
  async isFrozen(vm: Vm): Promise<boolean> {
    return isFrozen(this.lockFile(vm.id));
  }

  async thaw(vm: Vm): Promise<void> {
    await releaseVmLock(this.lockFile(vm.id), 'freeze');
  }

  /**
   * The whole opening is the step that fixes the moment (copy-before-write files registered for the guest's write
   * path), so it all runs through `atPointInTime`, frozen: it takes milliseconds whatever the disk size.
   */
  openViews(vm: Vm, viewId: string, options: { atPointInTime?: AtPointInTime } = {}): Promise<DiskView[]> {
    const atPointInTime = options.atPointInTime ?? ((step) => step());
    return atPointInTime(() => this.createViews(vm, viewId));
  }

  private async createViews(vm: Vm, viewId: string): Promise<DiskView[]> {
    const dir = this.viewDir(viewId);
    const done = path.join(dir, 'COMPLETE');
    const views = vm.disks.map((disk) => ({ viewId, name: disk.name, sizeBytes: disk.sizeBytes }));
    if (await pathExists(done)) return views;
    // Only a frozen guest has no write in flight: a view opened otherwise could miss one.
    if (!(await this.isFrozen(vm))) throw new Error(`VM ${vm.name} must be frozen to open views`);
    // A half-made view from an interrupted attempt is redone from scratch.
    await fs.rm(dir, { recursive: true, force: true });
    await fs.mkdir(dir, { recursive: true });
    const info: z.infer<typeof ViewInfoSchema> = { vmId: vm.id, disks: vm.disks };
    await fs.writeFile(path.join(dir, 'view.json'), JSON.stringify(info));
    for (const disk of vm.disks) await createCowFiles(dir, disk.name);
    await syncDir(dir);
    // Registered for the guest's write path before the thaw lets any write through.
    const registry = this.openViewsDir(vm.id);
    await fs.mkdir(registry, { recursive: true });
    await fs.writeFile(path.join(registry, viewId), '');
    await syncDir(registry);
    await fs.writeFile(done, '');
    return views;
  }

  async readView(view: DiskView): Promise<DiskReader> {
    const dir = this.viewDir(view.viewId);
    const info = await this.viewInfo(view.viewId);
    const disk = info?.disks.find((d) => d.name === view.name);
    if (!disk) throw new Error(`view ${view.viewId} of disk ${view.name} is not open`);
    return CowViewReader.open(dir, disk.name, disk.path);
  }

  /**
   * Data: the live disk file's allocated extents (SEEK_DATA/SEEK_HOLE, through `qemu-img map`, which asks the file
   * system just that). They cover the view's non-zero bytes because the guest's write path only ever writes, never
   * deallocates: a block the view holds data in was allocated when the view opened and still is; a block the view
   * preserved (copy-before-write) was either allocated then, and still is, or a hole, which the view reads as zeros.
   * Without qemu-img the whole disk is data (read in full, as before). Changed: unknown (no write tracking).
   */
  async viewRanges(view: DiskView): Promise<ViewRanges> {
    const info = await this.viewInfo(view.viewId);
    const disk = info?.disks.find((d) => d.name === view.name);
    if (!disk) throw new Error(`view ${view.viewId} of disk ${view.name} is not open`);
    return { data: await allocatedRanges(disk.path, disk.sizeBytes), changed: null, readWholeReason: UNTRACKED_WRITES };
  }

  async releaseViews(viewId: string): Promise<void> {
    const info = await this.viewInfo(viewId);
    // The write path stops preserving first, then the preserved blocks go.
    if (info) await fs.rm(path.join(this.openViewsDir(info.vmId), viewId), { force: true });
    await fs.rm(this.viewDir(viewId), { recursive: true, force: true });
  }

  /**
   * The guest's write path: runs `write` on the VM's disk `disk` (open for writing) under the VM's lock, waiting while
   * the VM is frozen, after preserving, in each open view of the VM, the blocks that `ranges` overwrite.
   */
  async guestWrite(
    vm: Vm,
    disk: Disk,
    ranges: { offset: number; length: number }[],
    write: (handle: FileHandle) => Promise<void>,
    waitMs: number,
  ): Promise<void> {
    await acquireVmLock(this.lockFile(vm.id), 'guest', waitMs);
    try {
      const handle = await fs.open(disk.path, 'r+');
      try {
        for (const viewId of await listDir(this.openViewsDir(vm.id))) {
          await preserveBlocks(this.viewDir(viewId), disk.name, handle, disk.sizeBytes, ranges);
        }
        await write(handle);
      } finally {
        await handle.close();
      }
    } finally {
      await releaseVmLock(this.lockFile(vm.id), 'guest');
    }
  }

  async readLoad(vm: Vm): Promise<VmLoad> {
    const text = await fs.readFile(this.loadFile(vm.id), 'utf8').catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return undefined;
      throw error;
    });
    return text === undefined ? { cpuPercent: 0, diskIoPercent: 0 } : VmLoadSchema.parse(JSON.parse(text));
  }

  /** Sets the load figure `readLoad` returns for the VM (atomically replaced, so readers never see half a file). */
  async setLoad(vmId: string, load: VmLoad): Promise<void> {
    const file = this.loadFile(vmId);
    await fs.mkdir(path.dirname(file), { recursive: true });
    await fs.writeFile(`${file}.tmp`, JSON.stringify(VmLoadSchema.parse(load)));
    await fs.rename(`${file}.tmp`, file);
  }

  /** New VMs' disks are sparse raw files where the seeded ones are: `disks/<vm>/<disk>.raw`. */
  async createDisks(vmId: string, disks: { name: string; sizeBytes: number }[]): Promise<Disk[]> {
    await fs.mkdir(this.diskDir(vmId), { recursive: true });
    const created = disks.map((disk) => ({ ...disk, path: path.join(this.diskDir(vmId), `${disk.name}.raw`) }));
    for (const disk of created) {
      const handle = await fs.open(disk.path, 'w');
      try {
        await handle.truncate(disk.sizeBytes);
      } finally {
        await handle.close();
      }
    }
    return created;
  }

  async writeDisk(vm: Vm, diskName: string): Promise<DiskWriter> {
    return openImageFileWriter(vmDisk(vm, diskName).path);
  }

  /** An embedded VM is its disk files and the simulated guest write path: there is no process to start. */
  async startVm(): Promise<void> {}

  async removeVm(vmId: string): Promise<void> {
    await fs.rm(this.diskDir(vmId), { recursive: true, force: true });
  }

  private diskDir(vmId: string): string {
    return path.join(this.root, 'disks', vmId);
  }

  private loadFile(vmId: string): string {
    return path.join(this.root, 'load', `${vmId}.json`);
  }

  private viewDir(viewId: string): string {
    return path.join(this.root, 'views', viewId);
  }

  private openViewsDir(vmId: string): string {
    return path.join(this.root, 'vm-views', vmId);
  }

  private lockFile(vmId: string): string {
    return path.join(this.root, 'locks', vmId);
  }

  private async viewInfo(viewId: string): Promise<z.infer<typeof ViewInfoSchema> | undefined> {
    const text = await fs.readFile(path.join(this.viewDir(viewId), 'view.json'), 'utf8').catch(() => undefined);
    return text === undefined ? undefined : ViewInfoSchema.parse(JSON.parse(text));
  }
}

/** The allocated extents of a raw file (see viewRanges), or the whole file when qemu-img is not installed. */
async function allocatedRanges(file: string, sizeBytes: number): Promise<Range[]> {
  const answer = await run('qemu-img', ['map', '--output=json', '-f', 'raw', '-U', file], {
    maxBuffer: 256 * 1024 * 1024,
  }).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw error;
  });
  if (answer === undefined) return [{ offset: 0, length: sizeBytes }];
  return ImageMapSchema.parse(JSON.parse(answer.stdout))
    .filter((extent) => extent.data || !extent.zero)
    .map((extent) => ({ offset: extent.start, length: extent.length }));
}
