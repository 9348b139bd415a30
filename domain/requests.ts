import { z } from 'zod';
import { RegionSchema } from './model';

/** Longest description stored; the UI has no limit, the server bounds it so one request cannot bloat the catalog. */
export const MAX_DESCRIPTION_LENGTH = 10_000;
export const MAX_NAME_LENGTH = 50;

/**
 * Snapshot names: 1–50 characters (Unicode code points) of letters, digits, spaces and `.`, `_`, `-`, starting with a
 * letter or digit and not ending in a space. No control characters, no slashes: a name is safe in a file name, a URL
 * and a Temporal workflow id. Names are compared case-insensitively (after Unicode NFC normalisation), so `Nightly`
 * and `nightly` collide.
 */
const NAME_PATTERN = /^[\p{L}\p{N}](?:[\p{L}\p{N} ._-]*[\p{L}\p{N}._-])?$/u;

export const SnapshotNameSchema = z
  .string()
  .refine((name) => [...name].length >= 1 && [...name].length <= MAX_NAME_LENGTH, {
    message: `must be 1–${MAX_NAME_LENGTH} characters`,
  })
  .refine((name) => NAME_PATTERN.test(name), {
    message:
      'may contain letters, digits, spaces, ".", "_" and "-", must start with a letter or digit and must not end with a space',
  });

/** The key two names collide on. */
export function snapshotNameKey(name: string): string {
  return name.normalize('NFC').toLowerCase();
}

/**
 * Workflow id of a snapshot, derived from the account and the name key: a retried request lands on the same
 * workflow and never starts a second snapshot.
 */
export function snapshotWorkflowId(accountId: string, name: string): string {
  return `snapshot/${accountId}/${snapshotNameKey(name)}`;
}

export const CreateSnapshotRequestSchema = z
  .object({
    accountId: z.string().min(1),
    vmId: z.string().min(1),
    region: RegionSchema,
    name: SnapshotNameSchema,
    description: z
      .string()
      .max(MAX_DESCRIPTION_LENGTH, `must be at most ${MAX_DESCRIPTION_LENGTH} characters`)
      .default(''),
    createAsImage: z.boolean().default(false),
    requestedBy: z.string().max(200).default('unknown'),
    /** Retrying a request with the same key returns the snapshot it created instead of failing or duplicating. */
    idempotencyKey: z.string().min(1).max(200).optional(),
    /** Set by scheduled runs: the snapshot policy the snapshot belongs to (its retention applies to it). */
    policyId: z.string().min(1).max(200).optional(),
  })
  .strict();
export type CreateSnapshotRequest = z.input<typeof CreateSnapshotRequestSchema>;
export type ValidCreateSnapshotRequest = z.output<typeof CreateSnapshotRequestSchema>;

/** What the snapshot workflow is started with: the validated request plus the id the client chose. */
export interface SnapshotWorkflowInput {
  snapshotId: string;
  request: ValidCreateSnapshotRequest;
}

export const RestoreDiskRequestSchema = z
  .object({
    accountId: z.string().min(1),
    snapshotId: z.string().min(1),
    diskName: z.string().min(1),
    targetPath: z.string().min(1),
  })
  .strict();
export type RestoreDiskRequest = z.infer<typeof RestoreDiskRequestSchema>;

/** VM names: 1–63 letters, digits, "-", "_" and "." starting with a letter or digit (a host name's label). */
export const VmNameSchema = z
  .string()
  .regex(
    /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/,
    'must be 1–63 letters, digits, "-", "_" or ".", starting with a letter or digit',
  );

/** A new VM in the source's region from a SUCCESS snapshot or from an image, with the captured configuration. */
export const RestoreVmRequestSchema = z
  .object({
    accountId: z.string().min(1),
    source: z.union([
      z.object({ snapshotId: z.string().min(1) }).strict(),
      z.object({ imageId: z.string().min(1) }).strict(),
    ]),
    vmName: VmNameSchema,
    /** Optional check: the new VM is always created in the source's region; naming another is `RegionMismatch`. */
    region: RegionSchema.optional(),
  })
  .strict();
export type RestoreVmRequest = z.infer<typeof RestoreVmRequestSchema>;
