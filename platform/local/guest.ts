import fs from 'node:fs/promises';
import type { Vm } from '../../domain/model';
import type { LocalHypervisor } from './local-hypervisor';

/** How long a guest write waits for a freeze to end before giving up. */
const FREEZE_WAIT_MS = 60_000;

/**
 * The embedded guest's block-write path: what a running VM does to its own disk. Writes wait while the VM is frozen,
 * as a guest's writes block under fsfreeze. Used by the demo and tests to change a VM's disk between snapshots.
 */
export async function writeGuestBlocks(
  hypervisor: LocalHypervisor,
  vm: Vm,
  diskName: string,
  writes: { offset: number; data: Buffer }[],
): Promise<void> {
  const disk = vm.disks.find((d) => d.name === diskName);
  if (!disk) throw new Error(`VM ${vm.name} has no disk named ${diskName}`);
  const deadline = Date.now() + FREEZE_WAIT_MS;
  while (await isFrozen(hypervisor, vm)) {
    if (Date.now() > deadline) throw new Error(`VM ${vm.name} stayed frozen for over ${FREEZE_WAIT_MS} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const handle = await fs.open(disk.path, 'r+');
  try {
    for (const { offset, data } of writes) {
      if (offset < 0 || offset + data.length > disk.sizeBytes) {
        throw new Error(`write at ${offset} (+${data.length}) is outside disk ${diskName} (${disk.sizeBytes} bytes)`);
      }
      await handle.write(data, 0, data.length, offset);
    }
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function isFrozen(hypervisor: LocalHypervisor, vm: Vm): Promise<boolean> {
  return fs.access(hypervisor.frozenMarker(vm.id)).then(
    () => true,
    () => false,
  );
}
