import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import type { Disk, Vm, VmLoad } from '../../domain/model';
import { VmLoadSchema } from '../../domain/model';
import type { DiskView, Hypervisor } from '../ports';

const run = promisify(execFile);

/**
 * Embedded hypervisor driver for VMs whose disks are raw image files on this machine.
 *
 * - freeze/thaw: the embedded guests have no guest agent; a freeze marker under `frozen/` stands for fsfreeze, and
 *   `GuestDisk` (the embedded guest's write path) waits while it exists.
 * - point-in-time views: `cp --reflink=auto --sparse=always` of each disk while frozen — an instant copy-on-write clone
 *   on file systems with reflinks (XFS, Btrfs), a hole-preserving copy elsewhere. A QEMU/KVM driver would instead take
 *   a blockdev snapshot and export it over NBD.
 * - load: the embedded guests run no workload, so their CPU and disk I/O utilisation is a figure kept in
 *   `load/<vm>.json` that the demo and tests set (`setLoad`, or `npm run snap -- load`); idle when never set. A real
 *   driver would read the hypervisor's counters (libvirt domain stats).
 */
export class LocalHypervisor implements Hypervisor {
  constructor(private readonly root: string) {}

  frozenMarker(vmId: string): string {
    return path.join(this.root, 'frozen', vmId);
  }

  async freeze(vm: Vm): Promise<void> {
    await fs.mkdir(path.dirname(this.frozenMarker(vm.id)), { recursive: true });
    await fs.writeFile(this.frozenMarker(vm.id), new Date().toISOString());
  }

  async thaw(vm: Vm): Promise<void> {
    await fs.rm(this.frozenMarker(vm.id), { force: true });
  }

  async openViews(vm: Vm, viewId: string): Promise<DiskView[]> {
    const dir = this.viewDir(viewId);
    const done = path.join(dir, 'COMPLETE');
    const views = vm.disks.map((disk) => ({
      name: disk.name,
      path: path.join(dir, `${disk.name}.raw`),
      sizeBytes: disk.sizeBytes,
    }));
    if (await exists(done)) return views;
    // A half-made view from an interrupted attempt is redone from scratch.
    await fs.rm(dir, { recursive: true, force: true });
    await fs.mkdir(dir, { recursive: true });
    for (const [i, disk] of vm.disks.entries()) {
      await run('cp', ['--reflink=auto', '--sparse=always', disk.path, views[i]!.path]);
    }
    await fs.writeFile(done, '');
    return views;
  }

  async releaseViews(viewId: string): Promise<void> {
    await fs.rm(this.viewDir(viewId), { recursive: true, force: true });
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

  /** New VMs' disks live where the seeded ones do: `disks/<vm>/<disk>.raw`. */
  async diskPaths(vmId: string, disks: { name: string; sizeBytes: number }[]): Promise<Disk[]> {
    await fs.mkdir(this.diskDir(vmId), { recursive: true });
    return disks.map((disk) => ({ ...disk, path: path.join(this.diskDir(vmId), `${disk.name}.raw`) }));
  }

  async removeDisks(vmId: string): Promise<void> {
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
}

async function exists(file: string): Promise<boolean> {
  return fs.access(file).then(
    () => true,
    () => false,
  );
}
