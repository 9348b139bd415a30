import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { z } from 'zod';
import type { AtPointInTime } from '../ports';
import { abandonCheckpoint, queryBlockNodes } from './bitmaps';
import {
  FleecingCleanupError,
  FleecingNbdServerElsewhereError,
  FleecingNodeNotFoundError,
  ProtocolCommandError,
} from './errors';
import { dirtyBitmapContext } from './nbd';
import type { QmpClient } from './qmp';
import { socketAccepts } from './wire';

/**
 * Point-in-time views of a QEMU process's disks (fleecing), exported read-only over NBD.
 *
 * One QMP `transaction` per view set, for all disks at once: add each disk's new checkpoint bitmap, disable the
 * parent's, and start a `blockdev-backup sync=none` job whose copy-before-write filter copies every cluster the guest
 * is about to overwrite into a temporary image. A `snapshot-access` node on each filter reads the disk as it was at
 * the transaction. Being one transaction, the disks are consistent with each other and with the bitmaps.
 *
 * Each temporary image is sparse: it takes space only as the guest overwrites clusters the view still needs. QEMU
 * 7.2's blockdev-backup filter fails the guest's write when the temporary image cannot take a cluster (it cannot be
 * given `on-cbw-error=break-snapshot`), so whoever keeps views open must watch the free space and close them before
 * it runs out (QemuHypervisor does).
 *
 * Every node, job, export and file is named from a hash of the view id (and the disk's name), so closeViews finds
 * them again from any process, after any crash, knowing only the view id.
 */

const run = promisify(execFile);

// Teardown steps answer in milliseconds (measured: an export without clients is deleted before the reply); 30 s
// bounds an NBD client that does not let go or a busy QEMU.
const REMOVAL_TIMEOUT_MS = 30_000;
// Hex digits of SHA-256 in names: 40 bits each for the view and the disk, so names stay under QEMU's 31 characters.
const KEY_CHARS = 10;
const PREFIX = 'fl';

/** A disk to view: its name in the VM (unique within it) and its qcow2 format node in the QEMU process. */
export interface FleecingDisk {
  name: string;
  nodeName: string;
  /** The parent snapshot's checkpoint bitmap, when inspectCheckpoint found it usable; null for a full capture. */
  parentBitmap: string | null;
}

/** Options of {@link openViews}. */
export interface OpenViewsOptions {
  /** Identifies the view set (e.g. the snapshot id); every name is derived from it. */
  viewId: string;
  /** Folder for the temporary images, on the QEMU process's host; it must exist. */
  tempDir: string;
  /** The unix socket of the process's NBD server (started here unless it already runs there). */
  nbdSocket: string;
  disks: readonly FleecingDisk[];
  /** The checkpoint bitmap the transaction adds to every disk (persistent); it must differ from every parent. */
  newBitmap: string;
  /** Runs the transaction, the one step that fixes the views' moment, with the guest frozen around it (see ports). */
  atPointInTime?: AtPointInTime;
}

/** One disk's view: what capture connects to. */
export interface DiskView {
  name: string;
  exportName: string;
  socketPath: string;
  sizeBytes: number;
  /** The NBD metadata context that marks the clusters written since the parent snapshot; null: read everything. */
  dirtyBitmapContext: string | null;
}

/** Options of {@link closeViews}. */
export interface CloseViewsOptions {
  viewId: string;
  tempDir: string;
}

/** The names of one disk's pieces, derived from the view id and the disk's name. */
interface ViewNames {
  /** The temporary image's node (a `file` node on the sparse temporary file). */
  tempNode: string;
  /** The copy-before-write filter that blockdev-backup inserts above the disk. */
  filterNode: string;
  /** The snapshot-access node on the filter: the view itself. */
  accessNode: string;
  jobId: string;
  /** The block export's id and its NBD export name. */
  exportName: string;
  tempFile: string;
}

function key(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, KEY_CHARS);
}

/** What every name of the view set starts with (QEMU names and temporary file names alike). */
function viewPrefix(viewId: string): string {
  return `${PREFIX}-${key(viewId)}-`;
}

/** The names of `diskName`'s pieces in the view set `viewId` (at most 28 characters, a letter first; QEMU allows 31). */
function viewNames(viewId: string, diskName: string, tempDir: string): ViewNames {
  const base = `${viewPrefix(viewId)}${key(`${viewId}\0${diskName}`)}`;
  return {
    tempNode: `${base}-tmp`,
    filterNode: `${base}-cbw`,
    accessNode: `${base}-acc`,
    jobId: `${base}-job`,
    exportName: base,
    tempFile: path.join(tempDir, `${base}.tmp`),
  };
}

const exportsSchema = z.array(
  z.object({ id: z.string(), type: z.string(), 'node-name': z.string(), 'shutting-down': z.boolean() }),
);
const jobsSchema = z.array(z.object({ device: z.string(), status: z.string() }));

/**
 * Opens a point-in-time view of every disk in one transaction and exports each read-only over NBD (with the parent's
 * bitmap when the disk has one). Only the transaction runs through `atPointInTime` (the freeze): the temporary images
 * and their nodes are made before it, the access nodes and exports after. Pieces left by an earlier attempt of the
 * same view id are removed first, and its bitmaps settled as abandonCheckpoint does. Fails with FleecingNodeNotFound
 * (a disk's node is absent), FleecingNbdServerElsewhere,
 * or the error of the step that failed (a QMP error, e.g. a parent bitmap that is missing; the freeze's); then nothing
 * of the view is left and the bitmaps are as before, or FleecingCleanupFailed says what could not be removed.
 */
export async function openViews(qmp: QmpClient, options: OpenViewsOptions): Promise<DiskView[]> {
  const { viewId, tempDir, nbdSocket, disks, newBitmap } = options;
  const atPointInTime = options.atPointInTime ?? ((step) => step());
  for (const disk of disks) {
    if (disk.parentBitmap === newBitmap) {
      throw new Error(`openViews: disk ${disk.name}: the new bitmap ${newBitmap} must differ from the parent's`);
    }
  }
  const nodes = await queryBlockNodes(qmp);
  const planned = disks.map((disk) => {
    const node = nodes.find((candidate) => candidate['node-name'] === disk.nodeName);
    if (!node) throw new FleecingNodeNotFoundError(disk.name, disk.nodeName);
    return { disk, names: viewNames(viewId, disk.name, tempDir), sizeBytes: node.image['virtual-size'] };
  });

  await closeViews(qmp, { viewId, tempDir });
  await abandonCheckpoint(qmp, disks, newBitmap);
  try {
    for (const { names, sizeBytes } of planned) {
      await createTempImage(names.tempFile, sizeBytes);
      await qmp.execute('blockdev-add', { driver: 'file', 'node-name': names.tempNode, filename: names.tempFile });
    }
    const transaction = {
      actions: planned.flatMap(({ disk, names }) => [
        { type: 'block-dirty-bitmap-add', data: { node: disk.nodeName, name: newBitmap, persistent: true } },
        ...(disk.parentBitmap === null
          ? []
          : [{ type: 'block-dirty-bitmap-disable', data: { node: disk.nodeName, name: disk.parentBitmap } }]),
        {
          type: 'blockdev-backup',
          data: {
            device: disk.nodeName,
            target: names.tempNode,
            sync: 'none',
            'job-id': names.jobId,
            'filter-node-name': names.filterNode,
          },
        },
      ]),
    };
    await atPointInTime(() => qmp.execute('transaction', transaction));
    for (const { names } of planned) {
      await qmp.execute('blockdev-add', {
        driver: 'snapshot-access',
        'node-name': names.accessNode,
        file: names.filterNode,
      });
    }
    await startNbdServer(qmp, nbdSocket);
    for (const { disk, names } of planned) {
      await qmp.execute('block-export-add', {
        type: 'nbd',
        id: names.exportName,
        'node-name': names.accessNode,
        name: names.exportName,
        writable: false,
        // Through snapshot-access the bitmap must be named with its node: a plain name is not found.
        ...(disk.parentBitmap === null ? {} : { bitmaps: [{ node: disk.nodeName, name: disk.parentBitmap }] }),
      });
    }
  } catch (error) {
    try {
      await closeViews(qmp, { viewId, tempDir });
      await abandonCheckpoint(qmp, disks, newBitmap);
    } catch (cleanupError) {
      throw new FleecingCleanupError(viewId, error, cleanupError);
    }
    throw error;
  }
  return planned.map(({ disk, names, sizeBytes }) => ({
    name: disk.name,
    exportName: names.exportName,
    socketPath: nbdSocket,
    sizeBytes,
    dirtyBitmapContext: disk.parentBitmap === null ? null : dirtyBitmapContext(disk.parentBitmap),
  }));
}

/**
 * Removes every piece of the view set, in the order QEMU needs: exports (waiting until each is deleted; clients are
 * disconnected), snapshot-access nodes, backup jobs (cancelled, waiting until gone; the filter goes with its job),
 * temporary nodes, temporary files; then stops the NBD server when no NBD export is left. Idempotent; needs only the
 * view id, so it cleans up after a crashed process too. Bitmaps are settled separately (commit/abandonCheckpoint).
 */
export async function closeViews(qmp: QmpClient, { viewId, tempDir }: CloseViewsOptions): Promise<void> {
  const prefix = viewPrefix(viewId);
  const ours = (name: string): boolean => name.startsWith(prefix);

  for (const exported of await queryExports(qmp)) {
    if (!ours(exported.id)) continue;
    await removeAndWait(
      qmp,
      exported['shutting-down'] ? undefined : () => qmp.execute('block-export-del', { id: exported.id, mode: 'hard' }),
      { event: 'BLOCK_EXPORT_DELETED', matches: (data) => data.id === exported.id },
      async () => (await queryExports(qmp)).some((candidate) => candidate.id === exported.id),
    );
  }
  await deleteNodes(qmp, (name) => ours(name) && name.endsWith('-acc'));
  for (const job of jobsSchema.parse(await qmp.execute('query-block-jobs'))) {
    if (!ours(job.device)) continue;
    await removeAndWait(
      qmp,
      () => qmp.execute('block-job-cancel', { device: job.device, force: true }),
      // A job that auto-dismisses is gone once its status is `null`.
      { event: 'JOB_STATUS_CHANGE', matches: (data) => data.id === job.device && data.status === 'null' },
      async () => jobsSchema.parse(await qmp.execute('query-block-jobs')).some((other) => other.device === job.device),
    );
  }
  await deleteNodes(qmp, ours);
  const files = await fs.readdir(tempDir).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return [];
    throw error;
  });
  for (const file of files) if (ours(file)) await fs.rm(path.join(tempDir, file), { force: true });
  if (!(await queryExports(qmp)).some((exported) => exported.type === 'nbd')) {
    await qmp.execute('nbd-server-stop').catch((error: unknown) => {
      if (!(error instanceof ProtocolCommandError && /not running/i.test(error.desc))) throw error;
    });
  }
}

async function queryExports(qmp: QmpClient): Promise<z.infer<typeof exportsSchema>> {
  return exportsSchema.parse(await qmp.execute('query-block-exports'));
}

async function deleteNodes(qmp: QmpClient, selected: (nodeName: string) => boolean): Promise<void> {
  for (const node of await queryBlockNodes(qmp)) {
    if (selected(node['node-name'])) await qmp.execute('blockdev-del', { 'node-name': node['node-name'] });
  }
}

/**
 * Runs `remove` (none: the removal is already under way) and waits for the event that says it is done. When the
 * command fails or the event does not come, the piece counts as removed only if `stillThere` says it is gone.
 */
async function removeAndWait(
  qmp: QmpClient,
  remove: (() => Promise<unknown>) | undefined,
  done: { event: string; matches: (data: Record<string, unknown>) => boolean },
  stillThere: () => Promise<boolean>,
): Promise<void> {
  const removed = qmp.waitForEvent(done.event, (event) => done.matches(event.data), REMOVAL_TIMEOUT_MS);
  try {
    await remove?.();
    await removed;
  } catch (error) {
    removed.catch(() => undefined);
    if (await stillThere()) throw error;
  }
}

/** A sparse raw file of `sizeBytes`: the copy-before-write filter allocates what it copies. */
async function createTempImage(file: string, sizeBytes: number): Promise<void> {
  try {
    await run('qemu-img', ['create', '-q', '-f', 'raw', file, String(sizeBytes)]);
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr ?? String(error);
    throw new Error(`qemu-img could not create the temporary image ${file}: ${stderr.trim()}`, { cause: error });
  }
}

/** Starts the process's NBD server on `nbdSocket`, or reuses it when it already runs there. */
async function startNbdServer(qmp: QmpClient, nbdSocket: string): Promise<void> {
  try {
    await qmp.execute('nbd-server-start', { addr: { type: 'unix', data: { path: nbdSocket } } });
  } catch (error) {
    if (!(error instanceof ProtocolCommandError && /already running/i.test(error.desc))) throw error;
    if (!(await socketAccepts(nbdSocket))) throw new FleecingNbdServerElsewhereError(nbdSocket);
  }
}
