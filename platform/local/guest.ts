import type { Vm } from '../../domain/model';
import type { LocalHypervisor } from './local-hypervisor';

/** How long a guest write waits for a freeze to end before giving up. */
const FREEZE_WAIT_MS = 60_000;

/**
 * The embedded guest's block-write path: what a running VM does to its own disk. Writes wait while the VM is frozen,
 * as a guest's writes block under fsfreeze, and the blocks they overwrite are first preserved in the VM's open
 * point-in-time views (copy-before-write). Used by the demo, the benchmark and tests to change a VM's disk.
 */
export async function writeGuestBlocks(
  hypervisor: LocalHypervisor,
  vm: Vm,
  diskName: string,
  writes: { offset: number; data: Buffer }[],
): Promise<void> {
  const disk = vm.disks.find((d) => d.name === diskName);
  if (!disk) throw new Error(`VM ${vm.name} has no disk named ${diskName}`);
  for (const { offset, data } of writes) {
    if (offset < 0 || offset + data.length > disk.sizeBytes) {
      throw new Error(`write at ${offset} (+${data.length}) is outside disk ${diskName} (${disk.sizeBytes} bytes)`);
    }
  }
  const ranges = writes.map(({ offset, data }) => ({ offset, length: data.length }));
  await hypervisor.guestWrite(
    vm,
    disk,
    ranges,
    async (handle) => {
      for (const { offset, data } of writes) await handle.write(data, 0, data.length, offset);
      await handle.sync();
    },
    FREEZE_WAIT_MS,
  );
}
