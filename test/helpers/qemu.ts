import path from 'node:path';
import { z } from 'zod';
import type { Vm } from '../../domain/model';
import { DEFAULT_HOST_ID } from '../../domain/model';
import { bitmapsOf } from '../../platform/qemu/bitmaps';
import { createRootDisk, ensureGuestImage, GUEST } from '../../platform/qemu/guest-image';
import type { GuestImage } from '../../platform/qemu/guest-image';
import { QmpClient } from '../../platform/qemu/qmp';
import { startQemuVm, type QemuVm } from '../../platform/qemu/vm-process';

/** What the QEMU tests share: a VM record, the booted test guest, and what a QEMU process holds. */

/** A TCG guest boots to a ready agent in about 30 s here; a loaded machine takes longer. */
export const BOOT_TIMEOUT_MS = 300_000;

/** The test guest's boot files, built once into `.cache/guest` (as scripts/setup.sh does). */
export function testGuestImage(): Promise<GuestImage> {
  return ensureGuestImage(path.join(__dirname, '../../.cache/guest'));
}

/** An ACTIVE VM of account `acme` in CANADA-1 on the default host, each disk of `sizeBytes`. */
export function qemuTestVm(id: string, disks: { name: string; path: string }[], sizeBytes: number): Vm {
  return {
    id,
    hostId: DEFAULT_HOST_ID,
    accountId: 'acme',
    name: id.replace(/^vm-/, ''),
    region: 'CANADA-1',
    flavor: 'H100-SXM5-80GB',
    status: 'ACTIVE',
    config: { vcpus: 1 },
    disks: disks.map((disk) => ({ ...disk, sizeBytes })),
    labels: [],
  };
}

/**
 * Boots the test guest in `dir` (which must exist) from a new ext4 root disk `<dir>/root.qcow2` holding `files`, its
 * writer writing, and waits for its agent. The caller stops the VM.
 */
export async function bootTestGuest(
  dir: string,
  options: { sizeBytes: number; files?: Record<string, string>; vcpus?: number; memoryMiB?: number },
): Promise<{ qemu: QemuVm; rootDisk: string; image: GuestImage }> {
  const image = await testGuestImage();
  const rootDisk = path.join(dir, 'root.qcow2');
  await createRootDisk(rootDisk, { sizeBytes: options.sizeBytes, files: options.files });
  const qemu = await startQemuVm({
    dir,
    disks: [{ nodeName: 'root', path: rootDisk }],
    kernel: image.kernel,
    initrd: image.initrd,
    append: GUEST.writerAppend,
    vcpus: options.vcpus,
    memoryMiB: options.memoryMiB,
  });
  try {
    await qemu.waitForAgent(BOOT_TIMEOUT_MS);
  } catch (error) {
    await qemu.stop();
    throw error;
  }
  return { qemu, rootDisk, image };
}

const nodesSchema = z.array(z.object({ 'node-name': z.string() }));
const exportsSchema = z.array(z.object({ id: z.string() }));
const jobsSchema = z.array(z.object({ device: z.string() }));

/** A QEMU process's state: what a snapshot could leave behind. */
export interface BlockState {
  /** Named block nodes (QEMU's anonymous `#block…` nodes left out). */
  nodes: string[];
  exports: string[];
  jobs: string[];
  /** The dirty bitmaps of each disk node asked for. */
  bitmaps: Record<string, { name: string; recording: boolean }[]>;
}

/** The block state of the QEMU process listening on `qmpSocket`, with the bitmaps of the disk nodes `disks`. */
export async function blockState(qmpSocket: string, disks: readonly string[]): Promise<BlockState> {
  const qmp = await QmpClient.connect(qmpSocket);
  try {
    const nodes = nodesSchema.parse(await qmp.execute('query-named-block-nodes', { flat: true }));
    const bitmaps: BlockState['bitmaps'] = {};
    for (const disk of disks) {
      bitmaps[disk] = ((await bitmapsOf(qmp, disk)) ?? []).map((b) => ({ name: b.name, recording: b.recording }));
    }
    return {
      nodes: nodes.map((n) => n['node-name']).filter((name) => !name.startsWith('#')),
      exports: exportsSchema.parse(await qmp.execute('query-block-exports')).map((e) => e.id),
      jobs: jobsSchema.parse(await qmp.execute('query-block-jobs')).map((j) => j.device),
      bitmaps,
    };
  } finally {
    await qmp.close();
  }
}
