import { z } from 'zod';
import type { QmpClient } from './qmp';

/**
 * Checkpoint bitmaps: a persistent dirty bitmap per disk records every write since a snapshot's transaction, so the
 * next snapshot reads only those clusters. QEMU keeps them in the qcow2 image; this module decides whether one can
 * still be trusted and settles the two bitmaps of a snapshot once it has ended.
 */

const bitmapSchema = z.object({
  // Internal bitmaps (a copy-before-write filter's) have no name.
  name: z.string().optional(),
  recording: z.boolean(),
  busy: z.boolean(),
  persistent: z.boolean(),
  inconsistent: z.boolean().optional(),
});
const nodeSchema = z.object({
  'node-name': z.string(),
  drv: z.string(),
  image: z.object({ 'virtual-size': z.number().int() }),
  'dirty-bitmaps': z
    .array(bitmapSchema)
    .optional()
    .transform((bitmaps) =>
      (bitmaps ?? []).flatMap(({ name, ...rest }) => (name === undefined ? [] : [{ name, ...rest }])),
    ),
});

/** A block node as `query-named-block-nodes` reports it (only the fields used here). */
export type BlockNode = z.infer<typeof nodeSchema>;
/** A named dirty bitmap of a block node. */
export type DirtyBitmap = BlockNode['dirty-bitmaps'][number];

/** Every named block node of the QEMU process (`query-named-block-nodes`, flat: no nested backing chains). */
export async function queryBlockNodes(qmp: QmpClient): Promise<BlockNode[]> {
  return z.array(nodeSchema).parse(await qmp.execute('query-named-block-nodes', { flat: true }));
}

/** The bitmaps of `nodeName`, or undefined when there is no such node. */
export async function bitmapsOf(qmp: QmpClient, nodeName: string): Promise<DirtyBitmap[] | undefined> {
  const node = (await queryBlockNodes(qmp)).find((candidate) => candidate['node-name'] === nodeName);
  return node?.['dirty-bitmaps'];
}

/** Whether a snapshot can be incremental against its parent's checkpoint bitmap. */
export type CheckpointState = { usable: true } | { usable: false; reason: string };

/** The user-facing reasons a checkpoint cannot be used (recorded on the snapshot that falls back to a full capture). */
export const CheckpointUnusable = {
  noParentBitmap: 'no checkpoint bitmap recorded for the parent snapshot',
  nodeMissing: (node: string) => `the disk's block node ${node} is not in the QEMU process`,
  missing: (bitmap: string) =>
    `bitmap ${bitmap} is missing (the disk was replaced or restored, or QEMU stopped without saving it)`,
  inconsistent: (bitmap: string) => `bitmap ${bitmap} is inconsistent after an unclean QEMU exit (it was removed)`,
  notRecording: (bitmap: string) => `bitmap ${bitmap} stopped recording (an earlier snapshot did not settle it)`,
} as const;

/**
 * Whether `expectedBitmap` (the parent snapshot's checkpoint on `nodeName`) still records every write since the
 * parent's transaction. An inconsistent bitmap (QEMU was killed while it was loaded) is removed here: nothing else
 * can be done with it, and leaving it would fail every later transaction that names it.
 */
export async function inspectCheckpoint(
  qmp: QmpClient,
  nodeName: string,
  expectedBitmap: string | null,
): Promise<CheckpointState> {
  if (expectedBitmap === null) return { usable: false, reason: CheckpointUnusable.noParentBitmap };
  const bitmaps = await bitmapsOf(qmp, nodeName);
  if (!bitmaps) return { usable: false, reason: CheckpointUnusable.nodeMissing(nodeName) };
  const bitmap = bitmaps.find((candidate) => candidate.name === expectedBitmap);
  if (!bitmap) return { usable: false, reason: CheckpointUnusable.missing(expectedBitmap) };
  if (bitmap.inconsistent === true) {
    await qmp.execute('block-dirty-bitmap-remove', { node: nodeName, name: expectedBitmap });
    return { usable: false, reason: CheckpointUnusable.inconsistent(expectedBitmap) };
  }
  if (!bitmap.recording) return { usable: false, reason: CheckpointUnusable.notRecording(expectedBitmap) };
  return { usable: true };
}

/** A disk of a snapshot: its node, and the parent's bitmap the snapshot's transaction disabled (null: none used). */
export interface CheckpointDisk {
  nodeName: string;
  parentBitmap: string | null;
}

/**
 * The snapshot succeeded: its bitmap becomes the disks' checkpoint and the parent's is removed. Idempotent (a missing
 * parent bitmap is already removed). Call it after closeViews: an exported bitmap is busy.
 */
export async function commitCheckpoint(qmp: QmpClient, disks: readonly CheckpointDisk[]): Promise<void> {
  for (const { nodeName: node, parentBitmap } of disks) {
    if (parentBitmap === null) continue;
    const bitmaps = (await bitmapsOf(qmp, node)) ?? [];
    if (bitmaps.some((bitmap) => bitmap.name === parentBitmap)) {
      await qmp.execute('block-dirty-bitmap-remove', { node, name: parentBitmap });
    }
  }
}

/**
 * The snapshot failed or was cancelled: the parent's bitmap records again and takes in the writes the new one saw
 * since the transaction, and the new one is removed, so the next snapshot against the parent still sees every write.
 * Per disk this is one transaction (enable, merge, remove), so a crash leaves either the state before or after it.
 * When the writes since the transaction are lost (the new bitmap is gone or inconsistent while the parent's is still
 * disabled), the parent's bitmap no longer covers them and is removed too: the next snapshot then reads everything.
 * Idempotent. Call it after closeViews: an exported bitmap is busy.
 */
export async function abandonCheckpoint(
  qmp: QmpClient,
  disks: readonly CheckpointDisk[],
  newBitmap: string,
): Promise<void> {
  for (const { nodeName: node, parentBitmap } of disks) {
    const bitmaps = (await bitmapsOf(qmp, node)) ?? [];
    const added = bitmaps.find((bitmap) => bitmap.name === newBitmap);
    const parent = parentBitmap === null ? undefined : bitmaps.find((bitmap) => bitmap.name === parentBitmap);
    const addedUsable = added !== undefined && added.inconsistent !== true;
    const actions: { type: string; data: Record<string, unknown> }[] = [];
    if (parent && parent.inconsistent !== true && (parent.recording || addedUsable)) {
      if (!parent.recording) actions.push({ type: 'block-dirty-bitmap-enable', data: { node, name: parent.name } });
      if (addedUsable) {
        actions.push({ type: 'block-dirty-bitmap-merge', data: { node, target: parent.name, bitmaps: [newBitmap] } });
      }
    } else if (parent) {
      actions.push({ type: 'block-dirty-bitmap-remove', data: { node, name: parent.name } });
    }
    if (added) actions.push({ type: 'block-dirty-bitmap-remove', data: { node, name: newBitmap } });
    if (actions.length > 0) await qmp.execute('transaction', { actions });
  }
}
