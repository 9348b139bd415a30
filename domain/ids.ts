/**
 * The shapes of the ids the product gives out, in one place: snapshots `snap-<uuid>`, images `img-<uuid>`, VMs
 * `vm-<suffix>` (seeded VMs `vm-trainer-01`, restored ones `vm-<8 hex digits>`). A snapshot or image name may not
 * take a snapshot's or an image's id shape (`SnapshotNameSchema`), a VM name may not start like a VM id
 * (`VmNameSchema`): a reference is an id or a name by its shape alone, and is looked up as that only.
 */
const UUID = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}';

/** Id shapes by kind; matched case-insensitively, so `SNAP-<UUID>` counts as id-shaped too. */
const ID_SHAPES = {
  snapshot: new RegExp(`^snap-${UUID}$`, 'i'),
  image: new RegExp(`^img-${UUID}$`, 'i'),
  vm: /^vm-/i,
} as const;

export type IdKind = keyof typeof ID_SHAPES;

/** Whether `ref` has the shape of an id of `kind`: a reference of that shape is looked up as an id, never as a name. */
export function isIdOf(kind: IdKind, ref: string): boolean {
  return ID_SHAPES[kind].test(ref);
}

/**
 * The ids themselves, minted from a random UUID that the caller supplies (`crypto.randomUUID()` in a client,
 * `uuid4()` in a workflow, whose randomness must be replayable): these functions stay pure, so workflows can use them.
 */
export const snapshotIdFrom = (uuid: string): string => `snap-${uuid}`;
export const imageIdFrom = (uuid: string): string => `img-${uuid}`;
/** The image that "Create as Image" makes of a snapshot at verification: one per snapshot, named by its UUID. */
export const imageIdOfSnapshot = (snapshotId: string): string => imageIdFrom(snapshotId.replace(/^snap-/, ''));
/** A restored VM: `vm-` and the first 8 hex digits of a UUID (short, as VM ids are typed by hand). */
export const restoredVmIdFrom = (uuid: string): string => `vm-${uuid.slice(0, 8)}`;
