import path from 'node:path';
import { VM_PROCESS_FILES } from './vm-process';

/** A QEMU block node name: a letter first, then letters, digits, `-`, `_` or `.`, at most 31 characters in all. */
const NODE_NAME = /^[A-Za-z][A-Za-z0-9_.-]{0,30}$/;

/** The qcow2 format node that holds a VM's disk `diskName` in its QEMU process: the disk's name itself. */
export function qemuDiskNode(diskName: string): string {
  if (!NODE_NAME.test(diskName)) {
    throw new Error(
      `Disk name "${diskName}" cannot name a QEMU block node: use a letter, then letters, digits, "-", "_" or ".", ` +
        'at most 31 characters.',
    );
  }
  return diskName;
}

/** The persistent dirty bitmap that snapshot `snapshotId` leaves on each disk: its checkpoint for the next one. */
export function checkpointBitmap(snapshotId: string): string {
  return `checkpoint-${snapshotId}`;
}

/** Where a VM's QEMU process listens, under the host's folder: what `startQemuVm` and the storage daemon are given. */
export function qemuVmDir(hostDir: string, vmId: string): string {
  return path.join(hostDir, 'vms', vmId);
}

/** The sockets of a VM's QEMU process, in its folder (`qemuVmDir`). */
export const QEMU_VM_FILES = { ...VM_PROCESS_FILES, nbd: 'nbd.sock', tempDir: 'fleecing' } as const;

/** The file `which` of VM `vmId`'s QEMU process on the host of `hostDir`. */
export function qemuVmFile(hostDir: string, vmId: string, which: keyof typeof QEMU_VM_FILES): string {
  return path.join(qemuVmDir(hostDir, vmId), QEMU_VM_FILES[which]);
}
